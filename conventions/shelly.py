"""Shelly Gen2 RPC over MQTT (https://shelly-api-docs.shelly.cloud/gen2/ComponentsAndServices/Mqtt).

With `<id>` the device's MQTT topic prefix (by default its id, e.g. shellyplus1-a8032ab1c2d3)
and switch n:
    <id>/rpc               {"id": k, "src": "<caller>", "method": "Switch.Set",
                            "params": {"id": n, "on": true}}                       -> the device
                           (also Switch.Toggle {"id": n} and Switch.GetStatus {"id": n})
    <caller>/rpc           {"id": k, "src": "<id>", "dst": "<caller>", "result": {...}} or
                           {..., "error": {"code": ..., "message": ...}}           <- the device
    <id>/events/rpc        {"method": "NotifyStatus", "params": {"switch:<n>": {"output": true,
                            ...}}} after every change (RPC status notifications) <- the device
    <id>/status/switch:<n> {"id": n, "output": true, ...} (generic status updates)
    <id>/online            true | false, retained (false is the MQTT will)
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Literal

from pydantic import Field

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
    text,
)

CALLER = "energy-chain-lab"  # the src of the lab's RPC calls; answers come on CALLER/rpc
_ids = itertools.count(1)


class ShellyGen2(Convention):
    """A Shelly Gen2/Gen3 switch (Plus 1, Plus Plug S, ...) over MQTT RPC."""

    protocol: Literal["shelly"] = "shelly"
    device: str = mqtt_name("the device's MQTT topic prefix (its id by default)")
    switch: int = Field(0, ge=0, le=15, description="the switch component's id")

    @property
    def address(self) -> str:
        return f"{self.device}#{self.switch}" if self.switch else self.device

    @property
    def _key(self) -> str:
        return f"switch:{self.switch}"

    def _rpc(self, on: bool) -> dict[str, Any]:
        return {"id": next(_ids), "src": CALLER, "method": "Switch.Set",
                "params": {"id": self.switch, "on": on}}

    # ---- controller
    def command(self, on: bool) -> Message:
        return Message(f"{self.device}/rpc", dumps(self._rpc(on)))

    def report_topics(self) -> list[str]:
        return [f"{self.device}/status/{self._key}", f"{self.device}/events/rpc",
                f"{self.device}/online"]

    def parse_report(self, topic: str, payload: bytes) -> Report:
        if topic == f"{self.device}/online":
            word = text(payload)
            if word not in ("true", "false"):
                raise MalformedPayload(f"expected true or false, got {word!r:.60}")
            return Report(online=word == "true")
        obj = json_obj(payload)
        if topic == f"{self.device}/status/{self._key}":
            status = obj
        elif topic == f"{self.device}/events/rpc":
            status = (obj.get("params") or {}).get(self._key) \
                if obj.get("method") == "NotifyStatus" else None
            if not isinstance(status, dict) or "output" not in status:
                return Report()  # another component's or another kind of event
        else:
            raise MalformedPayload(f"{topic} is not a report topic of Shelly {self.device}")
        if not isinstance(status.get("output"), bool):
            raise MalformedPayload(f"no boolean 'output' in {payload[:60]!r}")
        return Report(state=status["output"])

    def ha_config(self, light: bool) -> dict[str, Any]:
        on = dumps({"id": 1, "src": "homeassistant", "method": "Switch.Set",
                    "params": {"id": self.switch, "on": True}})
        off = on.replace('"on":true', '"on":false')
        avail = [{"topic": f"{self.device}/online", "payload_available": "true",
                  "payload_not_available": "false"}]
        cfg: dict[str, Any] = {"command_topic": f"{self.device}/rpc",
                               "state_topic": f"{self.device}/status/{self._key}",
                               "availability": avail}
        if light:  # the template schema maps the RPC both ways
            cfg.update(schema="template", command_on_template=on, command_off_template=off,
                       state_template="{{ 'on' if value_json.output else 'off' }}")
        else:
            cfg.update(payload_on=on, payload_off=off, state_on=ON, state_off=OFF,
                       value_template="{{ 'ON' if value_json.output else 'OFF' }}")
        return cfg
    # ---- device
    def will(self) -> Message:
        return self.availability(False)

    def availability(self, online: bool) -> Message:
        return Message(f"{self.device}/online", "true" if online else "false", retain=True)

    def command_topics(self) -> list[str]:
        return [f"{self.device}/rpc"]

    def handle(self, topic: str, payload: bytes, state: bool) -> Reply:
        try:
            req = json.loads(text(payload))
        except json.JSONDecodeError as e:
            raise MalformedPayload(f"not JSON: {payload[:40]!r}") from e
        if not isinstance(req, dict) or not isinstance(req.get("src"), str):
            raise MalformedPayload(f"an RPC request needs a src, got {payload[:40]!r}")
        params = req.get("params") or {}
        method = req.get("method")
        if not isinstance(params, dict) or params.get("id", 0) != self.switch or method not in (
                "Switch.Set", "Switch.Toggle", "Switch.GetStatus"):
            return Reply(None, (self._answer(req, error=(-103, "Invalid argument")),))
        if method == "Switch.GetStatus":
            return Reply(None, (self._answer(req, result={"id": self.switch,
                                                          "output": state}),))
        if method == "Switch.Toggle":
            return Reply("TOGGLE", (self._answer(req, result={"was_on": state}),))
        if not isinstance(params.get("on"), bool):
            return Reply(None, (self._answer(req, error=(-103, "Invalid argument: on")),))
        return Reply(params["on"], (self._answer(req, result={"was_on": state}),))

    def _answer(self, req: dict[str, Any], result: Any = None,
                error: tuple[int, str] | None = None) -> Message:
        body: dict[str, Any] = {"id": req.get("id"), "src": self.device, "dst": req["src"]}
        if error is None:
            body["result"] = result
        else:
            body["error"] = {"code": error[0], "message": error[1]}
        return Message(f"{req['src']}/rpc", dumps(body))

    def state_messages(self, on: bool) -> list[Message]:
        status = {"id": self.switch, "source": "MQTT", "output": on}
        return [Message(f"{self.device}/status/{self._key}", dumps(status)),
                Message(f"{self.device}/events/rpc", dumps(
                    {"src": self.device, "dst": f"{self.device}/events",
                     "method": "NotifyStatus", "params": {self._key: status}}))]

    def error(self, topic: str, payload: bytes) -> list[Message]:
        return []  # a Shelly cannot answer a request it cannot read: it has no src
