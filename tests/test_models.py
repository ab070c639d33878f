"""Device models against hand-derivable cases, the local step, and infeasibility errors."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

from device_node.local_step import LocalProblem, LocalSolveError
from scenario import ScenarioError, load, parse
from scenario.home import InfeasibleDevice, build_home, check_feasible


def mini(*components: dict, slots: int = 24, minutes: float = 60, check: bool = True):
    """A one-device scenario with the given components (hourly slots from midnight)."""
    doc = {"name": "mini", "horizon": {"slots": slots, "slot_minutes": minutes},
           "feeder": {"price": {"profile": "flat", "value": 0.2}, "capacity_kw": 100,
                      "export_limit_kw": 100, "gamma": 0.0},
           "devices": [{"id": "dev", "components": list(components)}]}
    return parse(doc, "mini.yaml", check_feasible=check).devices[0]


def solve_with_price(device, price: np.ndarray):
    """min f(x) + sum_t price_t * Δ * x_t: the device's reaction to a price."""
    home = build_home(device)
    dt = device.horizon.delta_h
    prob = cp.Problem(cp.Minimize(home.cost + dt * price @ home.power), home.constraints)
    prob.solve(solver="CLARABEL")
    assert prob.status == cp.OPTIMAL
    return home, np.asarray(home.power.value).reshape(-1), prob.value


def test_battery_charges_low_discharges_high_hand_derived():
    # 8 h: price 0.1 for 4 h, then 0.5 for 4 h; no wear, so the LP optimum is exact:
    # fill from 5 to soc_max 9 kWh (4/0.95 kWh drawn), then empty to the final 5 kWh
    # (4*0.95 kWh delivered). Cost = 0.1*4/0.95 - 0.5*4*0.95.
    dev = mini({"id": "b", "type": "battery", "capacity_kwh": 10, "max_charge_kw": 2,
                "max_discharge_kw": 2, "eta_charge": 0.95, "eta_discharge": 0.95,
                "soc_init": 0.5, "soc_min": 0.1, "soc_max": 0.9, "soc_final_min": 0.5,
                "wear_per_kwh": 0.0, "stress_per_kw2h": 0.0}, slots=8)
    price = np.array([0.1] * 4 + [0.5] * 4)
    home, x, value = solve_with_price(dev, price)
    bat = home.components[0]
    assert np.all(x[:4] >= -1e-6) and np.all(x[4:] <= 1e-6)  # charge low, discharge high
    assert np.all(np.abs(x) <= 2 + 1e-6)
    assert bat.charge.value.sum() == pytest.approx(4 / 0.95, abs=1e-5)
    assert bat.discharge.value.sum() == pytest.approx(4 * 0.95, abs=1e-5)
    assert value == pytest.approx(0.1 * 4 / 0.95 - 0.5 * 4 * 0.95, abs=1e-6)
    e = bat.energy.value
    assert e.max() <= 9 + 1e-6 and e.min() >= 1 - 1e-6 and e[-1] >= 5 - 1e-6


def test_battery_stress_spreads_power_evenly():
    # with C-rate stress the same arbitrage is spread evenly over equal-price slots
    dev = mini({"id": "b", "type": "battery", "capacity_kwh": 10, "max_charge_kw": 5,
                "max_discharge_kw": 5, "soc_init": 0.5, "soc_min": 0.1, "soc_max": 0.9,
                "soc_final_min": 0.5}, slots=8)
    _, x, _ = solve_with_price(dev, np.array([0.1] * 4 + [0.5] * 4))
    assert np.ptp(x[:4]) < 1e-4 and np.ptp(x[4:]) < 1e-4 and x[0] > 0 > x[-1]


def test_ev_meets_energy_by_departure_in_wrapping_window():
    # plugged 20:00 -> 06:00 (wraps); cheapest hours 02:00-04:00
    dev = mini({"id": "ev", "type": "ev", "capacity_kwh": 60, "max_rate_kw": 7.4,
                "arrive_slot": 20, "depart_slot": 6, "energy_kwh": 10, "eta": 0.9})
    price = np.full(24, 0.3)
    price[2:4] = 0.1
    _, x, _ = solve_with_price(dev, price)
    plugged = np.r_[np.ones(6), np.zeros(14), np.ones(4)].astype(bool)
    assert np.abs(x[~plugged]).max() < 1e-7  # nothing while away
    assert 0.9 * x.sum() == pytest.approx(10, abs=1e-5)  # exactly the need, no more
    assert x.max() <= 7.4 + 1e-6 and x.min() >= -1e-7
    # 11.1 kWh: 2 cheap hours at 7.4 kW = 14.8 kWh suffice, so nothing else is used
    assert x[2:4].sum() == pytest.approx(10 / 0.9, abs=1e-4)


