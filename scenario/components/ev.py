"""Electric vehicle charger (charging only)."""

from __future__ import annotations

from typing import Literal

import cvxpy as cp
import numpy as np

from scenario.components.base import Component, Model
from scenario.errors import fail
from scenario.fields import Slot, param
from scenario.horizon import Horizon, window_mask


class PluggedVehicle(Component):
    """What every vehicle type shares (not a type of its own): plugged in on the window
    [arrive_slot, depart_slot), which wraps past midnight when arrive > depart (the day is
    read cyclically: the car that arrives this evening leaves tomorrow morning, and the
    morning slots stand for tomorrow's); no power while away."""

    capacity_kwh: float = param(doc="battery capacity", unit="kWh", gt=0)
    arrive_slot: Slot = param(doc="first slot plugged in")
    depart_slot: Slot = param(doc="slot the car leaves (not plugged in)")

    def plugged(self, h: Horizon) -> np.ndarray:
        return window_mask(self.arrive_slot, self.depart_slot, h.slots)

    def plugged_hours(self, h: Horizon) -> float:
        return float(self.plugged(h).sum() * h.delta_h)

    def check(self, h: Horizon) -> None:
        if self.arrive_slot % h.slots == self.depart_slot % h.slots:  # [T, 0) is empty too
            fail("a departure slot different from arrive_slot", self.depart_slot,
                 at=".depart_slot")


class EV(PluggedVehicle):
    """Electric vehicle charger (charging only) on the plug-in window of `PluggedVehicle`:
    0 <= p_t <= max_rate * plugged_t, and the energy stored by departure
    η Δ Σ_t p_t >= energy_kwh. Cost: loss_per_kw2h * Δ * Σ_t p_t² (charger and battery I²R
    losses grow with the current; the charging price itself is the feeder's)."""

    type: Literal["ev"] = "ev"
    max_rate_kw: float = param(doc="charging power limit", unit="kW", gt=0)
    energy_kwh: float = param(doc="energy to store before departure", unit="kWh", ge=0)
    eta: float = param(0.92, doc="charging efficiency η", gt=0, le=1)
    loss_per_kw2h: float = param(0.001, doc="quadratic charging loss", unit="$/kW²h", ge=0)

    def check(self, h: Horizon) -> None:
        super().check(h)
        hours = self.plugged_hours(h)
        reach = self.eta * self.max_rate_kw * hours
        if self.energy_kwh > reach + 1e-9:
            fail(f"at most {reach:.3f} kWh (eta * max_rate_kw * {hours:g} h plugged in)",
                 self.energy_kwh, at=".energy_kwh")
        if self.energy_kwh > self.capacity_kwh:
            fail(f"at most capacity_kwh ({self.capacity_kwh})", self.energy_kwh,
                 at=".energy_kwh")

    def slot_bounds(self, h: Horizon) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(h.slots), self.max_rate_kw * self.plugged(h)

    def build(self, h: Horizon) -> Model:
        p = cp.Variable(h.slots, nonneg=True, name=f"{self.id}_p")
        cons = [p <= self.max_rate_kw * self.plugged(h),
                self.eta * h.delta_h * cp.sum(p) >= self.energy_kwh]
        return Model(self.id, p, self.loss_per_kw2h * h.delta_h * cp.sum_squares(p), cons,
                     mask=self.plugged(h))
