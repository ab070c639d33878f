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

Device topics follow each actuator's convention, one module each in `conventions/`
(Tasmota, Zigbee2MQTT, Shelly Gen2 RPC); their docstrings list the topics.

Home Assistant MQTT discovery (https://www.home-assistant.io/integrations/mqtt/):
    homeassistant/<light|switch>/ecl_<device>/<component>/config   one per emulated actuator
                                                                    (real ones announce
                                                                    themselves)
    homeassistant/sensor/ecl_<device>/scheduled_power/config        one per device
"""

from __future__ import annotations

import re
from typing import Any

from conventions import MalformedPayload as MalformedPayload  # the lab's topics' too
from conventions import dumps as dumps
from mqtt_bridge.config import Actuator

QOS = 1
ON, OFF = "ON", "OFF"
BRIDGE_ONLINE, BRIDGE_OFFLINE = "online", "offline"
HA_PREFIX = "homeassistant"
MANUFACTURER = "energy-chain-lab"


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


# -- per actuator, whatever its convention -------------------------------------------------
def command(act: Actuator, on: bool) -> tuple[str, str]:
    """(topic, payload) that switches `act` on or off."""
    m = act.convention.command(on)
    return m.topic, m.payload


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
    """(topic, config) of the HA entity that controls `act` through its own convention (HA
    talks to the device directly, as it would to a real Tasmota, Zigbee2MQTT or Shelly)."""
    comp = ha_component(act)
    unique = f"ecl_{ha_id(act.device)}_{ha_id(act.component)}"
    topic = f"{HA_PREFIX}/{comp}/ecl_{ha_id(act.device)}/{ha_id(act.component)}/config"
    cfg = {"name": act.component, "unique_id": unique, "qos": QOS,
           "device": ha_device(act.device), **act.convention.ha_config(comp == "light")}
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
