"""The Coordinator's hardening (titanoboa): a diverging session keeps closing (rho clamped,
u saturated, bit for bit with fixed_round.py and within rounding of reference.py), the
operator's end_session, device bounds frozen during a session, round deadlines in seconds
of block time, and the two-step operator hand-over. One test per item."""

from __future__ import annotations

import boa
import numpy as np
import pytest
from contract_fixtures import (  # noqa: F401 - boa_env: a fixture, by name
    boa_deploy,
    boa_env,
    boa_session,
    session_params,
)

from aggregator_contract import client
from aggregator_contract import fixed_point as fp
from aggregator_contract import reference as ref
from aggregator_contract.fixed_round import (
    EMITTED,
    MAX_LANE,
    RHO_MAX,
    RHO_MIN,
    FixedAggregator,
    Params,
)
from aggregator_contract.reference import AdmmSettings, AggregatorState, Feeder

pytestmark = pytest.mark.ignore_isolation


def _as(sender, fn, *args):
    with boa.env.prank(sender):
        return fn(*args)


def _logs(c, name: str) -> list:
    return [e for e in c.get_logs() if type(e).__name__ == name]


# ---------------------------------------------------------------- 1. divergence


@pytest.mark.usefixtures("boa_env")
def test_diverging_session_keeps_closing_with_rho_clamped_and_u_saturated():
    """Two devices at bounds of 2^57 nkW (N T B^2 just inside open_session's limit) pull
    together for 6 rounds, then apart: rho is held at RHO_MAX, then cut by tau = 100 a round
    down to RHO_MIN, and u (already ~1.6e18 nkW) saturates at the lane's 2^63 - 1 as it is
    rescaled. Every round closes; every figure equals fixed_round.py; the float reference,
    stepped from the chain's state, clamps and saturates the same way."""
    t, b, rounds = 2, 2**57, 24
    feeder = Feeder(6.0, np.full(t, 0.2), np.full(t, 1.0), np.full(t, 1.0), 0.0)
    settings = AdmmSettings(rho0=1e9, eps_abs=0.0, eps_rel=0.0, mu=1.0, tau=100.0,
                            alpha=1.9, max_rounds=rounds)
    operator = boa.env.generate_address("operator")
    devs = [boa.env.generate_address(f"device{i}") for i in range(2)]
    c, _ = boa_deploy(operator)
    params = session_params(feeder, settings, 30)
    with boa.env.prank(operator):
        c.register_devices([(d, -b, b) for d in devs])
        sid = c.open_session(params, fp.pack_kw(feeder.price, fp.PRICE_SCALE),
                             fp.pack_kw(feeder.capacity), fp.pack_kw(feeder.export_limit), devs)
    agg = FixedAggregator(Params(*params), fp.to_fixed(feeder.price, fp.PRICE_SCALE),
                          fp.to_fixed(feeder.capacity), fp.to_fixed(feeder.export_limit), devs)
    last: dict[str, list[int]] = {d: [] for d in devs}
    x_prev = np.zeros((2, t))
    rhos, saturated = [], 0
    for k in range(rounds):
        cur = c.current()
        assert cur.active and cur.round == k
        state = AggregatorState(k, fp.from_wad(cur.rho_wad), fp.from_fixed(cur.xbar),
                                fp.from_fixed(cur.zbar), fp.from_fixed(cur.u), x_prev)
        sign = 1 if k % 2 == 0 else -1
        xs = [[b] * t, [b] * t] if k < 6 else [[sign * b] * t, [-sign * b] * t]
        for d, x in zip(devs, xs, strict=True):
            words = fp.pack(x)
            _as(d, c.submit, sid, k, words, last[d])  # the second one closes: never reverts
            last[d] = words
            agg.submit(d, x)
        (ev,) = _logs(c, "RoundClosed")
        want = agg.close()
        got = {k_: getattr(ev, k_) for k_ in EMITTED}
        got = {k_: list(v) if isinstance(v, list | tuple) else v for k_, v in got.items()}
        assert got == {k_: want[k_] for k_ in EMITTED}, f"round {k}"
        assert RHO_MIN <= ev.rho_next <= RHO_MAX
        u = fp.unpack(list(ev.u), t)
        saturated += any(abs(v) == MAX_LANE for v in u)
        rhos.append(ev.rho_next)
        # the float reference from the same state lands on the same rho and u
        x_new = np.array([fp.from_fixed(x) for x in xs])
        nxt, info = ref.aggregate_step(state, x_new, feeder, settings)
        assert info.rho_next == pytest.approx(fp.from_wad(ev.rho_next), rel=1e-6)
        assert np.allclose(nxt.u, fp.unpack_kw(list(ev.u), t), rtol=1e-6)
        assert np.abs(nxt.u).max() <= ref.U_MAX_KW
        x_prev = x_new
    assert rhos[0] == RHO_MAX and min(rhos) == RHO_MIN and rhos[-1] == RHO_MIN
    assert saturated >= 3, "u never saturated"
    (fin,) = _logs(c, "Finalized")  # max_rounds: the session ends like any other
    assert fin.round == rounds - 1 and not fin.converged and not fin.ended
    assert agg.finalized and c.is_finalized(sid)


