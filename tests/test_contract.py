"""The Coordinator contract: fixed point vs the float reference, rejections, stragglers,
finalization (titanoboa, in-process), and the web3 client against a real geth chain."""

from __future__ import annotations

import time

import boa
import numpy as np
import pytest
from contract_fixtures import (  # noqa: F401 - boa_env, geth_chain: fixtures, by name
    BoxQuadratic,
    boa_env,
    boa_session,
    geth_chain,
    session_params,
    tou_feeder,
)

from aggregator_contract import fixed_point as fp
from aggregator_contract.reference import AdmmSettings, AggregatorState, aggregate_step

# boa's pytest plugin anchors its global env around every fixture; these tests isolate
# themselves with a fresh env each (the boa_env fixture) and share a module-scoped geth.
pytestmark = pytest.mark.ignore_isolation

TOL_KW = 1e-5


# ---------------------------------------------------------------- fixed point


def test_pack_roundtrip_and_zigzag():
    vals = [0, 1, -1, 2**63 - 1, -(2**63 - 1), 123_456_789, -987_654_321]
    words = fp.pack(vals)
    assert len(words) == 2 and fp.unpack(words, len(vals)) == vals
    assert fp.pack([-1, 0, 0, 0]) == [1]  # zigzag: small negatives are small words
    assert fp.to_fixed([1.5e-9, -2.5e-9, 0.1]) == [2, -2, 100_000_000]  # nearest, ties even
    assert fp.wad(0.1) == 10**17
    with pytest.raises(ValueError, match="exceeds int64"):
        fp.to_fixed([1e11])
    with pytest.raises(ValueError, match="expected 1"):
        fp.unpack([0, 0], 3)


# ---------------------------------------------------------------- agreement with reference


def _assert_state(sess, state: AggregatorState, k: int) -> None:
    rnd, rho, xbar, zbar, u = sess.current()
    assert rnd == k
    # step 6 scales rho by f = sqrt((r/x)(y/s)): the contract's r, s come from 1e-9 kW
    # lanes, so f (and rho) agree to ~1e-6 relative when s is tiny
    assert rho == pytest.approx(state.rho, rel=1e-6)
    for name, got, want in (("xbar", xbar, state.xbar), ("zbar", zbar, state.zbar),
                            ("u", u, state.u)):
        err = float(np.abs(got - want).max())
        assert err <= TOL_KW, f"round {k}: {name} differs from the reference by {err} kW"


def _drive(sess, solvers, max_rounds: int):
    """Run rounds: devices solve against the contract's variables; each round the reference
    steps from the contract's own state (rho, xbar, zbar, u: rounding never accumulates)
    on the x the contract received, and must land on the contract's next state. Returns
    (rounds, reference infos)."""
    n, t = len(solvers), sess.feeder.slots
    ref = AggregatorState.initial(n, t, sess.settings.rho0, sess.feeder)
    x = np.zeros((n, t))
    infos = []
    for k in range(max_rounds):
        _assert_state(sess, ref, k)
        _, rho, xbar, zbar, u = sess.current()
        ref = AggregatorState(k, rho, xbar, zbar, u, x)
        x_new = np.array([fp.quantize_kw(s.solve(x[i] - xbar + zbar - u, rho))
                          for i, s in enumerate(solvers)])
        for i in range(n):
            sess.submit(i, x_new[i])
        ref, info = aggregate_step(ref, x_new, sess.feeder, sess.settings)
        infos.append(info)
        x = x_new
        if sess.final()[0]:
            break
        assert not info.converged, f"round {k}: reference converged, contract did not"
    final = sess.final()
    assert final[0] and bool(final[1]) == infos[-1].converged and final[2] == len(infos) - 1
    # the schedule is each device's last x_i, copied to the registry by anyone
    anyone = boa.env.generate_address("anyone")
    for i, d in enumerate(sess.devices):
        with boa.env.prank(anyone):
            sess.registry.publish_schedule(sess.session, d, sess.last[d])
        words = sess.registry.schedule(sess.session, d)
        assert np.array_equal(fp.unpack_kw(words, sess.feeder.slots), x[i])
    return len(infos), infos


