"""Every MQTT topic and payload the lab uses, in one place.

Lab topics (all retained JSON unless noted; `<run>` is the run folder's name):
    lab/<run>/status             bridge status: session, round, residuals {r, s}, rho,
                                 finalized, phase (waiting|playing|done), slot, per-actuator
                                 {planned, reported, online, state}, offline[],
                                 disagree[] (report the other state, or never acknowledged),
                                 stats {commands, acks, retries, latency_ms {p50, p99, n}}
    lab/<run>/bridge             "online" / "offline" (the bridge's LWT)
    lab/<run>/schedule/<device>  {"device", "slot_minutes", "start", "kw": [x_t ...]}
    lab/<run>/plan/<device>/<component>
                                 {"actuator", "protocol", "address", "plan": [0|1 ...],
                                  "mask": "0x..." (bit t = slot t), "on_slots"}
    lab/<run>/power/<device>     scheduled kW of the current slot, plain number (HA sensor)

Tasmota (https://tasmota.github.io/docs/MQTT/):
    cmnd/<topic>/POWER    ON | OFF (also TOGGLE, 1, 0, empty = query)   -> the device
    stat/<topic>/POWER    ON | OFF, after every change or query            <- the device
    stat/<topic>/RESULT   {"POWER": "ON"}                                   <- the device
    tele/<topic>/LWT      Online | Offline, retained (Offline is the MQTT will)

Zigbee2MQTT (https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html):
    zigbee2mqtt/<name>/set           {"state": "ON" | "OFF" | "TOGGLE"}       -> the device
    zigbee2mqtt/<name>/get           {"state": ""} (query)                    -> the device
    zigbee2mqtt/<name>               {"state": "ON", ...}, retained           <- the device
    zigbee2mqtt/<name>/availability  {"state": "online" | "offline"}, retained

Home Assistant MQTT discovery (https://www.home-assistant.io/integrations/mqtt/):
    homeassistant/<light|switch>/ecl_<device>/<component>/config   one per actuator
    homeassistant/sensor/ecl_<device>/scheduled_power/config        one per device
"""

from __future__ import annotations

import json
import re
from typing import Any

from mqtt_bridge.config import Actuator

QOS = 1
ON, OFF = "ON", "OFF"
TASMOTA_ONLINE, TASMOTA_OFFLINE = "Online", "Offline"
Z2M_ONLINE, Z2M_OFFLINE = "online", "offline"
BRIDGE_ONLINE, BRIDGE_OFFLINE = "online", "offline"
HA_PREFIX = "homeassistant"
MANUFACTURER = "energy-chain-lab"


class MalformedPayload(ValueError):
    """A payload that does not follow the protocol of its topic."""


# -- lab topics ---------------------------------------------------------------------------
def lab_root(run: str) -> str:
    return f"lab/{run}"


def lab_status(run: str) -> str:
    return f"lab/{run}/status"


def lab_bridge(run: str) -> str:
    return f"lab/{run}/bridge"


def lab_schedule(run: str, device: str) -> str:
    return f"lab/{run}/schedule/{device}"


def lab_plan(run: str, actuator_id: str) -> str:
    return f"lab/{run}/plan/{actuator_id}"


def lab_power(run: str, device: str) -> str:
    return f"lab/{run}/power/{device}"


def dumps(obj: Any) -> str:
    """Compact JSON, the payload format of every JSON lab topic."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


# -- Tasmota ------------------------------------------------------------------------------
def tasmota_cmnd(topic: str) -> str:
    return f"cmnd/{topic}/POWER"


def tasmota_stat(topic: str) -> str:
    return f"stat/{topic}/POWER"


def tasmota_result(topic: str) -> str:
    return f"stat/{topic}/RESULT"


def tasmota_lwt(topic: str) -> str:
    return f"tele/{topic}/LWT"


# -- Zigbee2MQTT --------------------------------------------------------------------------
def z2m_state(name: str) -> str:
    return f"zigbee2mqtt/{name}"


def z2m_set(name: str) -> str:
    return f"zigbee2mqtt/{name}/set"


def z2m_get(name: str) -> str:
    return f"zigbee2mqtt/{name}/get"


def z2m_availability(name: str) -> str:
    return f"zigbee2mqtt/{name}/availability"


# -- per actuator, whatever its protocol --------------------------------------------------
def command(act: Actuator, on: bool) -> tuple[str, str]:
    """(topic, payload) that switches `act` on or off."""
    if act.protocol == "tasmota":
        return tasmota_cmnd(act.address), ON if on else OFF
    return z2m_set(act.address), dumps({"state": ON if on else OFF})


def state_topic(act: Actuator) -> str:
    """Where `act` reports its state."""
    return tasmota_stat(act.address) if act.protocol == "tasmota" else z2m_state(act.address)


def availability_topic(act: Actuator) -> str:
    return tasmota_lwt(act.address) if act.protocol == "tasmota" \
        else z2m_availability(act.address)


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise MalformedPayload(f"not UTF-8: {payload[:40]!r}") from e


def _onoff(value: Any) -> bool:
    if isinstance(value, str) and value.upper() in (ON, OFF):
        return value.upper() == ON
    raise MalformedPayload(f"expected ON or OFF, got {value!r:.60}")


def _json_obj(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(_text(payload))
    except json.JSONDecodeError as e:
        raise MalformedPayload(f"not JSON: {payload[:60]!r}") from e
    if not isinstance(obj, dict):
        raise MalformedPayload(f"expected a JSON object, got {payload[:60]!r}")
    return obj


def parse_state(act: Actuator, payload: bytes) -> bool:
    """The on/off state in a state report of `act`; raises MalformedPayload."""
    if act.protocol == "tasmota":
        return _onoff(_text(payload))
    obj = _json_obj(payload)
    if "state" not in obj:
        raise MalformedPayload(f"no 'state' in {payload[:60]!r}")
    return _onoff(obj["state"])


def parse_availability(act: Actuator, payload: bytes) -> bool:
    """True when online. Zigbee2MQTT's legacy plain `online`/`offline` is accepted too."""
    text = _text(payload)
    if act.protocol == "tasmota":
        if text in (TASMOTA_ONLINE, TASMOTA_OFFLINE):
            return text == TASMOTA_ONLINE
        raise MalformedPayload(f"expected Online or Offline, got {text!r:.60}")
    if text in (Z2M_ONLINE, Z2M_OFFLINE):
        return text == Z2M_ONLINE
    state = _json_obj(payload).get("state")
    if state in (Z2M_ONLINE, Z2M_OFFLINE):
        return state == Z2M_ONLINE
    raise MalformedPayload(f"expected state online or offline, got {text!r:.60}")


