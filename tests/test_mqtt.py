"""MQTT bridge, emulated devices and the on/off plan rule, against real brokers
(mosquitto and the embedded amqtt broker). In-process days play on a ManualClock the test
moves slot by slot (tests/playback.py): no outcome depends on how fast a loaded machine
runs; only the separate-process test plays on the wall clock, with 1-s slots."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from playback import DrivenDay, wait_until

from conventions import MalformedPayload
from conventions.tasmota import Tasmota
from conventions.zigbee2mqtt import Zigbee2Mqtt
from mqtt_bridge import topics as tp
from mqtt_bridge.bridge import Bridge
from mqtt_bridge.broker import MqttBroker, find_mosquitto, parse_url
from mqtt_bridge.clock import ManualClock
from mqtt_bridge.config import Actuator, BridgeConfig
from mqtt_bridge.emulator import EmulatorHost, check_plan_followed, read_events
from mqtt_bridge.mqttc import make_client
from mqtt_bridge.plan import (
    on_off_plan,
    pack_plan,
    plan_to_words,
    required_on_slots,
    unpack_plan,
    words_to_plan,
)
from mqtt_bridge.source import StaticSource
from mqtt_bridge.watch import watch

REPO = Path(__file__).resolve().parents[1]
BROKERS = [pytest.param("mosquitto", marks=pytest.mark.skipif(
    find_mosquitto() is None, reason="mosquitto not installed")), "amqtt"]

ACTS = [
    Actuator("home01", "bulb", Tasmota(topic="home01_bulb"), 0.06),
    Actuator("home01", "plug", Tasmota(topic="home01_plug"), 1.0),
    Actuator("home02", "lamp", Zigbee2Mqtt(name="home02 lamp"), 0.06),
    Actuator("home02", "pump", Zigbee2Mqtt(name="home02_pump"), 0.5),
]

ACTS_IDS = [a.id for a in ACTS]


def plans_for(T: int) -> dict[str, list[bool]]:
    base = {
        "home01/bulb": [0, 1, 1, 0, 0, 1, 1, 1],
        "home01/plug": [1, 1, 1, 1, 0, 0, 0, 0],
        "home02/lamp": [1, 0, 1, 0, 1, 0, 1, 0],
        "home02/pump": [0, 0, 0, 1, 1, 1, 1, 1],
    }
    return {k: [bool(v[t % len(v)]) for t in range(T)] for k, v in base.items()}


def make_day(run: str, T: int, sps: float, plans: dict[str, list[bool]] | None = None,
             acts: list[Actuator] = ACTS) -> tuple[BridgeConfig, StaticSource]:
    plans = plans or plans_for(T)
    cfg = BridgeConfig(run=run, slots=T, slot_minutes=15, seconds_per_slot=sps,
                       actuators=acts)
    sched = {d: np.linspace(0.5, 2.0, T) for d in {a.device for a in acts}}
    src = StaticSource(sched, plans, status={"session": 7, "round": 12,
                                             "residuals": {"r": 1e-5, "s": 2e-5}, "rho": 2.0})
    return cfg, src


@pytest.fixture(params=BROKERS)
def broker(request, tmp_path):
    b = MqttBroker(tmp_path, kind=request.param)
    b.start()
    yield b
    b.stop()


def collect(url: str, filters: list[str], expect: tuple[str, ...] = (),
            timeout: float = 30.0) -> dict[str, bytes]:
    """The retained messages on `filters`: last payload per topic, once a marker published
    after the subscription came back and every topic of `expect` is there."""
    got: dict[str, bytes] = {}
    marker = f"lab/_collect/{uuid.uuid4().hex}"
    done = threading.Event()

    def on_message(cl, u, m) -> None:
        if m.topic == marker:
            done.set()
        else:
            got[m.topic] = m.payload

    c = make_client()
    c.on_connect = lambda cl, *a: cl.subscribe([(f, 1) for f in [*filters, marker]])
    c.on_subscribe = lambda cl, *a: cl.publish(marker, "x", qos=1)
    c.on_message = on_message
    c.connect(*parse_url(url))
    c.loop_start()
    try:
        wait_until(lambda: done.is_set() and set(expect) <= set(got), timeout,
                   f"retained {filters}: have {sorted(got)}, want {expect}")
    finally:
        c.disconnect()
        c.loop_stop()
    return dict(got)


def assert_followed(run_dir: Path, bridge: Bridge, plans: dict[str, list[bool]],
                    sps: float) -> None:
    events = read_events(run_dir / "emulators.jsonl")
    day_start = bridge.status()["day_start"]
    for aid, plan in plans.items():
        mine = [e for e in events if e["actuator"] == aid]
        assert check_plan_followed(mine, plan, day_start, sps, tolerance=sps * 0.8) == [], aid


# -- the plan rule ------------------------------------------------------------------------
def test_plan_rule_matches_obvious_cases():
    T = 12
    p = np.zeros(T)
    p[[3, 4, 9]] = 0.06                                   # an integral relaxation
    assert on_off_plan(p, 0.06, 3).nonzero()[0].tolist() == [3, 4, 9]
    flat = np.full(T, 0.02)                               # all tied: earliest slots win
    assert on_off_plan(flat, 0.06, 4).nonzero()[0].tolist() == [0, 1, 2, 3]
    assert on_off_plan(flat, 0.06, 4, (5, 10)).nonzero()[0].tolist() == [5, 6, 7, 8]
    # wrapping window [10, 3): chronological order is 10, 11, 0, 1, 2
    assert on_off_plan(flat, 0.06, 3, (10, 3)).nonzero()[0].tolist() == [0, 10, 11]
    # solver noise is a tie, not a preference
    noisy = flat.copy()
    noisy[7] += 1e-9
    assert on_off_plan(noisy, 0.06, 1).nonzero()[0].tolist() == [0]
    # larger relaxed power first; clipping: above-rated counts as rated
    q = np.array([0, .01, .05, .03, .2, .06, 0, 0, 0, 0, 0, 0])
    assert on_off_plan(q, 0.06, 3).nonzero()[0].tolist() == [2, 4, 5]
    assert not on_off_plan(q, 0.06, 0).any()


def test_plan_rule_count_window_determinism():
    rng = np.random.default_rng(5)
    for _ in range(200):
        T = int(rng.integers(4, 100))
        a, b = sorted(rng.choice(T + 1, 2, replace=False).tolist())
        window = (a, b) if a < T else None
        if rng.random() < 0.3 and window and b < T:
            window = (b, a)                              # a wrapping window
        n = (b - a if window and window[0] < window[1] else T - abs(b - a)) if window else T
        k = int(rng.integers(0, n + 1))
        p = rng.random(T) * 0.1
        plan = on_off_plan(p, 0.06, k, window)
        assert plan.dtype == bool and plan.size == T and plan.sum() == k
        if window:
            inside = np.zeros(T, bool)
            first, end = window
            idx = np.arange(first, end) if first < end else np.r_[first:T, 0:end]
            inside[idx] = True
            assert not (plan & ~inside).any()
        assert (on_off_plan(p.copy(), 0.06, k, window) == plan).all()


def test_plan_rule_errors_and_on_slots():
    assert required_on_slots(4, 15) == 16
    assert required_on_slots(4.1, 15) == 17               # rounded up: keeps the energy
    assert required_on_slots(0.7 * 3, 7) == 18
    with pytest.raises(ValueError, match="on_slots=6"):
        on_off_plan(np.zeros(10), 0.06, 6, (0, 5))
    with pytest.raises(ValueError, match="window"):
        on_off_plan(np.zeros(10), 0.06, 1, (3, 11))
    with pytest.raises(ValueError, match="rated_kw"):
        on_off_plan(np.zeros(10), 0.0, 1)
    with pytest.raises(ValueError, match="finite"):
        on_off_plan(np.array([0.0, np.nan]), 0.06, 1)


def test_plan_bitmask_roundtrip():
    rng = np.random.default_rng(1)
    for T in (1, 8, 96, 256, 300, 700):
        plan = rng.random(T) < 0.3
        mask = pack_plan(plan)
        assert mask < 2 ** T and (unpack_plan(mask, T) == plan).all()
        words = plan_to_words(plan)
        assert len(words) == -(-T // 256) and all(0 <= w < 2 ** 256 for w in words)
        assert (words_to_plan(words, T) == plan).all()
    assert pack_plan([True, False, True]) == 0b101            # bit t = slot t
    with pytest.raises(ValueError):
        unpack_plan(0b1000, 3)


# -- configuration ------------------------------------------------------------------------
def test_bridge_config_from_the_validated_scenario(tmp_path):
    from scenario import load

    cfg = BridgeConfig.from_scenario(load("homes3"), run="r1")
    assert [a.id for a in cfg.actuators] == ["home01/bulb", "home03/plug"]
    bulb, plug = cfg.actuators
    assert bulb.window == (68, 92) and bulb.rated_kw == 0.06 and bulb.on_hours == 4
    assert (bulb.protocol, bulb.address, plug.protocol) == ("tasmota", "home01_bulb",
                                                            "zigbee2mqtt")
    cfg.save(tmp_path / "b.json")
    assert BridgeConfig.load(tmp_path / "b.json") == cfg
    (tmp_path / "bad.json").write_text(json.dumps(
        {**cfg.to_dict(), "actuators": [{**bulb.to_dict(), "convention": {"protocol": "hue"}}]}))
    with pytest.raises(ValueError, match="home01.bulb"):  # an unknown protocol is an error
        BridgeConfig.load(tmp_path / "bad.json")
    with pytest.raises(ValueError):
        Tasmota(topic="a/#")


# -- against the brokers ------------------------------------------------------------------
def test_commands_acks_and_lab_topics(broker, tmp_path):
    T, sps = 8, 1.0
    clock = ManualClock()
    cfg, src = make_day("cmd", T, sps)
    plans = src.plans()
    sub = probe = None
    if shutil.which("mosquitto_sub"):
        # a retained probe shows when mosquitto_sub has subscribed: no command goes unseen
        probe = "cmnd/_probe/POWER"
        pub = make_client()
        pub.connect(*parse_url(broker.url))
        pub.loop_start()
        pub.publish(probe, "probe", qos=1, retain=True).wait_for_publish(10)
        sub = subprocess.Popen(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port),
                                "-v", "-t", "cmnd/#", "-t", "zigbee2mqtt/+/set"],
                               stdout=subprocess.PIPE, text=True)
        first = sub.stdout.readline()
        pub.publish(probe, b"", qos=1, retain=True).wait_for_publish(10)  # clear it
        pub.disconnect()
        pub.loop_stop()
        assert first.strip() == f"{probe} probe"
    with EmulatorHost(ACTS, broker.url, tmp_path, clock=clock):
        bridge = Bridge(cfg, src, broker.url, tmp_path, ack_timeout=0.5, clock=clock)
        stats = DrivenDay(bridge, clock, target=bridge.run).start().finish()
        assert_followed(tmp_path, bridge, plans, sps)
    changes = sum(1 + sum(p[t] != p[t - 1] for t in range(1, T)) for p in plans.values())
    assert stats["commands"] == stats["acks"] == changes and stats["retries"] == 0
    # each command paired with its own acknowledgment; the clock stood still in between
    assert stats["latency_ms"] == {"n": changes, "p50": 0.0, "p99": 0.0, "max": 0.0}
    got = collect(broker.url, ["lab/cmd/#"], expect=(
        "lab/cmd/status", "lab/cmd/plan/home01/bulb", "lab/cmd/schedule/home02",
        "lab/cmd/power/home01"))
    status = json.loads(got["lab/cmd/status"])
    assert status["phase"] == "done" and status["session"] == 7 and status["finalized"]
    assert status["residuals"] == {"r": 1e-5, "s": 2e-5} and status["offline"] == []
    assert all(a["state"] == "ok" for a in status["actuators"].values())
    plan = json.loads(got["lab/cmd/plan/home01/bulb"])
    assert plan["plan"] == [int(b) for b in plans["home01/bulb"]]
    assert int(plan["mask"], 16) == pack_plan(plans["home01/bulb"])
    assert len(json.loads(got["lab/cmd/schedule/home02"])["kw"]) == T
    assert float(got["lab/cmd/power/home01"]) == pytest.approx(2.0)   # last slot
    assert (tmp_path / "results" / "bridge.json").exists()
    if sub:
        sub.terminate()
        lines = [ln for ln in sub.communicate(timeout=5)[0].splitlines()
                 if not ln.startswith(probe)]
        assert "cmnd/home01_bulb/POWER ON" in lines
        assert 'zigbee2mqtt/home02 lamp/set {"state":"OFF"}' in lines
        assert len(lines) == changes


def test_ack_latency_is_measured_from_the_acknowledged_attempt(broker, tmp_path):
    """The latency statistics: from the publish of the attempt that got acknowledged to the
    matching state report, on the bridge's clock (here moved by hand in between)."""
    clock = ManualClock()
    act = ACTS[0]
    conv = act.convention
    cfg, src = make_day("lat", 2, 10.0, {act.id: [True, False]}, [act])
    device = make_client()                  # plays the device: answers when the test says
    commands: list[bytes] = []
    device.on_message = lambda c, u, m: commands.append(m.payload)
    device.connect(*parse_url(broker.url))
    device.subscribe(conv.command(True).topic, 1)
    device.loop_start()

    def report(on: bool) -> None:
        for m in conv.state_messages(on):
            device.publish(m.topic, m.payload, qos=1).wait_for_publish(10)

    try:
        bridge = Bridge(cfg, src, broker.url, tmp_path, ack_timeout=1.0, clock=clock)
        bridge.connect()
        assert bridge.wait_finalized(10)
        day = DrivenDay(bridge, clock)
        day.start(quiet=False)                            # slot 0: ON, attempt 1
        wait_until(lambda: len(commands) == 1)
        day.advance(1.0)                                  # no answer: attempt 2 ...
        wait_until(lambda: len(commands) == 2)
        day.advance(0.25)                                 # ... acknowledged 250 ms later
        report(True)
        day.wait_quiet()
        day.to_slot(1, quiet=False)                       # OFF: acknowledged after 40 ms
        wait_until(lambda: len(commands) == 3)
        day.advance(0.04)
        report(False)
        day.wait_quiet()
        stats = day.finish()
        bridge.close()
    finally:
        device.disconnect()
        device.loop_stop()
    assert commands == [b"ON", b"ON", b"OFF"]
    assert stats["acks"] == 2 and stats["retries"] == 1
    lat = stats["latency_ms"]
    assert lat["n"] == 2 and lat["max"] == pytest.approx(250.0)
    assert lat["p50"] == pytest.approx(145.0) and lat["p99"] == pytest.approx(247.9)
    hist = json.loads((tmp_path / "results" / "bridge.json").read_text())
    assert [c.get("ack_ms") for c in hist["commands"][act.id]] == [
        None, pytest.approx(250.0), pytest.approx(40.0)]


