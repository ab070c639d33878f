"""A device (one ADMM agent): a home's components summed behind one meter.

x = Σ_c p_c and f(x) = Σ_c cost_c. Energy prices are not here: they belong to the feeder's cost
g (docs/admm.md), which reaches a device only through the ADMM dual. A component's own cost is
what the device alone cares about (battery wear, comfort, utility of a curtailable load).
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from scenario.schema import DeviceSpec


class InfeasibleDevice(ValueError):
    def __init__(self, device: str, component: str | None, reason: str) -> None:
        self.device, self.component, self.reason = device, component, reason
        where = f"device {device}" + (f", component {component}" if component else "")
        super().__init__(f"{where}: infeasible: {reason}")


class Home:
    """The convex model of a device: `power` (T,), `cost`, `constraints`, `components`."""

    def __init__(self, spec: DeviceSpec) -> None:
        self.id = spec.id
        self.spec = spec
        self.components = [c.build(spec.horizon) for c in spec.components]
        self.power: cp.Expression = cp.sum([c.power for c in self.components], axis=0) \
            if len(self.components) > 1 else self.components[0].power
        self.cost: cp.Expression = cp.sum([c.cost for c in self.components]) \
            if len(self.components) > 1 else self.components[0].cost
        self.constraints = [k for c in self.components for k in c.constraints]

    def component_power(self) -> dict[str, np.ndarray]:
        """Each component's power at the last solution (kW per slot)."""
        return {c.id: np.asarray(c.power.value, dtype=float).reshape(-1) for c in
                self.components}


def build_home(device_spec: DeviceSpec) -> Home:
    return Home(device_spec)


def infeasible_component(device_spec: DeviceSpec, solver: str = "CLARABEL", *,
                         only_solved: bool = False) -> InfeasibleDevice | None:
    """The first component whose own constraint set is empty, as an InfeasibleDevice naming
    the device, the component, its type and what to change; None when each has a point.
    Components are independent behind the meter (x is their free sum), so the device is
    feasible iff each is. `only_solved`: just the types the analytic checks cannot settle."""
    for comp in device_spec.components:
        if only_solved and not comp.solve_to_check:
            continue
        model = comp.build(device_spec.horizon)
        prob = cp.Problem(cp.Minimize(0), model.constraints)
        try:
            prob.solve(solver=solver)
        except cp.SolverError as e:
            return InfeasibleDevice(device_spec.id, comp.id, f"solver failed: {e}")
        if prob.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
            return InfeasibleDevice(device_spec.id, comp.id,
                                    f"{comp.type} constraints: {comp.infeasible_hint()}")
    return None


def check_feasible(device_spec: DeviceSpec, solver: str = "CLARABEL") -> None:
    """Raise InfeasibleDevice (naming device and component) if a component's constraint set is
    empty. Most types are settled by their analytic `check` at validation; those marked
    `solve_to_check` (comfort bands under the weather) are solved here."""
    err = infeasible_component(device_spec, solver, only_solved=True)
    if err is not None:
        raise err
