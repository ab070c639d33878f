"""Command-to-acknowledgment latency of the bridge against emulated devices.

    python -m mqtt_bridge.bench [--broker mosquitto|amqtt] [--actuators 20] [--slots 24]
        [--seconds-per-slot 0.1]

Starts a broker on loopback (or uses MQTT_URL), `--actuators` emulators (half Tasmota, half
Zigbee2MQTT) whose plans toggle at random slots, plays the day and prints the bridge's
statistics (JSON): latency from a command's publish to the matching state report.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from mqtt_bridge.bridge import Bridge
from mqtt_bridge.broker import MqttBroker
from mqtt_bridge.config import Actuator, BridgeConfig
from mqtt_bridge.emulator import EmulatorHost
from mqtt_bridge.source import StaticSource


def bench(kind: str = "auto", actuators: int = 20, slots: int = 24,
          seconds_per_slot: float = 0.1, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    acts = [Actuator(f"h{i:03d}", "bulb", "tasmota" if i % 2 == 0 else "zigbee2mqtt",
                     f"bench_h{i:03d}_bulb", 0.06) for i in range(actuators)]
    plans = {a.id: (rng.random(slots) < 0.5).tolist() for a in acts}
    cfg = BridgeConfig(run="bench", slots=slots, slot_minutes=15,
                       seconds_per_slot=seconds_per_slot, actuators=acts)
    src = StaticSource({a.device: np.zeros(slots) for a in acts}, plans)
    with tempfile.TemporaryDirectory() as d:
        broker = MqttBroker(Path(d), kind=kind, url=os.environ.get("MQTT_URL") or None)
        with broker, EmulatorHost(acts, broker.url):
            stats = Bridge(cfg, src, broker.url).run()
    return {"broker": broker.kind, **stats}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mqtt_bridge.bench")
    ap.add_argument("--broker", default="auto", choices=["auto", "mosquitto", "amqtt"])
    ap.add_argument("--actuators", type=int, default=20)
    ap.add_argument("--slots", type=int, default=24)
    ap.add_argument("--seconds-per-slot", type=float, default=0.1)
    a = ap.parse_args(argv)
    print(json.dumps(bench(a.broker, a.actuators, a.slots, a.seconds_per_slot)))


if __name__ == "__main__":
    main()
