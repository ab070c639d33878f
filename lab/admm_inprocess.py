"""In-process sharing ADMM: every device's local step in this process, the aggregator steps
from aggregator_contract.reference (the same float math the contract is checked against).

Round k: each device solves its local step against v_i = x_i - xbar + zbar - u with the
current rho, then `reference.aggregate_step` does steps 2-6 (docs/architecture.md). The first round
starts from x_i = 0, xbar = zbar = 0, u = D pi / rho0, rho = rho0
(`AggregatorState.initial` with the feeder), so round 0 is each device's price-only optimum.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from aggregator_contract.reference import AggregatorState, aggregate_step
from device_node.local_step import LocalProblem
from scenario import Scenario


@dataclass
class AdmmResult:
    device_ids: list[str]
    x: np.ndarray  # (N, T) kW, each device's last submission
    history: list[dict]  # per round: round, r, s, eps_pri, eps_dual, rho, rho_next, wall_s
    converged: bool
    rounds: int
    local_solve_s: list[float] = field(default_factory=list)  # every local solve's wall time
    private_costs: np.ndarray | None = None  # f_i(x_i) at the last local solutions
    component_power: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    wall_s: float = 0.0
    state: AggregatorState | None = None

    @property
    def total(self) -> np.ndarray:
        return self.x.sum(axis=0)


def run_admm(scenario: Scenario, *, solver: str | None = None, max_rounds: int | None = None,
             on_round: Callable[[dict], None] | None = None,
             problems: list[LocalProblem] | None = None) -> AdmmResult:
    """Run sharing ADMM to convergence or max_rounds (scenario.admm unless overridden)."""
    t_start = time.perf_counter()
    feeder = scenario.feeder_params()
    settings = scenario.admm_settings()
    rounds_cap = settings.max_rounds if max_rounds is None else max_rounds
    solver = solver or scenario.admm.solver
    if problems is None:
        problems = [LocalProblem(d, solver=solver) for d in scenario.devices]
    n, t = len(problems), scenario.horizon.slots
    state = AggregatorState.initial(n, t, settings.rho0, feeder)
    history: list[dict] = []
    for _ in range(rounds_cap):
        t0 = time.perf_counter()
        x_new = np.empty((n, t))
        for i, lp in enumerate(problems):
            x_new[i] = lp.solve(state.target(state.x[i]), state.rho)
        state, info = aggregate_step(state, x_new, feeder, settings)
        row = {"round": info.round, "r": info.r, "s": info.s, "eps_pri": info.eps_pri,
               "eps_dual": info.eps_dual, "rho": info.rho, "rho_next": info.rho_next,
               "converged": info.converged, "import_excess_kw": info.import_excess_kw,
               "export_excess_kw": info.export_excess_kw, "factor": info.factor,
               "wall_s": time.perf_counter() - t0}
        history.append(row)
        if on_round is not None:
            on_round(row)
        if state.converged:
            break
    return AdmmResult(
        device_ids=[d.id for d in scenario.devices],
        x=state.x.copy(),
        history=history,
        converged=bool(state.converged),
        rounds=len(history),
        local_solve_s=[s for lp in problems for s in lp.solve_times],
        private_costs=np.array([lp.private_cost() for lp in problems]),
        component_power={lp.spec.id: lp.component_power() for lp in problems},
        wall_s=time.perf_counter() - t_start,
        state=state,
    )