def _float_rounds(solvers, feeder, settings) -> int:
    """Rounds to converge of the pure float ADMM (no quantization)."""
    n, t = len(solvers), feeder.slots
    st = AggregatorState.initial(n, t, settings.rho0, feeder)
    for k in range(settings.max_rounds):
        x = np.array([s.solve(st.target(st.x[i]), st.rho) for i, s in enumerate(solvers)])
        st, info = aggregate_step(st, x, feeder, settings)
        if info.converged:
            return k + 1
    return settings.max_rounds


@pytest.mark.usefixtures("boa_env")
def test_rounds_match_reference_synthetic():
    n, t = 5, 24
    settings = AdmmSettings(rho0=1.0, max_rounds=60)
    feeder = tou_feeder(t, capacity=25.0, export=7.0)
    rng = np.random.default_rng(7)
    solvers = [BoxQuadratic(rng, t) for _ in range(n)]
    sess = boa_session(n, t, settings, feeder=feeder,
                       bounds=[(s.lo, s.hi) for s in solvers])
    rounds, infos = _drive(sess, solvers, settings.max_rounds)
    assert infos[-1].converged
    assert any(i.rho_next != i.rho for i in infos), "residual balancing never exercised"
    assert rounds == _float_rounds(solvers, feeder, settings)


@pytest.mark.usefixtures("boa_env")
def test_max_rounds_finalizes_unconverged():
    settings = AdmmSettings(rho0=1.0, max_rounds=3, eps_abs=1e-12, eps_rel=1e-12)
    rng = np.random.default_rng(1)
    solvers = [BoxQuadratic(rng, 8) for _ in range(3)]
    sess = boa_session(3, 8, settings, bounds=[(s.lo, s.hi) for s in solvers])
    rounds, infos = _drive(sess, solvers, 10)
    assert rounds == 3 and not infos[-1].converged
    assert sess.current() is None
    assert tuple(sess.final())[:3] == (True, False, 2)


@pytest.mark.usefixtures("boa_env")
def test_straggler_advance_uses_previous_x():
    n, t = 3, 8
    sess = boa_session(n, t, AdmmSettings(rho0=1.0), deadline_s=40)
    ref = AggregatorState.initial(n, t, 1.0, sess.feeder)
    x0 = np.array([[1.0] * t, [2.0] * t, [-1.5] * t])
    for i in range(n):
        sess.submit(i, x0[i])
    ref, _ = aggregate_step(ref, x0, sess.feeder, sess.settings)
    x1 = x0.copy()
    x1[0] += 0.5
    x1[1] -= 0.25  # device 2 is the straggler: its previous x stands in
    sess.submit(0, x1[0])
    sess.submit(1, x1[1])
    anyone = boa.env.generate_address("anyone")
    straggler = sess.devices[2]
    with boa.env.prank(straggler), boa.reverts("round deadline not reached"):
        sess.c.advance(sess.session)
    boa.env.time_travel(seconds=sess.deadline_s)
    # a stranger may not cut a round short (with period 0 it could seal blocks past the
    # deadline at will); a participant may close it
    with boa.env.prank(anyone), boa.reverts("not a participant"):
        sess.c.advance(sess.session)
    with boa.env.prank(straggler):
        sess.c.advance(sess.session)
    ref, info = aggregate_step(ref, x1, sess.feeder, sess.settings)
    _assert_state(sess, ref, 2)
    # round 2: nobody submits, the operator advances: x stays, dx = 0
    boa.env.time_travel(seconds=sess.deadline_s)
    with boa.env.prank(sess.operator):
        sess.c.advance(sess.session)
    ref, _ = aggregate_step(ref, x1, sess.feeder, sess.settings)
    _assert_state(sess, ref, 3)


# ---------------------------------------------------------------- rejections


def _finalized_session():
    sess = boa_session(2, 8, AdmmSettings(max_rounds=1))
    for i in range(2):
        sess.submit(i, np.zeros(8))
    assert sess.final()[0]
    return sess


