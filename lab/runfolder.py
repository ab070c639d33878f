"""Run folders and the one-lab-at-a-time lock.

A run folder holds everything a run needs to resume or be inspected later:

    runs/<scenario>-<UTC timestamp>/
        scenario.yaml      the scenario as run (generated ones included)
        keys/              operator, signer and per-device keys (chain/keys.py)
        chain/             geth data folders, genesis, node metadata
        devices/<id>.yaml  each device's own scenario entry (all a device process is given)
        logs/              one log per process
        lab.json           contract address, session, node URLs: what other processes read
        pids.json          every process the lab started, so `lab down` can stop them
        results/           schedule, per-round history, plots, summary.json

`runs/ACTIVE` names the running lab (its orchestrator pid and run folder); a second `up`
refuses to start while that pid lives, rather than fighting over ports.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def runs_root() -> Path:
    return Path(os.environ.get("LAB_RUNS", REPO / "runs"))


class LabBusyError(RuntimeError):
    """Another lab is running on this machine."""


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @classmethod
    def create(cls, scenario_name: str) -> RunFolder:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = runs_root() / f"{scenario_name}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = runs_root() / f"{scenario_name}-{stamp}-{n}"
        for sub in ("keys", "chain", "devices", "logs", "results"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        return cls(path)

    def sub(self, name: str) -> Path:
        p = self.path / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def logs(self) -> Path:
        return self.sub("logs")

    @property
    def results(self) -> Path:
        return self.sub("results")

    def read_json(self, name: str) -> dict:
        return json.loads((self.path / name).read_text())

    def write_json(self, name: str, data: dict) -> Path:
        target = self.path / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        tmp.replace(target)  # atomic: readers never see half a file
        return target

    # -- processes started by this run, for `lab down` ------------------------------------
    def record_pid(self, name: str, pid: int) -> None:
        path = self.path / "pids.json"
        pids = json.loads(path.read_text()) if path.exists() else {}
        pids[name] = pid
        self.write_json("pids.json", pids)

    def recorded_pids(self) -> dict[str, int]:
        path = self.path / "pids.json"
        return json.loads(path.read_text()) if path.exists() else {}


def _active_file() -> Path:
    return runs_root() / "ACTIVE"


def active_lab() -> dict | None:
    """The running lab ({pid, run, scenario}) or None; a stale entry is ignored."""
    f = _active_file()
    if not f.exists():
        return None
    try:
        info = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if psutil.pid_exists(info.get("pid", -1)):
        return info
    return None


def claimed_lab() -> dict | None:
    """The ACTIVE entry even when its orchestrator is gone (killed): what `lab down` still
    has to clean up."""
    try:
        return json.loads(_active_file().read_text())
    except (OSError, json.JSONDecodeError):
        return None


def claim(run: RunFolder, scenario: str) -> None:
    """Mark this process as the running lab, or raise LabBusyError naming the other one."""
    other = active_lab()
    if other is not None and other["pid"] != os.getpid():
        raise LabBusyError(
            f"a lab is already running (scenario {other.get('scenario')}, pid {other['pid']}, "
            f"run folder {other.get('run')}); stop it with `make down` first"
        )
    runs_root().mkdir(parents=True, exist_ok=True)
    _active_file().unlink(missing_ok=True)  # stale: its pid is gone
    entry = json.dumps({"pid": os.getpid(), "run": str(run.path), "scenario": scenario})
    try:  # O_EXCL: of two labs starting at the same moment, one wins
        fd = os.open(_active_file(), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise LabBusyError("another lab claimed runs/ACTIVE just now; try `make down`") from None
    with os.fdopen(fd, "w") as f:
        f.write(entry)


def release(force: bool = False) -> None:
    """Drop runs/ACTIVE if it is this process's (or stale), or unconditionally (`lab down`)."""
    info = active_lab()
    if force or info is None or info["pid"] == os.getpid():
        _active_file().unlink(missing_ok=True)