def test_ha_discovery_retained_and_valid(broker, tmp_path):
    cfg, src = make_day("ha", 4, 0.1)
    bridge = Bridge(cfg, src, broker.url, tmp_path)
    bridge.connect()
    try:
        assert bridge.wait_finalized(5)
    finally:
        bridge.close()
    want = {"homeassistant/light/ecl_home01/bulb/config",
            "homeassistant/switch/ecl_home01/plug/config",
            "homeassistant/light/ecl_home02/lamp/config",
            "homeassistant/switch/ecl_home02/pump/config",
            "homeassistant/sensor/ecl_home01/scheduled_power/config",
            "homeassistant/sensor/ecl_home02/scheduled_power/config"}
    got = collect(broker.url, ["homeassistant/#"], expect=tuple(want))  # retained
    ha = {t: json.loads(p) for t, p in got.items()}
    assert set(ha) == want
    for topic, c in ha.items():
        for key in ("name", "unique_id", "state_topic", "availability", "device"):
            assert c[key], (topic, key)
        assert c["availability"][0]["topic"] and c["device"]["identifiers"]
        if "/sensor/" in topic:
            assert c["unit_of_measurement"] == "kW" and c["device_class"] == "power"
        elif c.get("schema") != "json":  # a JSON-schema light sends {"state": ...} itself
            assert c["command_topic"] and c["payload_on"] and c["payload_off"]
    assert len({c["unique_id"] for c in ha.values()}) == len(ha)
    bulb = ha["homeassistant/light/ecl_home01/bulb/config"]
    assert bulb["command_topic"] == "cmnd/home01_bulb/POWER"
    assert bulb["availability"][0]["payload_available"] == "Online"
    lamp = ha["homeassistant/light/ecl_home02/lamp/config"]
    assert lamp["command_topic"] == "zigbee2mqtt/home02 lamp/set"
    # Zigbee2MQTT's own JSON schema: HA reads {"state": "ON"} and writes it back, so the
    # entity shows the lamp's state (a plain light compared "ON" to '{"state":"ON"}')
    assert lamp["schema"] == "json" and "payload_on" not in lamp
    # availability from the Zigbee2MQTT bridge, which always reports (device availability is
    # off by default in Zigbee2MQTT)
    assert lamp["availability"][0]["topic"] == "zigbee2mqtt/bridge/state"
    out = io.StringIO()
    assert watch(broker.url, ("homeassistant/#",), out=out, duration=60, max_messages=6,
                 width=0) == 6
    assert all(" homeassistant/" in line and line.rstrip().endswith("}")
               for line in out.getvalue().splitlines())


