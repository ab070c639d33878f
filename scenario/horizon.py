"""The scheduling horizon: T slots of Δ hours from a local start time, and slot windows."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from scenario import profiles
from scenario.errors import Expect, fail


def _iso_time(v: Any) -> str:
    if isinstance(v, datetime):
        v = v.isoformat(timespec="minutes")
    try:
        datetime.fromisoformat(str(v))
    except ValueError:
        fail('an ISO 8601 local time like "2026-06-01T00:00"', v)
    return str(v)


class Horizon(BaseModel):
    """T slots of `slot_minutes` each, slot 0 starting at `start` (local wall-clock time)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    slots: int = Field(ge=1, description="number of slots T")
    slot_minutes: float = Field(gt=0, description="slot length; Δ = slot_minutes / 60 h",
                                json_schema_extra={"unit": "min"})
    start: Annotated[str, BeforeValidator(_iso_time), Expect("an ISO 8601 time")] = Field(
        "2026-06-01T00:00", description="local wall-clock time of slot 0 (ISO 8601)")

    @property
    def delta_h(self) -> float:
        return self.slot_minutes / 60.0

    @property
    def start_hour(self) -> float:
        t0 = datetime.fromisoformat(self.start)
        return t0.hour + t0.minute / 60.0 + t0.second / 3600.0

    def resample(self, fn: profiles.HourFn) -> np.ndarray:
        return profiles.resample(fn, self.start_hour, self.slots, self.delta_h)

    def series(self, fn: profiles.HourFn) -> tuple[float, ...]:
        """A daily profile as one plain number per slot."""
        return tuple(float(x) for x in self.resample(fn))

    def to_dict(self) -> dict:
        return {"slots": self.slots, "slot_minutes": self.slot_minutes, "start": self.start}


def window_mask(first: int, end: int, slots: int) -> np.ndarray:
    """1.0 on the slots of [first, end), wrapping past the horizon's end when first > end."""
    idx = np.arange(slots)
    inside = (idx >= first) & (idx < end) if first <= end else (idx >= first) | (idx < end)
    return inside.astype(float)


def window_order(first: int, end: int, slots: int) -> np.ndarray:
    """The slots of [first, end) in time order (first, first+1, ..., wrapping past T)."""
    n = (end - first) % slots or slots  # [0, T) is the whole horizon, not empty
    return (first + np.arange(n)) % slots
