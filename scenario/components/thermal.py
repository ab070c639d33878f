"""Constant-COP thermal loads: an air-conditioner/heat pump zone or a water heater."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import cvxpy as cp
import numpy as np

from scenario import profiles
from scenario.components.base import Component, Model
from scenario.errors import fail
from scenario.fields import Profile, number, param
from scenario.horizon import Horizon

OutdoorTemperature = Profile(
    "temperature", lambda name, m, h: h.series(profiles.outdoor_temperature(name)))
HotWaterDraw = Profile(
    "draw", lambda name, m, h: h.series(profiles.hot_water(
        number(m.get("daily_kwh"), ".daily_kwh", ge=0))), keys=("profile", "daily_kwh"), ge=0)


class ThermalZone(Component):
    """What every RC-modelled thermal load shares (not a type of its own): a zone of thermal
    resistance R to the outside and capacity C, electric power 0 <= p_t <= max_kw, and
    a = exp(-Δ/(R C)); the exact discretisation of C dθ/dt = (θ_out - θ)/R + q, with q_t the
    net heat into the zone (kW, `heat_kw`), is
        θ_{t+1} = a θ_t + (1 - a)(θ_out,t + R q_t),  θ_0 = t_init_c,
    with comfort t_min_c <= θ_{t+1} <= t_max_c. Cost: loss_per_kw2h Δ Σ_t p_t² (part-load
    losses) plus comfort_per_c2h Δ Σ_t (θ_{t+1} - t_set_c)²."""

    solve_to_check = True
    max_kw: float = param(doc="electric power limit", unit="kW", gt=0)
    r_c_per_kw: float = param(doc="thermal resistance R to the outside", unit="°C/kW", gt=0)
    c_kwh_per_c: float = param(doc="thermal capacity C", unit="kWh/°C", gt=0)
    t_init_c: float = param(doc="temperature at the start", unit="°C")
    t_min_c: float = param(doc="comfort band floor", unit="°C")
    t_max_c: float = param(doc="comfort band ceiling", unit="°C")
    t_out_c: OutdoorTemperature = param(doc="outdoor (ambient) temperature: a number, a list "
                                        "per slot or {profile: summer|winter|mild}", unit="°C")
    comfort_per_c2h: float = param(0.0, doc="discomfort cost", unit="$/°C²h", ge=0)
    t_set_c: float | None = param(None, doc="preferred temperature (default: mid-band)",
                                  unit="°C")
    loss_per_kw2h: float = param(0.005, doc="quadratic part-load loss", unit="$/kW²h", ge=0)

    def heat_kw(self, p: cp.Variable, h: Horizon) -> cp.Expression:
        """q_t: the net heat the electric power p_t puts into the zone (kW)."""
        raise NotImplementedError

    def derive(self, h: Horizon) -> Mapping[str, Any]:
        return {"t_set_c": self.t_set_c if self.t_set_c is not None else
                0.5 * (self.t_min_c + self.t_max_c)}

    def check(self, h: Horizon) -> None:
        if not self.t_min_c < self.t_max_c:
            fail(f"t_min_c < t_max_c ({self.t_max_c})", self.t_min_c, at=".t_min_c")
        if not self.t_min_c <= self.t_init_c <= self.t_max_c:
            fail(f"a temperature within the comfort band [{self.t_min_c}, {self.t_max_c}]",
                 self.t_init_c, at=".t_init_c")

    def slot_bounds(self, h: Horizon) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(h.slots), np.full(h.slots, self.max_kw)

    def build(self, h: Horizon) -> Model:
        t, dt = h.slots, h.delta_h
        a = float(np.exp(-dt / (self.r_c_per_kw * self.c_kwh_per_c)))
        p = cp.Variable(t, nonneg=True, name=f"{self.id}_p")
        temp = cp.Variable(t + 1, name=f"{self.id}_theta")
        drive = np.array(self.t_out_c) + self.r_c_per_kw * self.heat_kw(p, h)
        cons = [
            p <= self.max_kw,
            temp[0] == self.t_init_c,
            temp[1:] == a * temp[:-1] + (1 - a) * drive,
            temp[1:] >= self.t_min_c,
            temp[1:] <= self.t_max_c,
        ]
        cost = self.loss_per_kw2h * dt * cp.sum_squares(p)
        if self.comfort_per_c2h > 0:
            cost = cost + self.comfort_per_c2h * dt * cp.sum_squares(
                temp[1:] - self._derived["t_set_c"])
        return Model(self.id, p, cost, cons, temp=temp)

    def infeasible_hint(self) -> str:
        return (f"no power schedule within 0..{self.max_kw} kW keeps the temperature in "
                f"[{self.t_min_c}, {self.t_max_c}] degC; raise max_kw or widen the band")


class Thermal(ThermalZone):
    """Heat pump / air conditioner (kind heat_pump) or water heater with a constant COP, on
    the RC zone of `ThermalZone`. Electric power p_t moves cop*p_t kW of heat into the zone
    (mode heat) or out of it (mode cool); draw_t kW of heat is the load it must cover (hot
    water taken, or internal gains when cooling). With σ = +1 (heat) or -1 (cool) the net heat
    is q_t = σ (cop p_t - draw_t), so
        θ_{t+1} = a θ_t + (1 - a)(θ_out,t + σ R (cop p_t - draw_t)),  θ_0 = t_init_c,
    a = exp(-Δ/(R C)), and comfort requires t_min_c <= θ_{t+1} <= t_max_c. Cost:
    loss_per_kw2h * Δ * Σ_t p_t² (a compressor or element is least efficient at full power:
    COP falls with load), plus an optional discomfort cost
    comfort_per_c2h * Δ * Σ_t (θ_{t+1} - t_set_c)² ($ per degC² h)."""

    type: Literal["thermal"] = "thermal"
    kind: Literal["heat_pump", "water_heater"] = param(doc="what it heats or cools")
    mode: Literal["heat", "cool"] = param("heat", doc="σ = +1 (heat) or -1 (cool)")
    cop: float | None = param(None, doc="heat moved per kW of electricity (default 3 for "
                              "heat_pump, 1 for water_heater)", gt=0)
    draw_kw: HotWaterDraw = param(0.0, doc="heat load: a number, a list per slot or "
                                  "{profile: hot_water, daily_kwh}", unit="kW",
                                  validate_default=True)

    def derive(self, h: Horizon) -> Mapping[str, Any]:
        return {**super().derive(h), "cop": self.cop if self.cop is not None else
                (3.0 if self.kind == "heat_pump" else 1.0)}

    def heat_kw(self, p: cp.Variable, h: Horizon) -> cp.Expression:
        sigma = 1.0 if self.mode == "heat" else -1.0
        return sigma * (self._derived["cop"] * p - np.array(self.draw_kw))

    def infeasible_hint(self) -> str:
        return (f"no power schedule within 0..{self.max_kw} kW keeps the temperature in "
                f"[{self.t_min_c}, {self.t_max_c}] degC ({self.kind}, mode {self.mode}); "
                "raise max_kw or widen the band")
