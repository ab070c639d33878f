"""Clear what a run leaves retained on the broker: its lab topics and its Home Assistant
discovery configs (removing a config with an empty retained payload is how Home Assistant
learns that the entity is gone). `lab down` and a stopping lab call `clear_retained`, so an
external broker (MQTT_URL) does not keep the entities of runs long gone.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt

from mqtt_bridge import topics as tp
from mqtt_bridge.broker import parse_url
from mqtt_bridge.config import BridgeConfig
from mqtt_bridge.mqttc import make_client


def _ours(topic: str, payload: bytes, cfg: BridgeConfig, discovery: set[str]) -> bool:
    """A retained message this run published (`discovery`: its actuators' config topics)."""
    if topic.startswith(tp.lab_root(cfg.run) + "/"):
        return True
    if not topic.startswith(tp.HA_PREFIX + "/") or not payload:
        return False
    try:
        conf = json.loads(payload)
    except ValueError:
        return False
    if not isinstance(conf, dict) or not str(conf.get("unique_id", "")).startswith("ecl_"):
        return False
    return topic in discovery or str(conf.get("state_topic", "")).startswith(
        tp.lab_root(cfg.run) + "/")


def clear_retained(url: str, cfg: BridgeConfig, timeout: float = 10.0) -> list[str]:
    """Publish an empty retained payload on every retained topic of this run; returns them.
    The broker sends retained messages before the marker this client publishes after
    subscribing, so receiving the marker means every retained message has arrived."""
    host, port = parse_url(url)
    marker = f"{tp.lab_root(cfg.run)}/cleanup/{uuid.uuid4().hex}"
    found: list[str] = []
    discovery = {tp.ha_discovery(a)[0] for a in cfg.actuators}
    done = threading.Event()

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == marker:
            done.set()
        elif msg.retain and msg.payload and _ours(msg.topic, msg.payload, cfg, discovery):
            found.append(msg.topic)

    def on_subscribe(c: mqtt.Client, *args: Any) -> None:
        c.publish(marker, "x", qos=1)

    client = make_client(f"lab-cleanup-{uuid.uuid4().hex[:6]}", url)
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_connect = lambda c, *a: c.subscribe(
        [(tp.lab_root(cfg.run) + "/#", 1), (tp.HA_PREFIX + "/+/+/+/config", 1)])
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise TimeoutError(f"clear_retained: no answer from {url} in {timeout} s")
        for topic in found:
            client.publish(topic, b"", qos=1, retain=True).wait_for_publish(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return found
