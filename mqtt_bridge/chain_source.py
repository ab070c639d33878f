"""The bridge's view of the day, read from the chain (never from the orchestrator's memory).

The run folder tells only where to look: the contract address and session (`lab.json`),
the device addresses, and this process's node (`chain/network.json`). Everything else is a
contract read: the open round's variables, the RoundClosed events for the residuals, each
device's final x_i, and the on/off plans the device nodes published after finalization.
The day counts as final for the bridge once the session is finalized and every device with
actuators has published its plans. A session the operator ended (`end_session`) never
becomes a day to play: `status()` says `ended` and there are no schedules or plans.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from aggregator_contract.client import Coordinator, connect
from chain.network import load_nodes
from mqtt_bridge.config import BridgeConfig
from mqtt_bridge.plan import WORD_BITS, words_to_plan


class ChainSource:
    def __init__(self, run_dir: Path, node: str, config: BridgeConfig) -> None:
        lab = json.loads((Path(run_dir) / "lab.json").read_text())
        self.session = int(lab["session"])
        self.devices: dict[str, str] = lab["devices"]  # device id -> address
        self.from_block = int(lab.get("deploy_block", 0))
        self.config = config
        self.coordinator = Coordinator(connect(load_nodes(run_dir)[node].rpc_url),
                                       lab["contract"])
        self._final: tuple[dict, dict] | None = None  # cached once complete
        self._last_round = None  # the latest RoundClosed seen
        self._ended = False  # the operator ended the session: nothing will be played

    def status(self) -> dict[str, Any]:
        c = self.coordinator
        final = self._load_final()
        rounds = c.rounds(self.session, from_block=self.from_block)
        if rounds:  # next time, read only the newer events
            self._last_round, self.from_block = rounds[-1], rounds[-1].block + 1
        last = self._last_round
        cur = c.current()
        return {
            "session": self.session,
            "round": cur.round if cur is not None else (last.round if last else 0),
            "residuals": {"r": last.r if last else None, "s": last.s if last else None},
            "rho": cur.rho if cur is not None else (last.rho if last else None),
            "finalized": final is not None,
            "ended": self._ended,
        }

    def schedules(self) -> dict[str, np.ndarray] | None:
        final = self._load_final()
        return None if final is None else dict(final[0])

    def plans(self) -> dict[str, list[bool]] | None:
        final = self._load_final()
        return None if final is None else {k: list(v) for k, v in final[1].items()}

    def _load_final(self) -> tuple[dict, dict] | None:
        if self._final is not None:
            return self._final
        sched = self.coordinator.schedule(self.session)
        if sched is None or sched.ended:
            self._ended = sched is not None
            return None
        x = {dev: sched.x[addr] for dev, addr in self.devices.items()}
        per_word = -(-self.config.slots // WORD_BITS)
        plans: dict[str, list[bool]] = {}
        by_device: dict[str, list] = {}
        for act in self.config.actuators:
            by_device.setdefault(act.device, []).append(act)
        for dev, acts in by_device.items():
            words = self.coordinator.plan_words(self.session, self.devices[dev])
            if len(words) < per_word * len(acts):
                return None  # this device has not published its plans yet
            for k, act in enumerate(acts):
                chunk = words[k * per_word:(k + 1) * per_word]
                plans[act.id] = [bool(b) for b in words_to_plan(chunk, self.config.slots)]
        self._final = (x, plans)
        return self._final
