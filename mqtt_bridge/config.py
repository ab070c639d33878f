"""What the bridge and the emulators need to know about a scenario: its actuators and its day.

Built from a validated scenario (`BridgeConfig.from_scenario`) or from the JSON file the
orchestrator writes (`BridgeConfig.load`), so the bridge and emulator processes need no
scenario of their own. Each actuator carries its MQTT convention (the `conventions`
registry: Tasmota, Zigbee2MQTT, Shelly Gen2 ...) with its settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import conventions
from conventions import Convention


def actuator_id(device: str, component: str) -> str:
    """The id of the actuator on component `component` of device `device` ("home01/bulb"):
    the key of plans and the last levels of its lab plan topic."""
    return f"{device}/{component}"


@dataclass(frozen=True)
class Actuator:
    """One switched component's actuator (configs/SCHEMA.md `actuator:`)."""

    device: str
    component: str
    convention: Convention  # the protocol and its settings (topic, name, ...)
    rated_kw: float = 0.0
    on_hours: float = 0.0
    window: tuple[int, int] | None = None

    @property
    def id(self) -> str:
        return actuator_id(self.device, self.component)

    @property
    def protocol(self) -> str:
        return self.convention.protocol

    @property
    def address(self) -> str:
        return self.convention.address

    @property
    def real(self) -> bool:
        return self.convention.real

    def to_dict(self) -> dict[str, Any]:
        # protocol, address and real repeat the convention's, for readers of bridge.json
        return {"device": self.device, "component": self.component,
                "protocol": self.protocol, "address": self.address, "real": self.real,
                "convention": self.convention.model_dump(), "rated_kw": self.rated_kw,
                "on_hours": self.on_hours,
                "window": None if self.window is None else list(self.window)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Actuator:
        try:
            conv = conventions.from_dict(d["convention"])
        except ValidationError as e:
            raise ValueError(f"actuator {d.get('device')}.{d.get('component')}: "
                             f"{e.errors()[0]['msg']}") from None
        return cls(d["device"], d["component"], conv, float(d.get("rated_kw", 0.0)),
                   float(d.get("on_hours", 0.0)),
                   None if d.get("window") is None else tuple(d["window"]))


@dataclass
class BridgeConfig:
    """The day the bridge plays and the actuators it drives."""

    run: str
    slots: int
    slot_minutes: float
    start: str = "1970-01-01T00:00"   # local wall-clock time of slot 0 (used when realtime)
    seconds_per_slot: float = 1.0
    realtime: bool = False
    actuators: list[Actuator] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.slots <= 0 or self.slot_minutes <= 0 or self.seconds_per_slot <= 0:
            raise ValueError(f"bridge config: slots={self.slots}, slot_minutes="
                             f"{self.slot_minutes}, seconds_per_slot={self.seconds_per_slot}: "
                             "expected all > 0")
        ids = [a.id for a in self.actuators]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"bridge config: duplicate actuator ids {sorted(dup)}")
        addrs = [(a.protocol, a.address) for a in self.actuators]
        dup2 = {a for a in addrs if addrs.count(a) > 1}
        if dup2:
            raise ValueError(f"bridge config: two actuators share a topic/name {sorted(dup2)}")

    def actuator(self, aid: str) -> Actuator:
        for a in self.actuators:
            if a.id == aid:
                return a
        raise KeyError(aid)

    # -- building -------------------------------------------------------------------------
    @classmethod
    def from_scenario(cls, scenario: Any, run: str) -> BridgeConfig:
        """From a validated scenario (scenario.Scenario)."""
        acts = []
        for d in scenario.devices:
            comps = {c.id: c for c in d.components}
            for cid, conv in d.actuators().items():
                p = comps[cid].params
                acts.append(Actuator(d.id, cid, conv, float(p["rated_kw"]),
                                     float(p.get("on_hours", 0.0)),
                                     tuple(p["window"]) if p.get("window") else None))
        h, pb = scenario.horizon, scenario.playback
        return cls(run=run, slots=h.slots, slot_minutes=h.slot_minutes, start=h.start,
                   seconds_per_slot=pb.seconds_per_slot, realtime=pb.realtime,
                   actuators=acts)

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "slots": self.slots, "slot_minutes": self.slot_minutes,
                "start": self.start, "seconds_per_slot": self.seconds_per_slot,
                "realtime": self.realtime, "actuators": [a.to_dict() for a in self.actuators]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "bridge config") -> BridgeConfig:
        try:
            acts = [Actuator.from_dict(a) for a in d.get("actuators", [])]
            return cls(**{**d, "actuators": acts})
        except (TypeError, KeyError) as e:
            raise ValueError(f"{where}: {e}") from e

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> BridgeConfig:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read bridge config: {e}") from e
        return cls.from_dict(d, where=str(path))
