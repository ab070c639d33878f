"""The lab on the local-process runtime: `lab up`, `lab run`, `lab down`.

    scenario ─> run folder (keys, device payloads) ─> geth network (signer(s) + member nodes)
            ─> Coordinator deployed, devices whitelisted, session opened
            ─> one device process per device (or per group), supervised
            ─> rounds until the contract finalizes ─> schedule read back from every node
            ─> results (schedule, history, plots) ─> MQTT playback of the day
            ─> meters post what each home drew ─> every home settled ─> bills (lab/bill.py)

The orchestrator holds the operator key only; each device process gets its own key file,
and so does each home's meter (metering/run.py).
A device process that dies is restarted and resumes from chain state. With Clique period 0
blocks are sealed only when transactions arrive, so while no round progresses the
orchestrator seals a block now and then (a 0-value operator transaction); once the round's
deadline (seconds of block time, the scenario's chain.round_deadline_s) has passed, it calls
`advance` and the stragglers' previous x_i are used. A session the operator ended
(`end_session`) stops the run cleanly: devices exit, nothing is played or billed, and the
summary says `ended`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aggregator_contract.client import Coordinator, CoordinatorError, connect, send_tx
from aggregator_contract.limits import ScaleError, check_scale
from chain import keys
from chain.genesis import GAS_LIMIT
from chain.network import GethError, Network, rpc, stop_run
from lab import results as res
from lab.runfolder import RunFolder, active_lab, claim, claimed_lab, release
from lab.supervisor import Supervisor, stop_pids
from scenario import Scenario

log = logging.getLogger("lab")

STALL_TICK_S = 2.0  # seconds without progress before the orchestrator seals a block
LAG_CHECK_S = 5.0  # how often member nodes' heads are compared with the signer's
LAG_RESTART_S = 12.0  # a member behind the signer this long is restarted (see _heal_members)


@dataclass
class Progress:
    """What the live view prints and the history records, one row per closed round."""

    rows: list[dict] = field(default_factory=list)
    t_start: float = field(default_factory=time.monotonic)
    t_last: float = field(default_factory=time.monotonic)
    ended: bool = False  # the operator ended the session (end_session)
    # where follow_rounds reads from next, and when it last saw the chain move
    next_round: int = 0
    from_block: int = 0
    prev_block: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    last_head: int = -1


class Lab:
    """The local-process runtime. lab/compose.py's ComposeLab overrides where processes run
    and how they find each other (start_chain, deploy, start_devices, _schedule_readers,
    _confirm_elsewhere, stop); the rounds, results and MQTT are shared."""

    runtime = "local"
    preference = 100  # when none is named: the fallback that always works

    @classmethod
    def unavailable(cls) -> str | None:
        """None when this runtime can run here, else why not (lab.runtimes)."""
        return None

    @classmethod
    def by_default(cls) -> bool:
        """Whether `make up` without RUNTIME takes this runtime (lab.runtimes.choose)."""
        return cls.unavailable() is None

    @classmethod
    def clean_up(cls, run_dir: Path) -> None:
        """Stop what this runtime left of a run whose orchestrator is gone (`lab down`)."""
        stop_run(run_dir)

    def __init__(self, scenario: Scenario, run: RunFolder, out=sys.stderr) -> None:
        self.scenario = scenario
        self.run = run
        self.out = out
        self.supervisor = Supervisor(on_start=run.record_pid)
        self.network: Network | None = None
        self.coordinator: Coordinator | None = None
        self.session: int | None = None
        self.groups: dict[str, list[str]] = {}  # node name -> device ids it serves
        self.timings: dict[str, float] = {}  # start-up phases, reported in the summary
        self.broker = None  # the lab's MQTT broker, once start_mqtt ran
        self.billing = None  # the Billing contract, when the scenario bills
        self._lag_next = 0.0  # when _heal_members looks next
        self._behind: dict[str, tuple[float, int]] = {}  # member -> (since, signer's head)

    # -- set-up -------------------------------------------------------------------------

    def say(self, msg: str) -> None:
        print(msg, file=self.out, flush=True)

    def prepare(self) -> None:
        """Run folder contents that need no chain: scenario, device payloads, keys."""
        s = self.scenario
        (self.run.path / "scenario.yaml").write_text(s.to_yaml())
        for d in s.devices:
            (self.run.path / "devices" / f"{d.id}.yaml").write_text(
                json.dumps(d.to_payload(), indent=1))  # JSON is YAML; exact floats
        ids = [d.id for d in s.devices]
        self.accounts = keys.ensure_devices(self.run.path, ids)
        self.operator = keys.ensure_operator(self.run.path)
        self.meter_accounts = keys.ensure_meters(self.run.path, ids) if s.billing.enabled else {}
        if s.chain.nodes == "per_group":
            size = s.chain.group_size
            self.groups = {f"group{k // size:03d}": ids[k:k + size]
                           for k in range(0, len(ids), size)}
        else:
            self.groups = {f"node-{d}": [d] for d in ids}

    def start_chain(self) -> None:
        s = self.scenario
        t = time.monotonic()
        self.say(f"chain: {s.chain.signers} signer(s), period {s.chain.period}, "
                 f"{len(self.groups)} member nodes ...")
        self.network = Network.start(self.run.path, members=list(self.groups),
                                     signers=s.chain.signers, period=s.chain.period,
                                     fund=self.funded())
        self.timings["chain_start_s"] = time.monotonic() - t
        for name, info in self.network.nodes.items():
            if info.pid:
                self.run.record_pid(f"geth-{name}", info.pid)

    def funded(self) -> list[str]:
        """The accounts the genesis funds: the operator, every device and every meter."""
        return [self.operator.address, *(a.address for a in self.accounts.values()),
                *(a.address for a in self.meter_accounts.values())]

    def deploy(self) -> None:
        s = self.scenario
        t = time.monotonic()
        w3 = connect(self.network.rpc_url(self.network.rpc_node()))
        self.coordinator = Coordinator.deploy(w3, self.operator)
        self.coordinator.register_devices(
            [(self.accounts[d.id].address, *d.power_bounds()) for d in s.devices])
        self.session = self.coordinator.open_session(
            s.feeder_params(), s.admm_settings(),
            [self.accounts[d.id].address for d in s.devices], self.deadline_s())
        self.deploy_block = int(self.coordinator.deploy_receipt["blockNumber"])
        billing = self._deploy_billing(w3)
        self.open_block = int(w3.eth.block_number)  # set-up ends here; round 0 starts after
        self.run.write_json("lab.json", {
            "scenario": s.name, "contract": self.coordinator.address, "session": self.session,
            "deploy_block": self.deploy_block, "solver": s.admm.solver,
            "devices": {d: self.accounts[d].address for d in self.accounts},
            "groups": self.groups, "runtime": self.runtime, **billing,
        })
        self.timings["deploy_s"] = time.monotonic() - t
        self.say(f"contract {self.coordinator.address}, session {self.session} open")

    def _deploy_billing(self, w3) -> dict:
        """The Billing contract with each home's meter whitelisted (none when the scenario's
        billing is off); its part of lab.json."""
        from aggregator_contract.billing import Billing

        if not self.meter_accounts:
            return {}
        self.billing = Billing.deploy(w3, self.operator, self.coordinator.address)
        self.billing.register_meters({m.address: self.accounts[d].address
                                      for d, m in self.meter_accounts.items()})
        return {"billing": {"contract": self.billing.address,
                            "meters": {d: m.address for d, m in self.meter_accounts.items()}}}

    def deadline_s(self) -> int:
        """The round deadline in seconds of block time (the contract's deadline_s): the
        scenario's chain.round_deadline_s. Time, not blocks: with period 0 a block may be
        sealed per transaction, and anyone able to send them could otherwise run a round's
        deadline down in a second."""
        return self.scenario.chain.round_deadline_s

    def start_devices(self) -> None:
        for node, devices in self.groups.items():
            args = ["--run-dir", self.run.path, "--node", node]
            for d in devices:
                args += ["--device", d]
            self.supervisor.python(f"devices-{node}", "device_node", args, self.run.logs,
                                   restart=True)

    def start_live(self, timeout_s: float = 15.0) -> None:
        """The live page (lab/live.py), a loopback web server that reads the run folder,
        the chain and the bridge's MQTT status; its URL is printed and kept in RUN/live/url."""
        from lab.live import url_file

        child = self.supervisor.python("live", "lab.live", ["--run-dir", self.run.path],
                                       self.run.logs, restart=True)
        f, deadline = url_file(self.run.path), time.monotonic() + timeout_s
        while not f.exists() and child.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        self.say(f"live page {f.read_text().strip()}" if f.exists()
                 else f"live page did not start; see {self.run.logs / 'live.log'}")

    # -- MQTT: broker, emulated devices, bridge ------------------------------------------

    def start_mqtt(self, linger: bool) -> None:
        """Broker (or MQTT_URL), the emulators of every non-real actuator, and the bridge.
        The bridge reads the day from the chain through the lab's RPC node and waits for
        finalization; it publishes the lab's status meanwhile."""
        from mqtt_bridge.auth import plan_users
        from mqtt_bridge.broker import MqttBroker
        from mqtt_bridge.config import BridgeConfig

        self.bridge_config = BridgeConfig.from_scenario(self.scenario, self.run.path.name)
        cfg = self.run.path / "bridge.json"
        self.bridge_config.save(cfg)
        # per-run credentials and ACLs: each process may touch only its own topics
        self.broker = MqttBroker.from_env(self.run.path,
                                          users=plan_users(self.bridge_config))
        self.mqtt_url = self.broker.start()
        if self.broker.pid:
            self.run.record_pid("broker", self.broker.pid)
        keys = self.broker.dir
        bridge_url = f"@{keys / 'bridge.url'}" if self.broker.authenticated else self.mqtt_url
        self.bridge_mqtt_url = (keys / "bridge.url").read_text().strip() \
            if self.broker.authenticated else self.mqtt_url
        common = ["--config", cfg, "--run-dir", self.run.path]
        if any(not a.real for a in self.bridge_config.actuators):
            # the plain URL: each emulator reads its own credentials from the run folder
            self.supervisor.python("emulators", "mqtt_bridge",
                                   ["emulator", "--url", self.mqtt_url, *common],
                                   self.run.logs, restart=True)
        self.supervisor.python(
            "bridge", "mqtt_bridge",
            ["bridge", "--url", bridge_url, *common, "--node", self.network.rpc_node(),
             "--linger", "-1" if linger else "0"], self.run.logs, restart=True)
        if self.meter_accounts:  # they follow the relays from the first slot on
            meter_url = f"@{keys / 'meter.url'}" if self.broker.authenticated else self.mqtt_url
            self.supervisor.python("meters", "metering",
                                   ["--run-dir", self.run.path, "--url", meter_url,
                                    "--node", self.network.rpc_node()],
                                   self.run.logs, restart=True)
        self.say(f"mqtt: {self.broker.kind} broker at {self.mqtt_url}, "
                 f"{len(self.bridge_config.actuators)} actuators; `make watch` to follow")

    def finish_mqtt(self, timeout_s: float) -> dict:
        """Wait for the bridge to play the day; check every emulator against its plan."""
        from mqtt_bridge.chain_source import ChainSource
        from mqtt_bridge.emulator import check_plan_followed, read_events

        self._wait_done("bridge", timeout_s, "finish the day")
        report = json.loads((self.run.results / "bridge.json").read_text())
        status = report["status"]
        plans = ChainSource(self.run.path, self.network.rpc_node(), self.bridge_config).plans()
        events_file = self.run.path / "emulators.jsonl"
        events = read_events(events_file) if events_file.exists() else []
        problems = {}
        for act in self.bridge_config.actuators:
            if act.real:
                continue
            mine = [e for e in events if e.get("actuator") == act.id]
            bad = check_plan_followed(mine, plans[act.id], status["day_start"],
                                      status["seconds_per_slot"])
            if bad:
                problems[act.id] = bad
        lat = report["stats"].get("latency_ms", {})
        return {"broker": self.broker.kind, "actuators": len(self.bridge_config.actuators),
                "actuators_following_plan": len(self.bridge_config.actuators) - len(problems),
                "problems": problems, "commands": report["stats"].get("commands"),
                "ack_latency_ms_p50": lat.get("p50"), "ack_latency_ms_p99": lat.get("p99")}

    # -- keeping processes up ---------------------------------------------------------

    def _wait_done(self, name: str, timeout_s: float, what: str) -> None:
        """Until supervised child `name` exits 0; one that dies meanwhile is restarted by
        `tend` and resumes."""
        child = self.supervisor.children[name]
        deadline = time.monotonic() + timeout_s
        while child.proc.poll() != 0:
            self.tend()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {name} did not {what} in {timeout_s:.0f} s; "
                                   f"see {self.run.logs / f'{name}.log'}")
            time.sleep(0.2)

    def tend(self) -> None:
        """Restart what died: device processes, the bridge, the emulators and the meters
        (the Supervisor; each resumes from the chain or the run folder), a geth node (on its
        data and ports), the lab's broker (on its port, with its users and persistence)."""
        self.supervisor.poll()
        self._revive_nodes()
        self._heal_members()
        broker = self.broker
        if broker is not None and broker.proc is not None and not broker.running():
            self.say(f"broker exited ({broker.proc.returncode}); restarting it")
            broker.proc = None
            try:
                broker.start()
                self.run.record_pid("broker", broker.pid)
            except Exception as e:  # noqa: BLE001 - try again on the next tend
                log.warning("broker restart failed: %s", e)

    def _revive_nodes(self) -> None:
        """Start a geth node whose process is gone (local runtime; Compose restarts its
        containers itself). A node that is alive but stopped (SIGSTOP) is left alone."""
        net = self.network
        if not isinstance(net, Network):
            return
        for name in net.nodes:
            if net.pid(name) is not None:
                continue
            self.say(f"geth node {name} is gone; restarting it on its data")
            self._bring_back(name, net.start_node)

    def _bring_back(self, name: str, how: Callable[..., None]) -> None:
        """Start or restart node `name` with `how` (a Network method); a failure (e.g. a
        peer not answering) is left to the next tend. Its new pid goes in the run folder."""
        try:
            how(name, timeout=30)
        except Exception as e:  # noqa: BLE001
            log.warning("node %s: %s", name, e)
        if self.network.pid(name):
            self.run.record_pid(f"geth-{name}", self.network.pid(name))

    def _heal_members(self) -> None:
        """Restart a member node that has stayed behind the signer's head for
        LAG_RESTART_S. Seen under load and after faults (lab/faults.py): a member that
        missed a propagated block starts a downloader sync (geth 1.13's legacy sync), the
        sync fails ("Header broke chain ancestry", then "stale headers") and hangs until
        its 60 s timeout, and while it hangs the node ignores new blocks: its device sees
        no new round, the round waits for it, and the final block may never reach it. A
        restarted member syncs in its handshake (chain/network.py). A node that does not
        answer (stopped, or starting) is left to time."""
        net = self.network
        now = time.monotonic()
        if not isinstance(net, Network) or now < self._lag_next:
            return
        self._lag_next = now + LAG_CHECK_S
        behind = self._behind
        try:
            top = int(rpc(net.rpc_url(net.signers()[0]), "eth_blockNumber", timeout=2), 16)
        except (OSError, GethError):
            return
        for name in net.members():
            try:
                head = int(rpc(net.rpc_url(name), "eth_blockNumber", timeout=2), 16)
            except (OSError, GethError):
                continue
            # stuck: still short of the head the signer had when the lag was first seen
            # (a member a block or two behind a chain that keeps moving is not)
            since, target = behind.setdefault(name, (now, top))
            if head >= target:
                behind.pop(name)
                continue
            if now - since >= LAG_RESTART_S:
                self.say(f"geth node {name} stuck at block {head} (the signer had {target} "
                         f"{now - since:.0f} s ago); restarting it")
                behind.pop(name)
                self._bring_back(name, net.restart_node)

    # -- metering and billing ----------------------------------------------------------

    def ended_summary(self, prog: Progress, t0: float) -> dict:
        """The summary of a session the operator ended: its rounds so far, no schedule (the
        devices' last submissions are on chain, `lab verify` replays them); written to
        results/summary.json."""
        f = self.coordinator.final_record(self.session)
        self.say(f"session {self.session} was ended by the operator at round {f.round}, "
                 f"unconverged: no schedule is played or billed")
        res.write_history(self.run.results, prog.rows)
        summary = {"scenario": self.scenario.name, "runtime": self.runtime,
                   "nodes": len(self.network.nodes), "devices": len(self.scenario.devices),
                   "finalized": True, "ended": True, "converged": False,
                   "rounds": len(prog.rows), "round": int(f.round), "block": int(f.block),
                   "wall_s_total": round(time.monotonic() - t0, 3),
                   "results": str(self.run.results)}
        self.run.write_json("results/summary.json", summary)
        return summary

    def open_billing(self) -> None:
        """The session's billing opened (its schedule is final): the meters post from here."""
        from aggregator_contract.billing import Tariff

        if self.billing is None:
            return
        s, b = self.scenario, self.scenario.billing
        tariff = Tariff(delta_h=s.horizon.slot_minutes / 60,
                        period=b.period_slots(s.horizon.slot_minutes),
                        tol_wh=b.tolerance_wh, tol_bps=round(b.tolerance_pct * 100),
                        imbalance_bps=round(b.imbalance_pct * 100))
        self.billing.open_billing(self.session, tariff,
                                  [self.accounts[d.id].address for d in s.devices])

    def finish_billing(self, timeout_s: float) -> dict | None:
        """Wait for the meters to settle every home, then the bills from chain events
        (lab/bill.py), written to the results; None when the scenario bills nothing."""
        from lab.bill import bills_of, write_bills

        if self.billing is None:
            return None
        self._wait_done("meters", timeout_s, "settle")
        bills = bills_of(self.network.rpc_url(self.network.rpc_node()),
                         self.run.read_json("lab.json"))
        write_bills(self.run.results, bills)
        st = bills["settlement"]
        self.say(f"billing: {st['homes']} homes settled, bills ${st['bills_usd']:.2f} "
                 f"(deviation ${st['deviation_usd']:.2f}) + remainder "
                 f"${st['remainder_usd']:.2f} = feeder cost ${st['feeder_cost_usd']:.2f}")
        return {"ok": bills["ok"], "problems": bills["problems"],
                "homes_settled": sum(r["settled_on_chain"] for r in bills["homes"]),
                "deviating_homes": [r["home"] for r in bills["homes"] if r["deviation_usd"]],
                **st}

    # -- the rounds ---------------------------------------------------------------------

    def follow_rounds(self, timeout_s: float | None = None) -> Progress:
        """Print one line per closed round until the session is final. A node that stops
        answering (restarted by `tend`) only delays it."""
        prog = Progress(from_block=self.deploy_block, prev_block=self.open_block)
        while True:
            self.tend()
            try:
                if self._poll_rounds(prog):
                    return prog
            except OSError as e:  # the node we read through is down: tend restarts it
                log.warning("chain read failed (%s); retrying", e)
                time.sleep(1.0)
            if timeout_s is not None and time.monotonic() - prog.t_start > timeout_s:
                raise TimeoutError(f"session {self.session} not final after {timeout_s:.0f} s")
            time.sleep(0.1)

    def _poll_rounds(self, prog: Progress) -> bool:
        """Record the rounds closed since the last call; True once the session is final."""
        coord, session = self.coordinator, self.session
        final = coord.is_finalized(session)  # before the events: the last one is read
        recs = [r for r in coord.rounds(session, from_block=prog.from_block)
                if r.round >= prog.next_round]
        now = time.monotonic()
        for r in recs:
            gas = self._gas_between(prog.prev_block, r.block)
            row = {"round": r.round, "r": r.r, "s": r.s, "eps_pri": r.eps_pri,
                   "eps_dual": r.eps_dual, "rho": r.rho, "rho_next": r.rho_next,
                   "converged": r.converged, "stragglers": r.stragglers, "block": r.block,
                   "gas": gas, "wall_s": round(now - prog.t_last, 4)}
            prog.rows.append(row)
            prog.t_last = now
            prog.prev_block = r.block
            prog.next_round, prog.from_block = r.round + 1, r.block
            self.say(f"round {r.round:3d} | r {r.r:9.3e} (eps {r.eps_pri:8.2e}) | "
                     f"s {r.s:9.3e} (eps {r.eps_dual:8.2e}) | rho {r.rho:8.4g} | "
                     f"{row['wall_s']:6.3f} s | gas {gas:,}"
                     + (f" | {r.stragglers} straggler(s)" if r.stragglers else ""))
        head = coord.w3.eth.block_number
        if recs or head != prog.last_head:  # progress: a round closed or a block was sealed
            prog.last_seen, prog.last_head = now, head
        if final:
            prog.ended = coord.is_ended(session)
            return True
        if now - prog.last_seen > STALL_TICK_S:
            self._unstick()
            prog.last_seen = now
        return False

    def _unstick(self) -> None:
        """No progress: seal a block (period 0 seals only on transactions) and, once the
        round deadline has passed, advance the round with the stragglers' previous x_i.
        The deadline is a block timestamp; the next block is stamped with the signer's
        clock (this host's), so the wall clock tells when `advance` will be taken."""
        cur = self.coordinator.current()
        w3 = self.coordinator.w3
        if cur is not None and time.time() >= cur.deadline:
            try:
                self.coordinator.advance(self.session)
                self.say(f"round {cur.round}: deadline passed, advanced without stragglers")
            except CoordinatorError as e:
                log.info("advance refused: %s", e)
            return
        if self.scenario.chain.period == 0:
            send_tx(w3, self.operator, {"to": self.operator.address, "value": 0}, "tick")

    def _gas_between(self, after_block: int, upto_block: int) -> int:
        w3 = self.coordinator.w3
        return sum(int(w3.eth.get_block(b)["gasUsed"])
                   for b in range(after_block + 1, upto_block + 1))

    # -- after finalization -------------------------------------------------------------

    def read_schedule(self) -> tuple[np.ndarray, dict]:
        """The final schedule from the chain, checked equal on every node that answers RPC
        here (the first one, a signer, is the reference); see also _confirm_elsewhere."""
        addresses = [self.accounts[d.id].address for d in self.scenario.devices]
        per_node = {}
        for name, url in self._schedule_readers().items():
            sched = self._wait_final_on(name, Coordinator(connect(url), self.coordinator.address))
            per_node[name] = np.array([sched.x[a] for a in addresses])
        ref = next(iter(per_node.values()))
        differs = [n for n, x in per_node.items() if not np.array_equal(x, ref)]
        if differs:
            raise RuntimeError(f"nodes {differs} disagree on the final schedule")
        final = self.coordinator.schedule(self.session)
        agreeing = len(per_node) + self._confirm_elsewhere(int(final.block))
        return ref, {"converged": final.converged, "round": final.round,
                     "block": final.block, "timestamp": final.timestamp,
                     "nodes_agreeing": agreeing}

    def _wait_final_on(self, name: str, c: Coordinator, timeout: float = 60.0):
        """The final schedule as node `name` sees it. A member that missed the final block
        (dropped as a "stalling" peer under load) imports it with the next block; with
        period 0 no block comes unless a transaction does, so seal ticks until it has it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return c.wait_finalized(self.session, timeout=5)
            except (TimeoutError, OSError):
                self.tend()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {name}: session {self.session} finalized on "
                                       f"the signer but not imported in {timeout:.0f}s") from None
                log.warning("node %s has not imported the final block; sealing a block", name)
                if self.scenario.chain.period == 0:
                    with contextlib.suppress(OSError):  # the signer is restarting
                        send_tx(self.coordinator.w3, self.operator,
                                {"to": self.operator.address, "value": 0}, "tick")

    def _schedule_readers(self) -> dict[str, str]:
        """Node name -> RPC URL to read the schedule from: every node, signers first."""
        net = self.network
        return {n: net.rpc_url(n) for n in [*net.signers(), *net.members()]}

    def _confirm_elsewhere(self, final_block: int) -> int:
        """Nodes not read directly that are confirmed to hold the final state (none here)."""
        return 0

    def write_results(self, x: np.ndarray, meta: dict, prog: Progress) -> None:
        s = self.scenario
        out = self.run.results
        ids = [d.id for d in s.devices]
        feeder = s.feeder_params()
        times = res.slot_times(s.horizon.start, s.horizon.slots, s.horizon.slot_minutes)
        res.write_schedule(out, ids, x, feeder, times,
                           {"session": self.session, "contract": self.coordinator.address,
                            **meta})
        res.write_history(out, prog.rows)
        res.plot_all(out, ids, x, feeder, prog.rows, s.name)

    # -- tear-down ----------------------------------------------------------------------

    def stop(self) -> None:
        self.supervisor.stop_all()
        if self.broker is not None:
            if getattr(self, "bridge_mqtt_url", None):  # the broker came up
                _clear_retained(self.bridge_mqtt_url, self.run.path)
            self.broker.stop()
        if self.network is not None:
            self.network.stop()
        stop_pids(self.run.recorded_pids().values(), timeout=3)


def scale_check(scenario: Scenario) -> dict:
    """Refuse (ScaleError) a scenario one Coordinator session or one block cannot hold,
    before anything starts; returns the gas bound of each call."""
    try:
        return check_scale(len(scenario.devices), scenario.horizon.slots,
                           max(max(abs(b) for b in d.power_bounds())
                               for d in scenario.devices), GAS_LIMIT)
    except ScaleError as e:
        raise ScaleError(f"scenario {scenario.name}: {e}") from None


def run_once(scenario: Scenario, *, interactive: bool, compare: bool = True,
             runtime: str | None = None) -> dict:
    """The whole lab once; returns the summary dict (`lab run` prints it as JSON).
    runtime: a name of lab.runtimes' registry, or None (the most preferred that can run)."""
    scale_check(scenario)
    busy = active_lab()
    if busy is not None:
        raise SystemExit(f"error: a lab is already running (scenario {busy.get('scenario')}, "
                         f"pid {busy['pid']}, run folder {busy.get('run')}); "
                         "stop it with `make down` first")
    from lab.runtimes import choose

    runtime_cls = choose(runtime)
    run = RunFolder.create(scenario.name)
    claim(run, scenario.name)
    lab: Lab = runtime_cls(scenario, run)
    _install_signal_handlers()
    t0 = time.monotonic()
    try:
        lab.say(f"run folder {run.path}")
        lab.start_live()
        lab.prepare()
        lab.start_chain()
        lab.deploy()
        lab.start_mqtt(linger=interactive)
        lab.start_devices()
        t_rounds = time.monotonic()
        prog = lab.follow_rounds()
        if prog.ended:  # the operator stopped it: no schedule to read, play or bill
            return lab.ended_summary(prog, t0)
        wall_rounds = time.monotonic() - t_rounds
        x, meta = lab.read_schedule()
        s_to_final = time.monotonic() - t0
        lab.open_billing()
        lab.write_results(x, meta, prog)
        summary = {
            "scenario": scenario.name,
            "runtime": lab.runtime,
            "nodes": len(lab.network.nodes),
            "devices": len(scenario.devices),
            "finalized": True,
            "converged": meta["converged"],
            "rounds": len(prog.rows),
            "wall_s_total": None,
            "wall_s_rounds": round(wall_rounds, 3),
            "round_s_median": round(float(np.median([r["wall_s"] for r in prog.rows])), 4),
            # from `lab run`'s start: the first round closed, the schedule read back
            "s_to_first_round": round(t_rounds - t0 + prog.rows[0]["wall_s"], 3),
            "s_to_final": round(s_to_final, 3),
            "device_processes": len(lab.groups),
            # set-up (deploy, whitelist, session) plus the rounds' gas, counted as they closed
            "gas_total": (lab._gas_between(lab.deploy_block - 1, lab.open_block)
                          + sum(r["gas"] for r in prog.rows)),
            "gap_vs_inprocess": None,
            "results": str(run.results),
        }
        if compare:
            from lab.admm_inprocess import run_admm

            ref = run_admm(scenario)
            summary["gap_vs_inprocess"] = float(np.abs(ref.x - x).max())
            summary["rounds_inprocess"] = ref.rounds
        if not interactive:
            sc = scenario.playback
            day_s = scenario.horizon.slots * sc.seconds_per_slot
            summary["mqtt"] = lab.finish_mqtt(timeout_s=day_s + 60)
            summary["billing"] = lab.finish_billing(timeout_s=300)
        summary.update({k: round(v, 3) for k, v in lab.timings.items()})
        summary["wall_s_total"] = round(time.monotonic() - t0, 3)
        run.write_json("results/summary.json", summary)
        if interactive:
            lab.say(f"final schedule in {run.results}; Ctrl-C or `make down` stops the lab")
            sc = scenario.playback
            lab.finish_billing(timeout_s=scenario.horizon.slots * sc.seconds_per_slot + 300
                               if not sc.realtime else 86400 * 2)
            _wait_forever()
        return summary
    finally:
        # A second Ctrl-C (or `timeout` forwarding its signal) must not cut the clean-up short
        # and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            lab.stop()
            release()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _install_signal_handlers() -> None:
    """SIGINT and SIGTERM both stop the lab through the clean-up in run_once. SIGINT is set
    explicitly: a shell starts background jobs with SIGINT ignored, and Python keeps that."""
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _wait_forever() -> None:
    while True:
        time.sleep(3600)


