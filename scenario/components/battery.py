"""Stationary battery."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import cvxpy as cp
import numpy as np

from scenario.components.base import Component, Model
from scenario.errors import fail
from scenario.fields import param
from scenario.horizon import Horizon


class Battery(Component):
    """Stationary battery. Charge c_t >= 0, discharge d_t >= 0 (kW), p_t = c_t - d_t.
    Energy e_0 = soc_init*Q, e_{t+1} = e_t + Δ(η_c c_t - d_t/η_d),
    soc_min*Q <= e_t <= soc_max*Q, e_T >= soc_final_min*Q, c_t <= max_charge, d_t <= max_discharge.
    Cost: wear_per_kwh * Δ * Σ_t (c_t + d_t) (throughput-proportional degradation) plus
    stress_per_kw2h * Δ * Σ_t (c_t² + d_t²) (degradation and I²R losses grow with the C-rate,
    so a battery prefers moderate power; this also makes its response to prices unique).
    Splitting c and d is the usual convex relaxation; with positive wear and η < 1 simultaneous
    charge and discharge only wastes energy, so an optimum does it only when energy must be
    dumped."""

    type: Literal["battery"] = "battery"
    capacity_kwh: float = param(doc="usable capacity Q", unit="kWh", gt=0)
    max_charge_kw: float = param(doc="charging power limit", unit="kW", gt=0)
    max_discharge_kw: float = param(doc="discharging power limit", unit="kW", gt=0)
    eta_charge: float = param(0.95, doc="charging efficiency η_c", gt=0, le=1)
    eta_discharge: float = param(0.95, doc="discharging efficiency η_d", gt=0, le=1)
    soc_init: float = param(0.5, doc="state of charge at the start", ge=0, le=1)
    soc_min: float = param(0.1, doc="lowest state of charge", ge=0, le=1)
    soc_max: float = param(0.95, doc="highest state of charge", ge=0, le=1)
    soc_final_min: float | None = param(None, doc="lowest state of charge at the end "
                                        "(default: soc_init)", ge=0, le=1)
    wear_per_kwh: float = param(0.02, doc="throughput (degradation) cost", unit="$/kWh", ge=0)
    stress_per_kw2h: float = param(0.005, doc="quadratic cost of high power",
                                   unit="$/kW²h", ge=0)

    def derive(self, h: Horizon) -> Mapping[str, Any]:
        return {"soc_final_min": self.soc_init if self.soc_final_min is None
                else self.soc_final_min}

    def check(self, h: Horizon) -> None:
        final = self._derived["soc_final_min"]
        if not self.soc_min <= self.soc_max:
            fail(f"soc_min <= soc_max ({self.soc_max})", self.soc_min, at=".soc_min")
        if not self.soc_min <= self.soc_init <= self.soc_max:
            fail(f"a value within [soc_min, soc_max] = [{self.soc_min}, {self.soc_max}]",
                 self.soc_init, at=".soc_init")
        if final > self.soc_max:
            fail(f"a value <= soc_max ({self.soc_max})", final, at=".soc_final_min")
        gain = self.eta_charge * self.max_charge_kw * h.delta_h * h.slots / self.capacity_kwh
        if self.soc_init + gain < final - 1e-9:
            fail(f"a target reachable from soc_init {self.soc_init} at max_charge_kw within "
                 f"the horizon (at most {self.soc_init + gain:.3f})", final,
                 at=".soc_final_min")

    def slot_bounds(self, h: Horizon) -> tuple[np.ndarray, np.ndarray]:
        return np.full(h.slots, -self.max_discharge_kw), np.full(h.slots, self.max_charge_kw)

    def build(self, h: Horizon) -> Model:
        t, dt, q = h.slots, h.delta_h, self.capacity_kwh
        c = cp.Variable(t, nonneg=True, name=f"{self.id}_c")
        d = cp.Variable(t, nonneg=True, name=f"{self.id}_d")
        e = cp.Variable(t + 1, name=f"{self.id}_e")
        cost = self.wear_per_kwh * dt * cp.sum(c + d) + self.stress_per_kw2h * dt * (
            cp.sum_squares(c) + cp.sum_squares(d))
        cons = [
            e[0] == self.soc_init * q,
            e[1:] == e[:-1] + dt * (self.eta_charge * c - d / self.eta_discharge),
            e[1:] >= self.soc_min * q,
            e[1:] <= self.soc_max * q,
            e[t] >= self._derived["soc_final_min"] * q,
            c <= self.max_charge_kw,
            d <= self.max_discharge_kw,
        ]
        return Model(self.id, c - d, cost, cons, charge=c, discharge=d, energy=e)
