"""The Billing contract in titanoboa (py-evm): settlement against the Python mirror, the
prices read from the Coordinator's own session data, every refusal, deposits and
withdrawals."""

from __future__ import annotations

import json

import boa
import numpy as np
import pytest
from contract_fixtures import boa_env, boa_session  # noqa: F401 - fixtures, by name

from aggregator_contract import billing as bl
from aggregator_contract import fixed_point as fp
from aggregator_contract.compile import load as load_artifact
from aggregator_contract.reference import AdmmSettings

pytestmark = pytest.mark.ignore_isolation

T = 8


def _finalized(devices: int = 3, slots: int = T):
    """A finalized one-round session with every device's schedule published."""
    sess = boa_session(devices, slots, AdmmSettings(max_rounds=1))
    rng = np.random.default_rng(1)
    xs = {}
    for i, d in enumerate(sess.devices):
        xs[d] = fp.quantize_kw(rng.uniform(-3, 6, slots))
        sess.submit(i, xs[d])
    assert sess.final()[0]
    for d in sess.devices:
        sess.registry.publish_schedule(sess.session, d, sess.last[d])
    return sess, xs


def _deploy_billing(sess):
    art = load_artifact("Billing")
    factory = boa.loads_abi(json.dumps(art.abi), name="Billing")
    with boa.env.prank(sess.operator):
        addr, _ = boa.env.deploy_code(bytecode=bytes.fromhex(art.bytecode[2:])
                                      + boa.util.abi.abi_encode("(address)", (sess.c.address,)))
    return factory.at(addr)


@pytest.fixture
def billed(boa_env):  # noqa: F811
    sess, xs = _finalized()
    b = _deploy_billing(sess)
    meters = [boa.env.generate_address(f"meter{i}") for i in range(len(sess.devices))]
    tariff = bl.Tariff(delta_h=sess.feeder.delta_h, period=1, tol_wh=20, tol_bps=500,
                       imbalance_bps=5000)
    with boa.env.prank(sess.operator):
        b.register_meters(meters, sess.devices)
        b.open_billing(sess.session, tariff.as_tuple(), sess.devices)
    return sess, xs, b, meters, tariff


def _post(b, meter, session, first, wh, commitments=()):
    with boa.env.prank(meter):
        b.post(session, first, list(wh), list(commitments))


def _on_schedule(sess, x_kw: np.ndarray) -> list[int]:
    """Readings equal to the schedule (Wh)."""
    return [round(v * sess.feeder.delta_h * 1000) for v in x_kw]


