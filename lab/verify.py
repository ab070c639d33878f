"""`lab verify`: replay a session from the chain alone and check every round.

Everything comes from the contract's events: the session's parameters (SessionOpened),
every submission (Submitted) and every round's outcome (RoundClosed). The submissions of
each round are folded into `fixed_round.FixedAggregator`, the contract's own integer
arithmetic step for step, and every figure the round emitted (r, s, eps_pri, eps_dual, rho,
rho_next, converged, stragglers, xbar, zbar, u) must be equal bit for bit. The same
submissions also go through the float reference (reference.py); its largest distance to the
chain's xbar, zbar and u is reported (`max_dev_kw`) and must stay within `tol_kw` (1e-4 kW:
the bit-exact replay is the check; this distance only shows that the integer arithmetic
tracks the float math. Measured: 6e-6 kW over homes10-congested's 78 rounds, where u
reaches ~20 kW and rho moves by continuous factors). Finally
the schedule must be each device's last submission, and every copy a device published to
the ScheduleRegistry must equal it. A session the operator ended (`end_session`) is
replayed up to the round it was ended in, whose submissions so far are the devices' last
(the verdict says `ended`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aggregator_contract import fixed_point as fp
from aggregator_contract.client import Coordinator
from aggregator_contract.fixed_round import EMITTED, FixedAggregator, Params
from aggregator_contract.reference import AggregatorState, aggregate_step


@dataclass
class Verdict:
    session: int
    rounds: int
    max_dev_kw: float  # largest |contract - float reference| over xbar, zbar, u, all rounds
    figures_checked: int = 0  # emitted figures compared bit for bit
    problems: list[str] = field(default_factory=list)
    ended: bool = False  # the operator ended the session unconverged (end_session)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"session": self.session, "rounds": self.rounds, "ok": self.ok,
                "figures_checked": self.figures_checked, "max_dev_kw": self.max_dev_kw,
                "ended": self.ended, "problems": self.problems}


def compare_round(verdict: Verdict, emitted: dict, replayed: dict) -> None:
    """Every emitted figure of one round against the integer replay, bit for bit."""
    for name in EMITTED:
        got, want = emitted[name], replayed[name]
        got = list(got) if isinstance(got, list | tuple) else got
        verdict.figures_checked += 1
        if got != want:
            verdict.problems.append(f"round {replayed['round']}: {name} on chain {got!r}, "
                                    f"replayed {want!r}")


def verify_session(coord: Coordinator, session: int, from_block: int = 0,
                   tol_kw: float = 1e-4) -> Verdict:
    info = coord.session_info(session, from_block=from_block)
    devices = info.devices
    index = {d: i for i, d in enumerate(devices)}
    t = info.feeder.slots
    subs: dict[int, dict[str, tuple[int, ...]]] = {}
    for s in coord.submissions(session, from_block=info.block):
        subs.setdefault(s.round, {})[s.device] = s.words
    records = coord.rounds(session, from_block=info.block)
    agg = FixedAggregator(Params.from_event(info.raw_params),
                          fp.to_fixed(info.feeder.price, fp.PRICE_SCALE),
                          fp.to_fixed(info.feeder.capacity),
                          fp.to_fixed(info.feeder.export_limit), list(devices))
    state = AggregatorState.initial(len(devices), t, info.settings.rho0, info.feeder)
    verdict = Verdict(session, len(records), 0.0)
    for rec in records:
        if rec.round != agg.round:
            verdict.problems.append(f"round {rec.round} closed where round {agg.round} was due")
            break
        x_new = state.x.copy()
        for dev, words in subs.get(rec.round, {}).items():
            agg.submit(dev, fp.unpack(list(words), t))
            x_new[index[dev]] = fp.unpack_kw(list(words), t)
        compare_round(verdict, rec.raw, agg.close())
        state, _ = aggregate_step(state, x_new, info.feeder, info.settings)
        for name, mine, theirs in (("xbar", state.xbar, rec.xbar), ("zbar", state.zbar, rec.zbar),
                                   ("u", state.u, rec.u)):
            dev = float(np.abs(mine - theirs).max())
            verdict.max_dev_kw = max(verdict.max_dev_kw, dev)
            if dev > tol_kw:
                verdict.problems.append(f"round {rec.round}: {name} differs from the float "
                                        f"reference by {dev:.3g} kW")
        state = AggregatorState(state.round, rec.rho_next, rec.xbar, rec.zbar, rec.u, x_new,
                                rec.converged)  # continue from the chain's own numbers
    sched = coord.schedule(session)
    if sched is None:
        verdict.problems.append("session not finalized")
    else:
        if sched.ended:  # the operator ended it in round sched.round: its submissions count
            verdict.ended = True
            if agg.finalized or agg.round != sched.round:
                verdict.problems.append(f"ended on chain in round {sched.round}, the replay "
                                        f"is in round {agg.round}")
            for dev, words in subs.get(agg.round, {}).items():
                agg.submit(dev, fp.unpack(list(words), t))
            agg.end()
        elif not agg.finalized:
            verdict.problems.append("finalized on chain, not in the replay")
        for dev in devices:
            mine = fp.from_fixed(agg.x[dev])
            if not np.array_equal(sched.x[dev], mine):
                verdict.problems.append(f"schedule of {dev} differs from its last submission")
            copy = coord.registry_schedule(session, dev)
            if copy is not None and not np.array_equal(copy, mine):
                verdict.problems.append(f"registry copy of {dev}'s schedule differs")
    return verdict


def verify_run(run_dir: Path) -> Verdict:
    """Verify a run folder's session from its chain (lab/runchain.py: resumed when not
    running)."""
    from aggregator_contract.client import connect
    from lab.runchain import run_chain, run_info

    lab = run_info(run_dir)
    with run_chain(run_dir) as url:
        coord = Coordinator(connect(url), lab["contract"])
        return verify_session(coord, int(lab["session"]), from_block=lab.get("deploy_block", 0))
