"""Where a lab runs: one registry of runtimes.

A runtime is a `lab.orchestrator.Lab` subclass with a `runtime` name: it decides where the
chain's nodes and the device processes run and how they find each other; the rounds, the
results and the MQTT side are the same code everywhere. Each says whether it can run here
(`unavailable()`: None, or the reason), whether it is taken when the user names none
(`by_default()`, tried by `preference`, lowest first), and cleans up what a killed orchestrator left
(`clean_up(run_dir)`, for `lab down`). A runtime registers itself by subclassing Lab in a
module of RUNTIME_MODULES: a new one (say, Kubernetes) is that module and its tests.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lab.orchestrator import Lab

RUNTIME_MODULES = ("lab.orchestrator", "lab.compose")


class RuntimeUnavailable(RuntimeError):
    pass


def registry() -> dict[str, type[Lab]]:
    """Runtime name -> its Lab class."""
    for m in RUNTIME_MODULES:
        importlib.import_module(m)
    from lab.orchestrator import Lab

    found: dict[str, type[Lab]] = {}
    todo = [Lab]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.runtime, cls)
        todo += cls.__subclasses__()
    return found


def choose(requested: str | None) -> type[Lab]:
    """The requested runtime (RUNTIME=, --runtime), refused with its reason when it cannot
    run here; else the most preferred one that can."""
    runtimes = registry()
    if requested:
        if requested not in runtimes:
            raise ValueError(f"RUNTIME={requested!r}: expected one of "
                             + ", ".join(sorted(runtimes)))
        why = runtimes[requested].unavailable()
        if why:
            raise RuntimeUnavailable(f"RUNTIME={requested}: {why}")
        return runtimes[requested]
    for cls in sorted(runtimes.values(), key=lambda c: c.preference):
        if cls.by_default():
            return cls
    raise RuntimeUnavailable("no runtime can run here")


def clean_up(run_dir: Path) -> None:
    """What every runtime left of a run whose orchestrator is gone (`lab down`)."""
    for cls in registry().values():
        cls.clean_up(run_dir)
