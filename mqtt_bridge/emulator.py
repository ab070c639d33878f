"""Emulated smart plugs and bulbs that speak their actuator's MQTT convention.

Each emulator is its own MQTT client, as a real device is, so a real Tasmota plug, Zigbee2MQTT
bulb or Shelly switch can take its place by using the same topic/name: the device's side of
each convention (its command topics, answers, state messages, availability and will) is in
its module in `conventions/`. A device keeps its relay state while offline (power restored
to the last state). Devices reached through a gateway (Zigbee2MQTT's bridge) get one
emulated gateway per distinct gateway, with its own availability and will.

`EmulatorHost` runs one emulator per actuator that is not `real: true` and records every
command received to `<run_dir>/emulators.jsonl` (one JSON object a line: t (epoch s),
actuator, event = command|malformed|online|offline, topic, payload, state after it).
`check_plan_followed` compares such a record with a plan: what the orchestrator and the
tests use to show that each actuator was switched at its planned slots.

Entry point: `python -m mqtt_bridge.emulator --url mqtt://... --config bridge.json
--run-dir DIR` runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from conventions import MalformedPayload, Message
from mqtt_bridge.auth import emulator_urls
from mqtt_bridge.broker import parse_url
from mqtt_bridge.clock import SYSTEM, Clock
from mqtt_bridge.config import Actuator, BridgeConfig
from mqtt_bridge.mqttc import make_client, resolve_url

log = logging.getLogger("mqtt_bridge.emulator")



def _publish(client: mqtt.Client, m: Message) -> mqtt.MQTTMessageInfo:
    return client.publish(m.topic, m.payload, qos=1, retain=m.retain)


class Emulator:
    """One emulated device. `record` is called with every event (see module docstring)."""

    def __init__(self, act: Actuator, url: str, initial: bool = False,
                 record: Callable[[dict[str, Any]], None] | None = None,
                 keepalive: int = 5, clock: Clock = SYSTEM) -> None:
        self.act = act
        self.clock = clock            # stamps the events (a test's ManualClock: its slot)
        self.url = url
        self.host, self.port = parse_url(url)
        self.state = bool(initial)
        self.stuck = False            # True: the relay ignores commands (a failed device)
        self.events: list[dict[str, Any]] = []
        self._record = record
        self._keepalive = keepalive
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self.conv = act.convention
        self._command_topics = set(self.conv.command_topics())

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Connect (the device comes online) and wait for the broker's CONNACK."""
        c = make_client(f"emu-{self.act.protocol}-{uuid.uuid4().hex[:8]}", self.url)
        w = self.conv.will()
        c.will_set(w.topic, w.payload, qos=1, retain=w.retain)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self._connected.clear()
        self._client = c
        c.connect_async(self.host, self.port, keepalive=self._keepalive)
        c.loop_start()
        if not self._connected.wait(timeout):
            raise TimeoutError(f"emulator {self.act.id}: no connection to "
                               f"mqtt://{self.host}:{self.port} in {timeout} s")

    def go_offline(self) -> None:
        """Drop off the network without saying goodbye: the broker publishes the will."""
        c, self._client = self._client, None
        if c is None:
            return
        sock = c.socket()
        if sock is not None:
            try:  # the network thread sees EOF at once; loop_stop keeps it from reconnecting
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        c.loop_stop()
        if sock is not None:
            sock.close()
        self._connected.clear()
        self._event("offline", "", "")

    def come_online(self, timeout: float = 10.0) -> None:
        self.start(timeout)

    def stop(self) -> None:
        """Shut down like a device being switched off by its owner (graceful, with Offline)."""
        c, self._client = self._client, None
        if c is None:
            return
        if c.is_connected():
            _publish(c, self.conv.availability(False)).wait_for_publish(2.0)
        c.disconnect()
        c.loop_stop()
        self._connected.clear()

    @property
    def online(self) -> bool:
        return self._connected.is_set()

    # -- protocol -------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        if rc.is_failure:
            return
        client.subscribe([(t, 1) for t in sorted(self._command_topics)])
        m = self.conv.availability(True)
        _publish(client, m)
        self._publish_state(client)
        self._event("online", m.topic, m.payload)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                       props: Any = None) -> None:
        self._connected.clear()

    def _publish_state(self, client: mqtt.Client) -> None:
        for m in self.conv.state_messages(self.state):
            _publish(client, m)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic not in self._command_topics:
            return  # not ours (a broker may deliver more than the subscription asked for)
        text = msg.payload.decode("utf-8", "replace").strip()
        try:
            reply = self.conv.handle(msg.topic, msg.payload, self.state)
        except MalformedPayload as e:
            log.warning("%s: malformed command on %s: %s", self.act.id, msg.topic, e)
            self._event("malformed", msg.topic, text)
            for m in self.conv.error(msg.topic, msg.payload):
                _publish(client, m)
            return
        with self._lock:
            if reply.want is not None and not self.stuck:
                self.state = (not self.state) if reply.want == "TOGGLE" else reply.want
        self._event("command", msg.topic, text)
        for m in reply.extra:
            _publish(client, m)
        self._publish_state(client)

    def _event(self, kind: str, topic: str, payload: str) -> None:
        ev = {"t": self.clock.time(), "actuator": self.act.id, "protocol": self.act.protocol,
              "address": self.act.address, "event": kind, "topic": topic,
              "payload": payload, "state": self.state}
        with self._lock:
            self.events.append(ev)
        if self._record:
            self._record(ev)

    def commands(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["event"] == "command"]


