"""Meters (metering/): the emulated home's meter, a Tasmota energy meter's telemetry, and
readings posted to the Billing contract on real geth."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from contract_fixtures import BoxQuadratic, geth_chain, make_account, tou_feeder  # noqa: F401
from playback import DrivenDay

import conventions
from aggregator_contract import billing as bl
from aggregator_contract import fixed_point as fp
from aggregator_contract.reference import AdmmSettings
from metering.emulated import EmulatedMeter, RelayRecorder, relay_slots
from metering.post import periods, post_readings
from metering.tasmota import TasmotaSensorMeter
from scenario import CONFIGS, parse

# ---- the emulated meter ------------------------------------------------------------------


def test_relay_state_sampled_at_mid_slot():
    # slots of 10 s from t=100: ON at 103 (slot 0), OFF at 116 (after slot 1's middle),
    # ON at 126 (after slot 2's middle, so slot 2 reads OFF)
    changes = [(126.0, True), (103.0, True), (116.0, False)]
    assert relay_slots(changes, 100.0, 10.0, 4) == [True, True, False, True]
    assert relay_slots([], 100.0, 10.0, 2, initial=True) == [True, True]


def _homes3_with(deviations: list[dict]):
    doc = yaml.safe_load((CONFIGS / "homes3.yaml").read_text())
    doc["billing"] = {"deviations": deviations}
    return parse(doc, "h3.yaml", check_feasible=False)


def test_emulated_meter_measures_relays_and_applies_deviations():
    from scenario.central import solve_central

    scen = _homes3_with([
        {"device": "home01", "component": "pv", "factor": 0.7, "slots": [40, 60]},
        {"device": "home01", "component": "bulb", "switch": "on", "slots": [0, 4]},
    ])
    x = solve_central(scen).x[0]
    home = scen.device("home01")
    meter = EmulatedMeter(home, scen.billing.deviations)
    t = scen.horizon.slots
    relays = {"bulb": [s % 2 == 0 for s in range(t)]}  # what the bulb reported on MQTT
    plain = EmulatedMeter(home).measure(x, relays)
    kw = meter.measure(x, relays)
    rated = home.components[3].params["rated_kw"]
    assert list(kw["bulb"][:4]) == [rated] * 4  # switched on by hand: whatever the relay said
    assert kw["bulb"][4] == rated and kw["bulb"][5] == 0.0  # the relay, not the schedule
    assert kw["pv"][40:60] == pytest.approx(0.7 * plain["pv"][40:60])  # forecast error
    assert np.array_equal(kw["pv"][:40], plain["pv"][:40])
    assert np.array_equal(kw["base"], plain["base"])
    wh = meter.readings_wh(kw, scen.horizon.delta_h)
    assert len(wh) == t and wh[41] == round(sum(v[41] for v in kw.values()) * 250)


def test_home_realises_its_schedule_around_the_relays():
    """The flexible components absorb the on/off rounding of a switched load (home01's
    battery around its bulb); a home with nothing flexible shows it at the meter."""
    from scenario.central import solve_central

    scen = _homes3_with([])
    res = solve_central(scen)
    home = scen.device("home01")
    bulb = home.components[3]
    split = EmulatedMeter(home).realise(res.x[0], {})  # nothing fixed: the home's own split
    assert np.abs(sum(split.values()) - res.x[0]).max() < 1e-5
    first = 68 if split["bulb"][68:84].sum() < split["bulb"][76:92].sum() else 76
    plan = (np.arange(96) >= first) & (np.arange(96) < first + 16)  # 4 h, not the split's
    assert not np.allclose(plan * bulb.params["rated_kw"], split["bulb"], atol=1e-3)
    kw = EmulatedMeter(home).measure(res.x[0], {"bulb": list(plan)})
    moved = np.abs(plan * bulb.params["rated_kw"] - split["bulb"]).sum()
    left = np.abs(sum(kw.values()) - res.x[0]).sum()
    assert left < 0.5 * moved  # the battery absorbed most of it, where its limits allow
    assert not np.allclose(kw["batt"], split["batt"], atol=1e-3)
    # a home of a base load and a plug only: the rounding shows, slot by slot
    doc = yaml.safe_load((CONFIGS / "homes3.yaml").read_text())
    doc["devices"][2]["components"] = [c for c in doc["devices"][2]["components"]
                                       if c["id"] in ("base", "plug")]
    lean = EmulatedMeter(parse(doc, "lean.yaml", check_feasible=False).device("home03"))
    p = np.where(np.arange(96) < 20, 0.3, 0.0)  # 1.5 kWh of plug, as on_hours * rated
    x = lean.realise(np.zeros(96), {"plug": p})["base"] + p  # its schedule: base + plug
    relays = [4 <= s < 16 for s in range(96)]  # on for 12 whole slots (3 h at 0.5 kW)
    kw = lean.measure(x, {"plug": relays})
    assert sum(kw.values()) - x == pytest.approx(np.array(relays) * 0.5 - p, abs=1e-6)


def test_deviation_errors_name_the_field():
    from scenario import ScenarioError

    with pytest.raises(ScenarioError, match=r"billing\.deviations\[0\]: .*home01.nothing"):
        _homes3_with([{"device": "home01", "component": "nothing", "factor": 0.5}])
    with pytest.raises(ScenarioError, match=r"billing\.deviations\[0\]\.component: .*switched"):
        _homes3_with([{"device": "home01", "component": "pv", "switch": "on"}])
    with pytest.raises(ScenarioError, match=r"billing\.deviations\[0\]: .*exactly one"):
        _homes3_with([{"device": "home01", "component": "pv", "factor": 1, "switch": "on"}])


def test_relays_recorded_from_the_devices_own_reports(tmp_path: Path):
    """Through a real broker with the run's credentials: the meter (its read-only user)
    follows what the emulated devices report while the bridge plays their plans, slot by
    slot on a ManualClock (tests/playback.py): each report is stamped in its slot."""
    from mqtt_bridge.auth import plan_users, role_url
    from mqtt_bridge.bridge import Bridge
    from mqtt_bridge.broker import MqttBroker, find_mosquitto
    from mqtt_bridge.clock import ManualClock
    from mqtt_bridge.config import Actuator, BridgeConfig
    from mqtt_bridge.emulator import EmulatorHost
    from mqtt_bridge.source import StaticSource

    if find_mosquitto() is None:
        pytest.skip("needs mosquitto")
    acts = [Actuator("h1", "bulb", conventions.from_dict({"protocol": "tasmota",
                                                          "topic": "h1_bulb"}), 0.06),
            Actuator("h2", "plug", conventions.from_dict({"protocol": "shelly",
                                                          "device": "shellyplus1-h2"}), 1.0)]
    T, sps = 4, 2.0
    clock = ManualClock()
    plans = {"h1/bulb": [True, False, True, True], "h2/plug": [False, True, True, False]}
    cfg = BridgeConfig(run="meter", slots=T, slot_minutes=15, seconds_per_slot=sps,
                       actuators=acts)
    broker = MqttBroker(tmp_path, kind="mosquitto", users=plan_users(cfg))
    with broker:
        rec = RelayRecorder(acts, role_url(tmp_path, "meter"), clock=clock)
        rec.start()  # returns subscribed: it sees every report from here on
        try:
            with EmulatorHost(acts, broker.url, tmp_path, clock=clock) as host:
                bridge = Bridge(cfg, StaticSource({"h1": np.zeros(T), "h2": np.zeros(T)},
                                                  plans),
                                role_url(tmp_path, "bridge"), tmp_path, ack_timeout=2.0,
                                clock=clock)
                # the next slot only once the meter has every report the devices sent: one
                # state publication (of `per` reports) on connect and after each command
                per = {a.id: sum(a.convention.parse_report(m.topic, m.payload.encode()).state
                                 is not None for m in a.convention.state_messages(True)
                                 if m.topic in a.convention.report_topics()) for a in acts}

                def metered() -> bool:
                    return all(len(rec.changes[a.id]) == per[a.id] * sum(
                        e["event"] in ("online", "command") for e in host[a.id].events)
                        for a in acts)

                DrivenDay(bridge, clock, target=lambda: bridge.run(linger=0),
                          settled=metered).start().finish()
                st = bridge.status()
        finally:
            rec.stop()
    assert rec.slots(st["day_start"], st["seconds_per_slot"], T) == plans


# ---- a real meter: Tasmota energy telemetry -----------------------------------------------

def _sensor(t: datetime, total_kwh: float, export_kwh: float | None = None) -> str:
    # the shape of https://tasmota.github.io/docs/JSON-Status-Responses/ (Status 10 / tele
    # SENSOR of an energy-monitoring device)
    e = {"TotalStartTime": "2026-01-01T00:00:00", "Total": round(total_kwh, 3),
         "Yesterday": 3.1, "Today": 1.2, "Period": 4, "Power": 230, "ApparentPower": 240,
         "ReactivePower": 60, "Factor": 0.96, "Voltage": 231, "Current": 1.04}
    if export_kwh is not None:
        e["ExportActive"] = round(export_kwh, 3)
    return json.dumps({"Time": t.isoformat(timespec="seconds"), "ENERGY": e})


def test_tasmota_sensor_telemetry_to_slot_readings():
    m = TasmotaSensorMeter("plug1")
    assert m.topic == "tele/plug1/SENSOR"
    t0 = datetime(2026, 6, 1, 10, 0, 0)
    # every 5 min (TelePeriod 300): 1.2 kW imported for the first half hour, then 0.6 kW
    # exported by PV for the next half hour
    total, export = 100.0, 10.0
    for k in range(13):
        assert m.feed(_sensor(t0 + timedelta(minutes=5 * k), total, export))
        if k < 6:
            total += 1.2 / 12
        else:
            export += 0.6 / 12
    assert m.readings("2026-06-01T10:00:00", 15, 4) == [300, 300, -150, -150]
    assert not m.feed(b'{"Time": "2026-06-01T10:00:00", "SI7021": {"Temperature": 21}}')
    assert not m.feed(b"not json")
    with pytest.raises(ValueError, match="no samples around"):
        m.readings("2026-06-01T10:00:00", 15, 5)  # the telemetry stops at 11:00


def test_hourly_periods_and_commitments():
    slot_wh = [100, 200, 300, 400, -50, -60, -70, -80]
    assert periods(slot_wh, 1) == slot_wh and periods(slot_wh, 4) == [1000, -260]
    a = bl.commitment(slot_wh[:4], bl.salt_for(b"meter key", 1, 0))
    assert a == bl.commitment(slot_wh[:4], bl.salt_for(b"meter key", 1, 0))
    assert a != bl.commitment([101, 199, 300, 400], bl.salt_for(b"meter key", 1, 0))
    assert a != bl.commitment(slot_wh[:4], bl.salt_for(b"meter key", 1, 1))


# ---- posting on real geth -----------------------------------------------------------------

def test_meters_post_and_homes_settle_on_geth(geth_chain):  # noqa: F811
    """Two homes' meters post a day in batches (one deviates); each home settles to the
    bill the Python mirror computes from the same readings."""
    from aggregator_contract.client import Coordinator, connect, send_tx

    net, operator, accts = geth_chain
    w3 = connect(net.rpc_url(net.signers()[0]))
    coord = Coordinator.deploy(w3, operator)
    homes, t = accts[:2], 8
    rng = np.random.default_rng(5)
    solvers = [BoxQuadratic(rng, t) for _ in homes]
    coord.register_devices([(a.address, s.lo, s.hi) for a, s in zip(homes, solvers,
                                                                     strict=True)])
    feeder = tou_feeder(t)
    sid = coord.open_session(feeder, AdmmSettings(rho0=1.0, max_rounds=1),
                             [a.address for a in homes], deadline_s=50)
    clients = [Coordinator(w3, coord.address, a) for a in homes]
    xs = [fp.quantize_kw(s.solve(np.zeros(t), 1.0)) for s in solvers]
    for c, x in zip(clients, xs, strict=True):
        c.submit(sid, 0, x)
    coord.wait_finalized(sid, timeout=60)
    for c in clients:
        c.publish_schedule(sid)
    billing = bl.Billing.deploy(w3, operator, coord.address)
    meters = [make_account(f"meter{i}") for i in range(2)]
    for m in meters:
        send_tx(w3, operator, {"to": m.address, "value": 10**18}, "fund meter")
    billing.register_meters({m.address: h.address for m, h in zip(meters, homes,
                                                                  strict=True)})
    tariff = bl.Tariff(delta_h=feeder.delta_h)
    billing.open_billing(sid, tariff, [h.address for h in homes])
    readings = []
    for i, (m, x) in enumerate(zip(meters, xs, strict=True)):
        wh = [round(v * feeder.delta_h * 1000) for v in x]
        if i == 1:
            wh[2] += 900  # home 2 drew far more than scheduled in slot 2
        readings.append(wh)
        done: set[int] = set()
        if i == 0:  # a meter restarted after its first post sends only what is missing
            billing.with_account(m).post(sid, 0, wh[:3])
            done = {0, 1, 2}
        receipts = post_readings(billing.with_account(m), sid, wh, batch=3, skip=done)
        assert len(receipts) == (2 if done else 3) and all(r["status"] == 1 for r in receipts)
    price = fp.to_fixed(feeder.price, fp.PRICE_SCALE)
    for h, wh, x in zip(homes, readings, xs, strict=True):
        billing.settle(sid, h.address)
        (ev,) = billing.events("Settled", home=h.address)
        want = bl.compute_bill(wh, fp.to_fixed(x), price, *tariff.as_tuple())
        assert bl.Bill(**dict(ev.args.bill)) == want
        assert (want.deviation_wei > 0) == (h is homes[1])
