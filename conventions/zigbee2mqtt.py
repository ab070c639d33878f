"""Zigbee2MQTT (https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html).

With base topic `zigbee2mqtt` (configurable per actuator, as in Zigbee2MQTT's
`mqtt.base_topic`):
    zigbee2mqtt/<name>/set           {"state": "ON" | "OFF" | "TOGGLE"}      -> the device
    zigbee2mqtt/<name>/get           {"state": ""} (query)                   -> the device
    zigbee2mqtt/<name>               {"state": "ON", ...}, retained          <- the device
    zigbee2mqtt/<name>/availability  {"state": "online" | "offline"}, retained; only when
                                     device availability is enabled (off by default)
    zigbee2mqtt/bridge/state         {"state": "online" | "offline"}, retained, Zigbee2MQTT's
                                     own will: every device behind a stopped Zigbee2MQTT is
                                     offline, not "unacknowledged"
Legacy plain `online` / `offline` payloads are accepted for both availability topics.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator

from conventions.base import (
    MQTT_NAME,
    ON,
    Convention,
    MalformedPayload,
    Message,
    Reply,
    Report,
    dumps,
    json_obj,
    mqtt_name,
    onoff,
    text,
)

FRIENDLY_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_/ -]*$"
ONLINE, OFFLINE = "online", "offline"


def _availability(payload: bytes) -> bool:
    word = text(payload)
    if word in (ONLINE, OFFLINE):
        return word == ONLINE
    state = json_obj(payload).get("state")
    if state in (ONLINE, OFFLINE):
        return state == ONLINE
    raise MalformedPayload(f"expected state online or offline, got {word!r:.60}")


class Zigbee2Mqtt(Convention):
    """A Zigbee device behind Zigbee2MQTT, addressed by its friendly name."""

    protocol: Literal["zigbee2mqtt"] = "zigbee2mqtt"
    name: str = mqtt_name("the device's friendly name (spaces allowed)", FRIENDLY_NAME)
    base_topic: str = Field("zigbee2mqtt", description="Zigbee2MQTT's mqtt.base_topic",
                            pattern=MQTT_NAME, max_length=64)

    @field_validator("name")
    @classmethod
    def _not_a_verb(cls, v: str) -> str:
        # Zigbee2MQTT reads <name>/set and /get as commands and /<n> as an endpoint
        last = v.rsplit("/", 1)[-1]
        if last in ("set", "get", "availability") or last.isdigit() or v.startswith("bridge"):
            raise ValueError("a friendly name whose last level is not set, get, availability "
                             "or a number, and not under bridge/")
        return v

    @property
    def address(self) -> str:
        return f"{self.base_topic}/{self.name}" if self.base_topic != "zigbee2mqtt" \
            else self.name

    def _t(self, leaf: str = "") -> str:
        return f"{self.base_topic}/{self.name}" + (f"/{leaf}" if leaf else "")

    @property
    def _bridge_state(self) -> str:
        return f"{self.base_topic}/bridge/state"

    # ---- controller
    def command(self, on: bool) -> Message:
        return Message(self._t("set"), dumps({"state": ON if on else "OFF"}))

    def report_topics(self) -> list[str]:
        return [self._t(), self._t("availability"), self._bridge_state]

    def parse_report(self, topic: str, payload: bytes) -> Report:
        if topic == self._t():
            obj = json_obj(payload)
            if "state" not in obj:
                raise MalformedPayload(f"no 'state' in {payload[:60]!r}")
            return Report(state=onoff(obj["state"]))
        if topic in (self._t("availability"), self._bridge_state):
            return Report(online=_availability(payload))
        raise MalformedPayload(f"{topic} is not a report topic of Zigbee2MQTT {self.name}")

    def ha_config(self, light: bool) -> dict[str, Any]:
        # availability from the bridge's state, which Zigbee2MQTT always publishes (device
        # availability is off by default, and entities tied to it would stay unavailable)
        avail = [{"topic": self._bridge_state, "value_template": "{{ value_json.state }}",
                  "payload_available": ONLINE, "payload_not_available": OFFLINE}]
        cfg: dict[str, Any] = {"command_topic": self._t("set"), "state_topic": self._t(),
                               "availability": avail}
        if light:  # the JSON schema reads and writes {"state": ...} as Zigbee2MQTT does
            cfg["schema"] = "json"
        else:
            cfg.update(payload_on=self.command(True).payload,
                       payload_off=self.command(False).payload,
                       value_template="{{ value_json.state }}", state_on=ON, state_off="OFF")
        return cfg
    # ---- device
    def will(self) -> Message:
        return self.availability(False)

    def availability(self, online: bool) -> Message:
        return Message(self._t("availability"), dumps({"state": ONLINE if online else OFFLINE}),
                       retain=True)

    def command_topics(self) -> list[str]:
        return [self._t("set"), self._t("set") + "/state", self._t("get")]

    def handle(self, topic: str, payload: bytes, state: bool) -> Reply:
        if topic == self._t("get"):
            return Reply(None)
        if topic.endswith("/set/state"):
            value: Any = text(payload)
        else:
            try:
                obj = json.loads(text(payload))
            except json.JSONDecodeError as e:
                raise MalformedPayload(f"not JSON: {payload[:40]!r}") from e
            if not isinstance(obj, dict) or "state" not in obj:
                raise MalformedPayload(f"expected {{\"state\": ...}}, got {payload[:40]!r}")
            value = obj["state"]
        if not isinstance(value, str) or value.upper() not in ("ON", "OFF", "TOGGLE"):
            raise MalformedPayload(f"state {value!r:.40}: expected ON, OFF or TOGGLE")
        return Reply("TOGGLE" if value.upper() == "TOGGLE" else value.upper() == "ON")

    def state_messages(self, on: bool) -> list[Message]:
        return [Message(self._t(), dumps({"state": ON if on else "OFF", "linkquality": 255}),
                        retain=True)]

    def gateway(self) -> tuple[Message, Message] | None:
        return (Message(self._bridge_state, dumps({"state": ONLINE}), retain=True),
                Message(self._bridge_state, dumps({"state": OFFLINE}), retain=True))
