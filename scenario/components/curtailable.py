"""Curtailable loads with a utility for the power they are served."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import cvxpy as cp
import numpy as np

from scenario import profiles
from scenario.components.base import Component, Model
from scenario.fields import Profile, param
from scenario.horizon import Horizon


class Curtailable(Component):
    """Curtailable load with demand D_t = peak_kw * shape_t (the `evening` bump, or a list of
    T values per kW peak): served 0 <= p_t <= D_t. Its utility is concave in the served power,
    U_t(p) = value Δ (p - p²/(2 D_t)): the first kW is worth value_per_kwh, the last one
    nothing, so the load is shed gradually as the price rises (cost = -Σ_t U_t). Slots with
    D_t = 0 have p_t = 0."""

    type: Literal["curtailable"] = "curtailable"
    profile: Profile("curtailable", ge=0) = param("evening", doc="daily shape per kW peak")
    peak_kw: float = param(doc="largest demand", unit="kW", gt=0)
    value_per_kwh: float = param(doc="value of the first kWh served", unit="$/kWh", ge=0)

    def derive(self, h: Horizon) -> Mapping[str, Any]:
        shape = (np.array(self.profile) if isinstance(self.profile, tuple)
                 else h.resample(profiles.evening_shape))
        return {"demand_kw": tuple(float(x) for x in self.peak_kw * shape)}

    def slot_bounds(self, h: Horizon) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(h.slots), self.series("demand_kw")

    def build(self, h: Horizon) -> Model:
        demand = self.series("demand_kw")
        on = demand > 1e-9
        p = cp.Variable(h.slots, nonneg=True, name=f"{self.id}_p")
        cost: Any = 0.0
        if self.value_per_kwh > 0 and on.any():
            inv = np.where(on, 1.0 / np.where(on, demand, 1.0), 0.0)
            # sum_t inv_t p_t^2 as a sum of squares of sqrt(inv) * p (DCP, DPP-free)
            cost = -self.value_per_kwh * h.delta_h * (
                cp.sum(p) - 0.5 * cp.sum_squares(cp.multiply(np.sqrt(inv), p)))
        return Model(self.id, p, cost, [p <= np.where(on, demand, 0.0)])
