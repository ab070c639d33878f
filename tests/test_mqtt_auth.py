"""The lab's broker with per-run credentials and ACLs (mqtt_bridge.auth), real mosquitto:
strangers are refused, and a device's credentials reach only its own topics, so it can
neither command a neighbour, forge its acknowledgment, nor retain an Offline will for it.
Also `user:pass@` and `mqtts://` URLs."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

import conventions
from mqtt_bridge.auth import emulator_urls, plan_users, role_url
from mqtt_bridge.broker import MqttBroker, find_mosquitto, wait_port
from mqtt_bridge.config import Actuator, BridgeConfig
from mqtt_bridge.mqttc import hide, make_client, parse_url

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="needs mosquitto")

ACTS = [Actuator("h1", "bulb", conventions.from_dict({"protocol": "tasmota", "topic": "h1_bulb"})),
        Actuator("h2", "lamp", conventions.from_dict({"protocol": "zigbee2mqtt",
                                                      "name": "h2 lamp"})),
        Actuator("h3", "relay", conventions.from_dict({"protocol": "shelly",
                                                       "device": "shellyplus1-h3"}))]
CFG = BridgeConfig(run="auth", slots=4, slot_minutes=15, actuators=ACTS)


def _connect(url: str, timeout: float = 10.0) -> tuple[mqtt.Client, object]:
    """A connected client, or (client, the refusal's reason code)."""
    c = make_client(url=url)
    result: list = []
    ev = threading.Event()

    def on_connect(cl, userdata, flags, rc, props=None):
        result.append(rc)
        ev.set()

    c.on_connect = on_connect
    c.reconnect_delay_set(5, 10)  # no reconnect storm on a refusal
    host, port = parse_url(url)
    c.connect_async(host, port)
    c.loop_start()
    assert ev.wait(timeout), "no CONNACK"
    return c, result[0]


def _subscribe(c: mqtt.Client, topic: str, timeout: float = 10.0) -> None:
    """Subscribe and wait for the broker's SUBACK (a refused topic is acknowledged too)."""
    acked = threading.Event()
    c.on_subscribe = lambda *_: acked.set()
    c.subscribe(topic, 1)
    assert acked.wait(timeout), f"no SUBACK for {topic}"


class Observer:
    """Everything the broker delivers on '#', as the observer user sees it."""

    def __init__(self, url: str) -> None:
        self.seen: list[tuple[str, bytes, bool]] = []
        self.marks: set[str] = set()
        self.cond = threading.Condition()
        self.client, rc = _connect(url)
        assert not rc.is_failure
        self.client.on_message = self._on
        _subscribe(self.client, "#")  # before anything is published: it misses nothing

    def _on(self, c, userdata, msg) -> None:
        with self.cond:
            self.seen.append((msg.topic, msg.payload, bool(msg.retain)))
            self.marks.add(msg.topic)
            self.cond.notify_all()

    def wait_for(self, topic: str, timeout: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: topic in self.marks, timeout), topic

    def topics(self) -> set[str]:
        with self.cond:
            return {t for t, _, _ in self.seen}


@pytest.fixture
def broker(tmp_path: Path):
    b = MqttBroker(tmp_path, kind="mosquitto", users=plan_users(CFG))
    b.start()
    yield b
    b.stop()


def test_strangers_and_wrong_passwords_are_refused(broker):
    assert broker.authenticated
    _, rc = _connect(broker.url)  # anonymous
    assert rc.is_failure
    bridge = role_url(broker.dir.parent, "bridge")
    assert bridge and bridge != broker.url
    _, rc = _connect(bridge.replace(bridge.split(":")[2].split("@")[0], "wrong"))
    assert rc.is_failure
    c, rc = _connect(bridge)
    assert not rc.is_failure
    c.disconnect()
    for f in ("passwd", "acl", "bridge.url", "observer.url", "emulators.json"):
        assert (broker.dir / f).stat().st_mode & 0o777 == 0o600


def test_a_device_reaches_only_its_own_topics(broker):
    obs = Observer(role_url(broker.dir.parent, "observer"))
    urls = emulator_urls(broker.dir.parent)
    bulb, lamp = ACTS[0].convention, ACTS[1].convention
    emu_bulb, rc = _connect(urls["h1/bulb"])
    assert not rc.is_failure
    # forged: a neighbour's command, its acknowledgment, a retained Offline in its name,
    # and the bridge's own topics
    emu_bulb.publish(lamp.command(True).topic, lamp.command(True).payload, qos=1)
    for m in lamp.state_messages(True):
        emu_bulb.publish(m.topic, m.payload, qos=1)
    emu_bulb.publish(lamp.will().topic, lamp.will().payload, qos=1, retain=True)
    emu_bulb.publish("lab/auth/status", "{}", qos=1, retain=True)
    emu_bulb.publish("homeassistant/switch/x/y/config", "{}", qos=1, retain=True)
    # allowed: its own state; delivered after the forged ones, in order on one connection
    own = bulb.state_messages(True)[-1]
    emu_bulb.publish(own.topic, own.payload, qos=1).wait_for_publish(5)
    obs.wait_for(own.topic)
    forged = {lamp.command(True).topic, lamp.will().topic, "lab/auth/status",
              "homeassistant/switch/x/y/config", *(m.topic for m in lamp.state_messages(True))}
    assert not forged & obs.topics()
    # the lamp's own credentials do reach its topics (a friendly name with a space)
    emu_lamp, _ = _connect(urls["h2/lamp"])
    mine = lamp.state_messages(False)[0]
    emu_lamp.publish(mine.topic, mine.payload, qos=1).wait_for_publish(5)
    obs.wait_for(mine.topic)
    emu_lamp.disconnect()
    # nor can it read another device's commands
    got: list[str] = []
    emu_bulb.on_message = lambda c, u, m: got.append(m.topic)
    _subscribe(emu_bulb, lamp.command(True).topic)  # in force before the bridge publishes
    bridge, _ = _connect(role_url(broker.dir.parent, "bridge"))
    bridge.publish(lamp.command(True).topic, lamp.command(True).payload, qos=1)
    bridge.publish(bulb.command(True).topic, "ON", qos=1).wait_for_publish(5)
    obs.wait_for(bulb.command(True).topic)
    assert lamp.command(True).topic in obs.topics() and got == []
    # the observer writes nothing
    obs.client.publish(bulb.command(False).topic, "OFF", qos=1)
    obs.client.publish("lab/auth/observer-marker", "x", qos=1).wait_for_publish(5)
    bridge.publish("lab/auth/bridge-marker", "x", qos=1).wait_for_publish(5)
    obs.wait_for("lab/auth/bridge-marker")
    assert "lab/auth/observer-marker" not in obs.topics()
    for c in (emu_bulb, bridge, obs.client):
        c.disconnect()
        c.loop_stop()


def test_url_credentials_are_parsed_and_hidden():
    url = "mqtt://user%40lab:p%3Ass@broker.example:1884"
    assert parse_url(url) == ("broker.example", 1884)
    assert parse_url("mqtts://u:p@h") == ("h", 8883)
    assert "p%3Ass" not in hide(url) and "***" in hide(url)
    c = make_client(url=url)
    assert c._username == b"user@lab" and c._password == b"p:ss"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_mqtts_with_a_private_ca(tmp_path: Path, monkeypatch):
    """A TLS listener with a CA made here; the client trusts it through MQTT_CA_FILE."""
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
        "ca.crt", "-days", "2", "-subj", "/CN=lab test CA")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost")
    (tmp_path / "ext").write_text("subjectAltName=DNS:localhost\n")
    ssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext")
    b = MqttBroker(tmp_path, kind="mosquitto", users=plan_users(CFG))
    port = b.port
    conf = tmp_path / "tls.conf"
    conf.write_text(f"listener {port} 127.0.0.1\ncafile {tmp_path}/ca.crt\n"
                    f"certfile {tmp_path}/srv.crt\nkeyfile {tmp_path}/srv.key\n"
                    "allow_anonymous true\n" + ("user root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_port("127.0.0.1", port, 10)
        monkeypatch.setenv("MQTT_CA_FILE", str(tmp_path / "ca.crt"))
        c, rc = _connect(f"mqtts://localhost:{port}")
        assert not rc.is_failure
        c.disconnect()
        c.loop_stop()
    finally:
        proc.terminate()
        proc.wait(10)
