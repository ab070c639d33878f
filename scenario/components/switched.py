"""Switched loads (smart bulbs and plugs), the components an MQTT actuator follows."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from scenario.components.base import Component, Model
from scenario.components.deferrable import energy_in_window, window_hours
from scenario.errors import Expect, fail
from scenario.fields import MQTT_NAME_PATTERN, Window, param
from scenario.horizon import Horizon

MqttName = Annotated[str, Field(pattern=MQTT_NAME_PATTERN),
                     Expect("an MQTT-safe name ([A-Za-z0-9_/-], no wildcards)")]


class _Actuator(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    real: bool = Field(False, description="a real device (the lab runs no emulator for it)")


class TasmotaActuator(_Actuator):
    """A Tasmota relay, addressed by its topic."""

    protocol: Literal["tasmota"] = "tasmota"
    topic: MqttName = Field(description="the device's Tasmota topic")

    @property
    def address(self) -> str:
        return self.topic


class Zigbee2MqttActuator(_Actuator):
    """A Zigbee device behind Zigbee2MQTT, addressed by its friendly name."""

    protocol: Literal["zigbee2mqtt"] = "zigbee2mqtt"
    name: MqttName = Field(description="the device's Zigbee2MQTT friendly name")

    @field_validator("name")
    @classmethod
    def _not_a_verb(cls, v: str) -> str:
        # Zigbee2MQTT reads <base>/<name>/set and /get, and /<n> as an endpoint
        last = v.rsplit("/", 1)[-1]
        if last in ("set", "get", "availability") or last.isdigit():
            fail("a friendly name whose last level is not set, get, availability or a "
                 "number (Zigbee2MQTT reads those as commands or endpoints)", v)
        return v

    @property
    def address(self) -> str:
        return self.name


Actuator = Annotated[TasmotaActuator | Zigbee2MqttActuator, Field(discriminator="protocol")]


class Switched(Component):
    """Switched load (smart bulb, plug) of rated power P that must be on for on_hours inside
    the window [first, end). The scheduled quantity is its convex relaxation: 0 <= p_t <= P on
    the window (0 outside) and Δ Σ_t p_t = P * on_hours. The on/off plan is derived later from
    p by one deterministic rule (mqtt_bridge.plan). No cost of its own. An optional MQTT
    actuator (Tasmota topic or Zigbee2MQTT name) switches it during the playback."""

    type: Literal["switched"] = "switched"
    rated_kw: float = param(doc="power when on", unit="kW", gt=0)
    on_hours: float = param(doc="time on inside the window", unit="h", ge=0)
    window: Window = param(doc="[first_slot, end_slot) it may be on in")
    actuator: Actuator | None = Field(None, description="the MQTT device that switches it")

    def check(self, h: Horizon) -> None:
        hours = window_hours(self.window, h)
        if self.on_hours > hours + 1e-9:
            fail(f"at most the window's {hours:g} h", self.on_hours, at=".on_hours")

    def slot_bounds(self, h: Horizon) -> tuple[np.ndarray, np.ndarray]:
        from scenario.horizon import window_mask

        return np.zeros(h.slots), self.rated_kw * window_mask(*self.window, h.slots)

    def build(self, h: Horizon) -> Model:
        return energy_in_window(self.id, h, self.window, self.rated_kw,
                                self.rated_kw * self.on_hours)
