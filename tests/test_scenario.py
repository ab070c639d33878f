"""Scenario loading, generation and every error kind (file, field path and expectation named)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from scenario import (
    COMPONENT_TYPES,
    CONFIGS,
    TYPES,
    ScenarioError,
    device_from_payload,
    generate_homes,
    load,
    parse,
    profiles,
)


def _homes3() -> dict:
    return yaml.safe_load((CONFIGS / "homes3.yaml").read_text())


def _write(tmp_path: Path, doc: dict) -> Path:
    p = tmp_path / "broken.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


# the winter types appear in configs/winter3.yaml; homes10 and the generator use the rest
WINTER_TYPES = {"space_heating", "bidirectional_ev"}


def test_homes10_has_every_type_and_both_actuator_protocols():
    s = load("homes10")
    assert s.horizon.slots == 96 and s.horizon.delta_h == 0.25 and len(s.devices) == 10
    types = {c.type for d in s.devices for c in d.components}
    assert types == set(COMPONENT_TYPES) - WINTER_TYPES
    winter = {c.type for d in load("winter3").devices for c in d.components}
    assert WINTER_TYPES <= winter
    kinds = {c.params["kind"] for d in s.devices for c in d.components if c.type == "thermal"}
    assert kinds == {"heat_pump", "water_heater"}
    protos = {a.protocol for d in s.devices for a in d.actuators().values()}
    assert protos == {"tasmota", "zigbee2mqtt"}
    assert s.feeder_params().price.shape == (96,)
    assert s.admm_settings().max_rounds == 100


def test_profiles_realistic_and_resampled():
    s = load("homes10")
    base = s.device("home01").components[0].series("load_kw")
    assert base.sum() * s.horizon.delta_h == pytest.approx(9.0, rel=1e-3)  # daily_kwh kept
    assert base[76:80].mean() > 2 * base[8:16].mean()  # evening peak above the night floor
    pv = s.device("home01").components[1].series("pv_kw")
    assert pv[:20].max() == 0 and pv[88:].max() == 0 and 4.0 < pv.max() <= 5.0  # night, peak
    price = np.array(s.feeder.price)
    assert price[0] == 0.12 and price[72] == 0.35  # 00:00 off-peak, 18:00 peak
    # the same profile at 1 h slots keeps its energy
    hourly = profiles.resample(profiles.residential(9.0), 0.0, 24, 1.0)
    assert hourly.sum() == pytest.approx(9.0, rel=1e-3)


def test_generated_homes100_seeded_varied_with_actuators_and_groups():
    a, b = generate_homes(100), load("homes100")
    assert a.to_yaml() == b.to_yaml()  # seeded: same scenario every time
    assert a.chain.nodes == "per_group" and a.chain.group_size == 25 and len(a.devices) == 100
    assert sum(1 for d in a.devices if d.actuators()) >= 5
    assert {c.type for d in a.devices for c in d.components} == set(COMPONENT_TYPES) - \
        WINTER_TYPES
    assert generate_homes(100, seed=7).to_yaml() != a.to_yaml()
    sizes = {len(d.components) for d in a.devices}
    assert len(sizes) >= 4


def test_to_yaml_round_trip_and_device_payload():
    s = load("homes10")
    again = parse(yaml.safe_load(s.to_yaml()), "again.yaml")
    assert [d.id for d in again.devices] == [d.id for d in s.devices]
    assert again.feeder == s.feeder
    d = s.device("home09")
    d2 = device_from_payload(d.to_payload())
    assert d2.id == d.id and [c.params for c in d2.components] == [c.params for c in d.components]


def test_power_bounds_sum_components():
    d = load("homes3").device("home02")  # base + EV 7.4 kW + dishwasher 1.8 kW
    lo, hi = d.power_bounds()
    base = d.components[0].series("load_kw")
    assert lo <= base.min() - 1e-3 + 1e-9 and lo >= base.min() - 2e-3
    assert hi >= base.max() + 7.4 + 1.8 - 1e-9 or hi >= (base + 9.2).max()


def _expect(tmp_path: Path, doc: dict, path: str, *expected: str) -> str:
    f = _write(tmp_path, doc)
    with pytest.raises(ScenarioError) as ei:
        load(f)
    msg = str(ei.value)
    assert str(f) in msg, msg
    assert f": {path}:" in msg, msg
    for e in expected:
        assert e in msg, msg
    return msg


def test_error_missing_field(tmp_path):
    doc = _homes3()
    del doc["devices"][1]["components"][1]["capacity_kwh"]
    _expect(tmp_path, doc, "devices[1].components[1].capacity_kwh", "missing field",
            "a number > 0")


def test_error_missing_section(tmp_path):
    doc = _homes3()
    del doc["feeder"]
    _expect(tmp_path, doc, "feeder", "missing field", "feeder mapping")


def test_error_wrong_type(tmp_path):
    doc = _homes3()
    doc["horizon"]["slots"] = "ninety-six"
    _expect(tmp_path, doc, "horizon.slots", "expected an integer", "'ninety-six'")
    doc = _homes3()
    doc["devices"][0]["components"][1]["curtailable"] = "yes"
    _expect(tmp_path, doc, "devices[0].components[1].curtailable", "true or false")


def test_error_negative_capacity(tmp_path):
    doc = _homes3()
    doc["devices"][0]["components"][2]["capacity_kwh"] = -10
    _expect(tmp_path, doc, "devices[0].components[2].capacity_kwh", "a number > 0", "-10")
    doc = _homes3()
    doc["feeder"]["capacity_kw"] = -5
    _expect(tmp_path, doc, "feeder.capacity_kw", "> 0")


def test_error_nan(tmp_path):
    doc = _homes3()
    doc["feeder"]["gamma"] = math.nan
    _expect(tmp_path, doc, "feeder.gamma", "a finite number", "nan")
    doc = _homes3()
    doc["feeder"]["capacity_kw"] = [12.0] * 95 + [math.nan]
    _expect(tmp_path, doc, "feeder.capacity_kw[95]", "a finite number")


def test_error_unknown_device_type(tmp_path):
    doc = _homes3()
    doc["devices"][2]["components"][3]["type"] = "nuclear"
    _expect(tmp_path, doc, "devices[2].components[3].type", "a known component type",
            "'nuclear'")


def test_error_window_outside_horizon(tmp_path):
    doc = _homes3()
    doc["devices"][1]["components"][2]["window"] = [80, 120]
    _expect(tmp_path, doc, "devices[1].components[2].window[1]", "within the horizon", "0..96")
    doc = _homes3()
    doc["devices"][1]["components"][1]["arrive_slot"] = 97
    _expect(tmp_path, doc, "devices[1].components[1].arrive_slot", "within the horizon")


def test_error_unknown_field_and_list_length(tmp_path):
    doc = _homes3()
    doc["devices"][0]["components"][2]["capacity_kw"] = 10  # typo of capacity_kwh
    _expect(tmp_path, doc, "devices[0].components[2].capacity_kw", "no such field")
    doc = _homes3()
    doc["feeder"]["price"] = [0.1] * 10
    _expect(tmp_path, doc, "feeder.price", "a list of 96 numbers", "got 10 items")


def test_error_infeasible_parameters_name_device(tmp_path):
    doc = _homes3()
    ev = doc["devices"][1]["components"][1]
    ev["max_rate_kw"], ev["energy_kwh"] = 3.0, 40  # 3 kW * 0.92 * 13.5 h plugged = 37.26 kWh
    _expect(tmp_path, doc, "devices[1].components[1].energy_kwh", "at most 37.260 kWh")
    doc = _homes3()
    ac = doc["devices"][2]["components"][1]
    ac["max_kw"], ac["t_max_c"] = 0.05, 23.5  # cannot hold 23.5 degC on a 30 degC afternoon
    msg = _expect(tmp_path, doc, "devices[2].components[1]", "home03", "ac", "max_kw")
    assert "infeasible" in msg


def test_error_duplicate_ids_and_bad_actuator(tmp_path):
    doc = _homes3()
    doc["devices"][1]["id"] = "home01"
    _expect(tmp_path, doc, "devices[1].id", "unique")
    doc = _homes3()
    doc["devices"][0]["components"][3]["actuator"] = {"protocol": "tasmota", "topic": "a/#"}
    _expect(tmp_path, doc, "devices[0].components[3].actuator.topic", "MQTT-safe")


def test_unknown_scenario_name_lists_known():
    with pytest.raises(ScenarioError, match="homes10"):
        load("nosuchscenario")


def test_parse_in_memory_reports_source():
    doc = copy.deepcopy(_homes3())
    doc["admm"]["solver"] = "gurobi"
    with pytest.raises(ScenarioError, match=r"mem\.yaml: admm\.solver: expected one of OSQP"):
        parse(doc, "mem.yaml")


def test_homes10_congested_binds_both_limits_in_the_central_optimum():
    from scenario.central import solve_central

    s = load("homes10-congested")
    assert s.feeder.capacity_kw[0] == 7 and s.feeder.export_limit_kw[0] == 6
    tot = solve_central(s).x.sum(0)
    assert np.sum(tot >= 7 - 1e-6) >= 8 and np.sum(tot <= -6 + 1e-6) >= 8


def test_generated_congested_is_seeded_and_tighter():
    a = load("homes3-congested-seed5")
    assert a.name == "homes3-congested-seed5" and a.seed == 5
    assert load("homes3-congested-seed5").to_yaml() == a.to_yaml()
    base = load("homes3-seed5")
    assert base.name == "homes3-seed5" and base.devices == a.devices
    assert a.feeder.capacity_kw[0] < base.feeder.capacity_kw[0]
    assert a.feeder.export_limit_kw[0] < base.feeder.export_limit_kw[0]


@pytest.mark.parametrize("field,value", [("alpha", 0.8), ("tau", 500.0), ("rho0", 1e-12)])
def test_admm_settings_outside_what_the_contract_accepts_refused(tmp_path, field, value):
    """A session the Coordinator would refuse to open is refused at load, naming the field."""
    doc = _homes3()
    doc.setdefault("admm", {})[field] = value
    with pytest.raises(ScenarioError, match=rf"broken\.yaml: admm\.{field}: expected a number"):
        load(_write(tmp_path, doc))


def test_generated_model_docs_and_json_schema_are_current():
    """docs/models.md and configs/scenario.schema.json are generated from the definitions."""
    from scenario import docs

    assert docs.main(["--check"]) == 0
    text = docs.models_markdown()
    for name, cls in TYPES.items():  # every type, its physics and every parameter
        assert f"## {name}" in text and cls.__doc__.split("\n")[0].strip() in text
        for field in cls.model_fields:
            assert f"| `{field}` |" in text or field == "type"


def test_json_schema_accepts_the_shipped_scenarios_and_refuses_typos():
    import json

    import jsonschema

    schema = json.loads((CONFIGS / "scenario.schema.json").read_text())
    check = jsonschema.Draft202012Validator(schema)
    for f in sorted(CONFIGS.glob("*.yaml")):
        check.validate(yaml.safe_load(f.read_text()))
    check.validate(yaml.safe_load(generate_homes(30).to_yaml()))
    doc = _homes3()
    doc["devices"][0]["components"][2]["capacity_kw"] = 10  # typo of capacity_kwh
    assert not check.is_valid(doc)
    doc = _homes3()
    doc["devices"][2]["components"][3]["type"] = "nuclear"
    assert not check.is_valid(doc)


def test_no_two_packages_import_each_other():
    """scenario imports no lab package; device_node, metering and mqtt_bridge never import
    lab."""
    import ast

    root = CONFIGS.parent
    forbidden = {"scenario": {"lab", "device_node", "mqtt_bridge", "chain"},
                 "device_node": {"lab"}, "metering": {"lab"},
                 "mqtt_bridge": {"lab", "device_node"},
                 "aggregator_contract": {"lab", "device_node", "scenario", "mqtt_bridge"}}
    for pkg, banned in forbidden.items():
        for py in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(py.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for n in names:
                    assert n.split(".")[0] not in banned, f"{py.relative_to(root)} imports {n}"


def test_a_component_type_is_one_registered_module():
    """Each type is defined by exactly one module of scenario/components, named after it."""
    import pkgutil

    import scenario.components as comps

    modules = {m.name for m in pkgutil.iter_modules(comps.__path__)} - {"base"}
    owners = {cls.__module__.rsplit(".", 1)[-1] for cls in TYPES.values()}
    assert owners == modules
    assert set(COMPONENT_TYPES) >= {"space_heating", "bidirectional_ev"}


def test_winter3_payload_round_trip_and_bounds():
    s = load("winter3")
    d = s.device("home03")
    assert device_from_payload(d.to_payload()) == d
    lo, hi = d.power_bounds()
    assert lo < -3.7 - 2.5 + 0.2  # the car and the battery can both export
    assert s.device("home01").components[1].series("cop_t").min() > 2.6


def test_one_window_rule_for_models_and_plans():
    """The models' window mask and the bridge's on/off plan windows are the same slots, for
    every window of a small horizon (including end = T and first = T, which wrap)."""
    from mqtt_bridge.plan import window_slots
    from scenario import window_mask

    t = 8
    for first in range(t + 1):
        for end in range(t + 1):
            if first % t == end % t:  # refused at load: an empty window
                continue
            mask = window_mask(first, end, t)
            slots = window_slots(t, (first, end))
            assert sorted(slots.tolist()) == np.flatnonzero(mask).tolist(), (first, end)
            assert len(set(slots.tolist())) == len(slots)