REJECTIONS = {
    "not whitelisted": lambda s: _as(s, boa.env.generate_address("stranger"),
                                     "submit", s.session, 0, fp.pack_kw(np.zeros(8)), []),
    "wrong session": lambda s: s.submit(0, np.zeros(8), session=s.session + 1),
    "wrong round": lambda s: s.submit(0, np.zeros(8), round=1),
    "already submitted": lambda s: s.submit(0, np.ones(8)),
    "wrong length": lambda s: _as(s, s.devices[1], "submit", s.session, 0,
                                  fp.pack_kw(np.zeros(4)), []),
    "x_prev not empty": lambda s: s.submit(1, np.zeros(8), x_prev=fp.pack_kw(np.ones(8))),
    "x out of bounds": lambda s: s.submit(1, np.r_[np.zeros(7), 10.001]),
    "x out of bounds ": lambda s: s.submit(1, np.r_[-5.000000001, np.zeros(7)]),
    "device not in session": lambda s: _as(s, s.devices[2], "submit", s.session, 0,
                                           fp.pack_kw(np.zeros(8)), []),
    "only operator": lambda s: _as(s, s.devices[0], "register_devices",
                                   [(s.devices[0], -10**12, 10**12)]),
    "only operator  ": lambda s: _as(s, s.devices[0], "propose_operator", s.devices[0]),
    "only operator   ": lambda s: _as(s, s.devices[0], "end_session", s.session),
    "not the pending operator": lambda s: _as(s, s.devices[0], "accept_operator"),
    "device in open session": lambda s: _as(s, s.operator, "register_devices",
                                            [(s.devices[1], -10**9, 10**9)]),
    "wrong session ": lambda s: _as(s, s.operator, "end_session", s.session + 1),
    "only operator ": lambda s: _as(s, s.devices[0], "open_session",
                                    session_params(s.feeder, s.settings, 5), [0, 0], [0, 0],
                                    [0, 0], [s.devices[0]]),
    "session in progress": lambda s: _as(s, s.operator, "open_session",
                                         session_params(s.feeder, s.settings, 5), [0, 0],
                                         [0, 0], [0, 0], [s.devices[0]]),
    "round deadline not reached": lambda s: _as(s, s.devices[0], "advance", s.session),
}


def _as(sess, sender, method, *args):
    with boa.env.prank(sender):
        getattr(sess.c, method)(*args)


@pytest.mark.parametrize("case", list(REJECTIONS))
@pytest.mark.usefixtures("boa_env")
def test_rejection_leaves_state_unchanged(case):
    # three whitelisted devices, of which only 0 and 1 take part in the session
    sess = boa_session(3, 8, AdmmSettings(), participants=2)
    sess.submit(0, np.zeros(8))  # so that a second submission by device 0 is a duplicate
    before = sess.fingerprint()
    with boa.reverts(case.strip()):
        REJECTIONS[case](sess)
    assert sess.fingerprint() == before


@pytest.mark.usefixtures("boa_env")
def test_submission_after_finalization_rejected():
    sess = _finalized_session()
    before = sess.fingerprint()
    with boa.reverts("session finalized"):
        sess.submit(0, np.zeros(8), round=0)
    with boa.reverts("session finalized"):
        _as(sess, sess.devices[0], "advance", sess.session)
    assert sess.fingerprint() == before


@pytest.mark.usefixtures("boa_env")
def test_padding_lanes_must_be_zero():
    sess = boa_session(2, 6, AdmmSettings())  # 2 words, lanes 6 and 7 are padding
    words = fp.pack_kw(np.zeros(6))
    words[1] |= fp.zigzag(5) << 64 * 3
    before = sess.fingerprint()
    with boa.env.prank(sess.devices[0]), boa.reverts("nonzero padding"):
        sess.c.submit(sess.session, 0, words, [])
    assert sess.fingerprint() == before


# ---------------------------------------------------------------- scenarios, real local steps


def _scenario_run(name: str):
    pytest.importorskip("device_node.local_step")
    from device_node.local_step import LocalProblem
    from lab.admm_inprocess import run_admm
    from scenario import load

    scen = load(name)
    problems = [LocalProblem(d) for d in scen.devices]
    settings = scen.admm_settings()
    sess = boa_session(len(problems), scen.horizon.slots, settings,
                       feeder=scen.feeder_params(),
                       bounds=[d.power_bounds() for d in scen.devices])
    rounds, infos = _drive(sess, problems, settings.max_rounds)
    float_run = run_admm(scen, problems=[LocalProblem(d) for d in scen.devices])
    assert infos[-1].converged == float_run.converged
    assert rounds == float_run.rounds, (rounds, float_run.rounds)
    return sess, infos