def _simulate(p: dict, power: np.ndarray, dt: float) -> np.ndarray:
    """The thermal recurrence written out independently of the model."""
    a = np.exp(-dt / (p["r_c_per_kw"] * p["c_kwh_per_c"]))
    sigma = 1.0 if p["mode"] == "heat" else -1.0
    t_out, draw = np.array(p["t_out_c"]), np.array(p["draw_kw"])
    theta = [p["t_init_c"]]
    for t in range(len(power)):
        drive = t_out[t] + sigma * p["r_c_per_kw"] * (p["cop"] * power[t] - draw[t])
        theta.append(a * theta[-1] + (1 - a) * drive)
    return np.array(theta)


@pytest.mark.parametrize("spec", [
    {"id": "ac", "type": "thermal", "kind": "heat_pump", "mode": "cool", "max_kw": 3, "cop": 3,
     "r_c_per_kw": 3, "c_kwh_per_c": 5, "t_init_c": 23, "t_min_c": 21, "t_max_c": 24.5,
     "t_out_c": {"profile": "summer"}},
    {"id": "hp", "type": "thermal", "kind": "heat_pump", "mode": "heat", "max_kw": 3, "cop": 3,
     "r_c_per_kw": 5, "c_kwh_per_c": 4, "t_init_c": 20.5, "t_min_c": 19, "t_max_c": 22,
     "t_out_c": {"profile": "winter"}},
    {"id": "wh", "type": "thermal", "kind": "water_heater", "max_kw": 3, "r_c_per_kw": 500,
     "c_kwh_per_c": 0.23, "t_init_c": 55, "t_min_c": 45, "t_max_c": 65, "t_out_c": 20,
     "draw_kw": {"profile": "hot_water", "daily_kwh": 6}},
])
def test_thermal_stays_in_band(spec):
    dev = mini(spec, slots=96, minutes=15)
    price = np.where((np.arange(96) >= 68) & (np.arange(96) < 84), 0.35, 0.12)
    home, x, _ = solve_with_price(dev, price)
    comp = dev.components[0]
    theta = _simulate(comp.params, x, 0.25)
    assert np.allclose(theta, home.components[0].temp.value, atol=1e-5)
    assert theta[1:].min() >= spec["t_min_c"] - 1e-5
    assert theta[1:].max() <= spec["t_max_c"] + 1e-5
    assert x.min() >= -1e-7 and x.max() <= spec["max_kw"] + 1e-6
    assert x.sum() > 0.1  # it has to work to stay in band


def test_thermal_water_heater_preheats_before_peak():
    spec = {"id": "wh", "type": "thermal", "kind": "water_heater", "max_kw": 3,
            "r_c_per_kw": 500, "c_kwh_per_c": 0.23, "t_init_c": 55, "t_min_c": 45,
            "t_max_c": 65, "t_out_c": 20, "draw_kw": {"profile": "hot_water", "daily_kwh": 6}}
    dev = mini(spec, slots=96, minutes=15)
    peak = (np.arange(96) >= 68) & (np.arange(96) < 84)
    _, x, _ = solve_with_price(dev, np.where(peak, 0.35, 0.12))
    assert x[peak].sum() < 1e-3  # nothing bought at peak price


