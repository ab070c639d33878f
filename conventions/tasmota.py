"""Tasmota (https://tasmota.github.io/docs/MQTT/).

With FullTopic `%prefix%/%topic%/` (Tasmota's default) and relay n:
    cmnd/<topic>/POWER<n>     ON | OFF (also TOGGLE, 1, 0, 2, true, false; empty = query)
    stat/<topic>/RESULT       {"POWER<n>": "ON"}: the answer to every command
    stat/<topic>/POWER<n>     ON | OFF: the state after every change or query (not sent with
                              SetOption90, which keeps only JSON answers)
    tele/<topic>/LWT          Online | Offline, retained (Offline is the MQTT will)
`<n>` is empty for a single relay (`relay: 0`, the default) and the relay's index otherwise
(a multi-relay device, or a single relay with SetOption26 on, which says POWER1).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from conventions.base import (
    OFF,
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

ONLINE, OFFLINE = "Online", "Offline"
_WORDS = {"ON": True, "1": True, "TRUE": True, "OFF": False, "0": False, "FALSE": False}


class Tasmota(Convention):
    """A Tasmota relay, addressed by its topic (and FullTopic and relay index)."""

    protocol: Literal["tasmota"] = "tasmota"
    topic: str = mqtt_name("the device's Tasmota Topic")
    full_topic: str = Field("%prefix%/%topic%/", description="the device's FullTopic: "
                            "%prefix% and %topic% in any order, ending in /")
    relay: int = Field(0, ge=0, le=32, description="0: a single relay (POWER); n: POWER<n>")

    @field_validator("full_topic")
    @classmethod
    def _full_topic(cls, v: str) -> str:
        if "%prefix%" not in v or "%topic%" not in v or not v.endswith("/") or re.search(
                r"[+#\s]", v):
            raise ValueError("a FullTopic holding %prefix% and %topic%, ending in /, "
                             "without wildcards or spaces")
        return v

    @property
    def address(self) -> str:
        return self.topic

    def _t(self, prefix: str, leaf: str) -> str:
        return self.full_topic.replace("%prefix%", prefix).replace("%topic%", self.topic) + leaf

    @property
    def _power(self) -> str:
        return f"POWER{self.relay}" if self.relay else "POWER"

    # ---- controller
    def command(self, on: bool) -> Message:
        return Message(self._t("cmnd", self._power), ON if on else OFF)

    def report_topics(self) -> list[str]:
        return [self._t("stat", self._power), self._t("stat", "RESULT"),
                self._t("tele", "LWT")]

    def parse_report(self, topic: str, payload: bytes) -> Report:
        if topic == self._t("stat", self._power):
            return Report(state=onoff(text(payload)))
        if topic == self._t("stat", "RESULT"):
            value = json_obj(payload).get(self._power)  # other answers carry no state
            return Report() if value is None else Report(state=onoff(value))
        if topic == self._t("tele", "LWT"):
            word = text(payload)
            if word not in (ONLINE, OFFLINE):
                raise MalformedPayload(f"expected Online or Offline, got {word!r:.60}")
            return Report(online=word == ONLINE)
        raise MalformedPayload(f"{topic} is not a report topic of Tasmota {self.topic}")

    def ha_config(self, light: bool) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "command_topic": self.command(True).topic, "payload_on": ON, "payload_off": OFF,
            "state_topic": self._t("stat", self._power),
            "availability": [{"topic": self._t("tele", "LWT"), "payload_available": ONLINE,
                              "payload_not_available": OFFLINE}]}
        if not light:
            cfg.update(state_on=ON, state_off=OFF)
        return cfg
    # ---- device
    def will(self) -> Message:
        return self.availability(False)

    def availability(self, online: bool) -> Message:
        return Message(self._t("tele", "LWT"), ONLINE if online else OFFLINE, retain=True)

    def command_topics(self) -> list[str]:
        return [self._t("cmnd", self._power)]

    def handle(self, topic: str, payload: bytes, state: bool) -> Reply:
        word = text(payload).upper()
        if word == "":
            return Reply(None)
        if word in ("TOGGLE", "2"):
            return Reply("TOGGLE")
        if word in _WORDS:
            return Reply(_WORDS[word])
        raise MalformedPayload(f"unknown {self._power} payload {word!r:.40}")

    def state_messages(self, on: bool) -> list[Message]:
        s = ON if on else OFF  # not retained: Tasmota's default PowerRetain 0
        return [Message(self._t("stat", "RESULT"), dumps({self._power: s})),
                Message(self._t("stat", self._power), s)]

    def error(self, topic: str, payload: bytes) -> list[Message]:
        return [Message(self._t("stat", "RESULT"), dumps({"Command": "Error"}))]
