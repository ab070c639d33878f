"""The centralized yardstick: min_x sum_i f_i(x_i) + g(sum_i x_i) as one cvxpy problem, with
the feeder box -E_t <= s_t <= C_t, and the shared objective evaluation for ADMM's result.

    g(s) = sum_t D (pi_t s_t + gamma/2 s_t^2)        (aggregator_contract.reference.Feeder.cost)
    cost = sum_i f_i(x_i) + g(sum_i x_i)             (same formula for both solutions)
    gap_rel = |cost_admm - cost_central| / max(1, |cost_central|)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from scenario.home import build_home
from scenario.schema import Scenario


@dataclass
class CentralResult:
    device_ids: list[str]
    x: np.ndarray  # (N, T) kW
    private_costs: np.ndarray  # f_i(x_i*)
    cost: float  # sum f_i + g(sum x_i)
    status: str
    wall_s: float
    component_power: dict[str, dict[str, np.ndarray]]


def solve_central(scenario: Scenario, solver: str = "CLARABEL") -> CentralResult:
    t0 = time.perf_counter()
    feeder = scenario.feeder_params()
    homes = [build_home(d) for d in scenario.devices]
    s = cp.sum([h.power for h in homes], axis=0) if len(homes) > 1 else homes[0].power
    g = feeder.delta_h * (feeder.price @ s + 0.5 * feeder.gamma * cp.sum_squares(s))
    cons = [k for h in homes for k in h.constraints]
    cons += [s <= feeder.capacity, s >= -feeder.export_limit]
    prob = cp.Problem(cp.Minimize(cp.sum([h.cost for h in homes]) + g), cons)
    prob.solve(solver=solver)
    if prob.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise RuntimeError(f"{scenario.name}: centralized problem {prob.status} ({solver}); "
                           "the feeder box may be too tight for the devices' needs")
    x = np.array([np.asarray(h.power.value, dtype=float).reshape(-1) for h in homes])
    private = np.array([float(h.cost.value) for h in homes])
    return CentralResult(
        device_ids=[d.id for d in scenario.devices], x=x, private_costs=private,
        cost=total_cost(scenario, x, private), status=prob.status,
        wall_s=time.perf_counter() - t0,
        component_power={h.id: h.component_power() for h in homes})


def total_cost(scenario: Scenario, x: np.ndarray, private_costs: np.ndarray) -> float:
    """sum_i f_i(x_i) + g(sum_i x_i), g without its box (violations are reported apart)."""
    return float(np.sum(private_costs)) + scenario.feeder_params().cost(np.asarray(x).sum(axis=0))


def capacity_violation_kw(scenario: Scenario, x: np.ndarray) -> float:
    """Largest excess of sum_i x_i over the import capacity C (kW)."""
    return scenario.feeder_params().import_excess_kw(np.asarray(x).sum(axis=0))


def export_violation_kw(scenario: Scenario, x: np.ndarray) -> float:
    """Largest excess of -sum_i x_i over the export limit E (kW)."""
    return scenario.feeder_params().export_excess_kw(np.asarray(x).sum(axis=0))


def violation_kw(scenario: Scenario, x: np.ndarray) -> float:
    """The larger of the two (kW)."""
    return scenario.feeder_params().violation_kw(np.asarray(x).sum(axis=0))


def gap_rel(cost_admm: float, cost_central: float) -> float:
    return abs(cost_admm - cost_central) / max(1.0, abs(cost_central))