def test_offline_device_gets_current_state_when_back(broker, tmp_path):
    T, sps = 10, 1.0
    clock = ManualClock()
    plans = plans_for(T)
    plans["home01/plug"] = [False, False] + [True] * 6 + [False, False]
    cfg, src = make_day("off", T, sps, plans)
    with EmulatorHost(ACTS, broker.url, tmp_path, clock=clock) as host:
        bridge = Bridge(cfg, src, broker.url, tmp_path, ack_timeout=0.3, clock=clock)
        bridge.connect()
        assert bridge.wait_finalized(10)
        day = DrivenDay(bridge, clock).start()
        day.to_slot(1)
        host["home01/plug"].go_offline()                      # one of each protocol
        host["home02/pump"].go_offline()
        wait_until(lambda: set(bridge.status()["offline"]) == {"home01/plug", "home02/pump"},
                   what="the wills")
        day.to_slot(2)                                        # missed slot 2 (plug ON)
        day.to_slot(3)                                        # (pump ON)
        st = bridge.status()
        assert set(st["offline"]) == {"home01/plug", "home02/pump"}
        assert st["actuators"]["home01/plug"]["online"] is False
        wait_until(lambda: "home01/plug" in json.loads(collect(
            broker.url, ["lab/off/status"], expect=("lab/off/status",))["lab/off/status"]
        )["offline"], what="the offline plug in the retained status")
        assert not host["home01/plug"].state                  # never saw the ON
        back = clock.time()
        host["home01/plug"].come_online()
        host["home02/pump"].come_online()
        wait_until(lambda: host["home01/plug"].state and host["home02/pump"].state,
                   what="the current state sent to the returning devices")
        cmds = host["home01/plug"].commands()
        # sent on its return, not at a later slot or retry: the clock has not moved since
        assert cmds and cmds[-1]["payload"] == "ON" and cmds[-1]["t"] == back
        day.wait_quiet()
        day.finish()
        bridge.close()
        st = bridge.status()
        assert st["offline"] == [] and st["actuators"]["home01/plug"]["state"] == "ok"
        for aid in ACTS_IDS:                                  # ended the day as planned
            assert host[aid].state is plans[aid][-1], aid
        assert bridge.stats()["resyncs"] >= 2
        assert any("offline" in p for p in bridge.problems)


