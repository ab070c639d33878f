"""`lab verify`: replay a session from the chain alone and check every round.

Everything comes from the contract's events: the session's parameters (SessionOpened),
every submission (Submitted) and every round's outcome (RoundClosed). The submissions of
each round, with a straggler's previous x_i where it did not submit, go through the float
reference of the aggregator steps (aggregator_contract/reference.py); the contract's xbar,
zbar, u (after residual balancing), rho and its stopping decision must agree. Finally the
stored schedule must equal each device's last submission.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from aggregator_contract.client import Coordinator
from aggregator_contract.reference import AggregatorState, aggregate_step


@dataclass
class Verdict:
    session: int
    rounds: int
    max_dev_kw: float  # largest |contract - reference| over xbar, zbar, u and all rounds
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"session": self.session, "rounds": self.rounds, "ok": self.ok,
                "max_dev_kw": self.max_dev_kw, "problems": self.problems}


def verify_session(coord: Coordinator, session: int, from_block: int = 0,
                   tol_kw: float = 1e-5) -> Verdict:
    info = coord.session_info(session, from_block=from_block)
    devices = info.devices
    index = {d: i for i, d in enumerate(devices)}
    t = info.feeder.slots
    subs: dict[int, dict[str, np.ndarray]] = {}
    for s in coord.submissions(session, from_block=info.block):
        subs.setdefault(s.round, {})[s.device] = s.x
    records = coord.rounds(session, from_block=info.block)
    state = AggregatorState.initial(len(devices), t, info.settings.rho0)
    verdict = Verdict(session, len(records), 0.0)
    for rec in records:
        x_new = state.x.copy()
        for dev, x in subs.get(rec.round, {}).items():
            x_new[index[dev]] = x
        missing = len(devices) - len(subs.get(rec.round, {}))
        if missing != rec.stragglers:
            verdict.problems.append(f"round {rec.round}: {rec.stragglers} stragglers on chain, "
                                    f"{missing} devices without a submission")
        if abs(state.rho - rec.rho) > 1e-9 * max(1.0, state.rho):
            verdict.problems.append(f"round {rec.round}: rho {rec.rho} on chain, "
                                    f"{state.rho} replayed")
        state, ref = aggregate_step(state, x_new, info.feeder, info.settings)
        for name, mine, theirs in (("xbar", state.xbar, rec.xbar), ("zbar", state.zbar, rec.zbar),
                                   ("u", state.u, rec.u)):
            dev = float(np.abs(mine - theirs).max())
            verdict.max_dev_kw = max(verdict.max_dev_kw, dev)
            if dev > tol_kw:
                verdict.problems.append(f"round {rec.round}: {name} differs by {dev:.3g} kW")
        if ref.converged != rec.converged:
            verdict.problems.append(f"round {rec.round}: contract says converged="
                                    f"{rec.converged}, the reference {ref.converged} "
                                    f"(r {rec.r:.3g}/{ref.r:.3g}, s {rec.s:.3g}/{ref.s:.3g})")
        state = AggregatorState(state.round, rec.rho_next, rec.xbar, rec.zbar, rec.u, x_new,
                                rec.converged)  # continue from the chain's own numbers
    sched = coord.schedule(session)
    if sched is None:
        verdict.problems.append("session not finalized")
    else:
        for dev in devices:
            if not np.array_equal(sched.x[dev], state.x[index[dev]]):
                verdict.problems.append(f"schedule of {dev} differs from its last submission")
    return verdict


def verify_run(run_dir: Path) -> Verdict:
    """Verify a run folder's session through its signer's node; when the run's chain is not
    running, it is resumed from the run folder for the check and stopped again."""
    from aggregator_contract.client import connect
    from chain.network import Network, load_nodes, rpc

    lab = json.loads((run_dir / "lab.json").read_text())
    nodes = load_nodes(run_dir)
    signer = next(n for n in nodes.values() if n.role == "signer")
    net = None
    try:
        rpc(signer.http_url, "web3_clientVersion", timeout=1)
    except Exception:  # noqa: BLE001 - not running: resume it from its data
        chain = yaml.safe_load((run_dir / "scenario.yaml").read_text()).get("chain") or {}
        members = [n.name for n in nodes.values() if n.role == "member"]
        signers = sum(1 for n in nodes.values() if n.role == "signer")
        net = Network.start(run_dir, members=members, signers=signers,
                            period=int(chain.get("period", 0)))
    try:
        coord = Coordinator(connect(signer.http_url), lab["contract"])
        return verify_session(coord, int(lab["session"]), from_block=lab.get("deploy_block", 0))
    finally:
        if net is not None:
            net.stop()
