"""Rooftop photovoltaics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import cvxpy as cp
import numpy as np

from scenario import profiles
from scenario.components.base import Component, Model
from scenario.fields import Profile, param
from scenario.horizon import Horizon


class PV(Component):
    """Photovoltaic generation G_t = peak_kw * shape_t (kW available), shape_t the `clear` or
    `cloudy` summer day per kWp (or a list of T values per kWp).
    Not curtailable: p_t = -G_t.  Curtailable: -G_t <= p_t <= 0 (spilling is free; the lost
    export revenue is the feeder's concern)."""

    type: Literal["pv"] = "pv"
    peak_kw: float = param(doc="peak power (kWp)", unit="kW", gt=0)
    curtailable: bool = param(False, doc="whether generation may be spilled")
    profile: Profile("pv", ge=0) = param("clear", doc="daily shape per kWp")

    def derive(self, h: Horizon) -> Mapping[str, Any]:
        shape = (np.array(self.profile) if isinstance(self.profile, tuple)
                 else h.resample(lambda x: profiles.pv_shape(x, self.profile == "cloudy")))
        return {"pv_kw": tuple(float(x) for x in self.peak_kw * shape)}

    def slot_bounds(self, h: Horizon) -> tuple[np.ndarray, np.ndarray]:
        gen = self.series("pv_kw")
        return -gen, (np.zeros(h.slots) if self.curtailable else -gen)

    def build(self, h: Horizon) -> Model:
        gen = self.series("pv_kw")
        if not self.curtailable:
            return Model(self.id, -gen)
        p = cp.Variable(h.slots, name=f"{self.id}_p")
        return Model(self.id, p, constraints=[p >= -gen, p <= 0])
