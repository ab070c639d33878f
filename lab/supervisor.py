"""Child processes of the lab: start with a log file, restart on death, stop them all.

Every child runs in its own session (process group) so that a Ctrl-C in the terminal
reaches only the orchestrator, which then stops the children in order; `stop_pids` is what
`lab down` uses when the orchestrator itself is gone.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from chain.processes import terminate_pids

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    restart: bool = False  # restarted by `poll()` when it dies with a non-zero code
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    restarts: int = 0
    history: list[dict] = field(default_factory=list)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        self.proc = subprocess.Popen(
            self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )
        out.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts children, restarts the restartable ones that die, stops all on exit."""

    def __init__(self, on_start=None, max_restarts: int = 5) -> None:
        self.children: dict[str, Child] = {}
        self._on_start = on_start  # callback(name, pid), e.g. RunFolder.record_pid
        self.max_restarts = max_restarts

    def start(self, child: Child) -> Child:
        child.start()
        self.children[child.name] = child
        if self._on_start:
            self._on_start(child.name, child.proc.pid)
        return child

    def python(self, name: str, module: str, args: Iterable[str], log_dir: Path,
               restart: bool = False) -> Child:
        argv = [sys.executable, "-m", module, *map(str, args)]
        return self.start(Child(name, argv, log_dir / f"{name}.log", restart=restart))

    def poll(self) -> list[str]:
        """Restart restartable children that died; return the names restarted.
        Raises RuntimeError when one keeps dying."""
        restarted = []
        for child in self.children.values():
            if child.proc is None or child.proc.poll() is None:
                continue
            code = child.proc.returncode
            if code == 0 or not child.restart:
                continue
            if child.restarts >= self.max_restarts:
                raise RuntimeError(
                    f"{child.name} died {child.restarts + 1} times (last exit code {code}); "
                    f"see {child.log_path}"
                )
            child.restarts += 1
            child.history.append({"t": time.time(), "exit_code": code})
            log.warning("%s exited with %s; restarting (%d)", child.name, code, child.restarts)
            child.start()
            if self._on_start:
                self._on_start(child.name, child.proc.pid)
            restarted.append(child.name)
        return restarted

    def stop(self, name: str, timeout: float = 5.0) -> None:
        child = self.children.get(name)
        if child and child.proc:
            stop_pids([child.proc.pid], timeout)
            child.proc.wait()

    def stop_all(self, timeout: float = 5.0) -> None:
        pids = [c.proc.pid for c in reversed(list(self.children.values())) if c.alive]
        stop_pids(pids, timeout)
        for c in self.children.values():
            if c.proc is not None:
                try:
                    c.proc.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass


def stop_pids(pids: Iterable[int], timeout: float = 5.0) -> None:
    """SIGTERM each process and its descendants, SIGKILL whatever is left after `timeout`."""
    terminate_pids(pids, timeout)
