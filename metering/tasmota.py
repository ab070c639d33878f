"""A real meter over MQTT: Tasmota's energy telemetry.

A Tasmota device with energy monitoring publishes, every TelePeriod (300 s by default),

    tele/<topic>/SENSOR  {"Time": "2026-06-01T10:05:00",
                          "ENERGY": {"Total": 12.345, "Today": 1.2, "Power": 230, ...,
                                     "ExportActive": 0.5}}

`Total` is the imported energy in kWh since `TotalStartTime`; bidirectional meters (SML,
some ADE7953 devices) add `ExportActive` in kWh (https://tasmota.github.io/docs/JSON-Status-Responses/
and the Energy driver's docs). The net counter is Total - ExportActive. A slot's reading is
the counter's increase over the slot, interpolated linearly at the slot boundaries from the
samples around them (times from the device's own `Time`, its local clock), in Wh.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from typing import Any


class TasmotaSensorMeter:
    """Collects `tele/<topic>/SENSOR` telemetry of one device and turns it into readings."""

    def __init__(self, topic: str, prefix: str = "tele") -> None:
        self.topic = f"{prefix}/{topic}/SENSOR"
        self.samples: list[tuple[datetime, float]] = []  # (device time, net kWh)
        self._lock = threading.Lock()
        self._client: Any = None

    def feed(self, payload: bytes | str) -> bool:
        """One SENSOR message; False when it holds no ENERGY counter."""
        try:
            obj = json.loads(payload)
            e = obj["ENERGY"]
            when = datetime.fromisoformat(obj["Time"])
            net = float(e["Total"]) - float(e.get("ExportActive", 0.0))
        except (ValueError, KeyError, TypeError):
            return False
        with self._lock:
            self.samples.append((when, net))
        return True

    def readings(self, start: str | datetime, slot_minutes: float, slots: int) -> list[int]:
        """Wh per slot from slot 0 at `start` (device local time); every boundary must lie
        within the samples (else ValueError: the meter did not cover the day)."""
        t0 = datetime.fromisoformat(start) if isinstance(start, str) else start
        with self._lock:
            s = sorted(self.samples)
        if len(s) < 2:
            raise ValueError(f"{self.topic}: {len(s)} samples")

        def at(t: datetime) -> float:
            for (ta, va), (tb, vb) in zip(s, s[1:], strict=False):
                if ta <= t <= tb:
                    span = (tb - ta).total_seconds()
                    return va if span == 0 else va + (vb - va) * (t - ta).total_seconds() / span
            raise ValueError(f"{self.topic}: no samples around {t.isoformat()}")

        bounds = [at(t0 + timedelta(minutes=slot_minutes * k)) for k in range(slots + 1)]
        return [round((b - a) * 1000.0) for a, b in zip(bounds, bounds[1:], strict=False)]

    # -- MQTT ------------------------------------------------------------------------------
    def start(self, url: str, timeout: float = 10.0) -> None:
        from mqtt_bridge.mqttc import start_subscriber

        self._client = start_subscriber(
            f"meter-{self.topic.replace('/', '-')}"[:60], url, [self.topic],
            lambda client, userdata, msg: self.feed(msg.payload), timeout)

    def stop(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            c.disconnect()
            c.loop_stop()
