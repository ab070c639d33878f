"""Switched loads (smart bulbs and plugs), the components an MQTT actuator follows."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from conventions import Actuator
from scenario.components.base import Component, Model
from scenario.components.deferrable import energy_in_window, window_hours
from scenario.errors import fail
from scenario.fields import Window, param
from scenario.horizon import Horizon, window_mask


class Switched(Component):
    """Switched load (smart bulb, plug) of rated power P that must be on for on_hours inside
    the window [first, end). The scheduled quantity is its convex relaxation: 0 <= p_t <= P on
    the window (0 outside) and Δ Σ_t p_t = P * on_hours. The on/off plan is derived later from
    p by one deterministic rule (mqtt_bridge.plan). No cost of its own. An optional MQTT
    actuator, in any convention of the `conventions` registry (Tasmota, Zigbee2MQTT, Shelly
    Gen2), switches it during the playback."""

    type: Literal["switched"] = "switched"
    rated_kw: float = param(doc="power when on", unit="kW", gt=0)
    on_hours: float = param(doc="time on inside the window", unit="h", ge=0)
    window: Window = param(doc="[first_slot, end_slot) it may be on in")
    actuator: Actuator | None = Field(None, description="the MQTT device that switches it: "
                                      "{protocol: tasmota|zigbee2mqtt|shelly, ...} "
                                      "(conventions/)")

    def check(self, h: Horizon) -> None:
        hours = window_hours(self.window, h)
        if self.on_hours > hours + 1e-9:
            fail(f"at most the window's {hours:g} h", self.on_hours, at=".on_hours")

    def slot_bounds(self, h: Horizon) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(h.slots), self.rated_kw * window_mask(*self.window, h.slots)

    def build(self, h: Horizon) -> Model:
        return energy_in_window(self.id, h, self.window, self.rated_kw,
                                self.rated_kw * self.on_hours)