def test_deferrable_switched_pv_fixed():
    dev = mini(
        {"id": "base", "type": "fixed_load", "profile": "flat", "daily_kwh": 12},
        {"id": "pv", "type": "pv", "peak_kw": 4, "curtailable": True},
        {"id": "dw", "type": "deferrable", "energy_kwh": 1.5, "max_kw": 1.0, "window": [18, 23]},
        {"id": "bulb", "type": "switched", "rated_kw": 0.1, "on_hours": 2, "window": [22, 2]},
    )
    price = np.full(24, 0.3)
    price[20], price[21], price[0] = 0.1, 0.2, 0.05
    price[12:15] = -0.05  # negative price at noon: curtail PV
    home, x, _ = solve_with_price(dev, price)
    parts = {c.id: np.asarray(c.power.value).reshape(-1) for c in home.components}
    assert np.allclose(parts["base"], 0.5)
    assert parts["dw"][20] == pytest.approx(1.0, abs=1e-5)  # cheapest hour at full power
    assert parts["dw"][21] == pytest.approx(0.5, abs=1e-5)  # then the next cheapest
    assert parts["dw"].sum() == pytest.approx(1.5, abs=1e-6)
    assert parts["bulb"][0] == pytest.approx(0.1, abs=1e-6)  # wraps past midnight
    assert parts["bulb"].sum() == pytest.approx(0.2, abs=1e-6)
    assert np.abs(parts["pv"][12:15]).max() < 1e-6  # curtailed at the negative price
    assert parts["pv"][10] < -1.0  # produces otherwise
    assert np.allclose(sum(parts.values()), x)


def test_curtailable_utility_sheds_gradually():
    # U(p) = v (p - p^2 / (2 D)): price 0 -> serve all, price v/2 -> D/2, price >= v -> 0
    dev = mini({"id": "c", "type": "curtailable", "profile": [2.0] * 3, "peak_kw": 1.0,
                "value_per_kwh": 0.4}, slots=3)
    _, x, _ = solve_with_price(dev, np.array([0.0, 0.2, 0.5]))
    assert x == pytest.approx([2.0, 1.0, 0.0], abs=1e-3)  # zero slope at p = D: loose there


def test_infeasible_thermal_names_device_and_component():
    spec = {"id": "ac", "type": "thermal", "kind": "heat_pump", "mode": "cool", "max_kw": 0.01,
            "r_c_per_kw": 3, "c_kwh_per_c": 5, "t_init_c": 22, "t_min_c": 21, "t_max_c": 22.5,
            "t_out_c": 32}
    dev = mini(spec, check=False)
    with pytest.raises(InfeasibleDevice, match=r"device dev, component ac: infeasible"):
        check_feasible(dev)
    with pytest.raises(ScenarioError, match=r"mini\.yaml: devices\[0\]\.components\[0\]: .*ac"):
        mini(spec)
    # met during the rounds (a device given an unchecked spec): the device and the family
    base = {"id": "base", "type": "fixed_load", "profile": "flat", "daily_kwh": 5}
    local = LocalProblem(mini(base, spec, check=False))
    with pytest.raises(LocalSolveError, match=r"device dev: local step infeasible.*"
                       r"component ac: infeasible: thermal constraints: no power schedule"):
        local.solve(np.zeros(24), 0.1)


@pytest.mark.parametrize("spec,path,text", [
    ({"id": "b", "type": "battery", "capacity_kwh": 10, "max_charge_kw": 0.2,
      "max_discharge_kw": 1, "soc_init": 0.1, "soc_min": 0.1, "soc_max": 1.0,
      "soc_final_min": 0.9}, "soc_final_min", "reachable"),
    ({"id": "d", "type": "deferrable", "energy_kwh": 5, "max_kw": 1, "window": [0, 3]},
     "energy_kwh", r"at most max_kw \* window"),
    ({"id": "s", "type": "switched", "rated_kw": 0.1, "on_hours": 5, "window": [0, 3]},
     "on_hours", "at most the window's 3 h"),
    ({"id": "h", "type": "thermal", "kind": "heat_pump", "max_kw": 1, "r_c_per_kw": 2,
      "c_kwh_per_c": 3, "t_init_c": 25, "t_min_c": 19, "t_max_c": 22, "t_out_c": 5},
     "t_init_c", "comfort band"),
])
def test_infeasible_parameters_caught_analytically(spec, path, text):
    with pytest.raises(ScenarioError, match=rf"devices\[0\]\.components\[0\]\.{path}: .*{text}"):
        mini(spec)


