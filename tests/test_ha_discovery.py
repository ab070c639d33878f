"""Home Assistant discovery configs and the emulators against their references.

Home Assistant needs Python >= 3.12 and cannot be installed here, so what its MQTT platforms
require of a discovery config, and how they read a state message, is encoded below, each
rule citing the file of home-assistant/core it was read from (commit in the comment). For
every convention, the config the bridge publishes is checked against those rules, and the
payloads Home Assistant would send are fed to the emulated device, whose answers Home
Assistant must read back as the right state. The emulators are further checked against
reference exchanges quoted from each device's own documentation.
"""

from __future__ import annotations

import json
from typing import Any

import jinja2
import pytest

import conventions
from conventions.shelly import ShellyGen2
from conventions.tasmota import Tasmota
from conventions.zigbee2mqtt import Zigbee2Mqtt
from mqtt_bridge import topics as tp
from mqtt_bridge.config import Actuator

# homeassistant/components/mqtt/switch.py (home-assistant/core): command_topic required
# (MQTT_RW_SCHEMA); payload_on/payload_off default "ON"/"OFF"; state_on/state_off default to
# payload_on/payload_off; the state is value_template(payload) compared with state_on/off.
# homeassistant/components/mqtt/light/schema_basic.py: command_topic required; the state is
# state_value_template(payload) compared with payload_on/payload_off.
# homeassistant/components/mqtt/light/schema_json.py (commit 00c7b334dde9): command_topic
# required; the state message is JSON and values["state"] == "ON" / "OFF"; HA sends
# {"state": "ON"} (plus attributes) to command_topic.
# homeassistant/components/mqtt/light/schema_template.py (commit 0076ac9643e1):
# command_on_template and command_off_template required (vol.Required), command_topic
# required; the state is state_template(payload) compared with "on" / "off".
# homeassistant/components/mqtt/mixins.py: availability entries need a topic;
# payload_available / payload_not_available default "online" / "offline", compared after the
# entry's value_template.
REQUIRED = {"switch": {"command_topic"}, "basic": {"command_topic"},
            "json": {"command_topic"},
            "template": {"command_topic", "command_on_template", "command_off_template"}}
DISCOVERY_KEYS = {"name", "unique_id", "device", "qos", "availability", "command_topic",
                  "state_topic", "payload_on", "payload_off", "state_on", "state_off",
                  "value_template", "state_value_template", "schema", "command_on_template",
                  "command_off_template", "state_template"}


def _render(template: str | None, payload: str) -> str:
    """What HA's MqttValueTemplate.async_render_with_possible_json_value returns."""
    if template is None:
        return payload
    try:
        value_json = json.loads(payload)
    except ValueError:
        value_json = None
    return jinja2.Template(template).render(value=payload, value_json=value_json).strip()


def _schema(cfg: dict[str, Any], light: bool) -> str:
    return cfg.get("schema", "basic") if light else "switch"


def ha_command(cfg: dict[str, Any], light: bool, on: bool) -> str:
    """The payload HA publishes on command_topic to switch the entity."""
    schema = _schema(cfg, light)
    if schema == "json":
        return json.dumps({"state": "ON" if on else "OFF"})
    if schema == "template":
        return jinja2.Template(cfg["command_on_template" if on else "command_off_template"]
                               ).render(state=on)
    return cfg.get("payload_on" if on else "payload_off", "ON" if on else "OFF")


def ha_state(cfg: dict[str, Any], light: bool, payload: str) -> bool | None:
    """The entity's state after a message on state_topic (None: HA cannot read it)."""
    schema = _schema(cfg, light)
    if schema == "json":
        state = json.loads(payload).get("state")
        return {"ON": True, "OFF": False}.get(state)
    if schema == "template":
        return {"on": True, "off": False}.get(_render(cfg.get("state_template"), payload))
    if schema == "basic":
        value = _render(cfg.get("state_value_template"), payload)
        on, off = cfg.get("payload_on", "ON"), cfg.get("payload_off", "OFF")
    else:
        value = _render(cfg.get("value_template"), payload)
        on = cfg.get("state_on", cfg.get("payload_on", "ON"))
        off = cfg.get("state_off", cfg.get("payload_off", "OFF"))
    return True if value == on else False if value == off else None


def ha_available(entry: dict[str, Any], payload: str) -> bool | None:
    value = _render(entry.get("value_template"), payload)
    return True if value == entry.get("payload_available", "online") else \
        False if value == entry.get("payload_not_available", "offline") else None


