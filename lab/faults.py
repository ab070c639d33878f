"""`make test-faults`: the whole lab under faults; the last stdout line is one JSON object.

Each run is `lab run` of a scenario (homes10 by default, its playback slowed to
`--seconds-per-slot` so that a restart costs a few slots, not the day) while this process
injects, from outside, what a laptop or a flaky host does to it:

    rounds    SIGKILL of device processes (`--kills` over the run, round robin, one every
              `--kill-every` s while the session is open); SIGSTOP of one member geth node
              for 10-30 s, then SIGCONT; SIGKILL of the signer geth once that node is back
    playback  SIGKILL of the broker, later SIGKILL of the bridge, each at a time when no
              planned switch is due within `QUIET_S` seconds (a switch due while the
              bridge is down is sent when it is back: late, so timing is not judged here)

The lab restarts what died (lab/orchestrator.py `tend`, the Supervisor) and every process
resumes from the chain or the run folder. Then, per run: finalized, `lab verify` on the run
folder, and each planned switch of every emulated device delivered: the device reached the
planned state after the switch was due and before the next planned switch (or the day's
end) plus `GRACE_S`, and ended the day as planned.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
QUIET_S = 4.0  # no planned switch this soon after a broker or bridge kill
GRACE_S = 8.0  # a switch due during an outage must arrive within this after its window


def _pids(run_dir: Path) -> dict[str, int]:
    try:
        return json.loads((run_dir / "pids.json").read_text())
    except (OSError, ValueError):
        return {}


def _kill(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def delivered(events: list[dict], plan: list[bool], day_start: float,
              seconds_per_slot: float, grace_s: float = GRACE_S) -> tuple[int, int, list[str]]:
    """(switches delivered, switches due, problems) of one emulated device: each planned
    change (and slot 0's state) must be reached between its slot's start and the next
    planned change's plus grace_s; the day must end in the planned state."""
    cmds = sorted((e for e in events if e["event"] == "command"), key=lambda e: e["t"])
    want = [t for t in range(len(plan)) if t == 0 or plan[t] != plan[t - 1]]
    ok, problems = 0, []
    for i, t in enumerate(want):
        lo = day_start + t * seconds_per_slot - 0.05
        end = want[i + 1] if i + 1 < len(want) else len(plan)
        hi = day_start + end * seconds_per_slot + grace_s
        if any(lo <= e["t"] < hi and bool(e["state"]) == plan[t] for e in cmds):
            ok += 1
        else:
            problems.append(f"slot {t}: {'ON' if plan[t] else 'OFF'} never arrived")
    if cmds and bool(cmds[-1]["state"]) != plan[-1]:
        problems.append("ended the day in the wrong state")
    return ok, len(want), problems


class Injector:
    """The faults of one run, from a thread, against the processes in RUN/pids.json."""

    def __init__(self, run_dir: Path, kills: int, kill_every: float, rng: random.Random,
                 seconds_per_slot: float) -> None:
        self.run_dir, self.kills, self.kill_every = run_dir, kills, kill_every
        self.rng, self.sps = rng, seconds_per_slot
        self.done = threading.Event()
        self.log: list[dict[str, Any]] = []
        self.counts = {"device_kill": 0, "member_stop": 0, "signer_kill": 0,
                       "broker_kill": 0, "bridge_kill": 0}

    def _note(self, kind: str, target: str, **kw: Any) -> None:
        self.counts[kind] += 1
        self.log.append({"t": round(time.time(), 3), "fault": kind, "target": target, **kw})
        print(f"faults: {kind} {target} {kw or ''}", file=sys.stderr, flush=True)

    def _final(self) -> bool:
        return (self.run_dir / "results" / "schedule.json").exists()

    def run(self) -> None:
        try:
            self._rounds()
            self._playback()
        except Exception as e:  # noqa: BLE001 - reported, the run goes on
            self.log.append({"fault": "injector error", "error": repr(e)})
        finally:
            self.done.set()

    def _rounds(self) -> None:
        while not any(k.startswith("devices-") for k in _pids(self.run_dir)):
            if self.done.wait(0.2):
                return
        victims = sorted(k for k in _pids(self.run_dir) if k.startswith("devices-"))
        members = sorted(k for k in _pids(self.run_dir) if k.startswith("geth-node-"))
        signers = sorted(k for k in _pids(self.run_dir) if k.startswith("geth-signer"))
        stop_at = time.monotonic() + 3.0
        stopped: tuple[str, float] | None = None
        signer_due: float | None = None
        k, next_kill = 0, time.monotonic() + 1.0
        while not self._final():
            now = time.monotonic()
            pids = _pids(self.run_dir)
            if k < self.kills and now >= next_kill:
                name = victims[k % len(victims)]
                if _kill(pids[name], signal.SIGKILL):
                    self._note("device_kill", name)
                k, next_kill = k + 1, now + self.kill_every
            if stop_at and now >= stop_at and members:
                name = self.rng.choice(members)
                secs = self.rng.uniform(10, 30)
                if _kill(pids[name], signal.SIGSTOP):
                    self._note("member_stop", name, seconds=round(secs, 1))
                    stopped = (name, now + secs)
                stop_at = 0.0
            if stopped and now >= stopped[1]:
                _kill(pids[stopped[0]], signal.SIGCONT)
                stopped, signer_due = None, now + 2.0
            if signer_due and now >= signer_due and signers:
                if _kill(pids[signers[0]], signal.SIGKILL):
                    self._note("signer_kill", signers[0])
                signer_due = None
            time.sleep(0.1)
        if stopped:  # finalized while it was stopped: let it go on
            _kill(_pids(self.run_dir)[stopped[0]], signal.SIGCONT)

    def _quiet_time(self, plans: dict[str, list[bool]], day_start: float, after: float) -> float:
        """The first time >= after with no planned switch in the next QUIET_S seconds."""
        switches = sorted(day_start + t * self.sps for p in plans.values() if p
                          for t in range(1, len(p)) if p[t] != p[t - 1])
        t = after
        for s in switches:
            if t <= s < t + QUIET_S:
                t = s + 0.5 * self.sps
        return t

    def _playback(self) -> None:
        day = self.run_dir / "mqtt" / "day.json"
        while not day.exists():
            if self.done.wait(0.2):
                return
        day_start = json.loads(day.read_text())["day_start"]
        plans = self._plans()
        for kind, name, at in (("broker_kill", "broker", 0.25), ("bridge_kill", "bridge", 0.6)):
            horizon = len(next(iter(plans.values()), [])) or 96
            when = self._quiet_time(plans, day_start, day_start + at * horizon * self.sps)
            while time.time() < when:
                if self.done.wait(0.1):
                    return
            pid = _pids(self.run_dir).get(name)
            if pid and _kill(pid, signal.SIGKILL):
                self._note(kind, name, slot=round((time.time() - day_start) / self.sps, 1))

    def _plans(self) -> dict[str, list[bool]]:
        """The plans the bridge plays, from the chain (the lab's RPC node)."""
        from chain.network import rpc_node_of
        from mqtt_bridge.chain_source import ChainSource
        from mqtt_bridge.config import BridgeConfig

        cfg = BridgeConfig.load(self.run_dir / "bridge.json")
        node = rpc_node_of(self.run_dir).name
        for _ in range(100):
            try:
                plans = ChainSource(self.run_dir, node, cfg).plans()
                if plans is not None:
                    return plans
            except OSError:
                pass
            time.sleep(0.5)
        return {}


def run_once(scenario: str, seconds_per_slot: float, kills: int, kill_every: float,
             seed: int, runs_root: Path) -> dict[str, Any]:
    from scenario import load

    scen = load(scenario)
    doc = yaml.safe_load(scen.to_yaml())
    doc["playback"] = {**(doc.get("playback") or {}), "seconds_per_slot": seconds_per_slot}
    path = runs_root / f"{scen.name}-faults.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = dict(os.environ, LAB_RUNS=str(runs_root))
    t0 = time.monotonic()
    lab = subprocess.Popen([sys.executable, "-m", "lab.cli", "run", str(path), "--no-compare"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           cwd=REPO, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(lab.stderr.readline, "")),
                     daemon=True).start()
    while not any(ln.startswith("run folder ") for ln in lines):
        if lab.poll() is not None:
            break
        time.sleep(0.1)
    run_dir = Path(next((ln for ln in lines if ln.startswith("run folder ")),
                        "run folder ?").split(maxsplit=2)[-1].strip())
    inj = Injector(run_dir, kills, kill_every, random.Random(seed), seconds_per_slot)
    threading.Thread(target=inj.run, daemon=True).start()
    try:
        out, _ = lab.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        os.killpg(lab.pid, signal.SIGTERM)
        out, _ = lab.communicate(timeout=60)
    inj.done.set()
    wall = time.monotonic() - t0
    (runs_root / "lab.log").write_text("".join(lines))  # what `lab run` said, restarts included
    result: dict[str, Any] = {"run": str(run_dir), "faults": inj.counts, "wall_s": round(wall, 1),
                              "finalized": False, "verify_ok": False, "delivered": 0, "due": 0,
                              "problems": []}
    try:
        summary = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result["problems"].append("lab run failed: " + "".join(lines)[-1500:])
        return result
    result.update(finalized=bool(summary.get("finalized")), rounds=summary.get("rounds"),
                  s_to_final=summary.get("s_to_final"),
                  billing_ok=(summary.get("billing") or {}).get("ok"),
                  restarts=[ln.strip() for ln in lines if "restarting" in ln])
    ver = subprocess.run([sys.executable, "-m", "lab.cli", "verify", str(run_dir)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    try:
        result["verify_ok"] = bool(json.loads(ver.stdout.strip().splitlines()[-1])["ok"])
    except (ValueError, IndexError):
        result["problems"].append("verify: " + ver.stderr[-800:])
    bridge = json.loads((run_dir / "results" / "bridge.json").read_text())
    events = [json.loads(ln) for ln in (run_dir / "emulators.jsonl").read_text().splitlines()
              if ln.strip()]
    day_start = json.loads((run_dir / "mqtt" / "day.json").read_text())["day_start"]
    for aid, plan in bridge["plans"].items():
        if plan is None:
            continue
        ok, due, probs = delivered([e for e in events if e.get("actuator") == aid], plan,
                                   day_start, seconds_per_slot)
        result["delivered"] += ok
        result["due"] += due
        result["problems"] += [f"{aid}: {p}" for p in probs]
    result["injected"] = inj.log
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.faults", description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="homes10")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--kills", type=int, default=20, help="device-process SIGKILLs per run")
    ap.add_argument("--kill-every", type=float, default=2.0, help="seconds between them")
    ap.add_argument("--seconds-per-slot", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rows = []
    # kept for a look afterwards: each run folder and the faults injected into it
    base = Path(os.environ.get("LAB_RUNS", REPO / "runs")) / time.strftime("faults-%Y%m%d-%H%M%S")
    for i in range(args.runs):
        root = base / f"run{i}"
        root.mkdir(parents=True)
        row = run_once(args.scenario, args.seconds_per_slot, args.kills, args.kill_every,
                       args.seed + i, root)
        (root / "faults.json").write_text(json.dumps(row, indent=1))
        print(json.dumps({k: v for k, v in row.items() if k != "injected"}),
              file=sys.stderr, flush=True)
        rows.append(row)
    faults: dict[str, int] = {}
    for r in rows:
        for k, v in r["faults"].items():
            faults[k] = faults.get(k, 0) + v
    summary = {"scenario": args.scenario, "runs": len(rows), "faults_injected": faults,
               "faults_total": sum(faults.values()),
               "runs_finalized": sum(r["finalized"] for r in rows),
               "verify_passed": sum(r["verify_ok"] for r in rows),
               "commands_delivered": sum(r["delivered"] for r in rows),
               "commands_due": sum(r["due"] for r in rows),
               "wall_s": [r["wall_s"] for r in rows],
               "problems": [p for r in rows for p in r["problems"]][:20],
               "runs_folder": str(base)}
    print(json.dumps(summary))
    ok = (summary["runs_finalized"] == summary["verify_passed"] == len(rows)
          and summary["commands_delivered"] == summary["commands_due"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