# ---------------------------------------------------------------- 2. end_session


@pytest.mark.usefixtures("boa_env")
def test_end_session_refuses_later_submissions_and_records_it_unconverged():
    sess = boa_session(3, 8, AdmmSettings(), deadline_s=60)
    for i in range(3):
        sess.submit(i, np.full(8, 0.5 * i))
    sess.submit(0, np.ones(8))  # round 1: device 0 only
    c, sid = sess.c, sess.session
    with boa.env.prank(sess.devices[0]), boa.reverts("only operator"):
        c.end_session(sid)
    _as(sess.operator, c.end_session, sid)
    (fin,) = _logs(c, "Finalized")
    assert (fin.session, fin.round, fin.converged, fin.ended) == (sid, 1, False, True)
    final = sess.final()
    assert final[0] and not final[1] and final[2] == 1
    assert sess.registry.ended(sid) and c.is_finalized(sid) and not c.current()[0]

    before = sess.fingerprint()
    with boa.reverts("session ended"):
        sess.submit(1, np.zeros(8))
    boa.env.time_travel(seconds=61)
    with boa.env.prank(sess.devices[1]), boa.reverts("session ended"):
        c.advance(sid)
    with boa.env.prank(sess.operator), boa.reverts("session ended"):
        c.end_session(sid)
    assert sess.fingerprint() == before
    # the client's typed refusal: a WrongRound (devices stop waiting), of its own kind
    err = client.refusal("submit", "session ended")
    assert isinstance(err, client.SessionEnded) and isinstance(err, client.WrongRound)

    # each device's last submission stands and may be copied to the registry
    d = sess.devices[0]
    _as(d, sess.registry.publish_schedule, sid, d, sess.last[d])
    assert list(sess.registry.schedule(sid, d)) == sess.last[d]
    # nothing is stuck: the operator opens the next session
    f = sess.feeder
    with boa.env.prank(sess.operator):
        nxt = c.open_session(session_params(f, sess.settings, 60),
                             fp.pack_kw(f.price, fp.PRICE_SCALE), fp.pack_kw(f.capacity),
                             fp.pack_kw(f.export_limit), sess.devices)
    assert nxt == sid + 1 and c.current()[0]


# ---------------------------------------------------------------- 3. frozen bounds