def _clear_retained(url: str, run_dir: Path) -> None:
    """The run's retained lab topics and discovery configs, cleared (best effort: a broker
    that is gone holds nothing more)."""
    from mqtt_bridge.cleanup import clear_retained
    from mqtt_bridge.config import BridgeConfig

    cfg_file = run_dir / "bridge.json"
    if not cfg_file.exists():
        return
    try:
        n = len(clear_retained(url, BridgeConfig.load(cfg_file), timeout=5))
        log.info("cleared %d retained topics on %s", n, url)
    except (OSError, TimeoutError, ValueError) as e:
        log.warning("could not clear the retained topics on %s: %s", url, e)


def down() -> int:
    """Stop the running lab: ask its orchestrator to stop, then make sure of it. A lab whose
    orchestrator was killed is cleaned up from its run folder all the same."""
    import psutil

    info = active_lab() or claimed_lab()
    if info is None:
        print("no lab is running")
        return 0
    try:
        p = psutil.Process(info["pid"])
        if "lab" not in " ".join(p.cmdline()):  # the pid was reused: not our orchestrator
            raise psutil.NoSuchProcess(info["pid"])
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        stop_pids([info["pid"]])
    run_dir = Path(info["run"])
    if os.environ.get("MQTT_URL"):  # an external broker outlives the lab: clear what we left
        _clear_retained(os.environ["MQTT_URL"], run_dir)
    elif (run_dir / "broker" / "bridge.url").exists():  # ours, if it still runs
        _clear_retained((run_dir / "broker" / "bridge.url").read_text().strip(), run_dir)
    from lab.runtimes import clean_up

    clean_up(run_dir)
    pids = RunFolder(run_dir).recorded_pids()
    stop_pids(pids.values(), timeout=3)
    release(force=True)
    print(f"stopped the lab of {run_dir}")
    return 0
