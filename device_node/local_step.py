"""A device's local ADMM step (DESIGN.md step 1), built once and re-solved every round:

    x+ = argmin_{x in X} f(x) + (rho/2) ||x - v||^2

written DPP as f(x) + 0.5 * sum_squares(sqrt_rho * x - w) with Parameters sqrt_rho and
w = sqrt_rho * v, so cvxpy compiles the problem once and later solves only refill the data.

Solver choice, measured with `python -m device_node.local_step homes10` on the 2-core lab
machine: the 10 homes of homes10 (96 slots), v drawn inside each home's bounds, rho in
{0.01, 0.1, 1, 10}; time per warm re-solve (cvxpy parameter refill included); error = largest
|x - x_ref| in kW against CLARABEL at 1e-12 tolerances.

    solver    settings            median    p90      max error
    CLARABEL  defaults (1e-8)     3.9 ms    7.6 ms   3.2e-4 kW
    CLARABEL  tolerances 1e-10    4.2 ms    6.9 ms   1.4e-5 kW   <- default
    OSQP      eps 1e-6, polish    9.7 ms   60 ms     2.9e-4 kW
    OSQP      eps 1e-8, polish   13.8 ms  119 ms     6.5e-6 kW
    SCS       eps 1e-6           12.3 ms   38 ms     4.3e-5 kW
    SCS       eps 1e-8           12.2 ms   27 ms     2.3e-7 kW

Clarabel (interior point; cvxpy's warm start does not apply to it) is the fastest and, at
1e-10 tolerances, accurate well below the ADMM tolerances for almost no extra time. OSQP's
first-order iterations stall on the battery/thermal equality chains when rho is small.
Errors grow like sqrt(tolerance / rho): at small rho the prox term is the only curvature.
"""

from __future__ import annotations

import time

import cvxpy as cp
import numpy as np

from scenario import DeviceSpec, Horizon
from scenario.home import Home, build_home, infeasible_component

DEFAULT_SOLVER = "CLARABEL"
SOLVER_OPTS: dict[str, dict] = {
    "CLARABEL": {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10},
    "OSQP": {"eps_abs": 1e-8, "eps_rel": 1e-8, "max_iter": 400000, "polishing": True},
    "SCS": {"eps_abs": 1e-8, "eps_rel": 1e-8, "max_iters": 400000},
}
OK = (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)
X_MATCH_KW = 1e-6  # private_cost(x) realises x to within this (fixed-point rounding on chain)


class LocalSolveError(RuntimeError):
    pass


