"""The emulated home's meter.

What it measures, honestly:
- a switched component with an emulated actuator (a bulb or plug of mqtt_bridge/emulator.py):
  its relay state as the device itself reports it on MQTT during the playback (RelayRecorder,
  the meter's read-only broker user), sampled at the middle of each slot, times the
  component's rated kW. A late or missed switch, or a relay switched by someone else, shows
  in the reading; the schedule is not copied. Sampling at mid-slot makes the reading
  insensitive to command latency below half a slot (the playback's `seconds_per_slot`).
- every other component (fixed loads, PV, batteries, EVs, thermal loads, deferrables, and
  switched loads on real devices) has no emulated device: its metered power is the
  component's scheduled power (the home's own split of its final x_i, re-derived the way the
  device process derives it) with the scenario's deviations applied, e.g. a PV forecast
  error factor, or a bulb switched by hand (`billing.deviations`).
Readings are Wh per slot, rounded to the nearest Wh, import positive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mqtt_bridge.config import Actuator


def relay_slots(changes: Sequence[tuple[float, bool]], day_start: float,
                seconds_per_slot: float, slots: int, initial: bool = False) -> list[bool]:
    """The relay state at the middle of each slot from its reported (time, state) changes."""
    changes = sorted(changes)
    out, k, state = [], 0, initial
    for t in range(slots):
        mid = day_start + (t + 0.5) * seconds_per_slot
        while k < len(changes) and changes[k][0] <= mid:
            state = changes[k][1]
            k += 1
        out.append(state)
    return out


class RelayRecorder:
    """Follows the reports of emulated actuators on MQTT (each convention's report topics):
    every state a device reports, with the time it arrived."""

    def __init__(self, actuators: Iterable[Actuator], url: str) -> None:
        self.acts = [a for a in actuators if not a.real]
        self.url = url
        self.changes: dict[str, list[tuple[float, bool]]] = {a.id: [] for a in self.acts}
        self._by_topic: dict[str, list[Actuator]] = {}
        for a in self.acts:
            for t in a.convention.report_topics():
                self._by_topic.setdefault(t, []).append(a)
        self._lock = threading.Lock()
        self._client: Any = None

    def start(self, timeout: float = 10.0) -> None:
        from mqtt_bridge.mqttc import start_subscriber

        self._client = start_subscriber("meter-relays", self.url, sorted(self._by_topic),
                                        self._on_message, timeout)

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ARG002
        now = time.time()
        from conventions import MalformedPayload

        for a in self._by_topic.get(msg.topic, []):
            try:
                rep = a.convention.parse_report(msg.topic, msg.payload)
            except MalformedPayload:
                continue
            if rep.state is not None:
                with self._lock:
                    self.changes[a.id].append((now, bool(rep.state)))

    def stop(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            c.disconnect()
            c.loop_stop()

    def slots(self, day_start: float, seconds_per_slot: float,
              slots: int) -> dict[str, list[bool]]:
        with self._lock:
            return {aid: relay_slots(ch, day_start, seconds_per_slot, slots)
                    for aid, ch in self.changes.items()}


class EmulatedMeter:
    """The meter of one emulated home (a scenario device)."""

    def __init__(self, spec: Any, deviations: Sequence[Any] = ()) -> None:
        self.spec = spec
        self.deviations = [d for d in deviations if d.device == spec.id]

    def component_split(self, x_final: np.ndarray, solver: str = "CLARABEL"
                        ) -> dict[str, np.ndarray]:
        """The home's components in the cheapest realisation of its final x_i: what its
        device process planned (LocalProblem.split, as device_node.agent does)."""
        from device_node.local_step import LocalProblem

        return LocalProblem(self.spec, solver=solver).split(x_final)

    def measure(self, parts: Mapping[str, np.ndarray],
                relays: Mapping[str, Sequence[bool]]) -> dict[str, np.ndarray]:
        """Each component's metered kW per slot: relays (component id -> state per slot) for
        the switched loads measured on MQTT, the scheduled power otherwise; then the
        deviations."""
        comps = {c.id: c for c in self.spec.components}
        out = {}
        for cid, p in parts.items():
            if cid in relays:
                out[cid] = np.array([comps[cid].params["rated_kw"] if on else 0.0
                                     for on in relays[cid]])
            else:
                out[cid] = np.asarray(p, dtype=float).copy()
        for d in self.deviations:
            a, b = d.slots if d.slots is not None else (0, len(next(iter(out.values()))))
            if d.switch is not None:
                out[d.component][a:b] = comps[d.component].params["rated_kw"] if (
                    d.switch == "on") else 0.0
            if d.factor is not None:
                out[d.component][a:b] *= d.factor
        return out

    @staticmethod
    def readings_wh(components_kw: Mapping[str, np.ndarray], delta_h: float) -> list[int]:
        total = sum(np.asarray(v, dtype=float) for v in components_kw.values())
        return [int(v) for v in np.rint(total * delta_h * 1000.0)]