# a Tasmota plug, a Zigbee2MQTT bulb and a Shelly switch, each also the other way round
CASES = [("plug", Tasmota(topic="tasmota_plug")), ("bulb", Tasmota(topic="tasmota_bulb")),
         ("bulb", Zigbee2Mqtt(name="hall bulb")), ("plug", Zigbee2Mqtt(name="desk plug")),
         ("switch", ShellyGen2(device="shellyplus1-a8032ab1c2d3")),
         ("lamp", ShellyGen2(device="shellyplus1-b0b21c0e1f2a"))]


@pytest.mark.parametrize("component,conv", CASES,
                         ids=[f"{c.protocol}-{comp}" for comp, c in CASES])
def test_discovery_config_drives_the_device_and_reads_its_state(component, conv):
    act = Actuator("home01", component, conv, 0.1)
    topic, cfg = tp.ha_discovery(act)
    light = topic.split("/")[1] == "light"
    assert light == (component in ("bulb", "lamp"))
    assert set(cfg) <= DISCOVERY_KEYS, set(cfg) - DISCOVERY_KEYS
    assert REQUIRED[_schema(cfg, light)] <= set(cfg)
    assert cfg["unique_id"].startswith("ecl_") and cfg["device"]["identifiers"]
    for on in (True, False):
        # what HA sends is what the device obeys ...
        reply = conv.handle(cfg["command_topic"], ha_command(cfg, light, on).encode(), not on)
        assert reply.want is on
        # ... and what the device then reports, HA reads as that state
        msgs = [m for m in conv.state_messages(on) if m.topic == cfg["state_topic"]]
        assert msgs and all(ha_state(cfg, light, m.payload) is on for m in msgs)
    for online in (True, False):
        m = conv.availability(online) if conv.gateway() is None else \
            conv.gateway()[0 if online else 1]
        entries = [e for e in cfg["availability"] if e["topic"] == m.topic]
        assert entries and ha_available(entries[0], m.payload) is online


def test_real_devices_get_no_discovery_config_from_the_lab(tmp_path):
    """A real device announces itself (Tasmota's SetOption19 / its HA integration,
    Zigbee2MQTT's own discovery, Shelly's): a second config would show it twice."""
    import threading

    import numpy as np

    from mqtt_bridge.bridge import Bridge
    from mqtt_bridge.broker import MqttBroker
    from mqtt_bridge.config import BridgeConfig
    from mqtt_bridge.mqttc import make_client
    from mqtt_bridge.source import StaticSource

    real = Actuator("h", "lamp", Zigbee2Mqtt(name="lamp", real=True), 0.1)
    emulated = Actuator("h", "plug", Tasmota(topic="h_plug"), 0.1)
    cfg = BridgeConfig(run="r", slots=2, slot_minutes=15, actuators=[real, emulated])
    src = StaticSource({"h": np.zeros(2)}, {real.id: [True, False], emulated.id: [True, True]})
    with MqttBroker(tmp_path) as broker:
        bridge = Bridge(cfg, src, broker.url, tmp_path)
        bridge.connect()
        try:
            assert bridge.wait_finalized(10)
        finally:
            bridge.close()
        seen: dict[str, bytes] = {}
        done = threading.Event()
        c = make_client()
        c.on_connect = lambda cl, *a: (cl.subscribe("homeassistant/#", 1),
                                       cl.publish("lab/r/marker", "x", qos=1))
        c.on_message = lambda cl, u, m: seen.__setitem__(m.topic, m.payload) \
            if m.retain else done.set()
        c.connect(broker.host, broker.port)
        c.subscribe("lab/r/marker", 1)
        c.loop_start()
        assert done.wait(10)
        c.loop_stop()
        c.disconnect()
    assert "homeassistant/switch/ecl_h/plug/config" in seen
    assert not any("/lamp/" in t for t in seen)


# -- the emulators against the devices' documentation ---------------------------------------

def _exchange(conv: conventions.Convention, topic: str, payload: str, state: bool
              ) -> tuple[bool, dict[str, str]]:
    reply = conv.handle(topic, payload.encode(), state)
    new = (not state) if reply.want == "TOGGLE" else state if reply.want is None else reply.want
    out = {m.topic: m.payload for m in (*reply.extra, *conv.state_messages(new))}
    return new, out


