"""Deferrable appliances and switched loads: energy to deliver inside a window."""

from __future__ import annotations

from typing import Literal

import cvxpy as cp
import numpy as np

from scenario.components.base import Component, Model
from scenario.errors import fail
from scenario.fields import Window, param
from scenario.horizon import Horizon, window_mask


def energy_in_window(comp_id: str, h: Horizon, window: tuple[int, int], max_kw: float,
                     energy_kwh: float) -> Model:
    """0 <= p_t <= max_kw inside [first, end) (0 outside) and Δ Σ_t p_t = energy_kwh."""
    mask = window_mask(*window, h.slots)
    p = cp.Variable(h.slots, nonneg=True, name=f"{comp_id}_p")
    return Model(comp_id, p, 0.0, [p <= max_kw * mask, h.delta_h * cp.sum(p) == energy_kwh],
                 mask=mask)


def window_hours(window: tuple[int, int], h: Horizon) -> float:
    return float(window_mask(*window, h.slots).sum() * h.delta_h)


class Deferrable(Component):
    """Deferrable appliance (dishwasher, washing machine): 0 <= p_t <= max_kw inside the window
    [first, end) (0 outside; first > end wraps past midnight), and exactly energy_kwh delivered:
    Δ Σ_t p_t = energy_kwh. A continuous-power relaxation of the appliance's cycle. No cost of
    its own."""

    type: Literal["deferrable"] = "deferrable"
    energy_kwh: float = param(doc="energy of one cycle", unit="kWh", gt=0)
    max_kw: float = param(doc="power limit", unit="kW", gt=0)
    window: Window = param(doc="[first_slot, end_slot) it may run in")

    def check(self, h: Horizon) -> None:
        cap = self.max_kw * window_hours(self.window, h)
        if self.energy_kwh > cap + 1e-9:
            fail(f"at most max_kw * window = {cap:.3f} kWh", self.energy_kwh, at=".energy_kwh")

    def slot_bounds(self, h: Horizon) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(h.slots), self.max_kw * window_mask(*self.window, h.slots)

    def build(self, h: Horizon) -> Model:
        return energy_in_window(self.id, h, self.window, self.max_kw, self.energy_kwh)
