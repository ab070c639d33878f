"""Device models: one small class per component, in the style of cvxpower's devices.py.

Each component has a `power` expression (kW per slot, consumption positive, generation
negative), a `cost` expression (its private cost f in $, over the day) and a list of
`constraints`; nothing else is its interface. The physics is in each class's docstring.
Δ is the slot length in hours, t = 0..T-1 the slots. A `Home` is the sum of its components
behind one meter: x = Σ_c p_c, f(x) = Σ_c cost_c; it is one ADMM agent.

Energy prices are not here: they belong to the feeder's cost g (DESIGN.md), which reaches a
device only through the ADMM dual. A component's own cost is what the device alone cares about
(battery wear, comfort, utility of a curtailable load).

Parameters come validated from lab.scenario (profiles already resolved to per-slot series).
Cheap infeasibility is caught analytically there; `check_feasible` solves the remaining cases
(thermal comfort bands under the outdoor temperature) and raises `InfeasibleDevice` naming the
device and component.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from lab.scenario import ComponentSpec, DeviceSpec, Horizon, window_mask


class InfeasibleDevice(ValueError):
    def __init__(self, device: str, component: str | None, reason: str) -> None:
        self.device, self.component, self.reason = device, component, reason
        where = f"device {device}" + (f", component {component}" if component else "")
        super().__init__(f"{where}: infeasible: {reason}")


class Component:
    """Base: `power` (T,), `cost` (scalar), `constraints` (list)."""

    def __init__(self, spec: ComponentSpec, horizon: Horizon) -> None:
        self.id = spec.id
        self.spec = spec
        self.p = spec.params
        self.T = horizon.slots
        self.dt = horizon.delta_h
        self.power: cp.Expression = cp.Constant(np.zeros(self.T))
        self.cost: cp.Expression = cp.Constant(0.0)
        self.constraints: list[cp.Constraint] = []


class FixedLoad(Component):
    """Inflexible consumption: p_t = load_t (kW). No cost of its own."""

    def __init__(self, spec: ComponentSpec, horizon: Horizon) -> None:
        super().__init__(spec, horizon)
        self.power = cp.Constant(spec.series("load_kw"))


class PV(Component):
    """Photovoltaic generation G_t = peak_kw * shape_t (kW available).
    Not curtailable: p_t = -G_t.  Curtailable: -G_t <= p_t <= 0 (spilling is free; the lost
    export revenue is the feeder's concern)."""

    def __init__(self, spec: ComponentSpec, horizon: Horizon) -> None:
        super().__init__(spec, horizon)
        gen = spec.series("pv_kw")
        if self.p["curtailable"]:
            self.power = cp.Variable(self.T, name=f"{spec.id}_p")
            self.constraints = [self.power >= -gen, self.power <= 0]
        else:
            self.power = cp.Constant(-gen)


class Battery(Component):
    """Stationary battery. Charge c_t >= 0, discharge d_t >= 0 (kW), p_t = c_t - d_t.
    Energy e_0 = soc_init*Q, e_{t+1} = e_t + Δ(η_c c_t - d_t/η_d),
    soc_min*Q <= e_t <= soc_max*Q, e_T >= soc_final_min*Q, c_t <= max_charge, d_t <= max_discharge.
    Cost: wear_per_kwh * Δ * Σ_t (c_t + d_t) (throughput-proportional degradation) plus
    stress_per_kw2h * Δ * Σ_t (c_t² + d_t²) (degradation and I²R losses grow with the C-rate,
    so a battery prefers moderate power; this also makes its response to prices unique). Splitting
    c and d is the usual convex relaxation; with positive wear and η < 1 simultaneous charge and
    discharge only wastes energy, so an optimum does it only when energy must be dumped."""

    def __init__(self, spec: ComponentSpec, horizon: Horizon) -> None:
        super().__init__(spec, horizon)
        p, T, dt = self.p, self.T, self.dt
        q = p["capacity_kwh"]
        self.charge = cp.Variable(T, nonneg=True, name=f"{spec.id}_c")
        self.discharge = cp.Variable(T, nonneg=True, name=f"{spec.id}_d")
        self.energy = cp.Variable(T + 1, name=f"{spec.id}_e")
        self.power = self.charge - self.discharge
        self.cost = p["wear_per_kwh"] * dt * cp.sum(self.charge + self.discharge) + p[
            "stress_per_kw2h"] * dt * (cp.sum_squares(self.charge) + cp.sum_squares(self.discharge))
        self.constraints = [
            self.energy[0] == p["soc_init"] * q,
            self.energy[1:] == self.energy[:-1]
            + dt * (p["eta_charge"] * self.charge - self.discharge / p["eta_discharge"]),
            self.energy[1:] >= p["soc_min"] * q,
            self.energy[1:] <= p["soc_max"] * q,
            self.energy[T] >= p["soc_final_min"] * q,
            self.charge <= p["max_charge_kw"],
            self.discharge <= p["max_discharge_kw"],
        ]


class EV(Component):
    """Electric vehicle charger. Plugged in on the window [arrive_slot, depart_slot), which wraps
    past midnight when arrive > depart (the day is read cyclically: the car that arrives this
    evening leaves tomorrow morning, and the morning slots stand for tomorrow's). 0 <= p_t <=
    max_rate * plugged_t, and the energy stored by departure η Δ Σ_t p_t >= energy_kwh.
    Cost: loss_per_kw2h * Δ * Σ_t p_t² (charger and battery I²R losses grow with the current;
    the charging price itself is the feeder's)."""

    def __init__(self, spec: ComponentSpec, horizon: Horizon) -> None:
        super().__init__(spec, horizon)
        p = self.p
        self.mask = window_mask(p["arrive_slot"], p["depart_slot"], self.T)
        self.power = cp.Variable(self.T, nonneg=True, name=f"{spec.id}_p")
        self.constraints = [
            self.power <= p["max_rate_kw"] * self.mask,
            p["eta"] * self.dt * cp.sum(self.power) >= p["energy_kwh"],
        ]
        self.cost = p["loss_per_kw2h"] * self.dt * cp.sum_squares(self.power)


class Thermal(Component):
    """Heat pump / air conditioner (kind heat_pump) or water heater, first-order RC model.
    Electric power 0 <= p_t <= max_kw moves cop*p_t kW of heat (into the zone in mode heat, out
    of it in mode cool); draw_t kW of heat is the load it must cover (hot water taken, or
    internal gains when cooling). With σ = +1 (heat) or -1 (cool) and a = exp(-Δ/(R C)), the
    exact discretisation of C dθ/dt = (θ_out - θ)/R + σ(cop p - draw) is
        θ_{t+1} = a θ_t + (1 - a)(θ_out,t + σ R (cop p_t - draw_t)),  θ_0 = t_init_c,
    and comfort requires t_min_c <= θ_{t+1} <= t_max_c. Cost: loss_per_kw2h * Δ * Σ_t p_t²
    (a compressor or element is least efficient at full power: COP falls with load), plus an
    optional discomfort cost comfort_per_c2h * Δ * Σ_t (θ_{t+1} - t_set_c)² ($ per degC² h)."""

    def __init__(self, spec: ComponentSpec, horizon: Horizon) -> None:
        super().__init__(spec, horizon)
        p, T, dt = self.p, self.T, self.dt
        sigma = 1.0 if p["mode"] == "heat" else -1.0
        a = float(np.exp(-dt / (p["r_c_per_kw"] * p["c_kwh_per_c"])))
        t_out = spec.series("t_out_c")
        draw = spec.series("draw_kw")
        self.power = cp.Variable(T, nonneg=True, name=f"{spec.id}_p")
        self.temp = cp.Variable(T + 1, name=f"{spec.id}_theta")
        drive = t_out + sigma * p["r_c_per_kw"] * (p["cop"] * self.power - draw)
        self.constraints = [
            self.power <= p["max_kw"],
            self.temp[0] == p["t_init_c"],
            self.temp[1:] == a * self.temp[:-1] + (1 - a) * drive,
            self.temp[1:] >= p["t_min_c"],
            self.temp[1:] <= p["t_max_c"],
        ]
        self.cost = p["loss_per_kw2h"] * dt * cp.sum_squares(self.power)
        if p["comfort_per_c2h"] > 0:
            self.cost = self.cost + p["comfort_per_c2h"] * dt * cp.sum_squares(
                self.temp[1:] - p["t_set_c"])


class Deferrable(Component):
    """Deferrable appliance (dishwasher, washing machine): 0 <= p_t <= max_kw inside the window
    [first, end) (0 outside), and exactly energy_kwh delivered: Δ Σ_t p_t = energy_kwh.
    A continuous-power relaxation of the appliance's cycle. No cost of its own."""

    def __init__(self, spec: ComponentSpec, horizon: Horizon) -> None:
        super().__init__(spec, horizon)
        _energy_in_window(self, self.p["max_kw"], self.p["energy_kwh"])


class Curtailable(Component):
    """Curtailable load with demand D_t = peak_kw * shape_t: served 0 <= p_t <= D_t. Its utility
    is concave in the served power, U_t(p) = value Δ (p - p²/(2 D_t)): the first kW is worth
    value_per_kwh, the last one nothing, so the load is shed gradually as the price rises
    (cost = -Σ_t U_t). Slots with D_t = 0 have p_t = 0."""

    def __init__(self, spec: ComponentSpec, horizon: Horizon) -> None:
        super().__init__(spec, horizon)
        demand = spec.series("demand_kw")
        on = demand > 1e-9
        self.power = cp.Variable(self.T, nonneg=True, name=f"{spec.id}_p")
        self.constraints = [self.power <= np.where(on, demand, 0.0)]
        value = self.p["value_per_kwh"]
        if value > 0 and on.any():
            inv = np.where(on, 1.0 / np.where(on, demand, 1.0), 0.0)
            # sum_t inv_t p_t^2 written as a sum of squares of sqrt(inv) * p (DCP, DPP-free)
            self.cost = -value * self.dt * (
                cp.sum(self.power) - 0.5 * cp.sum_squares(cp.multiply(np.sqrt(inv), self.power))
            )


class Switched(Component):
    """Switched load (smart bulb, plug) of rated power P that must be on for on_hours inside
    the window [first, end). The scheduled quantity is its convex relaxation: 0 <= p_t <= P on
    the window (0 outside) and Δ Σ_t p_t = P * on_hours. The on/off plan is derived later from
    p by one deterministic rule (mqtt_bridge). No cost of its own."""

    def __init__(self, spec: ComponentSpec, horizon: Horizon) -> None:
        super().__init__(spec, horizon)
        rated = self.p["rated_kw"]
        _energy_in_window(self, rated, rated * self.p["on_hours"])


def _energy_in_window(comp: Component, max_kw: float, energy_kwh: float) -> None:
    """0 <= p_t <= max_kw inside the component's window (0 outside), Δ Σ_t p_t = energy_kwh."""
    comp.mask = window_mask(*comp.p["window"], comp.T)
    comp.power = cp.Variable(comp.T, nonneg=True, name=f"{comp.spec.id}_p")
    comp.constraints = [comp.power <= max_kw * comp.mask,
                        comp.dt * cp.sum(comp.power) == energy_kwh]


MODELS: dict[str, type[Component]] = {
    "fixed_load": FixedLoad, "pv": PV, "battery": Battery, "ev": EV, "thermal": Thermal,
    "deferrable": Deferrable, "curtailable": Curtailable, "switched": Switched,
}


class Home:
    """A device (ADMM agent): components summed behind one meter, x = Σ_c p_c, f = Σ_c cost_c."""

    def __init__(self, spec: DeviceSpec) -> None:
        self.id = spec.id
        self.spec = spec
        self.components = [MODELS[c.type](c, spec.horizon) for c in spec.components]
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


def check_feasible(device_spec: DeviceSpec, solver: str = "CLARABEL") -> None:
    """Raise InfeasibleDevice (naming device and component) if a component's constraint set is
    empty. Components are independent behind the meter (x is their free sum), so the device is
    feasible iff each is. Fixed loads, PV, batteries, EVs, deferrable, curtailable and switched
    loads are settled by the analytic checks of lab.scenario; thermal bands are solved for."""
    for comp in device_spec.components:
        if comp.type != "thermal":
            continue
        m = Thermal(comp, device_spec.horizon)
        prob = cp.Problem(cp.Minimize(0), m.constraints)
        try:
            prob.solve(solver=solver)
        except cp.SolverError as e:
            raise InfeasibleDevice(device_spec.id, comp.id, f"solver failed: {e}") from e
        if prob.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
            p = comp.params
            raise InfeasibleDevice(
                device_spec.id, comp.id,
                f"no power schedule within 0..{p['max_kw']} kW keeps the temperature in "
                f"[{p['t_min_c']}, {p['t_max_c']}] degC ({p['kind']}, mode {p['mode']}); "
                "raise max_kw or widen the band")