@pytest.mark.usefixtures("boa_env")
def test_homes3_through_contract_matches_reference():
    _scenario_run("homes3")


@pytest.mark.usefixtures("boa_env")
def test_binding_feeder_converges_through_the_contract():
    """homes3-congested: both feeder limits bind in the optimum; the contract's schedule
    (the devices' own x_i) holds them within the stopping rule's tolerance."""
    sess, infos = _scenario_run("homes3-congested")
    assert infos[-1].converged
    total = np.sum([fp.unpack_kw(sess.last[d], sess.feeder.slots) for d in sess.devices],
                   axis=0)
    assert sess.feeder.violation_kw(total) <= sess.settings.viol_tol_kw
    assert sess.feeder.violation_kw(total) == pytest.approx(
        max(infos[-1].import_excess_kw, infos[-1].export_excess_kw), abs=1e-8)
    near = (total >= sess.feeder.capacity - 0.01) | (total <= -sess.feeder.export_limit + 0.01)
    assert near.sum() >= 2, "the limits did not bind"


@pytest.mark.slow
@pytest.mark.usefixtures("boa_env")
def test_homes10_through_contract_matches_reference():
    _scenario_run("homes10")


# ---------------------------------------------------------------- web3 client on real geth


def test_client_on_geth(request):
    from aggregator_contract.client import (
        Coordinator,
        DeadlineNotReached,
        NotWhitelisted,
        Refused,
        SessionEnded,
        WrongRound,
        connect,
    )

    net, operator, accts = request.getfixturevalue("geth_chain")
    signer_url = net.rpc_url(net.signers()[0])
    member_url = net.rpc_url(net.members()[0])
    # deploy through the signer: a member node at genesis relays no transaction until it
    # has imported a block (geth only accepts/relays txs once it considers itself synced)
    coord = Coordinator.deploy(connect(signer_url), operator)
    assert coord.deploy_receipt["status"] == 1
    w3 = connect(member_url)
    deadline = time.monotonic() + 30
    while w3.eth.block_number < coord.deploy_receipt["blockNumber"]:
        assert time.monotonic() < deadline, "member node did not import the deploy block"
        time.sleep(0.1)
    coord = Coordinator(w3, coord.address, operator)
    devs = accts[:3]
    rng = np.random.default_rng(3)
    t = 8
    solvers = [BoxQuadratic(rng, t) for _ in devs]
    coord.register_devices([(a.address, s.lo, s.hi) for a, s in zip(devs, solvers,
                                                                     strict=True)])
    feeder = tou_feeder(t)
    settings = AdmmSettings(rho0=1.0, max_rounds=40)
    sid = coord.open_session(feeder, settings, [a.address for a in devs], deadline_s=50)
    # devices alternate between the two nodes
    clients = [Coordinator(connect(signer_url if i % 2 else member_url), coord.address, a)
               for i, a in enumerate(devs)]
    with pytest.raises(NotWhitelisted, match="not whitelisted"):
        Coordinator(w3, coord.address, accts[3]).submit(sid, 0, np.zeros(t))
    with pytest.raises(NotWhitelisted, match="only operator"):
        clients[0].register_devices([(accts[3].address, 0, 1)])

    x = np.zeros((len(devs), t))
    while (cur := clients[0].current()) is not None:
        x = np.array([s.solve(x[i] - cur.xbar + cur.zbar - cur.u, cur.rho)
                      for i, s in enumerate(solvers)])
        for i, c in enumerate(clients):
            c.submit(sid, cur.round, x[i])
        if cur.round == 0:
            with pytest.raises(WrongRound, match="wrong round"):
                clients[0].submit(sid, 0, x[0])
        nxt = coord.wait_for_round(sid, cur.round + 1, timeout=30)
        assert nxt is None or nxt.round == cur.round + 1
    sched = coord.wait_finalized(sid, timeout=30)
    assert sched.converged

    # replay from the chain alone: SessionOpened + Submitted events through the reference
    info = coord.session_info(sid)
    assert info.devices == [a.address for a in devs]
    assert np.array_equal(info.feeder.price, feeder.price)
    rounds = coord.rounds(sid)
    assert len(rounds) == sched.round + 1 and rounds[-1].converged
    state = AggregatorState.initial(len(devs), t, info.settings.rho0, info.feeder)
    for rec in rounds:
        subs = {s.device: s.x for s in coord.submissions(sid, rec.round)}
        xk = np.array([subs[a.address] for a in devs])
        state, ref = aggregate_step(state, xk, info.feeder, info.settings)
        assert rec.converged == ref.converged
        assert rec.r == pytest.approx(ref.r, abs=1e-6)
        assert rec.rho_next == pytest.approx(ref.rho_next)
        for got, want in ((rec.xbar, state.xbar), (rec.zbar, state.zbar), (rec.u, state.u)):
            assert np.abs(got - want).max() <= TOL_KW
    # every node sees the same schedule
    other = Coordinator(connect(signer_url), coord.address).schedule(sid, sched.block)
    for a in devs:
        assert np.array_equal(sched.x[a.address], other.x[a.address])
        assert np.array_equal(sched.x[a.address], fp.quantize_kw(x[devs.index(a)]))
    with pytest.raises(WrongRound, match="session finalized"):
        clients[1].submit(sid, sched.round, x[1])

    # lab verify: every emitted figure bit for bit; a tampered figure is named
    from lab.verify import verify_session

    verdict = verify_session(coord, sid)
    assert verdict.ok, verdict.problems
    assert verdict.figures_checked == len(rounds) * 14

    class Tampered(Coordinator):
        def rounds(self, session, from_block=0):
            recs = super().rounds(session, from_block)
            recs[1].raw["eps_pri"] += 1  # one unit of 1e-18 kW
            return recs

    bad = verify_session(Tampered(coord.w3, coord.address), sid)
    assert not bad.ok and any("round 1: eps_pri" in p for p in bad.problems), bad.problems

    # the registry: each device copies its final x_i; the copy equals the schedule
    for i, c in enumerate(clients):
        c.publish_schedule(sid)
        assert np.array_equal(coord.registry_schedule(sid, devs[i].address),
                              sched.x[devs[i].address])
    with pytest.raises(Refused, match="schedule already stored"):
        clients[0].publish_schedule(sid)

    # a second session: the deadline is in seconds of block time, and the operator ends
    # the session unconverged; later calls get the typed refusal, lab verify replays it
    sid2 = coord.open_session(feeder, settings, [a.address for a in devs], deadline_s=5)
    opened = coord.current().deadline - 5
    clients[0].submit(sid2, 0, x[0])
    if time.time() < opened + 4:  # mined at once (period 0): stamped before the deadline
        with pytest.raises(DeadlineNotReached):
            clients[1].advance(sid2)
    while time.time() < opened + 6:
        time.sleep(0.2)
    clients[1].advance(sid2)
    assert coord.current().round == 1
    clients[2].submit(sid2, 1, x[2])
    coord.end_session(sid2)
    with pytest.raises(SessionEnded, match="session ended"):
        clients[1].submit(sid2, 1, x[1])
    with pytest.raises(SessionEnded):
        coord.wait_for_round(sid2, 2, timeout=5)
    ended = coord.schedule(sid2)
    assert ended.ended and not ended.converged and ended.round == 1
    assert np.array_equal(ended.x[devs[2].address], fp.quantize_kw(x[2]))
    verdict = verify_session(coord, sid2)
    assert verdict.ok and verdict.ended, verdict.problems


