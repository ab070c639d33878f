"""One device on the chain: its private model, its own key, its own node (DESIGN.md,
"A device node").

Each round the agent reads the shared variables from the contract, solves its local step

    x_i+ = argmin_{x in X_i} f_i(x) + (rho/2)||x - v_i||^2,   v_i = x_i - xbar + zbar - u

and submits x_i+ signed with its own key. x_i is the device's last accepted submission, which
the client keeps (`Coordinator.held_x`); after a restart or a refusal it is read back from
the device's last Submitted event, so a restarted agent resumes from chain state alone.
After finalization the agent copies its final x_i to the schedule registry, derives the
on/off plan of each switched load from the component split of it and publishes the plans
on chain for the MQTT bridge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from eth_account.signers.local import LocalAccount

from aggregator_contract.client import Coordinator, CurrentVars, PendingTx, Refused, WrongRound
from device_node.local_step import LocalProblem
from mqtt_bridge.plan import on_off_plan, plan_to_words, required_on_slots
from scenario import DeviceSpec

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    session: int
    round: int
    solve_s: float
    pending: PendingTx  # the submission, sent; confirm() waits for it


class DeviceAgent:
    def __init__(self, spec: DeviceSpec, account: LocalAccount, coordinator: Coordinator,
                 solver: str) -> None:
        self.spec = spec
        self.account = account
        self.coordinator = coordinator
        self.problem = LocalProblem(spec, solver=solver)
        self._done: tuple[int, int] | None = None  # (session, round) last submitted
        self._planned: set[int] = set()  # sessions whose plans are on chain

    @property
    def address(self) -> str:
        return self.account.address

    def step(self, cur: CurrentVars) -> StepResult | None:
        """Solve and send (not wait for) this round's submission unless already done; None
        when there is nothing to do."""
        key = (cur.session, cur.round)
        if self._done == key:
            return None
        if self._done is None and self.coordinator.has_submitted(*key, self.address):
            self._done = key  # submitted before a restart
            return None
        # x_i as the contract holds it: our last accepted submission (kept by the client;
        # read back from the chain after a restart or a refusal)
        v = self.coordinator.held_x(cur.session) - cur.xbar + cur.zbar - cur.u
        x = self.problem.solve(v, cur.rho)
        pending = self.coordinator.submit(cur.session, cur.round, x, wait=False)
        self._done = key
        return StepResult(cur.session, cur.round, self.problem.solve_times[-1], pending)

    def confirm(self, res: StepResult) -> bool:
        """Wait for a step's transaction. False when the contract refused it because the
        round had moved on (a deadline advance) or the operator ended the session
        (SessionEnded, a WrongRound: the process loop then stops); any other refusal
        raises."""
        try:
            res.pending.receipt()
            return True
        except WrongRound as e:
            self.coordinator.forget_sent(res.session)  # not taken: the chain's x_i counts
            log.warning("%s: submission for round %d refused: %s", self.spec.id, res.round, e)
            return False
        except Refused as e:
            # a revert whose reason could not be read back (the state it met is gone): it
            # is the round moving on only if the chain says so now; anything else raises
            c = self.coordinator
            cur = c.current()
            moved = c.is_finalized(res.session) or cur is None or (
                cur.session, cur.round) != (res.session, res.round)
            if not moved:
                raise
            c.forget_sent(res.session)
            log.warning("%s: submission for round %d reverted as the round closed or the "
                        "session ended: %s", self.spec.id, res.round, e)
            return False

    def publish_final(self, session: int) -> list[PendingTx]:
        """Once `session` is final: send (not wait for) this device's final x_i to the
        schedule registry and the on/off plans of its switched loads with an actuator,
        unless already there. Returns the sent transactions; the caller waits for them
        (a process's devices all send first, so a group of 100 waits about one block)."""
        if session in self._planned:
            return []
        sent: list[PendingTx] = []
        c = self.coordinator
        if c.registry_schedule(session, self.address) is None:
            sent.append(c.publish_schedule(session, wait=False))
        if self.spec.actuators() and not c.plan_words(session, self.address):
            parts = self.component_split(c.held_x(session))
            words: list[int] = []
            comps = {comp.id: comp for comp in self.spec.components}
            for cid in self.spec.actuators():  # in component order, as the bridge reads them
                words += plan_to_words(self.switch_plan(comps[cid], parts[cid]))
            sent.append(c.publish_plan(session, words, wait=False))
        self._planned.add(session)
        return sent

    def component_split(self, x_final: np.ndarray) -> dict[str, np.ndarray]:
        """Each component's power in the cheapest realisation of the final x_i
        (LocalProblem.split), so every run of the agent gives the same plans."""
        return self.problem.split(x_final)

    def switch_plan(self, comp, power_kw: np.ndarray) -> np.ndarray:
        h = self.spec.horizon
        on_slots = required_on_slots(comp.params["on_hours"], h.slot_minutes)
        return on_off_plan(power_kw, comp.params["rated_kw"], on_slots,
                           tuple(comp.params["window"]) if comp.params.get("window") else None)
