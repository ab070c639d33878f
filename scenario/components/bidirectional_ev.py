"""A bidirectional electric vehicle: vehicle-to-home and vehicle-to-grid."""

from __future__ import annotations

from typing import Literal

import cvxpy as cp
import numpy as np

from scenario.components.base import Model
from scenario.components.ev import PluggedVehicle
from scenario.errors import fail
from scenario.fields import param
from scenario.horizon import Horizon, window_order


class BidirectionalEV(PluggedVehicle):
    """A bidirectional EV: on the plug-in window of `PluggedVehicle` it may charge c_t >= 0
    and discharge d_t >= 0 (kW) into the home or the grid, p_t = c_t - d_t, 0 while away.
    Along the plugged slots s_0, s_1, ... in time order the stored energy is
        e_0 = soc_arrive Q,  e_{k+1} = e_k + Δ(η_c c_{s_k} - d_{s_k}/η_d),
    soc_min Q <= e_k <= soc_max Q (soc_min is the reserve the driver keeps), and at departure
    e_end >= soc_depart Q. Cost: wear_per_kwh Δ Σ_t (c_t + d_t), battery degradation per kWh
    of throughput (what makes V2G pay only when the price spread beats it), plus
    loss_per_kw2h Δ Σ_t (c_t² + d_t²) (charger and I²R losses)."""

    type: Literal["bidirectional_ev"] = "bidirectional_ev"
    max_charge_kw: float = param(doc="charging power limit", unit="kW", gt=0)
    max_discharge_kw: float = param(doc="discharging power limit", unit="kW", gt=0)
    soc_arrive: float = param(0.4, doc="state of charge on arrival", ge=0, le=1)
    soc_depart: float = param(0.8, doc="lowest state of charge at departure", ge=0, le=1)
    soc_min: float = param(0.2, doc="reserve never discharged below", ge=0, le=1)
    soc_max: float = param(0.95, doc="highest state of charge", ge=0, le=1)
    eta_charge: float = param(0.92, doc="charging efficiency η_c", gt=0, le=1)
    eta_discharge: float = param(0.92, doc="discharging efficiency η_d", gt=0, le=1)
    wear_per_kwh: float = param(0.05, doc="degradation cost of throughput", unit="$/kWh", ge=0)
    loss_per_kw2h: float = param(0.001, doc="quadratic charger loss", unit="$/kW²h", ge=0)

    def check(self, h: Horizon) -> None:
        super().check(h)
        if not self.soc_min <= self.soc_max:
            fail(f"soc_min <= soc_max ({self.soc_max})", self.soc_min, at=".soc_min")
        if not self.soc_min <= self.soc_arrive <= self.soc_max:
            fail(f"a value within [soc_min, soc_max] = [{self.soc_min}, {self.soc_max}]",
                 self.soc_arrive, at=".soc_arrive")
        if self.soc_depart > self.soc_max:
            fail(f"a value <= soc_max ({self.soc_max})", self.soc_depart, at=".soc_depart")
        hours = self.plugged_hours(h)
        reach = self.soc_arrive + self.eta_charge * self.max_charge_kw * hours / (
            self.capacity_kwh)
        if reach < self.soc_depart - 1e-9:
            fail(f"a target reachable from soc_arrive {self.soc_arrive} at max_charge_kw in "
                 f"{hours:g} h plugged in (at most {reach:.3f})", self.soc_depart,
                 at=".soc_depart")

    def slot_bounds(self, h: Horizon) -> tuple[np.ndarray, np.ndarray]:
        plugged = self.plugged(h)
        return -self.max_discharge_kw * plugged, self.max_charge_kw * plugged

    def build(self, h: Horizon) -> Model:
        t, dt, q = h.slots, h.delta_h, self.capacity_kwh
        plugged = self.plugged(h)
        order = window_order(self.arrive_slot, self.depart_slot, t)
        c = cp.Variable(t, nonneg=True, name=f"{self.id}_c")
        d = cp.Variable(t, nonneg=True, name=f"{self.id}_d")
        e = cp.Variable(len(order) + 1, name=f"{self.id}_e")
        cons = [
            c <= self.max_charge_kw * plugged,
            d <= self.max_discharge_kw * plugged,
            e[0] == self.soc_arrive * q,
            e[1:] == e[:-1] + dt * (self.eta_charge * c[order] - d[order] / self.eta_discharge),
            e[1:] >= self.soc_min * q,
            e[1:] <= self.soc_max * q,
            e[-1] >= self.soc_depart * q,
        ]
        cost = self.wear_per_kwh * dt * cp.sum(c + d) + self.loss_per_kw2h * dt * (
            cp.sum_squares(c) + cp.sum_squares(d))
        return Model(self.id, c - d, cost, cons, charge=c, discharge=d, energy=e,
                     order=order)