def test_local_step_is_dpp_and_matches_a_direct_solve():
    dev = load("homes3").device("home01")
    lp = LocalProblem(dev)
    assert lp.problem.is_dcp(dpp=True)
    rng = np.random.default_rng(1)
    for rho in (0.03, 1.0):
        v = rng.normal(0, 2, 96)
        x = lp.solve(v, rho)
        # the same prox step written directly (non-DPP form) as the reference
        home = build_home(dev)
        ref = cp.Problem(cp.Minimize(home.cost + rho / 2 * cp.sum_squares(home.power - v)),
                         home.constraints)
        ref.solve(solver="CLARABEL")
        assert np.abs(x - home.power.value).max() < 1e-4
        assert lp.private_cost() == pytest.approx(float(home.cost.value), abs=1e-5)
        parts = lp.component_power()
        assert np.allclose(sum(parts.values()), x, atol=1e-8)
        lo, hi = dev.power_bounds()
        assert x.min() >= lo and x.max() <= hi
    # f_i at another feasible x: the cheapest realisation; infeasible x: inf
    assert lp.private_cost(x + 0.0) == pytest.approx(lp.private_cost(), abs=1e-5)
    assert lp.private_cost(np.full(96, 1e3)) == float("inf")


@pytest.mark.parametrize("solver", ["OSQP", "SCS"])
def test_other_solvers_agree_with_clarabel(solver):
    dev = load("homes10").device("home05")
    v = np.random.default_rng(2).normal(1, 2, 96)
    ref = LocalProblem(dev, solver="CLARABEL").solve(v, 0.1)
    x = LocalProblem(dev, solver=solver).solve(v, 0.1)
    assert np.abs(x - ref).max() < 2e-2


def test_private_cost_accepts_x_rounded_to_nano_kw():
    # home08 is a fixed load plus a switched pump: its x leaves no slack to absorb rounding
    lp = LocalProblem(load("homes10").device("home08"))
    x = lp.solve(np.zeros(96), 0.1)
    rounded = np.round(x * 1e9) / 1e9 + 3e-10
    assert lp.private_cost(rounded) == pytest.approx(0.0, abs=1e-9)
    parts = lp.home.component_power()
    assert np.abs(parts["pump"] - lp.component_power()["pump"]).max() < 1e-5


# ---- the two winter types (scenario/components/space_heating.py, bidirectional_ev.py)


def _v2g(**over) -> dict:
    spec = {"id": "car", "type": "bidirectional_ev", "capacity_kwh": 10, "max_charge_kw": 2,
            "max_discharge_kw": 2, "arrive_slot": 2, "depart_slot": 10, "soc_arrive": 0.5,
            "soc_depart": 0.5, "soc_min": 0.2, "soc_max": 0.9, "eta_charge": 1.0,
            "eta_discharge": 1.0, "wear_per_kwh": 0.01, "loss_per_kw2h": 0.0}
    spec.update(over)
    return spec


def test_bidirectional_ev_cycles_when_the_spread_beats_wear_hand_derived():
    # plugged 02:00-10:00; 0.1 $/kWh for 4 h, then 0.5 for 4 h. Lossless: fill 5 -> 9 kWh
    # cheaply, give 4 kWh back at the high price and leave with the 5 kWh it came with.
    dev = mini(_v2g(), slots=12)
    price = np.array([0.3] * 2 + [0.1] * 4 + [0.5] * 4 + [0.3] * 2)
    home, x, value = solve_with_price(dev, price)
    car = home.components[0]
    assert np.abs(x[[0, 1, 10, 11]]).max() < 1e-7  # nothing while away
    assert car.charge.value[2:6].sum() == pytest.approx(4, abs=1e-5)
    assert car.discharge.value[6:10].sum() == pytest.approx(4, abs=1e-5)
    assert x[6:10].min() < -1  # vehicle-to-home/grid: power flows out
    assert car.energy.value.max() <= 9 + 1e-6 and car.energy.value[-1] >= 5 - 1e-6
    assert value == pytest.approx(0.1 * 4 - 0.5 * 4 + 0.01 * 8, abs=1e-6)


def test_bidirectional_ev_does_not_cycle_when_wear_exceeds_the_spread():
    # a kWh cycled earns 0.4 $ and wears 2 x 0.25 $: it stays idle
    dev = mini(_v2g(wear_per_kwh=0.25), slots=12)
    _, x, _ = solve_with_price(dev, np.array([0.3] * 2 + [0.1] * 4 + [0.5] * 4 + [0.3] * 2))
    assert np.abs(x).max() < 1e-6


