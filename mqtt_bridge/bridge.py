"""The MQTT bridge: from the finalized schedule to on/off commands, as the day plays out.

1. Waits until the source (the chain) has a finalized schedule, publishing the retained lab
   status (session, round, residuals, rho) as it changes.
2. Publishes the retained lab topics (schedule per device, plan per actuator) and the Home
   Assistant discovery configs (mqtt_bridge/topics.py lists them all).
3. Plays the day, in playback time (`seconds_per_slot`) or real time (from horizon.start):
   at slot 0 and at every slot where an actuator's plan changes it sends the command in the
   actuator's protocol (QoS 1) and checks it against the state the device reports. A command
   not acknowledged within `ack_timeout` is re-sent, at most `max_attempts` times in all;
   then the actuator is reported as `disagree` (it reports the other state) or
   `unacknowledged` (it reports nothing). An actuator whose LWT/availability says offline is
   reported `offline` and is not retried; when it comes back online it is sent its current
   planned state. After a lost connection to the broker the bridge reconnects, republishes
   its retained topics and re-sends every actuator its current planned state, so no command
   due after a broker restart is lost. Malformed payloads are logged and ignored.
   Every time the day runs on (slots, ack deadlines, latencies, status pacing) is read from
   the bridge's `clock` (mqtt_bridge/clock.py): the system clock, or in tests a
   ManualClock moved slot by slot.
4. Publishes the final status with its statistics, among them the command-to-acknowledgment
   latency (from the publish of the attempt that got acknowledged to the arrival of the
   matching state report, p50/p99 in ms), and writes them to `<run_dir>/results/bridge.json`.

Entry point: `python -m mqtt_bridge.bridge --url mqtt://... --config bridge.json
--source source.json --run-dir DIR` (the lab passes a chain-backed source instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from mqtt_bridge import topics as tp
from mqtt_bridge.broker import parse_url
from mqtt_bridge.clock import SYSTEM, Clock
from mqtt_bridge.config import Actuator, BridgeConfig
from mqtt_bridge.mqttc import make_client, resolve_url
from mqtt_bridge.plan import pack_plan
from mqtt_bridge.source import ScheduleSource, StaticSource

log = logging.getLogger("mqtt_bridge.bridge")


@dataclass
class ActuatorState:
    act: Actuator
    plan: list[bool] | None = None
    desired: bool | None = None     # planned state of the current slot, once the day started
    reported: bool | None = None    # last state the device reported
    online: bool | None = None      # from LWT / availability; None = not heard yet
    pending: bool = False           # a command awaits its acknowledgment
    attempts: int = 0               # attempts of the current command
    sent_at: float = 0.0            # clock.monotonic() of the last attempt
    deadline: float = math.inf
    state: str = "unknown"          # ok | pending | offline | disagree | unacknowledged | no_plan
    history: list[dict[str, Any]] = field(default_factory=list)


class Bridge:
    """One bridge for one run. Thread-safe: paho's network thread delivers the callbacks,
    the caller's thread plays the day."""

    STATUS_EVERY = 0.25   # s: the status topic is republished at most this often

    def __init__(self, config: BridgeConfig, source: ScheduleSource, url: str,
                 run_dir: Path | None = None, *, ack_timeout: float = 1.0,
                 max_attempts: int = 3, poll_interval: float = 0.5,
                 clock: Clock = SYSTEM) -> None:
        self.cfg = config
        # the day's clock: slots, ack deadlines, latencies and status pacing; tests pass a
        # ManualClock and move it slot by slot (waiting for the source stays on real time)
        self.clock = clock
        self.source = source
        self.host, self.port = parse_url(url)
        self.run_dir = Path(run_dir) if run_dir else None
        self.ack_timeout = ack_timeout
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        self.acts = {a.id: ActuatorState(a) for a in config.actuators}
        # report topic -> the actuators it speaks for (a Zigbee2MQTT bridge's state: several)
        self._by_topic: dict[str, list[ActuatorState]] = {}
        for s in self.acts.values():
            for topic in s.act.convention.report_topics():
                self._by_topic.setdefault(topic, []).append(s)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._status: dict[str, Any] = {}
        self._schedules: dict[str, np.ndarray] = {}
        self._published_day = False
        self._playing = False
        self._phase = "waiting"
        self._slot: int | None = None
        self._day_start: float | None = None      # epoch s of the start of slot 0
        self._dirty = True
        self._last_status = 0.0
        self._ever_connected = False
        self._closing = False
        self.latencies: list[float] = []          # seconds
        self.counts = {"commands": 0, "acks": 0, "retries": 0, "resyncs": 0,
                       "malformed": 0, "reconnects": 0, "gave_up": 0}
        self.problems: list[str] = []             # human-readable log of what went wrong
        self.client = make_client(f"lab-bridge-{config.run}-{uuid.uuid4().hex[:6]}", url)
        self.client.will_set(tp.lab_bridge(config.run), tp.BRIDGE_OFFLINE, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self._subscribed = threading.Event()

    # -- connection -----------------------------------------------------------------------
    def connect(self, timeout: float = 10.0) -> None:
        self.client.connect_async(self.host, self.port, keepalive=5)
        self.client.loop_start()
        if not (self._connected.wait(timeout) and self._subscribed.wait(timeout)):
            self.client.loop_stop()
            raise TimeoutError(f"bridge: no MQTT connection to mqtt://{self.host}:{self.port} "
                               f"within {timeout} s")

    def close(self) -> None:
        self._closing = True
        if self.client.is_connected():
            self.client.publish(tp.lab_bridge(self.cfg.run), tp.BRIDGE_OFFLINE, qos=1,
                                retain=True).wait_for_publish(2.0)
        self.client.disconnect()
        self.client.loop_stop()

    def stop(self) -> None:
        """Ask `play`/`run` to return (from another thread or a signal handler)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def wake(self) -> None:
        """Have `play` read the clock again now (after a test moved its ManualClock)."""
        with self._cond:
            self._cond.notify_all()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        if rc.is_failure:
            log.warning("broker refused the connection: %s", rc)
            return
        subs = [(t, tp.QOS) for t in self._by_topic]
        if subs:
            client.subscribe(subs)
        else:
            self._subscribed.set()
        client.publish(tp.lab_bridge(self.cfg.run), tp.BRIDGE_ONLINE, qos=1, retain=True)
        with self._cond:
            if self._ever_connected:
                self.counts["reconnects"] += 1
                log.warning("reconnected to the broker: republishing, resyncing actuators")
            if self._published_day:
                self._publish_day_locked()
            if self._playing:
                for s in self.acts.values():
                    if s.desired is not None:
                        self.counts["resyncs"] += 1
                        self._send_locked(s, "reconnect", new_cycle=True)
            self._ever_connected = True
            self._dirty = True
            self._cond.notify_all()
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                       props: Any = None) -> None:
        if self._closing:
            return
        log.warning("lost the broker connection (%s); reconnecting", rc)
        with self._cond:
            for s in self.acts.values():    # no retry counts down while we cannot send
                s.deadline = math.inf

    # -- messages from devices ------------------------------------------------------------
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            # only a device's own report topics count: an acknowledgment on another topic,
            # or another device's, changes nothing
            for s in self._by_topic.get(msg.topic, ()):
                report = s.act.convention.parse_report(msg.topic, msg.payload)
                if report.online is not None:
                    self._on_availability(s, report.online)
                if report.state is not None:
                    self._on_state(s, report.state)
        except tp.MalformedPayload as e:
            self.counts["malformed"] += 1
            log.warning("malformed payload on %s ignored: %s", msg.topic, e)
        except Exception:  # never let one message kill the network thread
            self.counts["malformed"] += 1
            log.exception("error handling a message on %s; ignored", msg.topic)

    def _on_state(self, s: ActuatorState, on: bool) -> None:
        now = self.clock.monotonic()
        with self._cond:
            s.reported = on
            if s.online is None:
                s.online = True
            if s.pending and on == s.desired:
                self.latencies.append(now - s.sent_at)
                self.counts["acks"] += 1
                s.pending, s.deadline, s.state = False, math.inf, "ok"
                s.history[-1]["ack_ms"] = round((now - s.sent_at) * 1e3, 3)
            elif not s.pending and s.desired is not None and on != s.desired:
                s.state = "disagree"
                self._problem(f"{s.act.id}: reports {'ON' if on else 'OFF'}, planned "
                              f"{'ON' if s.desired else 'OFF'}")
            elif not s.pending and s.desired is not None:
                s.state = "ok"
            self._dirty = True
            self._cond.notify_all()

    def _on_availability(self, s: ActuatorState, online: bool) -> None:
        with self._cond:
            was = s.online
            s.online = online
            if not online:
                if was is not False:
                    self._problem(f"{s.act.id}: offline")
                s.pending, s.deadline = False, math.inf
                s.state = "offline"
            elif was is not True:
                log.info("%s: online", s.act.id)
                # first heard while its command is in flight: the retry timer covers it
                fresh = was is None and (s.pending or s.state == "ok")
                if s.desired is not None and self._playing and not fresh:
                    self.counts["resyncs"] += 1
                    self._send_locked(s, "online", new_cycle=True)
                elif s.state == "offline":
                    s.state = "unknown"
            self._dirty = True
            self._cond.notify_all()

    def _problem(self, text: str) -> None:
        log.warning("%s", text)
        self.problems.append(f"{time.strftime('%H:%M:%S')} {text}")

    # -- commands -------------------------------------------------------------------------
    def _send_locked(self, s: ActuatorState, reason: str, new_cycle: bool) -> None:
        if new_cycle:
            s.attempts = 0
        if s.online is False:
            s.pending, s.deadline, s.state = False, math.inf, "offline"
            return                            # sent when its LWT/availability says online
        s.pending = True
        s.state = "pending"
        if not self.client.is_connected():
            s.deadline = math.inf             # the reconnect resync sends it
            return
        topic, payload = tp.command(s.act, bool(s.desired))
        self.client.publish(topic, payload, qos=tp.QOS)
        s.attempts += 1
        s.sent_at = self.clock.monotonic()
        s.deadline = s.sent_at + self.ack_timeout
        self.counts["commands"] += 1
        if s.attempts > 1:
            self.counts["retries"] += 1
        s.history.append({"slot": self._slot, "state": tp.ON if s.desired else tp.OFF,
                          "t": self.clock.time(), "attempt": s.attempts, "reason": reason})

    def _check_deadlines_locked(self, now: float) -> None:
        for s in self.acts.values():
            if not s.pending or now < s.deadline:
                continue
            if s.online is False:
                s.pending, s.deadline, s.state = False, math.inf, "offline"
            elif s.attempts < self.max_attempts:
                self._send_locked(s, "retry", new_cycle=False)
            else:
                s.pending, s.deadline = False, math.inf
                self.counts["gave_up"] += 1
                if s.reported is not None and s.reported != s.desired:
                    s.state = "disagree"
                    self._problem(f"{s.act.id}: still reports {'ON' if s.reported else 'OFF'}"
                                  f" after {s.attempts} commands "
                                  f"{'ON' if s.desired else 'OFF'}")
                else:
                    s.state = "unacknowledged"
                    self._problem(f"{s.act.id}: no acknowledgment of "
                                  f"{'ON' if s.desired else 'OFF'} after {s.attempts} attempts")
            self._dirty = True

    # -- lab topics -----------------------------------------------------------------------
    def _pub(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=tp.QOS, retain=True)

    def _publish_day_locked(self) -> None:
        run = self.cfg.run
        for dev, x in self._schedules.items():
            self._pub(tp.lab_schedule(run, dev), tp.dumps(
                {"device": dev, "slot_minutes": self.cfg.slot_minutes, "start": self.cfg.start,
                 "kw": [round(float(v), 6) for v in x]}))
        for s in self.acts.values():
            if s.plan is not None:
                self._pub(tp.lab_plan(run, s.act.id), tp.dumps(
                    {"actuator": s.act.id, "protocol": s.act.protocol,
                     "address": s.act.address, "plan": [int(b) for b in s.plan],
                     "mask": hex(pack_plan(s.plan)), "on_slots": int(sum(s.plan))}))
            if not s.act.real:  # a real device announces itself
                topic, cfg = tp.ha_discovery(s.act)
                self._pub(topic, tp.dumps(cfg))
        for dev in self._devices():
            topic, cfg = tp.ha_power_sensor(run, dev)
            self._pub(topic, tp.dumps(cfg))
        if self._slot is not None:
            self._publish_power_locked(self._slot)

    def _devices(self) -> list[str]:
        return sorted(set(self._schedules) | {s.act.device for s in self.acts.values()})

    def _publish_power_locked(self, slot: int) -> None:
        for dev, x in self._schedules.items():
            if slot < len(x):
                self._pub(tp.lab_power(self.cfg.run, dev), f"{float(x[slot]):.6g}")

    def status(self) -> dict[str, Any]:
        """The payload of the lab status topic."""
        with self._cond:
            return self._status_locked()

    def _status_locked(self) -> dict[str, Any]:
        acts = {aid: {"planned": None if s.desired is None else (tp.ON if s.desired else tp.OFF),
                      "reported": None if s.reported is None else
                      (tp.ON if s.reported else tp.OFF),
                      "online": s.online, "state": s.state}
                for aid, s in self.acts.items()}
        return {**self._status, "run": self.cfg.run, "phase": self._phase, "slot": self._slot,
                "slots": self.cfg.slots, "day_start": self._day_start,
                "seconds_per_slot": self._seconds_per_slot(),
                "offline": sorted(a for a, s in self.acts.items() if s.state == "offline"),
                "disagree": sorted(a for a, s in self.acts.items()
                                   if s.state in ("disagree", "unacknowledged")),
                "actuators": acts, "stats": self._stats_locked(),
                "updated": self.clock.time()}

    def _publish_status_locked(self) -> None:
        self._pub(tp.lab_status(self.cfg.run), tp.dumps(self._status_locked()))
        self._dirty = False
        self._last_status = self.clock.monotonic()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return self._stats_locked()

    def _stats_locked(self) -> dict[str, Any]:
        lat = np.array(self.latencies) * 1e3
        ms = {"n": int(lat.size)}
        if lat.size:
            ms.update(p50=round(float(np.percentile(lat, 50)), 3),
                      p99=round(float(np.percentile(lat, 99)), 3),
                      max=round(float(lat.max()), 3))
        return {**self.counts, "latency_ms": ms, "problems": self.problems[-20:]}

    # -- the day --------------------------------------------------------------------------
    def _seconds_per_slot(self) -> float:
        return self.cfg.slot_minutes * 60.0 if self.cfg.realtime else self.cfg.seconds_per_slot

    def wait_finalized(self, timeout: float | None = None) -> bool:
        """Poll the source until it is finalized, publishing its status as it changes.
        Returns False on timeout or stop."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        last = None
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                st = dict(self.source.status())
                plans = self.source.plans() if st.get("finalized") else None
                scheds = self.source.schedules() if plans is not None else None
            except Exception as e:  # a chain hiccup: report it and poll again
                log.warning("schedule source: %s", e)
                st, plans, scheds = {"source_error": str(e)}, None, None
            with self._cond:
                self._status = st
                if st != last:
                    self._publish_status_locked()
                    last = st
                if plans is not None and scheds is not None:
                    self._load_day_locked(plans, scheds)
                    return True
            self._stop.wait(self.poll_interval)
        return False

    def _load_day_locked(self, plans: dict[str, list[bool]],
                         schedules: dict[str, np.ndarray]) -> None:
        self._schedules = {d: np.asarray(x, dtype=float) for d, x in schedules.items()}
        for aid in sorted(set(plans) - set(self.acts)):
            log.warning("plan for unknown actuator %s ignored", aid)
        for aid, s in self.acts.items():
            p = plans.get(aid)
            if p is None or len(p) != self.cfg.slots:
                s.state = "no_plan"
                self._problem(f"{aid}: no plan of {self.cfg.slots} slots in the schedule "
                              f"(got {None if p is None else len(p)})")
                continue
            s.plan = [bool(b) for b in p]
        self._published_day = True
        self._publish_day_locked()

    def play(self, day_start: float | None = None, settle: bool = True) -> dict[str, Any]:
        """Play the day (blocking). day_start: epoch s of slot 0 (default: now in playback,
        horizon.start in real time). Returns the statistics."""
        sps = self._seconds_per_slot()
        if day_start is None:
            day_start = self._resumed_day_start()
        if day_start is None:
            day_start = (datetime.fromisoformat(self.cfg.start).timestamp()
                         if self.cfg.realtime else self.clock.time())
            self._save_day_start(day_start)
        mono0 = self.clock.monotonic() + (day_start - self.clock.time())
        T = self.cfg.slots
        with self._cond:
            self._day_start, self._phase, self._playing = day_start, "playing", True
            self._dirty = True
        while not self._stop.is_set():
            now = self.clock.monotonic()
            k = math.floor((now - mono0) / sps)
            if k >= T:
                break
            with self._cond:
                if k >= 0 and k != self._slot:
                    self._enter_slot_locked(k)
                self._check_deadlines_locked(now)
                if self._dirty and now - self._last_status >= self.STATUS_EVERY:
                    self._publish_status_locked()
                nxt = min([mono0 + (max(k, -1) + 1) * sps] +
                          [s.deadline for s in self.acts.values()] +
                          ([self._last_status + self.STATUS_EVERY] if self._dirty else []))
                self._cond.wait(max(0.0, min(nxt - self.clock.monotonic(), 0.5)))
        if settle:
            self._settle()
        with self._cond:
            self._phase = "done" if not self._stop.is_set() else "stopped"
            self._publish_status_locked()
            out = self._stats_locked()
        self._write_results()
        return out

    def _day_file(self) -> Path | None:
        return self.run_dir / "mqtt" / "day.json" if self.run_dir else None

    def _resumed_day_start(self) -> float | None:
        """The day a previous bridge of this run began: a restarted bridge goes on from the
        slot the day is at, rather than playing it again from slot 0."""
        f = self._day_file()
        try:
            return float(json.loads(f.read_text())["day_start"]) if f else None
        except (OSError, ValueError, KeyError):
            return None

    def _save_day_start(self, day_start: float) -> None:
        f = self._day_file()
        if f is None:
            return
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps({"day_start": day_start}))
        tmp.replace(f)

    def _enter_slot_locked(self, k: int) -> None:
        self._slot = k
        for s in self.acts.values():
            if s.plan is None:
                continue
            if s.desired is None or s.plan[k] != s.desired:
                s.desired = s.plan[k]
                self._send_locked(s, "plan", new_cycle=True)
        self._publish_power_locked(k)
        self._dirty = True

    def _settle(self) -> None:
        """After the last slot: let pending commands finish their attempts."""
        limit = self.clock.monotonic() + self.ack_timeout * (self.max_attempts + 1)
        while not self._stop.is_set() and self.clock.monotonic() < limit:
            with self._cond:
                self._check_deadlines_locked(self.clock.monotonic())
                if not any(s.pending for s in self.acts.values()):
                    return
                self._cond.wait(0.05)

    def linger(self, seconds: float | None) -> None:
        """Keep serving after the day for `seconds` (None: until stop()): devices coming back
        online get their final state, with the same acknowledgment checks."""
        end = math.inf if seconds is None else self.clock.monotonic() + seconds
        while not self._stop.is_set() and self.clock.monotonic() < end:
            with self._cond:
                now = self.clock.monotonic()
                self._check_deadlines_locked(now)
                if self._dirty and now - self._last_status >= self.STATUS_EVERY:
                    self._publish_status_locked()
                self._cond.wait(min(0.2, max(0.0, end - now)))
        with self._cond:
            self._publish_status_locked()

    def _write_results(self) -> None:
        if not self.run_dir:
            return
        out = self.run_dir / "results"
        out.mkdir(parents=True, exist_ok=True)
        with self._cond:
            d = {"stats": self._stats_locked(), "status": self._status_locked(),
                 "commands": {aid: s.history for aid, s in self.acts.items()},
                 "plans": {aid: None if s.plan is None else [bool(v) for v in s.plan]
                           for aid, s in self.acts.items()}}
        (out / "bridge.json").write_text(json.dumps(d, indent=1))

    def run(self, finalize_timeout: float | None = None, linger: float | None = 0.0,
            day_start: float | None = None) -> dict[str, Any]:
        """Connect, wait for the schedule, play the day, linger, close. Returns the stats."""
        self.connect()
        try:
            if not self.wait_finalized(finalize_timeout):
                raise TimeoutError("bridge: the schedule was not finalized in time")
            stats = self.play(day_start)
            if linger is None or linger > 0:
                self.linger(linger)
            return stats
        finally:
            self.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mqtt_bridge.bridge",
                                 description="Play a finalized schedule to MQTT devices.")
    ap.add_argument("--url", required=True, help="mqtt[s]://[user:pass@]host:port, or @FILE "
                    "holding it")
    ap.add_argument("--config", type=Path, required=True, help="bridge config JSON")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", type=Path, help="static source JSON (a saved day)")
    src.add_argument("--node", help="read the day from the chain through this geth node of "
                     "the run (RUN/lab.json, RUN/chain/network.json)")
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--ack-timeout", type=float, default=1.0)
    ap.add_argument("--max-attempts", type=int, default=3)
    ap.add_argument("--linger", type=float, default=0.0,
                    help="seconds to keep serving after the day; -1 = until SIGTERM")
    args = ap.parse_args(argv)
    config = BridgeConfig.load(args.config)
    if args.node:
        from mqtt_bridge.chain_source import ChainSource

        source: ScheduleSource = ChainSource(args.run_dir, args.node, config)
    else:
        source = StaticSource.load(args.source)
    run_bridge(config, source, resolve_url(args.url),
               args.run_dir, ack_timeout=args.ack_timeout, max_attempts=args.max_attempts,
               linger=None if args.linger < 0 else args.linger)


def run_bridge(config: BridgeConfig, source: ScheduleSource, url: str, run_dir: Path,
               linger: float | None = 0.0, **kw: Any) -> dict[str, Any]:
    """Process entry for any source: logging, SIGTERM/SIGINT stop the bridge cleanly."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bridge = Bridge(config, source, url, run_dir, **kw)
    signal.signal(signal.SIGTERM, lambda *_: bridge.stop())
    signal.signal(signal.SIGINT, lambda *_: bridge.stop())
    stats = bridge.run(linger=linger)
    log.info("day done: %s", json.dumps(stats))
    return stats


if __name__ == "__main__":
    main()