# -- Home Assistant discovery -------------------------------------------------------------
_NOT_ID = re.compile(r"[^a-zA-Z0-9_-]")
_LIGHT_WORDS = ("bulb", "light", "lamp")


def ha_id(text: str) -> str:
    """An id HA accepts in a discovery topic ([a-zA-Z0-9_-])."""
    return _NOT_ID.sub("_", text)


def ha_component(act: Actuator) -> str:
    """`light` for an actuator whose component id or address names a bulb/light/lamp,
    else `switch` (plugs, relays)."""
    text = f"{act.component} {act.address}".lower()
    return "light" if any(w in text for w in _LIGHT_WORDS) else "switch"


def ha_device(device: str) -> dict[str, Any]:
    return {"identifiers": [f"ecl_{ha_id(device)}"], "name": device,
            "manufacturer": MANUFACTURER, "model": "home (energy-chain-lab device)"}


def ha_discovery(act: Actuator) -> tuple[str, dict[str, Any]]:
    """(topic, config) of the HA entity that controls `act`, through its own protocol (HA
    talks to the device directly, as it would to a real Tasmota or Zigbee2MQTT device)."""
    comp = ha_component(act)
    topic = f"{HA_PREFIX}/{comp}/ecl_{ha_id(act.device)}/{ha_id(act.component)}/config"
    cfg: dict[str, Any] = {
        "name": act.component,
        "unique_id": f"ecl_{ha_id(act.device)}_{ha_id(act.component)}",
        "command_topic": command(act, True)[0],
        "state_topic": state_topic(act),
        "qos": QOS,
        "device": ha_device(act.device),
    }
    if act.protocol == "tasmota":
        cfg.update(payload_on=ON, payload_off=OFF)
        cfg["availability"] = [{"topic": tasmota_lwt(act.address),
                                "payload_available": TASMOTA_ONLINE,
                                "payload_not_available": TASMOTA_OFFLINE}]
        if comp == "switch":
            cfg.update(state_on=ON, state_off=OFF)
    else:
        cfg.update(payload_on=command(act, True)[1], payload_off=command(act, False)[1])
        cfg["availability"] = [{"topic": z2m_availability(act.address),
                                "value_template": "{{ value_json.state }}",
                                "payload_available": Z2M_ONLINE,
                                "payload_not_available": Z2M_OFFLINE}]
        if comp == "light":
            cfg["state_value_template"] = "{{ value_json.state }}"
        else:
            cfg.update(value_template="{{ value_json.state }}", state_on=ON, state_off=OFF)
    return topic, cfg


def ha_power_sensor(run: str, device: str) -> tuple[str, dict[str, Any]]:
    """(topic, config) of the HA sensor showing a device's scheduled power in this slot."""
    topic = f"{HA_PREFIX}/sensor/ecl_{ha_id(device)}/scheduled_power/config"
    cfg = {
        "name": "scheduled power",
        "unique_id": f"ecl_{ha_id(device)}_scheduled_power",
        "state_topic": lab_power(run, device),
        "unit_of_measurement": "kW",
        "device_class": "power",
        "state_class": "measurement",
        "availability": [{"topic": lab_bridge(run), "payload_available": BRIDGE_ONLINE,
                          "payload_not_available": BRIDGE_OFFLINE}],
        "qos": QOS,
        "device": ha_device(device),
    }
    return topic, cfg