class EmulatorHost:
    """Many emulators in one process, recording to `<run_dir>/emulators.jsonl`."""

    def __init__(self, actuators: Iterable[Actuator], url: str,
                 run_dir: Path | None = None, clock: Clock = SYSTEM) -> None:
        # each device its own credentials when the lab's broker has them (mqtt_bridge.auth)
        self._urls = emulator_urls(run_dir)
        self.emulators = {a.id: Emulator(a, self._urls.get(a.id, url), record=self._write,
                                         clock=clock)
                          for a in actuators if not a.real}
        self.url = url
        # one emulated gateway (Zigbee2MQTT's bridge) per distinct gateway topic
        self.gateways: dict[str, tuple[Message, Message]] = {}
        for e in self.emulators.values():
            gw = e.conv.gateway()
            if gw is not None:
                self.gateways.setdefault(gw[0].topic, gw)
        self._gateway_clients: list[mqtt.Client] = []
        self.path = Path(run_dir) / "emulators.jsonl" if run_dir else None
        self._file = None
        self._lock = threading.Lock()

    def _write(self, ev: dict[str, Any]) -> None:
        if self._file is None:
            return
        with self._lock:
            self._file.write(json.dumps(ev) + "\n")
            self._file.flush()

    def start(self, timeout: float = 10.0) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")  # noqa: SIM115 (closed in stop)
        for online, will in self.gateways.values():
            self._gateway_clients.append(self._start_gateway(online, will, timeout))
        for e in self.emulators.values():
            e.start(timeout)

    def _start_gateway(self, online: Message, will: Message, timeout: float) -> mqtt.Client:
        url = self._urls.get(online.topic, self.url)
        host, port = parse_url(url)
        c = make_client(f"emu-gateway-{uuid.uuid4().hex[:8]}", url)
        c.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        up = threading.Event()

        def on_connect(client: mqtt.Client, *args: Any) -> None:
            _publish(client, online)
            up.set()

        c.on_connect = on_connect
        c.connect_async(host, port, keepalive=5)
        c.loop_start()
        if not up.wait(timeout):
            raise TimeoutError(f"emulated gateway {online.topic}: no connection to {self.url}")
        return c

    def stop(self) -> None:
        for e in self.emulators.values():
            e.stop()
        for c, (_, will) in zip(self._gateway_clients, self.gateways.values(), strict=False):
            if c.is_connected():
                _publish(c, will).wait_for_publish(2.0)
            c.disconnect()
            c.loop_stop()
        self._gateway_clients.clear()
        if self._file:
            with self._lock:
                self._file.close()
                self._file = None

    def __getitem__(self, aid: str) -> Emulator:
        return self.emulators[aid]

    def __enter__(self) -> EmulatorHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_events(path: Path) -> list[dict[str, Any]]:
    """The records of an emulators.jsonl file (a torn last line is skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def check_plan_followed(events: list[dict[str, Any]], plan: list[bool], day_start: float,
                        seconds_per_slot: float, tolerance: float = 0.5,
                        first_slot: int = 0) -> list[str]:
    """Problems (empty when fine) with one actuator's commands against its plan: its state
    must change to plan[t] within [start of slot t, + tolerance s) at slot `first_slot` and
    at every slot where the plan changes, never change otherwise, and end in plan[-1].
    Repeated commands that do not change the state (resyncs) are allowed."""
    problems = []
    cmds = sorted((e for e in events if e["event"] == "command"), key=lambda e: e["t"])
    want = [(t, plan[t]) for t in range(first_slot, len(plan))
            if t == first_slot or plan[t] != plan[t - 1]]
    prev: bool | None = None
    changes = []
    for e in cmds:  # the first command counts as a change: it sets the initial state
        slot_t = (e["t"] - day_start) / seconds_per_slot
        if prev is None or e["state"] != prev:
            changes.append((slot_t, e["state"], e["t"]))
        prev = e["state"]
    if len(changes) != len(want):
        problems.append(f"{len(changes)} state changes {[(round(s, 2), v) for s, v, _ in changes]}"
                        f", planned {len(want)} {want}")
    for (slot_t, state, t), (ws, wv) in zip(changes, want, strict=False):
        lo = day_start + ws * seconds_per_slot
        if state != wv or not lo - 0.02 <= t < lo + tolerance:
            problems.append(f"at slot {slot_t:.2f} became {'ON' if state else 'OFF'}; planned "
                            f"{'ON' if wv else 'OFF'} at slot {ws}")
    if not cmds:
        problems.append("received no command")
    elif cmds[-1]["state"] != plan[-1]:
        problems.append(f"ended the day {'ON' if cmds[-1]['state'] else 'OFF'}, planned "
                        f"{'ON' if plan[-1] else 'OFF'}")
    return problems


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mqtt_bridge.emulator",
                                 description="Run emulated devices for every non-real actuator.")
    ap.add_argument("--url", required=True, help="mqtt://host:port")
    ap.add_argument("--config", type=Path, required=True, help="bridge config JSON")
    ap.add_argument("--run-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = BridgeConfig.load(args.config)
    host = EmulatorHost(cfg.actuators, resolve_url(args.url), args.run_dir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    host.start()
    log.info("%d emulators online on %s", len(host.emulators), args.url)
    try:
        stop.wait()
    finally:
        host.stop()


if __name__ == "__main__":
    main()
