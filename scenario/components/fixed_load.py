"""Inflexible consumption."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from scenario import profiles
from scenario.components.base import Component, Model
from scenario.errors import fail
from scenario.fields import Profile, param
from scenario.horizon import Horizon


class FixedLoad(Component):
    """Inflexible consumption: p_t = load_t (kW). No cost of its own.

    load_t is the `residential` profile (a night floor, a morning and a larger evening peak)
    scaled to `daily_kwh` and moved by `shift_h`, a `flat` load of daily_kwh / 24 kW, or a
    list of T kW values."""

    type: Literal["fixed_load"] = "fixed_load"
    profile: Profile("load", ge=0) = param("residential", doc="daily shape, or kW per slot")
    daily_kwh: float | None = param(None, doc="energy over one day (named profiles)",
                                    unit="kWh", gt=0)
    shift_h: float = param(0.0, doc="moves the profile later (+) or earlier (-)", unit="h")

    def derive(self, h: Horizon) -> Mapping[str, Any]:
        if isinstance(self.profile, tuple):
            return {"load_kw": self.profile}
        if self.daily_kwh is None:
            fail(f"a number > 0 (daily energy of the {self.profile} profile)", at=".daily_kwh",
                 missing=True)
        fn = (profiles.residential(self.daily_kwh, self.shift_h)
              if self.profile == "residential" else profiles.flat(self.daily_kwh / 24.0))
        return {"load_kw": h.series(fn)}

    def slot_bounds(self, h: Horizon) -> tuple[np.ndarray, np.ndarray]:
        load = self.series("load_kw")
        return load, load

    def build(self, h: Horizon) -> Model:
        return Model(self.id, self.series("load_kw"))