# ---------------------------------------------------------------- scale: sums, not loops


def _replay_bit_exact(sess, logs_from: int = 0):
    """Every RoundClosed of the session equals the integer mirror fed with the Submitted
    events (boa keeps the logs of each call)."""
    from aggregator_contract.fixed_round import EMITTED, FixedAggregator, Params

    agg = FixedAggregator(Params(*session_params(sess.feeder, sess.settings,
                                                 sess.deadline_s)),
                          fp.to_fixed(sess.feeder.price, fp.PRICE_SCALE),
                          fp.to_fixed(sess.feeder.capacity),
                          fp.to_fixed(sess.feeder.export_limit), list(sess.devices))
    return agg, EMITTED


@pytest.mark.usefixtures("boa_env")
def test_every_emitted_figure_bit_exact_with_integer_mirror():
    """The feeder binds and rho moves, so every term of step 5 is exercised; the old
    contract's eps_pri (a sign error in |z|^2) fails this."""
    n, t = 4, 12
    settings = AdmmSettings(rho0=20.0, max_rounds=25)
    feeder = tou_feeder(t, capacity=12.0, export=2.0)
    rng = np.random.default_rng(11)
    solvers = [BoxQuadratic(rng, t) for _ in range(n)]
    sess = boa_session(n, t, settings, feeder=feeder, bounds=[(s.lo, s.hi) for s in solvers])
    agg, emitted = _replay_bit_exact(sess)
    ref = AggregatorState.initial(n, t, settings.rho0, feeder)
    x = np.zeros((n, t))
    moved = False
    while (cur := sess.current()) is not None:
        _, rho, xbar, zbar, u = cur
        x = np.array([fp.quantize_kw(s.solve(x[i] - xbar + zbar - u, rho))
                      for i, s in enumerate(solvers)])
        for i in range(n - 1):  # the last device straggles in odd rounds
            sess.submit(i, x[i])
            agg.submit(sess.devices[i], fp.to_fixed(x[i]))
        if agg.round % 2 == 0:
            sess.submit(n - 1, x[n - 1])
            agg.submit(sess.devices[n - 1], fp.to_fixed(x[n - 1]))
        else:
            x[n - 1] = fp.from_fixed(agg.x[sess.devices[n - 1]])
            boa.env.time_travel(seconds=sess.deadline_s)
            with boa.env.prank(sess.operator):
                sess.c.advance(sess.session)
        (ev,) = [e for e in sess.c.get_logs() if type(e).__name__ == "RoundClosed"]
        want = agg.close()
        got = {k: getattr(ev, k) for k in emitted}
        got = {k: list(v) if isinstance(v, list | tuple) else v for k, v in got.items()}
        assert got == {k: want[k] for k in emitted}, f"round {want['round']}"
        ref, info = aggregate_step(ref, x, sess.feeder, settings)
        # the float reference agrees to rounding, eps_pri included
        assert fp.from_wad(want["eps_pri"]) == pytest.approx(info.eps_pri, rel=1e-6, abs=1e-8)
        assert fp.from_wad(want["r"]) == pytest.approx(info.r, rel=1e-6, abs=1e-8)
        moved |= want["rho_next"] != want["rho"]
        ref = AggregatorState(ref.round, fp.from_wad(want["rho_next"]),
                              fp.unpack_kw(want["xbar"], t), fp.unpack_kw(want["zbar"], t),
                              fp.unpack_kw(want["u"], t), x.copy())
    assert moved, "rho never moved: step 6 not exercised"
    assert agg.finalized


