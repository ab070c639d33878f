"""Float reference of the aggregator's shared ADMM steps (DESIGN.md, "The optimization").

This is the one place the aggregate update is written in floating point. The in-process
driver, the contract tests (which compare the Vyper fixed-point version against it round by
round) and `lab verify` all call `aggregate_step`; each step below is one small function
(`step2_average` ... `step6_rho_update`) so that the contract can mirror them one to one.

Sharing ADMM, scaled form (Boyd et al. 2011, 7.3), with over-relaxation (Boyd 3.4.3) and
normalised residual balancing (OSQP, Stellato et al. 2020, 5.2). Round k, N devices, T slots:

    device i:  x_i+ = argmin_{x in X_i} f_i(x) + (rho/2)||x - v_i||^2,  v_i = x_i - xbar + zbar - u
    step 2:    xbar+ = (1/N) sum_i x_i+
    step 3:    xhat = alpha xbar+ + (1 - alpha) zbar                       (over-relaxation)
               zbar+_t = clip((rho a_t - D pi_t) / (rho + N D gamma), -E_t/N, C_t/N),  a = u + xhat
    step 4:    u+ = u + xhat - zbar+
    step 5:    r = sqrt(N) ||xbar+ - zbar+||
               s = rho sqrt(sum_i ||dx_i - w||^2),  w = dxbar - dzbar - (1 - alpha)(xbar+ - zbar)
               eps_pri  = sqrt(p) eps_abs + eps_rel max(||x||, ||z||),  z_i = x_i+ - xbar+ + zbar+
               eps_dual = sqrt(p) eps_abs + eps_rel ||y||,  ||y|| = rho sqrt(N) ||u+||,  p = N T
               viol = max_t max(N xbar+_t - C_t, -E_t - N xbar+_t, 0)   (the schedule's own excess)
               converged  <=>  r <= eps_pri  and  s <= eps_dual  and  viol <= viol_tol
    step 6:    (only when not converged)
               f = sqrt((r / max(||x||, ||z||)) / (s / ||y||))
               f > mu or f < 1/mu  =>  f <- clip(f, 1/tau, tau),  rho <- f rho,  u <- u / f

Bounds (the contract's, so that chain and in-process runs agree round by round however a
session diverges): rho stays in [RHO_MIN, RHO_MAX] = [1e-9, 1e9] (step 6 limits f so that
f rho stays inside), and u saturates at +-U_MAX_KW (the contract's int64 lane of 1e-9 kW)
after step 4 and after step 6's rescaling.

Here d. = this round's value minus last round's (dx_i = x_i+ - x_i, dzbar = zbar+ - zbar) and
zbar, u without + are last round's. With alpha = 1 this is plain sharing ADMM.

Start (round 0): x_i = 0, xbar = zbar = 0, rho = rho0 and u = D pi / rho0, so that the price a
device sees in its first local step, rho u, is the feeder's energy price: round 0 is each
device's price-only optimum (pulled towards 0 by the small prox term) instead of x = 0.

Step 3 is the closed-form prox of g(s) = sum_t D (pi_t s_t + gamma/2 s_t^2) with s = N zbar:
minimising D (pi N z + gamma/2 N^2 z^2) + (N rho / 2)(z - a)^2 over z gives
z = (rho a - D pi) / (rho + N D gamma), then the box -E/N <= z <= C/N.

Why s has the (1 - alpha) term. Device i's step is exact for the price rho u+ plus an error:
x_i+ minimises f_i(x) + (rho u+ + e_i).x over X_i with e_i = rho (dx_i - w), and N zbar+
minimises g(s) - rho u+.s over the box exactly. So s = ||(e_i)_i|| is the dual residual of
the pair (x+, u+) whatever alpha is.

What the stopping rule guarantees. Write lambda = rho u+ (the price every device sees) and
kappa = lambda - D (pi + gamma N zbar+) (the congestion price, nonzero only where zbar+ is
clipped). From the two optimality statements above, with S = sum_i x_i+ = N xbar+:

    cost(x+) - p*  <=  -kappa.(S - N zbar+) + (D gamma / 2)||S - N zbar+||^2
                       + sum_i max_{x in X_i} e_i.(x - x_i+)
    p* - cost(x+)  <=  kappa*.(S - P(S))   (kappa* the optimal congestion price, P the box)

where cost = sum_i f_i(x_i) + g(S) (g without its box). The first terms are the feeder's: the
stopping rule bounds them through viol and r (||S - N zbar+||_inf <= sqrt(N) r, and
|S - P(S)| <= viol slot by slot), so the gap from the limits is at most
||kappa||_1 max(viol, sqrt(N) r) ~ (sum of congestion prices) x (kW error). The last term is
the devices' and is bounded by s/rho times the size of the devices' feasible sets (a loose
bound; measured: eps_rel = 1e-4 gives relative cost gaps of 1e-5..1e-4).
viol itself is checked exactly: the schedule (the devices' own x_i+) exceeds neither limit by
more than viol_tol, since N xbar+ = sum_i x_i+ is what the limits apply to.

What a contract keeps between rounds: xbar, zbar, u (T-vectors), rho, and the running sums
over devices sum_i ||x_i||^2 and sum_i ||dx_i||^2 (scalars; the vector sum_i x_i gives xbar).
The sums in step 5 expand so that only those are needed, O(T) per round, independent of N:

    sum_i ||dx_i - w||^2 = sum_i ||dx_i||^2 - 2 N <dxbar, w> + N ||w||^2
    ||z||^2 = sum_i ||x_i+||^2 - N ||xbar+||^2 + N ||zbar+||^2     (sum_i (x_i+ - xbar+) = 0)

xhat and w are formed during the round from xbar, xbar+, zbar and zbar+ (no extra storage).
Everything is plain arithmetic, min/max/clip, and two square roots (norms and f).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RHO_MIN = 1e-9  # step 6 keeps rho within [RHO_MIN, RHO_MAX] (the contract's bounds)
RHO_MAX = 1e9
U_MAX_KW = (2**63 - 1) * 1e-9  # u saturates at +-U_MAX_KW (the contract's int64 lane)


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
    """The lab's defaults: one setting for every scenario (measured on homes10,
    homes10-congested, homes100 and generated homesN-congested; see the module docstring)."""

    rho0: float = 0.03
    eps_abs: float = 1e-5
    eps_rel: float = 1e-4
    max_rounds: int = 100
    mu: float = 5.0  # step 6: rho changes only when the balancing factor leaves [1/mu, mu]
    tau: float = 10.0  # step 6: largest change of rho in one round (factor)
    alpha: float = 1.6  # step 3: over-relaxation, 1 <= alpha < 2 (1 = plain ADMM)
    viol_tol_kw: float = 1e-3  # step 5: largest excess of sum_i x_i over C or below -E


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
    def initial(cls, devices: int, slots: int, rho0: float,
                feeder: Feeder | None = None) -> AggregatorState:
        """Round 0: x_i = xbar = zbar = 0 and u = D pi / rho0 (the energy price as the first
        dual; u = 0 without a feeder)."""
        zeros = np.zeros(slots)
        u = zeros.copy() if feeder is None else initial_u(feeder, rho0)
        return cls(0, float(rho0), zeros, zeros.copy(), u, np.zeros((devices, slots)))

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
    import_excess_kw: float = 0.0  # step 5: max_t (N xbar_t - C_t)+
    export_excess_kw: float = 0.0  # step 5: max_t (-E_t - N xbar_t)+
    x_scale: float = 0.0  # step 5: max(||x||, ||z||)
    y_scale: float = 0.0  # step 5: ||y|| = rho sqrt(N) ||u||
    factor: float = 1.0  # step 6: the balancing factor f (before the mu / tau tests)

    @property
    def violation_kw(self) -> float:
        return max(self.import_excess_kw, self.export_excess_kw)


def initial_u(feeder: Feeder, rho0: float) -> np.ndarray:
    """u at round 0: D pi / rho0."""
    return feeder.delta_h * feeder.price / rho0


def step2_average(x_new: np.ndarray) -> np.ndarray:
    """xbar+ = (1/N) sum_i x_i+ (the contract keeps the running sum of submissions)."""
    return np.asarray(x_new, dtype=float).mean(axis=0)


def step3_z_update(u: np.ndarray, xbar_new: np.ndarray, zbar: np.ndarray, rho: float, n: int,
                   feeder: Feeder, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """xhat = alpha xbar+ + (1 - alpha) zbar; zbar+ = the prox of g at a = u + xhat, clipped to
    the box. Returns (xhat, zbar+)."""
    xhat = alpha * xbar_new + (1.0 - alpha) * zbar
    a = u + xhat
    delta = feeder.delta_h
    z = (rho * a - delta * feeder.price) / (rho + n * delta * feeder.gamma)
    return xhat, np.clip(z, -feeder.export_limit / n, feeder.capacity / n)


def saturate_u(u: np.ndarray) -> np.ndarray:
    """u clipped to +-U_MAX_KW, where the contract's u saturates."""
    return np.clip(u, -U_MAX_KW, U_MAX_KW)


