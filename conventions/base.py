"""What an MQTT convention of smart devices is, for the lab.

A convention (Tasmota, Zigbee2MQTT, Shelly Gen2 RPC, ...) is one module in `conventions/`
defining one `Convention` subclass. The class is also the actuator's settings in a scenario
(`actuator: {protocol: tasmota, topic: ...}`, a pydantic model keyed on `protocol`), and it
holds both sides of the protocol:

- the controller's side (the bridge, or Home Assistant): the command that switches the
  device, the topics its reports arrive on, how to read a report (state, acknowledgment,
  availability), and the Home Assistant discovery config;
- the device's side (the lab's emulators): what it subscribes to, how it answers a command,
  its state messages, its availability and its MQTT will.

Defining the class registers it (`conventions.REGISTRY`); the scenario schema, the bridge and
the emulators take it from there, so a new convention is one module and its tests.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

REGISTRY: dict[str, type[Convention]] = {}
MQTT_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_/-]*$"


def mqtt_name(description: str, pattern: str = MQTT_NAME) -> Any:
    """A topic level (or levels) naming a device: no wildcards, no leading '/'."""
    return Field(description=description, pattern=pattern, max_length=64,
                 json_schema_extra={"expected": "an MQTT-safe name ([A-Za-z0-9_/-], no "
                                    "wildcards), at most 64 characters"})
ON, OFF = "ON", "OFF"


class MalformedPayload(ValueError):
    """A payload that does not follow the convention of its topic."""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: str
    retain: bool = False


@dataclass(frozen=True)
class Report:
    """What one message on a report topic says: the relay state and/or availability."""

    state: bool | None = None
    online: bool | None = None


@dataclass(frozen=True)
class Reply:
    """The device side's answer to a command: the state it asks for (True/False, "TOGGLE",
    or None for a query) and the messages a real device would publish in reply, besides its
    state messages."""

    want: bool | str | None
    extra: tuple[Message, ...] = ()


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise MalformedPayload(f"not UTF-8: {payload[:40]!r}") from e


def json_obj(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(text(payload))
    except json.JSONDecodeError as e:
        raise MalformedPayload(f"not JSON: {payload[:60]!r}") from e
    if not isinstance(obj, dict):
        raise MalformedPayload(f"expected a JSON object, got {payload[:60]!r}")
    return obj


def onoff(value: Any) -> bool:
    if isinstance(value, str) and value.upper() in (ON, OFF):
        return value.upper() == ON
    raise MalformedPayload(f"expected ON or OFF, got {value!r:.60}")


class Convention(BaseModel):
    """Base of every convention (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    real: bool = Field(False, description="a real device: the lab runs no emulator for it and "
                       "publishes no discovery config (it announces itself)")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("protocol")
        if field is not None and typing.get_origin(field.annotation) is typing.Literal:
            REGISTRY[typing.get_args(field.annotation)[0]] = cls

    # ---- identity

    @property
    def address(self) -> str:
        """What names the device within its convention (unique per protocol in a scenario)."""
        raise NotImplementedError

    # ---- the controller's side

    def command(self, on: bool) -> Message:
        raise NotImplementedError

    def report_topics(self) -> list[str]:
        """Every topic the device's state, acknowledgments and availability arrive on."""
        raise NotImplementedError

    def parse_report(self, topic: str, payload: bytes) -> Report:
        """Read a message on one of `report_topics()`; raises MalformedPayload."""
        raise NotImplementedError

    def ha_config(self, light: bool) -> dict[str, Any]:
        """The convention's part of the Home Assistant MQTT discovery config of the entity
        that controls the device through its own topics (command, state, availability);
        `light`: a light entity rather than a switch. Name, ids and device are added by the
        caller (mqtt_bridge.topics.ha_discovery)."""
        raise NotImplementedError

    # ---- the device's side (emulators)

    def will(self) -> Message:
        """The MQTT will: availability going offline (retained)."""
        raise NotImplementedError

    def availability(self, online: bool) -> Message:
        raise NotImplementedError

    def command_topics(self) -> list[str]:
        raise NotImplementedError

    def handle(self, topic: str, payload: bytes) -> Reply:
        """Read a command; raises MalformedPayload (the device answers with `error`)."""
        raise NotImplementedError

    def state_messages(self, on: bool) -> list[Message]:
        """What the device publishes after every command or query."""
        raise NotImplementedError

    def error(self, topic: str, payload: bytes) -> list[Message]:
        """What the device answers to a command it cannot read (nothing by default)."""
        return []

    def gateway(self) -> tuple[Message, Message] | None:
        """(online, will) of a gateway the device is reached through (Zigbee2MQTT's bridge),
        run once per distinct gateway by the emulator host; None when there is none."""
        return None