def test_prices_read_from_the_coordinators_session_data(billed):
    sess, _, b, _, _ = billed
    data = b.session_data(sess.session)
    code = boa.env.get_code(data)
    words = [int.from_bytes(code[192 + 32 * w:224 + 32 * w], "big") for w in range(T // 4)]
    assert words == fp.pack_kw(sess.feeder.price, fp.PRICE_SCALE)


def test_settlement_equals_the_python_mirror_and_moves_balances(billed):
    sess, xs, b, meters, tariff = billed
    price = fp.to_fixed(sess.feeder.price, fp.PRICE_SCALE)
    readings = {}
    for i, d in enumerate(sess.devices):
        wh = _on_schedule(sess, xs[d])
        if i == 1:
            wh[3] += 700  # a deviation well beyond the tolerance
        readings[d] = wh
        _post(b, meters[i], sess.session, 0, wh[:5])
        _post(b, meters[i], sess.session, 5, wh[5:])
    with boa.env.prank(sess.devices[0]):
        boa.env.set_balance(sess.devices[0], 10**20)
        b.deposit(sess.devices[0], value=5 * 10**18)
    total = 0
    for d in sess.devices:
        want = bl.compute_bill(readings[d], fp.to_fixed(xs[d]), price, *tariff.as_tuple())
        got = bl.Bill(*b.settle(sess.session, d))
        assert got == want
        assert (got.deviation_wei > 0) == (d == sess.devices[1]), got
        total += got.total_wei
    assert b.balances(sess.devices[0]) == 5 * 10**18 - bl.compute_bill(
        readings[sess.devices[0]], fp.to_fixed(xs[sess.devices[0]]), price,
        *tariff.as_tuple()).total_wei
    assert b.balances(sess.operator) == total
    assert sum(b.balances(d) for d in sess.devices) + b.balances(sess.operator) == 5 * 10**18
    # the bill's energy is pi * metered energy exactly: 1 Wh at 1e-9 $/kWh = 1e6 wei
    b0 = bl.compute_bill(readings[sess.devices[0]], fp.to_fixed(xs[sess.devices[0]]), price,
                         *tariff.as_tuple())
    lin = sum(m * p for m, p in zip(readings[sess.devices[0]], price, strict=True)) * 10**6
    assert b0.energy_wei - b0.export_wei == lin


def test_hourly_totals_with_commitments(boa_env):  # noqa: F811
    sess, xs = _finalized(2)
    b = _deploy_billing(sess)
    meter = boa.env.generate_address("meter")
    tariff = bl.Tariff(delta_h=sess.feeder.delta_h, period=4)
    with boa.env.prank(sess.operator):
        b.register_meters([meter], [sess.devices[0]])
        b.open_billing(sess.session, tariff.as_tuple(), sess.devices[:1])
    slots = _on_schedule(sess, xs[sess.devices[0]])
    hours = [sum(slots[4 * h:4 * h + 4]) for h in range(T // 4)]
    coms = [bl.commitment(slots[4 * h:4 * h + 4], bl.salt_for(b"k", 1, h)) for h in range(2)]
    with boa.env.prank(meter), boa.reverts("wrong slot"):
        b.post(sess.session, 0, slots, [])  # 8 readings, 2 periods
    _post(b, meter, sess.session, 0, hours, coms)
    got = bl.Bill(*b.settle(sess.session, sess.devices[0]))
    price = fp.to_fixed(sess.feeder.price, fp.PRICE_SCALE)
    assert got == bl.compute_bill(hours, fp.to_fixed(xs[sess.devices[0]]), price,
                                  *tariff.as_tuple())
    # hourly prices are the mean of the slots' prices: exact when k divides 100
    assert got.energy_wei - got.export_wei == sum(
        hours[h] * sum(price[4 * h:4 * h + 4]) * 10**6 // 4 for h in range(2))


def test_refusals(billed):
    sess, xs, b, meters, _ = billed
    sid, home, meter = sess.session, sess.devices[0], meters[0]
    stranger = boa.env.generate_address("stranger")
    with boa.env.prank(stranger), boa.reverts("unknown meter"):
        b.post(sid, 0, [1], [])
    with boa.env.prank(meter), boa.reverts("billing not open"):
        b.post(sid + 1, 0, [1], [])
    with boa.env.prank(meter), boa.reverts("wrong slot"):
        b.post(sid, T - 1, [1, 2], [])
    with boa.env.prank(meter), boa.reverts("wrong slot"):
        b.post(sid, T, [1], [])
    with boa.env.prank(meter), boa.reverts("wrong slot"):
        b.post(sid, 0, [], [])
    _post(b, meter, sid, 0, [1, 2])
    with boa.env.prank(meter), boa.reverts("duplicate reading"):
        b.post(sid, 1, [5], [])
    with boa.reverts("readings missing"):
        b.settle(sid, home)
    _post(b, meter, sid, 2, _on_schedule(sess, xs[home])[2:])
    b.settle(sid, home)
    with boa.reverts("already settled"):
        b.settle(sid, home)
    with boa.env.prank(meter), boa.reverts("already settled"):
        b.post(sid, 0, [1], [])
    # a meter of a home the session does not bill
    other = boa.env.generate_address("other home")
    m2 = boa.env.generate_address("meter of other home")
    with boa.env.prank(sess.operator):
        b.register_meters([m2], [other])
    with boa.env.prank(m2), boa.reverts("home not in session"):
        b.post(sid, 0, [1], [])
    with boa.env.prank(stranger), boa.reverts("only operator"):
        b.register_meters([stranger], [stranger])
    with boa.env.prank(sess.operator), boa.reverts("billing already open"):
        b.open_billing(sid, bl.Tariff(delta_h=0.25).as_tuple(), sess.devices)
    # withdrawing before one's sessions are settled, or beyond one's balance
    d1 = sess.devices[1]
    boa.env.set_balance(d1, 10**19)
    with boa.env.prank(d1):
        b.deposit(d1, value=10**18)
        with boa.reverts("unsettled session"):
            b.withdraw(1)


def test_open_billing_refusals(boa_env):  # noqa: F811
    sess = boa_session(2, T, AdmmSettings(max_rounds=5))
    b = _deploy_billing(sess)
    with boa.env.prank(sess.operator), boa.reverts("session not finalized"):
        b.open_billing(sess.session, bl.Tariff(delta_h=0.25).as_tuple(), sess.devices)
    with boa.env.prank(sess.operator):  # ended unconverged: no schedule to bill
        sess.c.end_session(sess.session)
    with boa.env.prank(sess.operator), boa.reverts("session ended"):
        b.open_billing(sess.session, bl.Tariff(delta_h=0.25).as_tuple(), sess.devices)


def test_schedule_must_be_published_and_withdraw_after_settlement(boa_env):  # noqa: F811
    sess = boa_session(2, T, AdmmSettings(max_rounds=1))
    for i in range(2):
        sess.submit(i, np.ones(T))
    b = _deploy_billing(sess)
    meter = boa.env.generate_address("meter")
    home = sess.devices[0]
    with boa.env.prank(sess.operator):
        b.register_meters([meter], [home])
        b.open_billing(sess.session, bl.Tariff(delta_h=sess.feeder.delta_h).as_tuple(), [home])
    _post(b, meter, sess.session, 0, _on_schedule(sess, np.ones(T)))
    with boa.reverts("schedule not published"):
        b.settle(sess.session, home)
    sess.registry.publish_schedule(sess.session, home, sess.last[home])
    boa.env.set_balance(home, 10**20)
    with boa.env.prank(home):
        b.deposit(home, value=10**19)
    bill = bl.Bill(*b.settle(sess.session, home))
    assert bill.deviation_wei == 0 and bill.total_wei > 0
    left = 10**19 - bill.total_wei
    with boa.env.prank(home):
        with boa.reverts("beyond balance"):
            b.withdraw(left + 1)
        b.withdraw(left)
    assert b.balances(home) == 0
    with boa.env.prank(sess.operator):
        b.withdraw(bill.total_wei)
    assert boa.env.get_balance(b.address) == 0