def test_malformed_payloads_are_ignored(broker, tmp_path, caplog):
    T, sps = 8, 1.0
    clock = ManualClock()
    cfg, src = make_day("bad", T, sps)
    plans = src.plans()
    garbage = [("stat/home01_bulb/POWER", b"BANANA"), ("stat/home01_plug/POWER", b"\xff\xfe"),
               ("zigbee2mqtt/home02 lamp", b"not json"), ("zigbee2mqtt/home02 lamp", b"[1,2]"),
               ("zigbee2mqtt/home02_pump", b'{"state": 5}'), ("zigbee2mqtt/home02_pump", b"{}"),
               ("tele/home01_bulb/LWT", b"maybe"),
               ("zigbee2mqtt/home02 lamp/availability", b'{"x": 1}'),
               ("zigbee2mqtt/home02_pump/availability", b"")]
    caplog.set_level(logging.WARNING, logger="mqtt_bridge")
    with EmulatorHost(ACTS, broker.url, tmp_path, clock=clock):
        bridge = Bridge(cfg, src, broker.url, tmp_path, ack_timeout=0.5, clock=clock)
        bridge.connect()
        assert bridge.wait_finalized(10)
        day = DrivenDay(bridge, clock).start()
        day.to_slot(1)
        day.to_slot(2)
        pub = make_client()
        pub.connect(*parse_url(broker.url))
        pub.loop_start()
        for topic, payload in garbage:                    # mid-day, between two slots
            pub.publish(topic, payload, qos=1).wait_for_publish(10)
        pub.publish("cmnd/home01_bulb/POWER", b"EXPLODE", qos=1).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        wait_until(lambda: bridge.stats()["malformed"] >= len(garbage)
                   and any("EXPLODE" in r.getMessage() for r in caplog.records),
                   what="the garbage to arrive")
        day.finish()
        bridge.close()
        assert_followed(tmp_path, bridge, plans, sps)   # nothing disturbed the day
    assert bridge.stats()["malformed"] == len(garbage)
    logged = [r.getMessage() for r in caplog.records if "malformed payload" in r.getMessage()]
    assert len(logged) == len(garbage)
    assert any("emulator" in r.name and "EXPLODE" in r.getMessage() for r in caplog.records)
    assert bridge.status()["phase"] == "done"