def test_bidirectional_ev_energy_carries_across_midnight():
    # plugged 20:00 -> 06:00: arrives at 40 %, must leave at 80 %; cheapest hours 01:00-03:00
    dev = mini(_v2g(capacity_kwh=20, max_charge_kw=7, arrive_slot=20, depart_slot=6,
                    soc_arrive=0.4, soc_depart=0.8, eta_charge=0.9, eta_discharge=0.9))
    price = np.full(24, 0.3)
    price[1:3] = 0.1
    home, x, _ = solve_with_price(dev, price)
    car = home.components[0]
    assert list(car.order) == [20, 21, 22, 23, 0, 1, 2, 3, 4, 5]
    e = car.energy.value  # in plugged order: e[0] on arrival at 20:00, e[-1] at departure
    assert e[0] == pytest.approx(8) and e[-1] >= 16 - 1e-5
    assert np.allclose(np.diff(e), 0.9 * car.charge.value[car.order]
                       - car.discharge.value[car.order] / 0.9, atol=1e-6)
    charge = car.charge.value.copy()
    assert charge[1:3].sum() == pytest.approx(14, abs=1e-4)  # both cheap hours at 7 kW
    charge[1:3] = 0
    assert charge.max() < 1e-6  # and nothing else bought
    # the evening's 0.3 $/kWh beats 0.1 / 0.81 + wear: it sells before it refills
    assert car.discharge.value[[20, 21, 22, 23, 0]].sum() > 1
    assert np.abs(x[6:20]).max() < 1e-7


def test_bidirectional_ev_unreachable_departure_refused():
    with pytest.raises(ScenarioError, match=r"components\[0\]\.soc_depart: expected a target "
                       r"reachable"):
        mini(_v2g(soc_arrive=0.2, soc_depart=0.9, max_charge_kw=0.5), slots=12)


def _heat_pump(**over) -> dict:
    spec = {"id": "hp", "type": "space_heating", "max_kw": 3.0, "r_c_per_kw": 6.0,
            "c_kwh_per_c": 10.0, "t_init_c": 20.0, "t_min_c": 19.0, "t_max_c": 22.0,
            "t_out_c": {"profile": "winter"}, "gains_kw": 0.3}
    spec.update(over)
    return spec


def test_space_heating_cop_follows_the_outdoor_temperature():
    dev = mini(_heat_pump(t_out_c=[-10.0, -7.0, -2.5, 2.0, 4.5, 7.0, 12.0, 20.0] * 3))
    cop = dev.components[0].series("cop_t")[:8]
    # the default curve: 2.6 at -7, 3.4 at 2, 4.3 at 7, 5.0 at 12, flat beyond its ends
    assert np.allclose(cop, [2.6, 2.6, 3.0, 3.4, 3.85, 4.3, 5.0, 5.0])


def test_space_heating_stays_in_band_and_heats_when_the_cop_is_high():
    dev = mini(_heat_pump(), slots=96, minutes=15)
    home, x, _ = solve_with_price(dev, np.full(96, 0.2))  # a flat price: only the COP differs
    comp = dev.components[0]
    cop, t_out = comp.series("cop_t"), comp.series("t_out_c")
    a = np.exp(-0.25 / (6.0 * 10.0))
    theta = [20.0]
    for t in range(96):  # the recurrence written out independently of the model
        theta.append(a * theta[-1] + (1 - a) * (t_out[t] + 6.0 * (cop[t] * x[t] + 0.3)))
    theta = np.array(theta)
    assert np.allclose(theta, home.components[0].temp.value, atol=1e-5)
    assert theta[1:].min() >= 19 - 1e-5 and theta[1:].max() <= 22 + 1e-5
    assert x.sum() > 1
    # heat is bought when it is cheap in electricity: the power-weighted COP beats the mean
    assert (cop * x).sum() / x.sum() > cop.mean() + 0.1


def test_space_heating_too_small_named_with_its_device():
    with pytest.raises(ScenarioError, match=r"devices\[0\]\.components\[0\]: expected feasible"
                       r".*keeps the building"):
        mini(_heat_pump(max_kw=0.2), slots=96, minutes=15)


def test_space_heating_cop_curve_must_rise():
    with pytest.raises(ScenarioError, match=r"cop_curve\[1\]\[0\]: expected a temperature "
                       r"above"):
        mini(_heat_pump(cop_curve=[[5, 3.0], [0, 2.5]]))
