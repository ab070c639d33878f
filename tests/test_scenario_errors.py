"""Bad scenario files: every one refused with one line naming the file, the field path and
what was expected; none ends in a traceback (issue 11's validation figures)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from scenario import CONFIGS, ScenarioError, load, parse


def _doc(name: str = "homes3") -> dict:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation: set the field at a dotted path (`devices.0.components.2.capacity_kwh`)."""
    def apply(doc: dict) -> None:
        *head, last = path.split(".")
        node: Any = doc
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if value is _DELETE:
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return apply


def _both(*mutations: Callable[[dict], None]) -> Callable[[dict], None]:
    def apply(doc: dict) -> None:
        for m in mutations:
            m(doc)
    return apply


_DELETE = object()
D0, D1, D2 = "devices.0.components", "devices.1.components", "devices.2.components"

# (mutation, the field path the error must name); homes3: home01 base/pv/batt/bulb,
# home02 base/ev/dw, home03 base/ac/wh/pool/plug
BAD: list[tuple[str, Callable[[dict], None], str]] = [
    ("no horizon", _set("horizon", _DELETE), "horizon"),
    ("slots text", _set("horizon.slots", "96"), "horizon.slots"),
    ("slots zero", _set("horizon.slots", 0), "horizon.slots"),
    ("slot minutes negative", _set("horizon.slot_minutes", -15), "horizon.slot_minutes"),
    ("start not a time", _set("horizon.start", "noon"), "horizon.start"),
    ("unknown top field", _set("owner", "me"), "owner"),
    ("name with a space", _set("name", "my homes"), "name"),
    ("name too long", _set("name", "h" * 200), "name"),
    ("seed negative", _set("seed", -1), "seed"),
    ("no feeder", _set("feeder", _DELETE), "feeder"),
    ("price too short", _set("feeder.price", [0.1] * 10), "feeder.price"),
    ("price profile unknown", _set("feeder.price", {"profile": "spot"}), "feeder.price.profile"),
    ("tou without peak", _set("feeder.price", {"profile": "tou", "offpeak": 0.1}),
     "feeder.price.peak"),
    ("tou extra key", _set("feeder.price", {"profile": "tou", "offpeak": 0.1, "peak": 0.3,
                                            "night": 0.05}), "feeder.price.night"),
    ("capacity negative", _set("feeder.capacity_kw", -5), "feeder.capacity_kw"),
    ("capacity nan in list", _set("feeder.capacity_kw", [12.0] * 95 + [math.nan]),
     "feeder.capacity_kw[95]"),
    ("capacity below the inflexible load", _both(_set(f"{D0}.2", _DELETE),
                                                 _set("feeder.capacity_kw", 0.1)),
     "feeder.capacity_kw"),
    ("export limit text", _set("feeder.export_limit_kw", "eight"), "feeder.export_limit_kw"),
    ("gamma infinite", _set("feeder.gamma", math.inf), "feeder.gamma"),
    ("alpha above 2", _set("admm.alpha", 2.5), "admm.alpha"),
    ("tau the contract refuses", _set("admm.tau", 500.0), "admm.tau"),
    ("max rounds fractional", _set("admm.max_rounds", 5.5), "admm.max_rounds"),
    ("solver unknown", _set("admm.solver", "gurobi"), "admm.solver"),
    ("even signers", _set("chain.signers", 2), "chain.signers"),
    ("several signers period 0", _set("chain.signers", 3), "chain.period"),
    ("nodes unknown", _set("chain.nodes", "per_home"), "chain.nodes"),
    ("deadline zero", _set("chain.round_deadline_s", 0), "chain.round_deadline_s"),
    ("deadline beyond the contract", _set("chain.round_deadline_s", 2**32),
     "chain.round_deadline_s"),
    ("deadline in blocks (the old field)", _set("chain.round_deadline_blocks", 20),
     "chain.round_deadline_blocks"),
    ("playback speed zero", _set("playback.seconds_per_slot", 0), "playback.seconds_per_slot"),
    ("realtime text", _set("playback.realtime", "yes"), "playback.realtime"),
    ("no devices", _set("devices", []), "devices"),
    ("device not a mapping", _set("devices.0", "home01"), "devices[0]"),
    ("device id upper case", _set("devices.1.id", "Home02"), "devices[1].id"),
    ("device id trailing newline", _set("devices.1.id", "home02\n"), "devices[1].id"),
    ("device id too long", _set("devices.1.id", "h" * 100), "devices[1].id"),
    ("device id twice", _set("devices.1.id", "home01"), "devices[1].id"),
    ("no components", _set("devices.1.components", []), "devices[1].components"),
    ("component id twice", _set(f"{D1}.2.id", "ev"), "devices[1].components[2].id"),
    ("component type unknown", _set(f"{D2}.3.type", "nuclear"), "devices[2].components[3].type"),
    ("component type missing", _set(f"{D2}.3.type", _DELETE), "devices[2].components[3].type"),
    ("daily energy negative", _set(f"{D0}.0.daily_kwh", -9), "devices[0].components[0].daily_kwh"),
    ("load profile unknown", _set(f"{D0}.0.profile", "office"),
     "devices[0].components[0].profile"),
    ("pv curtailable text", _set(f"{D0}.1.curtailable", "yes"),
     "devices[0].components[1].curtailable"),
    ("battery capacity typo", _set(f"{D0}.2.capacity_kw", 10),
     "devices[0].components[2].capacity_kw"),
    ("battery soc above 1", _set(f"{D0}.2.soc_max", 1.5), "devices[0].components[2].soc_max"),
    ("battery soc_init below soc_min", _set(f"{D0}.2.soc_init", 0.05),
     "devices[0].components[2].soc_init"),
    ("battery efficiency zero", _set(f"{D0}.2.eta_charge", 0),
     "devices[0].components[2].eta_charge"),
    ("battery final unreachable", _both(_set(f"{D0}.2.max_charge_kw", 0.01),
                                                _set(f"{D0}.2.soc_final_min", 0.9)),
     "devices[0].components[2].soc_final_min"),
    ("bulb window past the horizon", _set(f"{D0}.3.window", [68, 120]),
     "devices[0].components[3].window[1]"),
    ("bulb window empty", _set(f"{D0}.3.window", [68, 68]), "devices[0].components[3].window"),
    ("bulb on longer than its window", _set(f"{D0}.3.on_hours", 10),
     "devices[0].components[3].on_hours"),
    ("actuator topic wildcard", _set(f"{D0}.3.actuator.topic", "a/#"),
     "devices[0].components[3].actuator.topic"),
    ("actuator protocol unknown", _set(f"{D0}.3.actuator.protocol", "hue"),
     "devices[0].components[3].actuator.protocol"),
    ("actuator on a battery", _set(f"{D0}.2.actuator", {"protocol": "tasmota", "topic": "b"}),
     "devices[0].components[2].actuator"),
    ("zigbee name ending in set", _set(f"{D2}.4.actuator.name", "home03_plug/set"),
     "devices[2].components[4].actuator.name"),
    ("ev arrives when it leaves", _set(f"{D1}.1.arrive_slot", 30),
     "devices[1].components[1].depart_slot"),
    ("ev slot past the horizon", _set(f"{D1}.1.arrive_slot", 97),
     "devices[1].components[1].arrive_slot"),
    ("ev needs more than it can charge", _set(f"{D1}.1.energy_kwh", 400),
     "devices[1].components[1].energy_kwh"),
    ("dishwasher cannot finish", _set(f"{D1}.2.energy_kwh", 40),
     "devices[1].components[2].energy_kwh"),
    ("thermal kind unknown", _set(f"{D2}.1.kind", "stove"), "devices[2].components[1].kind"),
    ("thermal band inverted", _set(f"{D2}.1.t_min_c", 26), "devices[2].components[1].t_min_c"),
    ("thermal start outside the band", _set(f"{D2}.1.t_init_c", 30),
     "devices[2].components[1].t_init_c"),
    ("outdoor profile unknown", _set(f"{D2}.1.t_out_c", {"profile": "arctic"}),
     "devices[2].components[1].t_out_c.profile"),
    ("air conditioner too small", _both(_set(f"{D2}.1.max_kw", 0.05),
                                         _set(f"{D2}.1.t_max_c", 23.5)),
     "devices[2].components[1]"),
    ("hot water without its energy", _set(f"{D2}.2.draw_kw", {"profile": "hot_water"}),
     "devices[2].components[2].draw_kw.daily_kwh"),
    ("curtailable value negative", _set(f"{D2}.3.value_per_kwh", -1),
     "devices[2].components[3].value_per_kwh"),
]