def step4_u_update(u: np.ndarray, xhat: np.ndarray, zbar_new: np.ndarray) -> np.ndarray:
    """u+ = u + xhat - zbar+ (saturated)."""
    return saturate_u(u + xhat - zbar_new)


@dataclass(frozen=True)
class Residuals:
    r: float
    s: float
    eps_pri: float
    eps_dual: float
    x_scale: float
    y_scale: float
    import_excess_kw: float
    export_excess_kw: float
    converged: bool


def step5_residuals(state: AggregatorState, x_new: np.ndarray, xbar_new: np.ndarray,
                    zbar_new: np.ndarray, u_new: np.ndarray, rho: float, feeder: Feeder,
                    settings: AdmmSettings) -> Residuals:
    """Primal and dual residuals, their tolerances, the schedule's excess over the feeder
    limits, and the convergence test (module docstring, step 5)."""
    n, t = x_new.shape
    r = float(np.sqrt(n) * np.linalg.norm(xbar_new - zbar_new))
    w = (xbar_new - state.xbar) - (zbar_new - state.zbar) \
        - (1.0 - settings.alpha) * (xbar_new - state.zbar)
    s = float(rho * np.linalg.norm((x_new - state.x) - w))
    x_norm = float(np.linalg.norm(x_new))
    z_norm = float(np.linalg.norm(x_new - xbar_new + zbar_new))
    x_scale = max(x_norm, z_norm)
    y_scale = float(rho * np.sqrt(n) * np.linalg.norm(u_new))
    sqrt_p = float(np.sqrt(n * t))
    eps_pri = sqrt_p * settings.eps_abs + settings.eps_rel * x_scale
    eps_dual = sqrt_p * settings.eps_abs + settings.eps_rel * y_scale
    total = n * xbar_new
    imp, exp = feeder.import_excess_kw(total), feeder.export_excess_kw(total)
    converged = (r <= eps_pri and s <= eps_dual
                 and max(imp, exp) <= settings.viol_tol_kw)
    return Residuals(r, s, eps_pri, eps_dual, x_scale, y_scale, imp, exp, converged)