def test_tasmota_emulator_matches_the_tasmota_documentation():
    # https://tasmota.github.io/docs/MQTT/ ("Examples"): `cmnd/tasmota_switch/POWER TOGGLE`
    # answers `stat/tasmota_switch/RESULT {"POWER":"ON"}` and `stat/tasmota_switch/POWER ON`;
    # an empty payload queries; with SetOption26 (or several relays) the key is POWER1.
    t = Tasmota(topic="tasmota_switch")
    state, out = _exchange(t, "cmnd/tasmota_switch/POWER", "TOGGLE", False)
    assert state is True and json.loads(out["stat/tasmota_switch/RESULT"]) == {"POWER": "ON"}
    assert out["stat/tasmota_switch/POWER"] == "ON"
    state, out = _exchange(t, "cmnd/tasmota_switch/POWER", "", True)
    assert state is True and out["stat/tasmota_switch/POWER"] == "ON"
    t1 = Tasmota(topic="tasmota_switch", relay=1)
    _, out = _exchange(t1, "cmnd/tasmota_switch/POWER1", "OFF", True)
    assert json.loads(out["stat/tasmota_switch/RESULT"]) == {"POWER1": "OFF"}
    # FullTopic with %topic% first (Tasmota's "FullTopic %topic%/%prefix%/")
    tf = Tasmota(topic="tasmota_switch", full_topic="%topic%/%prefix%/")
    assert tf.command(True).topic == "tasmota_switch/cmnd/POWER"
    assert tf.availability(True).topic == "tasmota_switch/tele/LWT"
    assert t.will().payload == "Offline" and t.availability(True).payload == "Online"


def test_zigbee2mqtt_emulator_matches_the_zigbee2mqtt_documentation():
    # https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html:
    # `zigbee2mqtt/FRIENDLY_NAME/set {"state": "ON"}` → `zigbee2mqtt/FRIENDLY_NAME` with
    # {"state": "ON", ...}; `.../get {"state": ""}` reads it; `zigbee2mqtt/bridge/state`
    # {"state": "online"} (its will: offline); availability `{"state": "online"}`.
    z = Zigbee2Mqtt(name="FRIENDLY_NAME")
    state, out = _exchange(z, "zigbee2mqtt/FRIENDLY_NAME/set", '{"state": "ON"}', False)
    assert state is True and json.loads(out["zigbee2mqtt/FRIENDLY_NAME"])["state"] == "ON"
    state, out = _exchange(z, "zigbee2mqtt/FRIENDLY_NAME/get", '{"state": ""}', True)
    assert state is True and json.loads(out["zigbee2mqtt/FRIENDLY_NAME"])["state"] == "ON"
    state, _ = _exchange(z, "zigbee2mqtt/FRIENDLY_NAME/set", '{"state": "TOGGLE"}', True)
    assert state is False
    online, will = z.gateway()
    assert (online.topic, json.loads(online.payload)) == ("zigbee2mqtt/bridge/state",
                                                          {"state": "online"})
    assert json.loads(will.payload) == {"state": "offline"} and will.retain
    assert json.loads(z.availability(True).payload) == {"state": "online"}
    zb = Zigbee2Mqtt(name="lamp", base_topic="zigbee2mqtt_garden")  # mqtt.base_topic
    assert zb.command(True).topic == "zigbee2mqtt_garden/lamp/set"


def test_shelly_emulator_matches_the_shelly_gen2_documentation():
    # https://shelly-api-docs.shelly.cloud/gen2/ComponentsAndServices/Mqtt and .../Switch:
    # request on `<device_id>/rpc` {"id":123,"src":"user_1","method":"Switch.Set",
    # "params":{"id":0,"on":true}}, response on `user_1/rpc`
    # {"id":123,"src":"<device_id>","dst":"user_1","result":{"was_on":false}};
    # status notification `NotifyStatus` on `<device_id>/events/rpc`; `<device_id>/online`.
    dev = "shellyplus1-a8032ab1c2d3"
    s = ShellyGen2(device=dev)
    req = '{"id":123,"src":"user_1","method":"Switch.Set","params":{"id":0,"on":true}}'
    state, out = _exchange(s, f"{dev}/rpc", req, False)
    assert state is True
    assert json.loads(out["user_1/rpc"]) == {"id": 123, "src": dev, "dst": "user_1",
                                             "result": {"was_on": False}}
    note = json.loads(out[f"{dev}/events/rpc"])
    assert note["method"] == "NotifyStatus" and note["params"]["switch:0"]["output"] is True
    _, out = _exchange(s, f"{dev}/rpc", '{"id":7,"src":"user_1","method":"Switch.GetStatus",'
                       '"params":{"id":0}}', True)
    assert json.loads(out["user_1/rpc"])["result"]["output"] is True
    assert s.availability(True).payload == "true" and s.will().payload == "false"