@pytest.mark.usefixtures("boa_env")
def test_previous_x_must_be_the_last_submission():
    sess = boa_session(2, 8, AdmmSettings())
    for i in range(2):
        sess.submit(i, np.full(8, 1.0 + i))
    before = sess.fingerprint()
    with boa.reverts("x_prev mismatch"):
        sess.submit(0, np.zeros(8), x_prev=fp.pack_kw(np.full(8, 1.5)))
    with boa.reverts("x_prev mismatch"):
        sess.submit(0, np.zeros(8), x_prev=[])
    assert sess.fingerprint() == before
    sess.submit(0, np.zeros(8))  # with the right x_prev


def _round_gas(n: int, t: int = 96, rounds: int = 3) -> tuple[list[int], list[int]]:
    """(plain submissions' gas, closing submissions' gas) over a few rounds, bench data."""
    sess = boa_session(n, t, AdmmSettings(eps_abs=0.0, eps_rel=0.0, max_rounds=rounds),
                       bounds=[(-10.0, 10.0)] * n)
    rng = np.random.default_rng(0)
    plain, closing = [], []
    for _ in range(rounds):
        for i in range(n):
            gas = sess.submit(i, rng.uniform(-8, 8, t))
            (closing if i == n - 1 else plain).append(gas)
    return plain, closing


@pytest.mark.usefixtures("boa_env")
def test_closing_gas_does_not_grow_with_devices():
    p10, c10 = _round_gas(10)
    p200, c200 = _round_gas(200)
    assert max(c200) <= 1.05 * max(c10), (c10, c200)
    assert max(p200) <= 1.05 * max(p10), (max(p10), max(p200))


