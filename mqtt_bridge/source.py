"""Where the bridge reads the day from: the interface, and an in-memory implementation.

The lab's implementation reads the Coordinator contract (finalized schedules and the plans
the device nodes published); `StaticSource` holds fixed numbers, for tests and for replaying
a saved run (`StaticSource.load(json_file)`).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ScheduleSource(Protocol):
    def status(self) -> dict[str, Any]:
        """{"session", "round", "residuals": {"r", "s"}, "rho", "finalized": bool}."""
        ...

    def schedules(self) -> dict[str, np.ndarray] | None:
        """Device id -> its final net power x_i (kW per slot); None before finalization."""
        ...

    def plans(self) -> dict[str, list[bool]] | None:
        """Actuator id ("device/component") -> on/off per slot; None before finalization."""
        ...


class StaticSource:
    """A fixed day. `finalize()` can be called later, so a test can watch the bridge wait."""

    def __init__(self, schedules: dict[str, Any] | None = None,
                 plans: dict[str, list[bool]] | None = None,
                 status: dict[str, Any] | None = None, finalized: bool = True) -> None:
        self._lock = threading.Lock()
        self._schedules = {k: np.asarray(v, dtype=float) for k, v in (schedules or {}).items()}
        self._plans = {k: [bool(b) for b in v] for k, v in (plans or {}).items()}
        self._status = {"session": 1, "round": 0, "residuals": {"r": None, "s": None},
                        "rho": None, **(status or {})}
        self._finalized = finalized

    def finalize(self) -> None:
        with self._lock:
            self._finalized = True

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {**self._status, "finalized": self._finalized}

    def schedules(self) -> dict[str, np.ndarray] | None:
        with self._lock:
            return dict(self._schedules) if self._finalized else None

    def plans(self) -> dict[str, list[bool]] | None:
        with self._lock:
            return {k: list(v) for k, v in self._plans.items()} if self._finalized else None

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"status": self._status, "finalized": self._finalized,
                "schedules": {k: v.tolist() for k, v in self._schedules.items()},
                "plans": {k: [int(b) for b in v] for k, v in self._plans.items()}}

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path) -> StaticSource:
        """From JSON {"status": {...}, "schedules": {dev: [kW...]}, "plans": {act: [0|1...]},
        "finalized": true}."""
        try:
            d = json.loads(Path(path).read_text())
            return cls(schedules=d.get("schedules"), plans=d.get("plans"),
                       status=d.get("status"), finalized=bool(d.get("finalized", True)))
        except (OSError, json.JSONDecodeError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{path}: cannot read schedule source: {e}") from e