class LocalProblem:
    """The local step of one device. `solve(v, rho)` returns x (kW per slot)."""

    def __init__(self, device_spec: DeviceSpec, horizon: Horizon | None = None,
                 solver: str = DEFAULT_SOLVER) -> None:
        if horizon is not None and horizon != device_spec.horizon:
            raise ValueError(f"device {device_spec.id}: horizon differs from its spec's")
        self.spec = device_spec
        self.solver = solver.upper()
        if self.solver not in SOLVER_OPTS:
            raise ValueError(f"solver: expected one of {', '.join(SOLVER_OPTS)}, got {solver!r}")
        self.home: Home = build_home(device_spec)
        t = device_spec.horizon.slots
        self.sqrt_rho = cp.Parameter(nonneg=True, value=1.0, name="sqrt_rho")
        self.w = cp.Parameter(t, value=np.zeros(t), name="w")
        x = self.home.power
        penalty = 0.5 * cp.sum_squares(self.sqrt_rho * x - self.w)
        self.problem = cp.Problem(cp.Minimize(self.home.cost + penalty), self.home.constraints)
        assert self.problem.is_dcp(dpp=True), "local step must be DPP"
        self.x: np.ndarray | None = None
        self.solve_times: list[float] = []
        self._cost = float("nan")
        self._parts: dict[str, np.ndarray] = {}
        self._eval: tuple[cp.Problem, cp.Parameter] | None = None

    def solve(self, v: np.ndarray, rho: float) -> np.ndarray:
        """argmin_{x in X} f(x) + (rho/2)||x - v||^2."""
        sr = float(np.sqrt(rho))
        self.sqrt_rho.value = sr
        self.w.value = sr * np.asarray(v, dtype=float)
        t0 = time.perf_counter()
        try:
            self.problem.solve(solver=self.solver, warm_start=True, **SOLVER_OPTS[self.solver])
        except cp.SolverError as e:
            raise LocalSolveError(f"device {self.spec.id}: {self.solver} failed: {e}") from e
        self.solve_times.append(time.perf_counter() - t0)
        if self.problem.status not in OK:
            why = infeasible_component(self.spec, self.solver)  # which component, and why
            raise LocalSolveError(f"device {self.spec.id}: local step {self.problem.status} "
                                  f"({self.solver}, rho={rho:g})"
                                  + (f"; {why}" if why is not None else ""))
        self.x = np.asarray(self.home.power.value, dtype=float).reshape(-1)
        self._cost = float(self.home.cost.value)
        self._parts = self.home.component_power()
        return self.x.copy()

    def private_cost(self, x: np.ndarray | None = None) -> float:
        """f_i: the device's own cost at the last solution (x None or equal to it); for another
        x, the cheapest way its components can realise x to within X_MATCH_KW (a small solve,
        which also leaves `home.component_power()` at that realisation; inf if none exists)."""
        if x is None or (self.x is not None and np.allclose(x, self.x, atol=1e-9, rtol=0)):
            return self._cost
        if self._eval is None:
            target = cp.Parameter(self.spec.horizon.slots, name="x_target")
            prob = cp.Problem(cp.Minimize(self.home.cost),
                              # 1 mW of slack: x read back from the chain is rounded
                              [*self.home.constraints,
                               cp.abs(self.home.power - target) <= X_MATCH_KW])
            self._eval = (prob, target)
        prob, target = self._eval
        target.value = np.asarray(x, dtype=float)
        prob.solve(solver="CLARABEL")
        if prob.status not in OK:
            return float("inf")
        return float(self.home.cost.value)

    def split(self, x_final: np.ndarray) -> dict[str, np.ndarray]:
        """Each component's power in the cheapest realisation of `x_final`: the last local
        solution when it is that x (the usual case), else re-derived from x alone (after a
        restart, or by another reader such as the home's meter), so every reader gets the
        same split."""
        if self.x is None or not np.allclose(self.x, x_final, atol=1e-6, rtol=0):
            self.private_cost(np.asarray(x_final, dtype=float))
            return self.home.component_power()
        return self.component_power()

    def component_power(self) -> dict[str, np.ndarray]:
        """Per-component power of the last local solution (kW per slot)."""
        if self.x is None:
            raise LocalSolveError(f"device {self.spec.id}: not solved yet")
        return {k: v.copy() for k, v in self._parts.items()}


def _measure(name: str) -> None:
    """Solver comparison behind the module docstring's figures."""
    from scenario import load

    scen = load(name)
    rng = np.random.default_rng(0)
    rhos = (0.01, 0.1, 1.0, 10.0)
    cases = []
    for d in scen.devices:
        lo, hi = d.slot_bounds()
        cases.append((d, [(rng.uniform(lo, hi), r) for r in rhos]))
    ref = {}
    tight = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12, "max_iter": 500}
    default, SOLVER_OPTS["CLARABEL"] = SOLVER_OPTS["CLARABEL"], tight
    for d, vs in cases:
        lp = LocalProblem(d, solver="CLARABEL")
        ref[d.id] = [lp.solve(v, r) for v, r in vs]
    SOLVER_OPTS["CLARABEL"] = default
    for solver in ("CLARABEL", "OSQP", "SCS"):
        times, err = [], 0.0
        for d, vs in cases:
            lp = LocalProblem(d, solver=solver)
            lp.solve(*vs[0])  # compile once
            lp.solve_times.clear()
            for k in range(3):
                for (v, r), xr in zip(vs, ref[d.id], strict=True):
                    x = lp.solve(v + 0.01 * k, r)
                    if k == 0:
                        err = max(err, float(np.abs(x - xr).max()))
            times += lp.solve_times
        print(f"{solver:9s} median {1e3 * np.median(times):6.2f} ms  p90 "
              f"{1e3 * np.percentile(times, 90):6.2f} ms  max error {err:.1e} kW")


if __name__ == "__main__":
    import sys

    _measure(sys.argv[1] if len(sys.argv) > 1 else "homes10")