@pytest.mark.usefixtures("boa_env")
def test_rebounding_a_participant_during_its_session_is_refused():
    sess = boa_session(3, 8, AdmmSettings(max_rounds=1), participants=2)
    c, op = sess.c, sess.operator
    before = sess.fingerprint()
    with boa.env.prank(op), boa.reverts("device in open session"):
        c.register_devices([(sess.devices[1], -10**12, 10**12)])
    with boa.env.prank(op), boa.reverts("device in open session"):  # one in a batch
        c.register_devices([(sess.devices[2], 0, 1), (sess.devices[0], 0, 1)])
    assert sess.fingerprint() == before
    assert isinstance(client.refusal("register", "device in open session"),
                      client.BoundsFrozen)
    # a device outside the session, or a new one, may be (re-)registered meanwhile
    newcomer = boa.env.generate_address("newcomer")
    _as(op, c.register_devices, [(sess.devices[2], -1, 1), (newcomer, -2, 2)])
    assert tuple(c.device_bounds(newcomer)) == (-2, 2, True)
    # once the session is final, the participants' bounds may change again
    for i in range(2):
        sess.submit(i, np.zeros(8))
    assert sess.final()[0]
    _as(op, c.register_devices, [(sess.devices[1], -7, 7)])
    assert tuple(c.device_bounds(sess.devices[1])) == (-7, 7, True)


# ---------------------------------------------------------------- 4. deadlines in seconds


@pytest.mark.usefixtures("boa_env")
def test_advance_waits_for_the_deadline_in_seconds_not_blocks():
    deadline_s = 90
    sess = boa_session(3, 8, AdmmSettings(), deadline_s=deadline_s)
    c, sid, dev = sess.c, sess.session, sess.devices[2]
    opened = boa.env.timestamp
    assert c.round_deadline() == opened + deadline_s
    assert c.current()[4] == opened + deadline_s  # Current.deadline
    sess.submit(0, np.ones(8))
    # a million blocks without time passing (period 0: sealing is cheap) do not reach it
    boa.env.evm.patch.block_number += 10**6
    with boa.env.prank(dev), boa.reverts("round deadline not reached"):
        c.advance(sid)
    boa.env.timestamp = opened + deadline_s - 1
    with boa.env.prank(dev), boa.reverts("round deadline not reached"):
        c.advance(sid)
    assert isinstance(client.refusal("advance", "round deadline not reached"),
                      client.DeadlineNotReached)
    boa.env.timestamp = opened + deadline_s
    with boa.env.prank(boa.env.generate_address("stranger")), boa.reverts("not a participant"):
        c.advance(sid)
    _as(dev, c.advance, sid)
    (ev,) = _logs(c, "RoundClosed")
    assert ev.round == 0 and ev.stragglers == 2
    # the next round's deadline counts from its own start
    assert c.round() == 1 and c.round_deadline() == boa.env.timestamp + deadline_s


# ---------------------------------------------------------------- 5. operator hand-over


@pytest.mark.usefixtures("boa_env")
def test_operator_hand_over_needs_the_new_operator_to_accept():
    sess = boa_session(2, 8, AdmmSettings())
    c, old = sess.c, sess.operator
    new, stranger = boa.env.generate_address("new"), boa.env.generate_address("stranger")
    with boa.env.prank(stranger), boa.reverts("only operator"):
        c.propose_operator(stranger)
    _as(old, c.propose_operator, new)
    (ev,) = _logs(c, "OperatorProposed")
    assert (ev.operator, ev.pending) == (old, new)
    assert c.operator() == old and c.pending_operator() == new  # nothing changes yet
    with boa.env.prank(stranger), boa.reverts("not the pending operator"):
        c.accept_operator()
    with boa.env.prank(old), boa.reverts("not the pending operator"):
        c.accept_operator()
    assert isinstance(client.refusal("accept", "not the pending operator"),
                      client.NotPendingOperator)
    _as(new, c.accept_operator)
    (ev,) = _logs(c, "OperatorChanged")
    assert (ev.previous, ev.operator) == (old, new)
    assert c.operator() == new and c.pending_operator() == "0x" + "00" * 20
    with boa.env.prank(old), boa.reverts("only operator"):
        c.end_session(sess.session)
    with boa.env.prank(new), boa.reverts("not the pending operator"):  # accepted once
        c.accept_operator()
    _as(new, c.end_session, sess.session)
    # a proposal can be withdrawn (the zero address) before it is accepted
    _as(new, c.propose_operator, stranger)
    _as(new, c.propose_operator, "0x" + "00" * 20)
    with boa.env.prank(stranger), boa.reverts("not the pending operator"):
        c.accept_operator()
    assert c.operator() == new
