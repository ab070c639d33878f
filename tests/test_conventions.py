"""The MQTT conventions registry (conventions/): each convention's two sides agree, the
Tasmota, Zigbee2MQTT and Shelly specifics, the scenario schema built from the registry, and a
played day through a real broker with one actuator of each convention."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from playback import DrivenDay

import conventions
from conventions import MalformedPayload
from conventions.shelly import CALLER, ShellyGen2
from conventions.tasmota import Tasmota
from conventions.zigbee2mqtt import Zigbee2Mqtt
from mqtt_bridge.bridge import Bridge
from mqtt_bridge.broker import MqttBroker
from mqtt_bridge.cleanup import clear_retained
from mqtt_bridge.clock import ManualClock
from mqtt_bridge.config import Actuator, BridgeConfig
from mqtt_bridge.emulator import EmulatorHost, check_plan_followed, read_events
from mqtt_bridge.mqttc import make_client
from mqtt_bridge.source import StaticSource
from scenario import CONFIGS, ScenarioError, parse

SAMPLES = {"tasmota": {"protocol": "tasmota", "topic": "t1", "relay": 2,
                       "full_topic": "tasmota/%topic%/%prefix%/"},
           "zigbee2mqtt": {"protocol": "zigbee2mqtt", "name": "hall lamp", "base_topic": "zb"},
           "shelly": {"protocol": "shelly", "device": "shellyplus1-a8032ab1c2d3", "switch": 1}}


def test_every_convention_module_is_registered_and_sampled():
    import pkgutil

    modules = {m.name for m in pkgutil.iter_modules(conventions.__path__)} - {"base"}
    assert {c.__module__.rsplit(".", 1)[-1] for c in conventions.REGISTRY.values()} == modules
    assert set(SAMPLES) == set(conventions.REGISTRY)


@pytest.mark.parametrize("proto", sorted(SAMPLES))
def test_the_two_sides_of_a_convention_agree(proto: str):
    """What the controller sends, the device reads; what the device says, the controller
    reads, on the topics the controller listens to; Home Assistant is pointed at them."""
    conv = conventions.from_dict(SAMPLES[proto])
    reports = set(conv.report_topics())
    for on in (True, False):
        cmd = conv.command(on)
        assert cmd.topic in conv.command_topics()
        reply = conv.handle(cmd.topic, cmd.payload.encode(), not on)
        assert reply.want is on
        states = [conv.parse_report(m.topic, m.payload.encode())
                  for m in conv.state_messages(on) if m.topic in reports]
        assert states and all(r.state in (on, None) for r in states)
        assert any(r.state is on for r in states)
    for online in (True, False):
        m = conv.availability(online)
        assert m.retain and m.topic in reports
        assert conv.parse_report(m.topic, m.payload.encode()).online is online
    w = conv.will()
    assert conv.parse_report(w.topic, w.payload.encode()).online is False
    for light in (True, False):
        cfg = conv.ha_config(light)
        assert cfg["command_topic"] == conv.command(True).topic
        assert cfg["state_topic"] in reports
        assert {a["topic"] for a in cfg["availability"]} <= reports | {
            g.topic for g in (conv.gateway() or ())}
    with pytest.raises(MalformedPayload):
        conv.parse_report(conv.report_topics()[0], b"\xff\xfe")


def test_tasmota_full_topic_relay_and_result_only_acknowledgments():
    t = conventions.from_dict(SAMPLES["tasmota"])
    assert t.command(True).topic == "tasmota/t1/cmnd/POWER2"
    # SetOption90: no plain stat POWER, the RESULT JSON is the acknowledgment
    assert t.parse_report("tasmota/t1/stat/RESULT", b'{"POWER2":"ON"}').state is True
    assert t.parse_report("tasmota/t1/stat/RESULT", b'{"Dimmer":40}').state is None
    assert t.parse_report("tasmota/t1/stat/POWER2", b"OFF").state is False
    # SetOption26 on a single relay: POWER1
    assert Tasmota(topic="p", relay=1).report_topics()[0] == "stat/p/POWER1"
    with pytest.raises(ValueError):
        Tasmota(topic="p", full_topic="%topic%/")  # no %prefix%


def test_zigbee2mqtt_base_topic_and_a_stopped_bridge_is_offline():
    z = conventions.from_dict(SAMPLES["zigbee2mqtt"])
    assert z.command(False).topic == "zb/hall lamp/set"
    assert "zb/bridge/state" in z.report_topics()
    assert z.parse_report("zb/bridge/state", b'{"state":"offline"}').online is False
    assert z.parse_report("zb/bridge/state", b"online").online is True  # legacy payload
    for bad in ("lamp/set", "lamp/1", "bridge/x"):
        with pytest.raises(ValueError):
            Zigbee2Mqtt(name=bad)


def test_shelly_rpc_answers_and_notifications():
    s = conventions.from_dict(SAMPLES["shelly"])
    req = json.loads(s.command(True).payload)
    assert req["method"] == "Switch.Set" and req["params"] == {"id": 1, "on": True}
    reply = s.handle(f"{s.device}/rpc", s.command(True).payload.encode(), False)
    (answer,) = reply.extra
    assert answer.topic == f"{CALLER}/rpc"
    assert json.loads(answer.payload)["result"] == {"was_on": False}
    q = s.handle(f"{s.device}/rpc", b'{"id":9,"src":"me","method":"Switch.GetStatus",'
                 b'"params":{"id":1}}', True)
    assert q.want is None and json.loads(q.extra[0].payload)["result"]["output"] is True
    wrong = s.handle(f"{s.device}/rpc", b'{"id":3,"src":"me","method":"Switch.Set",'
                     b'"params":{"id":0,"on":true}}', False)  # switch 0 is not ours
    assert wrong.want is None and json.loads(wrong.extra[0].payload)["error"]["code"] == -103
    note = {"method": "NotifyStatus", "params": {"switch:1": {"id": 1, "output": True}}}
    assert s.parse_report(f"{s.device}/events/rpc", json.dumps(note).encode()).state is True
    other = {"method": "NotifyStatus", "params": {"switch:0": {"id": 0, "output": True}}}
    assert s.parse_report(f"{s.device}/events/rpc", json.dumps(other).encode()).state is None


def test_scenario_actuators_come_from_the_registry(tmp_path: Path):
    doc = yaml.safe_load((CONFIGS / "homes3.yaml").read_text())
    bulb = doc["devices"][0]["components"][3]
    bulb["actuator"] = {"protocol": "shelly", "device": "shellyplus1-x"}
    scen = parse(doc, "s.yaml", check_feasible=False)
    assert isinstance(scen.device("home01").actuators()["bulb"], ShellyGen2)
    bulb["actuator"] = {"protocol": "hue", "topic": "x"}
    with pytest.raises(ScenarioError, match=r"actuator\.protocol: expected one of shelly \| "
                       r"tasmota \| zigbee2mqtt, got 'hue'"):
        parse(doc, "s.yaml", check_feasible=False)
    bulb["actuator"] = {"protocol": "tasmota", "topic": "x", "full_topic": "%topic%"}
    with pytest.raises(ScenarioError, match=r"actuator\.full_topic: .*%prefix%"):
        parse(doc, "s.yaml", check_feasible=False)


def _wait(pred, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_day_with_one_actuator_of_each_convention(tmp_path: Path):
    """A bridge drives Tasmota (FullTopic, relay 2), Zigbee2MQTT (base topic zb) and Shelly
    emulators through a real broker: every plan followed, every command acknowledged, the
    discovery configs published; a stopped Zigbee2MQTT bridge shows its lamp offline; the
    run's retained topics are then cleared, and only those."""
    acts = [Actuator(f"h{i}", "load", conventions.from_dict(SAMPLES[p]), 0.5)
            for i, p in enumerate(sorted(SAMPLES))]
    T, sps = 6, 1.0
    clock = ManualClock()  # the day plays slot by slot (tests/playback.py)
    plans = {a.id: [bool((t + i) % 2) for t in range(T)] for i, a in enumerate(acts)}
    cfg = BridgeConfig(run="conv", slots=T, slot_minutes=15, seconds_per_slot=sps,
                       actuators=acts)
    src = StaticSource({a.device: np.ones(T) for a in acts}, plans)
    with MqttBroker(tmp_path) as broker:
        foreign = make_client()
        foreign.connect(broker.host, broker.port)
        foreign.loop_start()
        foreign.publish("homeassistant/switch/x/y/config", '{"unique_id":"someone_else"}',
                        qos=1, retain=True).wait_for_publish(5)
        with EmulatorHost(acts, broker.url, tmp_path, clock=clock) as host:
            bridge = Bridge(cfg, src, broker.url, tmp_path, ack_timeout=2.0, clock=clock)
            stats = DrivenDay(bridge, clock, target=lambda: bridge.run(linger=0)
                              ).start().finish()
            status = bridge.status()
            events = read_events(tmp_path / "emulators.jsonl")
            for a in acts:
                mine = [e for e in events if e["actuator"] == a.id]
                assert check_plan_followed(mine, plans[a.id], status["day_start"], sps,
                                           tolerance=0.9 * sps) == [], a.id  # in its slot
            assert stats["commands"] == stats["acks"] and stats["retries"] == 0
            # Zigbee2MQTT stopped: its devices are offline, not unacknowledged
            z = next(a for a in acts if a.protocol == "zigbee2mqtt")
            watcher = Bridge(cfg, StaticSource({}, {}), broker.url, tmp_path)
            watcher.connect()
            try:
                _wait(lambda: watcher.status()["actuators"][z.id]["online"] is True)
                gw = host._gateway_clients[0]
                gw.publish("zb/bridge/state", '{"state":"offline"}', qos=1,
                           retain=True).wait_for_publish(5)
                _wait(lambda: watcher.status()["actuators"][z.id]["online"] is False)
                others = [a.id for a in acts if a is not z]
                assert all(watcher.status()["actuators"][i]["online"] for i in others)
            finally:
                watcher.close()
        cleared = clear_retained(broker.url, cfg)
        assert "lab/conv/status" in cleared
        assert sum(t.startswith("homeassistant/") for t in cleared) == 3 + 3  # + sensors
        left: dict[str, bytes] = {}
        done = threading.Event()
        foreign.on_message = lambda c, u, m: (left.__setitem__(m.topic, m.payload)
                                              if m.retain else done.set())
        foreign.subscribe([("lab/conv/#", 1), ("homeassistant/#", 1)])
        foreign.publish("lab/conv/marker", "x", qos=1)
        _wait(done.is_set)
        assert set(left) == {"homeassistant/switch/x/y/config"}
        foreign.loop_stop()
        foreign.disconnect()