@pytest.mark.usefixtures("boa_env")
def test_straggler_round_at_large_n():
    n, t = 300, 8
    sess = boa_session(n, t, AdmmSettings(rho0=1.0), deadline_s=30,
                       bounds=[(-10.0, 10.0)] * n)
    rng = np.random.default_rng(5)
    x0 = rng.uniform(-3, 3, (n, t))
    for i in range(n):
        sess.submit(i, x0[i])
    ref, _ = aggregate_step(AggregatorState.initial(n, t, 1.0, sess.feeder), np.array(
        [fp.quantize_kw(v) for v in x0]), sess.feeder, sess.settings)
    x1 = x0.copy()
    for i in range(0, n, 3):  # two thirds straggle
        x1[i] = x0[i] + 1.0
        sess.submit(i, x1[i])
    boa.env.time_travel(seconds=30)
    with boa.env.prank(sess.devices[1]):  # a straggler of this round may close it
        sess.c.advance(sess.session)
    (ev,) = [e for e in sess.c.get_logs() if type(e).__name__ == "RoundClosed"]
    assert ev.stragglers == n - len(range(0, n, 3))
    ref, _ = aggregate_step(ref, np.array([fp.quantize_kw(v) for v in x1]), sess.feeder,
                            sess.settings)
    _assert_state(sess, ref, 2)


@pytest.mark.usefixtures("boa_env")
def test_registry_checks_publications_with_the_coordinator():
    sess = _finalized_session()
    d = sess.devices[0]
    with boa.env.prank(d), boa.reverts("only coordinator"):
        sess.registry.record_final(sess.session, (True, True, 0, 0, 0, 2, 8), False)
    with boa.env.prank(d), boa.reverts("not the device's last submission"):
        sess.registry.publish_schedule(sess.session, d, fp.pack_kw(np.ones(8)))
    stranger = boa.env.generate_address("stranger")
    with boa.env.prank(stranger), boa.reverts("device not in session"):
        sess.registry.publish_plan(sess.session, [5])
    with boa.env.prank(d), boa.reverts("session not finalized"):
        sess.registry.publish_schedule(sess.session + 1, d, sess.last[d])
    with boa.env.prank(d):
        sess.registry.publish_schedule(sess.session, d, sess.last[d])
        sess.registry.publish_plan(sess.session, [5])
    with boa.env.prank(d), boa.reverts("schedule already stored"):
        sess.registry.publish_schedule(sess.session, d, sess.last[d])
    with boa.env.prank(d), boa.reverts("plan already published"):
        sess.registry.publish_plan(sess.session, [6])
    assert list(sess.registry.schedule(sess.session, d)) == sess.last[d]
    assert list(sess.registry.plan(sess.session, d)) == [5]
    assert not sess.registry.ended(sess.session)
    with boa.env.prank(d), boa.reverts("only deployer"):
        sess.registry.bind(d)
    with boa.env.prank(sess.operator), boa.reverts("already bound"):
        sess.registry.bind(sess.operator)


@pytest.mark.usefixtures("boa_env")
def test_open_session_refuses_sums_beyond_their_lanes():
    operator = boa.env.generate_address("operator")
    c, _ = boa_deploy_(operator)
    devs = [boa.env.generate_address(f"d{i}") for i in range(3)]
    feeder = tou_feeder(8)
    with boa.env.prank(operator):
        c.register_devices([(d, -(2**62), 2**62) for d in devs])
        with boa.reverts("N * max|bound| beyond sum's lane"):
            c.open_session(session_params(feeder, AdmmSettings(), 5),
                           fp.pack_kw(feeder.price, fp.PRICE_SCALE),
                           fp.pack_kw(feeder.capacity), fp.pack_kw(feeder.export_limit), devs)


def boa_deploy_(operator):
    from contract_fixtures import boa_deploy

    return boa_deploy(operator)


def test_shipped_artifacts_equal_a_fresh_compile():
    """The artifacts processes load are what the pinned vyper makes of the sources now, for
    EVM paris, and within EIP-170's code size."""
    from aggregator_contract.compile import CONTRACTS, compile_source, load

    for name in CONTRACTS:
        shipped, fresh = load(name), compile_source(name)
        assert shipped == fresh, f"{name}: run `make contracts`"
        assert shipped.evm_version == "paris" and shipped.runtime_size <= 24_576
