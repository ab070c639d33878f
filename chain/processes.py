"""Stopping processes: SIGTERM, a grace period, then SIGKILL, and reap. One way for every
process the lab starts (geth nodes, device processes, the bridge, podman's service)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable

import psutil


def terminate(procs: Iterable[psutil.Process], timeout: float = 5.0) -> None:
    """SIGTERM each (geth flushes its state and exits), SIGKILL what is left after
    `timeout`, and wait for all."""
    procs = list(procs)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def terminate_pids(pids: Iterable[int], timeout: float = 5.0, *, children: bool = True
                   ) -> None:
    """`terminate` by pid, descendants first when `children`; gone pids are skipped."""
    procs: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            p = psutil.Process(pid)
            procs.extend([*p.children(recursive=True), p] if children else [p])
    terminate(procs, timeout)


def stop_popen(procs: Iterable[subprocess.Popen | None], timeout: float = 10.0) -> None:
    """The same for children this process started (Popen reaps its own)."""
    live = [p for p in procs if p is not None and p.poll() is None]
    for p in live:
        p.terminate()
    for p in live:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