def balancing_factor(res: Residuals) -> float:
    """f = sqrt((r / max(||x||, ||z||)) / (s / ||y||)): the rho that would make the two
    normalised residuals equal, relative to this one."""
    num, den = res.r * res.y_scale, res.s * res.x_scale
    if num <= 0.0:
        return 0.0
    if den <= 0.0:
        return float("inf")
    return float(np.sqrt(num / den))


def step6_rho_update(rho: float, u: np.ndarray, factor: float,
                     settings: AdmmSettings) -> tuple[float, np.ndarray]:
    """Normalised residual balancing: rho <- f rho when f leaves [1/mu, mu] (f clipped to
    [1/tau, tau], then so that rho stays in [RHO_MIN, RHO_MAX]). The scaled dual u = y / rho
    is rescaled so that the unscaled dual y is unchanged by the new rho (then saturated)."""
    if 1.0 / settings.mu <= factor <= settings.mu:
        return rho, u
    f = max(factor, 1.0 / settings.tau, RHO_MIN / rho)
    f = min(f, settings.tau, RHO_MAX / rho)
    return min(max(rho * f, RHO_MIN), RHO_MAX), saturate_u(u / f)


def aggregate_step(
    state: AggregatorState, x_new: np.ndarray, feeder: Feeder, settings: AdmmSettings
) -> tuple[AggregatorState, RoundInfo]:
    """Steps 2-6 for one round. `x_new` is (N, T): every device's submission this round
    (a straggler's row is its previous x_i). Returns the next state and the round's figures."""
    x_new = np.asarray(x_new, dtype=float)
    n, _ = x_new.shape
    rho = state.rho
    xbar = step2_average(x_new)
    xhat, zbar = step3_z_update(state.u, xbar, state.zbar, rho, n, feeder, settings.alpha)
    u = step4_u_update(state.u, xhat, zbar)
    res = step5_residuals(state, x_new, xbar, zbar, u, rho, feeder, settings)
    factor = balancing_factor(res)
    rho_next = rho
    if not res.converged:
        rho_next, u = step6_rho_update(rho, u, factor, settings)
    nxt = AggregatorState(state.round + 1, rho_next, xbar, zbar, u, x_new, res.converged)
    info = RoundInfo(state.round, res.r, res.s, res.eps_pri, res.eps_dual, rho, rho_next,
                     res.converged, import_excess_kw=res.import_excess_kw,
                     export_excess_kw=res.export_excess_kw, x_scale=res.x_scale,
                     y_scale=res.y_scale, factor=factor)
    return nxt, info
