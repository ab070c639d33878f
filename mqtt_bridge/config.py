"""What the bridge and the emulators need to know about a scenario: its actuators and its day.

Built from a scenario (`BridgeConfig.from_scenario`, which takes the validated Scenario
object or the raw YAML mapping of configs/SCHEMA.md) or from a JSON file written by the
orchestrator (`BridgeConfig.load`), so the bridge and emulator processes need no scenario
parser of their own.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROTOCOLS = ("tasmota", "zigbee2mqtt")
_BAD_TOPIC = re.compile(r"[+#\x00]")


def actuator_id(device: str, component: str) -> str:
    """The id of the actuator on component `component` of device `device` ("home01/bulb"):
    the key of plans and the last levels of its lab plan topic."""
    return f"{device}/{component}"


@dataclass(frozen=True)
class Actuator:
    """One switched component's actuator (configs/SCHEMA.md `actuator:`)."""

    device: str
    component: str
    protocol: str           # tasmota | zigbee2mqtt
    address: str            # Tasmota topic or Zigbee2MQTT friendly name
    rated_kw: float = 0.0
    on_hours: float = 0.0
    window: tuple[int, int] | None = None
    real: bool = False

    def __post_init__(self) -> None:
        where = f"actuator of {self.device}.{self.component}"
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"{where}: protocol {self.protocol!r}, expected one of {PROTOCOLS}")
        if not self.address or _BAD_TOPIC.search(self.address) or self.address.strip("/") != \
                self.address:
            raise ValueError(f"{where}: topic/name {self.address!r} must be non-empty, without "
                             "MQTT wildcards (+ #) or leading/trailing '/'")

    @property
    def id(self) -> str:
        return actuator_id(self.device, self.component)


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
        """From a Scenario object or the raw scenario mapping (configs/SCHEMA.md)."""
        horizon = _get(scenario, "horizon")
        playback = _get(scenario, "playback", None) or {}
        acts = []
        for d in _get(scenario, "devices"):
            for c in _get(d, "components"):
                a = _get(c, "actuator", None)
                if _get(c, "type") != "switched" or a is None:
                    continue  # a switched load without an actuator is scheduled, not switched
                proto = _get(a, "protocol")
                addr = _get(a, "topic", None) if proto == "tasmota" else _get(a, "name", None)
                win = _get(c, "window", None)
                acts.append(Actuator(
                    device=_get(d, "id"), component=_get(c, "id"), protocol=proto,
                    address=addr or "", rated_kw=float(_get(c, "rated_kw")),
                    on_hours=float(_get(c, "on_hours", 0.0) or 0.0),
                    window=None if win is None else (int(win[0]), int(win[1])),
                    real=bool(_get(a, "real", False))))
        return cls(run=run, slots=int(_get(horizon, "slots")),
                   slot_minutes=float(_get(horizon, "slot_minutes")),
                   start=str(_get(horizon, "start", "1970-01-01T00:00")),
                   seconds_per_slot=float(_get(playback, "seconds_per_slot", 1.0)),
                   realtime=bool(_get(playback, "realtime", False)), actuators=acts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for a in d["actuators"]:
            a["window"] = None if a["window"] is None else list(a["window"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "bridge config") -> BridgeConfig:
        try:
            acts = [Actuator(**{**a, "window": None if a.get("window") is None
                                else tuple(a["window"])}) for a in d.get("actuators", [])]
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


_MISSING = object()


def _get(obj: Any, key: str, default: Any = _MISSING) -> Any:
    """Field of a mapping or an attribute of an object (Scenario dataclasses)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
    elif hasattr(obj, key):
        return getattr(obj, key)
    if default is _MISSING:
        raise ValueError(f"scenario: missing field {key!r} in {type(obj).__name__}")
    return default