def test_broker_restart_loses_no_later_command(broker, tmp_path):
    T, sps = 16, 1.0
    clock = ManualClock()
    plans = {                     # changes at slots 9 and 12, after the broker is back
        "home01/bulb": [False] * 9 + [True] * 3 + [False] * 4,
        "home01/plug": [True] * 12 + [False] * 4,
        "home02/lamp": [True] * 9 + [False] * 3 + [True] * 4,
        "home02/pump": [False] * 12 + [True] * 4,
    }
    cfg, src = make_day("rst", T, sps, plans)
    with EmulatorHost(ACTS, broker.url, tmp_path, clock=clock) as host:
        bridge = Bridge(cfg, src, broker.url, tmp_path, ack_timeout=0.4, clock=clock)
        bridge.connect()
        assert bridge.wait_finalized(10)
        day = DrivenDay(bridge, clock).start()
        day.play_to(2)
        broker.restart(down_seconds=0.2)                  # between slots 2 and 3
        wait_until(lambda: bridge.stats()["reconnects"] >= 1 and all(
            e.online for e in host.emulators.values()), what="bridge and emulators back")
        day.wait_quiet()                                  # the resync, acknowledged
        back = clock.time()
        day.finish()
        bridge.close()
        day_start = bridge.status()["day_start"]
        events = read_events(tmp_path / "emulators.jsonl")
        for aid, plan in plans.items():
            cmds = [e for e in events if e["actuator"] == aid and e["event"] == "command"]
            for t in range(1, T):
                if plan[t] == plan[t - 1] or day_start + t * sps < back:
                    continue
                hit = [e for e in cmds if int((e["t"] - day_start) // sps) == t]
                assert hit and hit[0]["state"] == plan[t], (aid, t, cmds)  # in its slot
            assert host[aid].state is plan[-1], aid
        st = bridge.status()
        assert st["offline"] == [] and st["disagree"] == []
        assert all(a["state"] == "ok" for a in st["actuators"].values())
    got = collect(broker.url, ["lab/rst/#", "homeassistant/#"],
                  expect=("lab/rst/status", "lab/rst/plan/home02/pump"))
    assert json.loads(got["lab/rst/status"])["phase"] == "done"
    assert len([t for t in got if "homeassistant" in t]) == 6


def test_stuck_device_is_retried_and_reported(broker, tmp_path):
    T, sps, ack = 4, 1.0, 0.1
    clock = ManualClock()
    acts = ACTS[:1] + ACTS[2:3]
    plans = {"home01/bulb": [True] * T, "home02/lamp": [True] * T}
    cfg, src = make_day("stk", T, sps, plans, acts)
    with EmulatorHost(acts, broker.url, tmp_path, clock=clock) as host:
        host["home01/bulb"].stuck = True
        host["home02/lamp"].stuck = True
        bridge = Bridge(cfg, src, broker.url, tmp_path, ack_timeout=ack, max_attempts=3,
                        clock=clock)
        day = DrivenDay(bridge, clock, target=bridge.run).start(quiet=False)
        for n in (1, 2, 3):       # each ack deadline passed: attempts 2 and 3, then give up
            wait_until(lambda n=n: len(host["home01/bulb"].commands()) == n
                       == len(host["home02/lamp"].commands()), what=f"attempt {n}")
            day.advance(ack)
        day.wait_quiet()
        day.finish()
        assert len(host["home01/bulb"].commands()) == 3 == len(host["home02/lamp"].commands())
    st = bridge.status()
    assert st["disagree"] == ["home01/bulb", "home02/lamp"]
    assert st["actuators"]["home01/bulb"] == {"planned": "ON", "reported": "OFF",
                                              "online": True, "state": "disagree"}
    assert bridge.stats()["retries"] == 4 and bridge.stats()["gave_up"] == 2


def test_process_entry_points(tmp_path):
    """The bridge and the emulators as separate processes, as the lab starts them. On the
    wall clock: 1-s slots, and each change is checked for its slot (not sub-second times)."""
    T, sps = 4, 1.0
    cfg, src = make_day("proc", T, sps)
    cfg.save(tmp_path / "bridge.json")
    src.save(tmp_path / "source.json")
    with MqttBroker(tmp_path) as b:
        py = [sys.executable, "-m", "mqtt_bridge"]
        emu = subprocess.Popen(py + ["emulator", "--url", b.url, "--config",
                                     str(tmp_path / "bridge.json"), "--run-dir", str(tmp_path)],
                               cwd=REPO)
        try:
            path = tmp_path / "emulators.jsonl"
            wait_until(lambda: path.exists() and len(read_events(path)) >= len(ACTS),
                       what="the emulators online")
            # a generous ack timeout: a late acknowledgment is not this test's subject
            r = subprocess.run(py + ["bridge", "--url", b.url, "--config",
                                     str(tmp_path / "bridge.json"), "--source",
                                     str(tmp_path / "source.json"), "--run-dir", str(tmp_path),
                                     "--ack-timeout", "5"],
                               cwd=REPO, timeout=60, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        finally:
            emu.terminate()
            emu.wait(10)
        res = json.loads((tmp_path / "results" / "bridge.json").read_text())
        day_start = res["status"]["day_start"]
        events = read_events(tmp_path / "emulators.jsonl")
        for aid, plan in src.plans().items():
            mine = [e for e in events if e["actuator"] == aid]
            assert check_plan_followed(mine, plan, day_start, sps, tolerance=sps) == [], aid
            # the bridge sent each change in its slot, once
            sent = [(c["slot"], c["state"]) for c in res["commands"][aid]]
            assert sent == [(t, tp.ON if plan[t] else tp.OFF) for t in range(T)
                            if t == 0 or plan[t] != plan[t - 1]], aid
        assert res["stats"]["acks"] == res["stats"]["commands"]
        lwt = collect(b.url, ["tele/#", "zigbee2mqtt/+/availability", "lab/proc/bridge"],
                      expect=("tele/home01_bulb/LWT", "zigbee2mqtt/home02 lamp/availability",
                              "lab/proc/bridge"))
        assert lwt["tele/home01_bulb/LWT"] == b"Offline"        # emulators shut down
        assert json.loads(lwt["zigbee2mqtt/home02 lamp/availability"]) == {"state": "offline"}
        assert lwt["lab/proc/bridge"] == b"offline"


def test_topic_parsers_reject_garbage():
    t, z = ACTS[0].convention, ACTS[2].convention
    assert t.parse_report("stat/home01_bulb/POWER", b"ON").state is True
    assert t.parse_report("stat/home01_bulb/POWER", b"off").state is False
    assert z.parse_report("zigbee2mqtt/home02 lamp", b'{"state":"ON","linkquality":3}').state
    assert z.parse_report("zigbee2mqtt/home02 lamp/availability", b"online").online is True
    assert z.parse_report("zigbee2mqtt/home02 lamp/availability",
                          b'{"state":"offline"}').online is False
    for conv, topic, payload in [
            (t, "stat/home01_bulb/POWER", b"1"), (t, "stat/home01_bulb/POWER", b"\xff"),
            (z, "zigbee2mqtt/home02 lamp", b"ON"), (z, "zigbee2mqtt/home02 lamp",
                                                     b'{"state":null}'),
            (z, "zigbee2mqtt/home02 lamp", b"[]")]:
        with pytest.raises(MalformedPayload):
            conv.parse_report(topic, payload)
    assert tp.command(ACTS[2], False) == ("zigbee2mqtt/home02 lamp/set", '{"state":"OFF"}')


def test_realtime_starts_at_the_current_slot(tmp_path):
    """Real time: slot 0 is horizon.start on the wall clock; joining mid-day sends each
    actuator the state of the current slot at once, then follows the plan. Played on a
    ManualClock with the real 15-min slots."""
    from datetime import datetime
    slot_s = 900.0
    clock = ManualClock()
    acts = ACTS[:1]
    plan = [True, False, True, True, False, False]
    start = datetime.fromtimestamp(clock.time() - 1.5 * slot_s).isoformat(
        timespec="microseconds")
    cfg = BridgeConfig(run="rt", slots=len(plan), slot_minutes=slot_s / 60, start=start,
                       realtime=True, actuators=acts)
    src = StaticSource({"home01": np.zeros(len(plan))}, {"home01/bulb": plan})
    with MqttBroker(tmp_path) as b, EmulatorHost(acts, b.url, tmp_path, clock=clock) as host:
        bridge = Bridge(cfg, src, b.url, tmp_path, ack_timeout=0.2, clock=clock)
        day = DrivenDay(bridge, clock, target=lambda: bridge.run(linger=0.2)).start()
        assert bridge.status()["slot"] == 1                  # joined in slot 1
        day.finish(tail=0.2)                                 # the linger, on the same clock
        day_start = bridge.status()["day_start"]
        assert day_start == pytest.approx(datetime.fromisoformat(start).timestamp())
        events = host["home01/bulb"].events
        assert check_plan_followed(events, plan, day_start, slot_s, slot_s * 0.8,
                                   first_slot=1) == []
        # at once: the first command at the moment of joining, 1.5 slots into the day
        first = host["home01/bulb"].commands()[0]
        assert first["t"] == pytest.approx(day_start + 1.5 * slot_s)


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
def test_restarted_bridge_resumes_the_day(broker, tmp_path):
    """A bridge that finds the day its predecessor began (RUN/mqtt/day.json) goes on from
    the slot the day is at: nothing of the past slots is commanded again."""
    T, sps, past = 8, 1.0, 5
    clock = ManualClock()
    cfg, src = make_day("resume", T, sps)
    (tmp_path / "mqtt").mkdir()
    day_start = clock.time() - (past + 0.5) * sps       # now: half-way through slot 5
    (tmp_path / "mqtt" / "day.json").write_text(json.dumps({"day_start": day_start}))
    with EmulatorHost(ACTS, broker.url, tmp_path, clock=clock):
        bridge = Bridge(cfg, src, broker.url, tmp_path, ack_timeout=5.0, clock=clock)
        day = DrivenDay(bridge, clock, target=lambda: bridge.run(linger=0)).start()
        assert bridge.status()["slot"] == past
        day.finish()
    assert bridge.status()["day_start"] == day_start
    report = json.loads((tmp_path / "results" / "bridge.json").read_text())
    slots = [c["slot"] for cmds in report["commands"].values() for c in cmds]
    assert slots and min(slots) == past  # resumed where the day is, not replayed from slot 0
    assert report["plans"] == {k: list(v) for k, v in plans_for(T).items()}
