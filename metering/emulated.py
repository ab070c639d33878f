"""The emulated home's meter.

What it measures, honestly:
- a switched component with an emulated actuator (a bulb or plug of mqtt_bridge/emulator.py):
  its relay state as the device itself reports it on MQTT during the playback (RelayRecorder,
  the meter's read-only broker user), sampled at the middle of each slot, times the
  component's rated kW. A late or missed switch, or a relay switched by someone else, shows
  in the reading; the schedule is not copied. Sampling at mid-slot makes the reading
  insensitive to command latency below half a slot (the playback's `seconds_per_slot`).
- every other component (fixed loads, PV, batteries, EVs, thermal loads, deferrables, and
  switched loads on real devices) has no emulated device: its metered power is what the
  home's controller makes it draw to realise the final x_i around the measured switched
  loads (EmulatedMeter.realise: the flexible components absorb the on/off rounding of the
  switched loads where they can), then the scenario's deviations apply, e.g. a PV forecast
  error factor, or a bulb switched by hand (`billing.deviations`).
Readings are Wh per slot, rounded to the nearest Wh, import positive.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mqtt_bridge.clock import SYSTEM, Clock
from mqtt_bridge.config import Actuator

# $/kW per slot of mismatch: above any component's own marginal cost, and low enough to keep
# the solve well conditioned
MISMATCH_PER_KW = 10.0


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
    every state a device reports, with the time it arrived. With a journal (a JSON-lines
    file), every report is appended to it and a new recorder starts from what it holds: a
    meter process restarted mid-day keeps the morning."""

    def __init__(self, actuators: Iterable[Actuator], url: str,
                 journal: Path | None = None, clock: Clock = SYSTEM) -> None:
        self.acts = [a for a in actuators if not a.real]
        self.clock = clock  # stamps the reports (a test's ManualClock: its slot)
        self.url = url
        self.changes: dict[str, list[tuple[float, bool]]] = {a.id: [] for a in self.acts}
        self.journal = journal
        if journal is not None and journal.exists():
            for line in journal.read_text().splitlines():
                try:
                    e = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if e.get("actuator") in self.changes:
                    self.changes[e["actuator"]].append((float(e["t"]), bool(e["on"])))
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
        now = self.clock.time()
        from conventions import MalformedPayload

        for a in self._by_topic.get(msg.topic, []):
            try:
                rep = a.convention.parse_report(msg.topic, msg.payload)
            except MalformedPayload:
                continue
            if rep.state is not None:
                with self._lock:
                    self.changes[a.id].append((now, bool(rep.state)))
                    if self.journal is not None:
                        self.journal.parent.mkdir(parents=True, exist_ok=True)
                        with self.journal.open("a") as f:
                            f.write(json.dumps({"actuator": a.id, "t": now,
                                                "on": bool(rep.state)}) + "\n")

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

    def realise(self, x_final: np.ndarray, switched_kw: Mapping[str, np.ndarray]
                ) -> dict[str, np.ndarray]:
        """Each component's power when the home's controller realises its final x_i with
        the switched loads drawing what was measured (rated kW while their relay was on).
        The on/off plan rounds the schedule's relaxed switched power (0 <= p_t <= P) to whole
        slots; a home with flexible components (battery, thermal, deferrable, curtailable)
        absorbs that rounding at its own cheapest cost, as a home energy manager would, and
        what it cannot absorb is left to show at the meter: the cheapest realisation of
        min f(p) + M * sum_t |sum_c p_c,t - x_t| with the switched loads fixed."""
        import cvxpy as cp

        from scenario.home import build_home

        home = build_home(self.spec)
        free = [c for c in home.components if c.id not in switched_kw]
        fixed = sum((np.asarray(v, dtype=float) for v in switched_kw.values()),
                    np.zeros(self.spec.horizon.slots))
        # a measured relay is what it is, within its window and energy or not
        power = cp.sum([c.power for c in free], axis=0) if len(free) > 1 else free[0].power
        miss = cp.sum(cp.abs(power + fixed - np.asarray(x_final, dtype=float)))
        prob = cp.Problem(cp.Minimize(cp.sum([c.cost for c in free]) + MISMATCH_PER_KW * miss),
                          [k for c in free for k in c.constraints])
        prob.solve(solver="CLARABEL")
        if prob.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            raise RuntimeError(f"meter of {self.spec.id}: no realisation of the schedule with "
                               f"the measured relays ({prob.status})")
        out = {c.id: np.asarray(c.power.value, dtype=float).reshape(-1) for c in free}
        return {**out, **{k: np.asarray(v, dtype=float) for k, v in switched_kw.items()}}

    def measure(self, x_final: np.ndarray, relays: Mapping[str, Sequence[bool]]
                ) -> dict[str, np.ndarray]:
        """Each component's metered kW per slot: relays (component id -> state per slot) for
        the switched loads measured on MQTT (rated kW while on), the other components as the
        home realises its x_i around them (`realise`); then the scenario's deviations."""
        comps = {c.id: c for c in self.spec.components}
        switched = {cid: np.array([comps[cid].params["rated_kw"] if on else 0.0 for on in st])
                    for cid, st in relays.items()}
        out = self.realise(x_final, switched)
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
