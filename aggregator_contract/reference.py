"""Float reference of the aggregator's shared ADMM steps (DESIGN.md, "The optimization").

This is the one place the aggregate update is written in floating point. The in-process
driver, the contract tests (which compare the Vyper fixed-point version against it round by
round) and `lab verify` all call `aggregate_step`.

Sharing ADMM, scaled form (Boyd et al. 2011, 7.3), iteration k, N devices, T slots:

    device i:  x_i+ = argmin_{x in X_i} f_i(x) + (rho/2)||x - v_i||^2,  v_i = x_i - xbar + zbar - u
    step 2:    xbar+ = (1/N) sum_i x_i+
    step 3:    zbar+_t = clip((rho a_t - D pi_t) / (rho + N D gamma), -E_t/N, C_t/N),  a = u + xbar+
    step 4:    u+ = u + xbar+ - zbar+
    step 5:    r = sqrt(N) ||xbar+ - zbar+||,  s = rho sqrt(sum_i ||dx_i - dxbar + dzbar||^2)
               eps_pri  = sqrt(p) eps_abs + eps_rel max(||x||, ||z||),   z_i = x_i - xbar + zbar
               eps_dual = sqrt(p) eps_abs + eps_rel rho sqrt(N) ||u||,   p = N T
    step 6:    r > mu s  =>  rho <- tau rho, u <- u / tau
               s > mu r  =>  rho <- rho / tau, u <- tau u

Step 3 is the closed-form prox of g(s) = sum_t D (pi_t s_t + gamma/2 s_t^2) with s = N zbar:
minimising D (pi N z + gamma/2 N^2 z^2) + (N rho / 2)(z - a)^2 over z gives
z = (rho a - D pi) / (rho + N D gamma), then the box -E/N <= z <= C/N.

The sum over devices in `s` expands so that a contract needs only one scalar per device:
sum_i ||dx_i - d||^2 = sum_i ||dx_i||^2 - 2 N <dxbar, d> + N ||d||^2 with d = dxbar - dzbar.
This module computes it directly; the contract uses the expansion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Feeder:
    """The coupling cost g and its box, per slot: price pi ($/kWh), import capacity C (kW),
    export limit E (kW), quadratic penalty gamma ($/kW^2/h), slot length delta_h (h)."""

    delta_h: float
    price: np.ndarray
    capacity: np.ndarray
    export_limit: np.ndarray
    gamma: float

    @property
    def slots(self) -> int:
        return int(self.price.shape[0])

    def cost(self, total_kw: np.ndarray) -> float:
        """g(s) without its constraint: sum_t D (pi_t s_t + gamma/2 s_t^2)."""
        s = np.asarray(total_kw, dtype=float)
        return float(self.delta_h * np.sum(self.price * s + 0.5 * self.gamma * s * s))

    def import_excess_kw(self, total_kw: np.ndarray) -> float:
        """Largest excess of s over the import capacity C, in kW (0 when within)."""
        s = np.asarray(total_kw, dtype=float)
        return float(np.maximum(s - self.capacity, 0.0).max(initial=0.0))

    def export_excess_kw(self, total_kw: np.ndarray) -> float:
        """Largest excess of the export -s over the export limit E, in kW (0 when within)."""
        s = np.asarray(total_kw, dtype=float)
        return float(np.maximum(-self.export_limit - s, 0.0).max(initial=0.0))

    def violation_kw(self, total_kw: np.ndarray) -> float:
        """Largest excess of s over C or below -E, in kW (0 when within the box)."""
        return max(self.import_excess_kw(total_kw), self.export_excess_kw(total_kw))


@dataclass(frozen=True)
class AdmmSettings:
    rho0: float = 1.0
    eps_abs: float = 1e-4
    eps_rel: float = 1e-3
    max_rounds: int = 100
    mu: float = 10.0
    tau: float = 2.0


@dataclass(frozen=True)
class AggregatorState:
    """What the aggregator holds between rounds. `x` is each device's last submission (N, T)."""

    round: int
    rho: float
    xbar: np.ndarray
    zbar: np.ndarray
    u: np.ndarray
    x: np.ndarray
    converged: bool = False

    @classmethod
    def initial(cls, devices: int, slots: int, rho0: float) -> AggregatorState:
        zeros = np.zeros(slots)
        return cls(0, float(rho0), zeros, zeros.copy(), zeros.copy(), np.zeros((devices, slots)))

    def target(self, x_prev: np.ndarray) -> np.ndarray:
        """v_i = x_i - xbar + zbar - u: the point device i's proximal term pulls towards."""
        return np.asarray(x_prev, dtype=float) - self.xbar + self.zbar - self.u


@dataclass(frozen=True)
class RoundInfo:
    """The figures of one closed round (step 5 and step 6)."""

    round: int
    r: float
    s: float
    eps_pri: float
    eps_dual: float
    rho: float  # the rho this round's devices used
    rho_next: float  # after residual balancing
    converged: bool
    extra: dict = field(default_factory=dict)


def aggregate_step(
    state: AggregatorState, x_new: np.ndarray, feeder: Feeder, settings: AdmmSettings
) -> tuple[AggregatorState, RoundInfo]:
    """Steps 2-6 for one round. `x_new` is (N, T): every device's submission this round
    (a straggler's row is its previous x_i). Returns the next state and the round's figures."""
    x_new = np.asarray(x_new, dtype=float)
    n, t = x_new.shape
    rho = state.rho
    delta = feeder.delta_h

    xbar = x_new.mean(axis=0)
    a = state.u + xbar
    zbar = (rho * a - delta * feeder.price) / (rho + n * delta * feeder.gamma)
    zbar = np.clip(zbar, -feeder.export_limit / n, feeder.capacity / n)
    u = state.u + xbar - zbar

    r = float(np.sqrt(n) * np.linalg.norm(xbar - zbar))
    dz = (x_new - state.x) - (xbar - state.xbar) + (zbar - state.zbar)
    s = float(rho * np.linalg.norm(dz))
    z = x_new - xbar + zbar
    sqrt_p = np.sqrt(n * t)
    eps_pri = float(
        sqrt_p * settings.eps_abs
        + settings.eps_rel * max(np.linalg.norm(x_new), np.linalg.norm(z))
    )
    u_norm = np.sqrt(n) * np.linalg.norm(u)
    eps_dual = float(sqrt_p * settings.eps_abs + settings.eps_rel * rho * u_norm)
    converged = r <= eps_pri and s <= eps_dual

    rho_next = rho
    if not converged:
        rho_next, u = balance(rho, u, r, s, settings)

    nxt = AggregatorState(state.round + 1, rho_next, xbar, zbar, u, x_new, converged)
    info = RoundInfo(state.round, r, s, eps_pri, eps_dual, rho, rho_next, converged)
    return nxt, info


def balance(
    rho: float, u: np.ndarray, r: float, s: float, settings: AdmmSettings
) -> tuple[float, np.ndarray]:
    """Residual balancing (Boyd 3.4.1). The scaled dual u = y / rho is rescaled so that the
    unscaled dual y is unchanged by the new rho."""
    if r > settings.mu * s:
        return rho * settings.tau, u / settings.tau
    if s > settings.mu * r:
        return rho / settings.tau, u * settings.tau
    return rho, u