@pytest.mark.parametrize("what,mutate,path", BAD, ids=[b[0] for b in BAD])
def test_bad_scenario_file_refused_with_its_field(tmp_path: Path, what: str, mutate, path: str):
    doc = _doc()
    mutate(doc)
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ScenarioError) as ei:
        load(f)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{f}: {path}:"), msg


def test_there_are_at_least_50_bad_files():
    assert len(BAD) >= 50


def test_duplicate_yaml_key_refused_with_its_line(tmp_path: Path):
    text = (CONFIGS / "homes3.yaml").read_text().replace(
        "  gamma: 0.02", "  gamma: 0.02\n  gamma: 0.5")
    f = tmp_path / "twice.yaml"
    f.write_text(text)
    with pytest.raises(ScenarioError, match=r"twice\.yaml: line \d+: .*'gamma' appears twice"):
        load(f)


def _leaves(node: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*path, k))] + [path]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _leaves(v, (*path, i))] + [path]
    return [path]


@pytest.mark.parametrize("name", ["homes3", "winter3"])
def test_any_field_replaced_by_junk_is_refused_or_accepted_never_a_traceback(name: str):
    """Every field (and every mapping and list) of a shipped scenario replaced in turn by
    values of the wrong kind: parse returns or raises ScenarioError, one line."""
    base = _doc(name)
    junk = ["x", -1, None, [], {}, True, 1e300, math.nan, [1, 2]]
    tried = 0
    for path in _leaves(base):
        if not path:
            continue
        for value in junk:
            doc = copy.deepcopy(base)
            node = doc
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value
            try:
                parse(doc, "fuzz.yaml", check_feasible=False)
            except ScenarioError as e:
                assert "\n" not in str(e) and str(e).startswith("fuzz.yaml: "), str(e)
            tried += 1
    assert tried > 500
