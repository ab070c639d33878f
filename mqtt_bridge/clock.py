"""The clocks the bridge, the emulators and the relay recorder read.

Production uses `SYSTEM` (time.time / time.monotonic). A `ManualClock` moves only when
told to: a test advances it slot by slot, so what happens in a slot does not depend on how
fast a loaded machine delivers MQTT messages.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...          # epoch seconds
    def monotonic(self) -> float: ...     # seconds, for intervals


class SystemClock:
    """The wall clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM = SystemClock()


class ManualClock:
    """A clock that stands still until `advance` or `set`; both of its readings move
    together. Thread-safe."""

    def __init__(self, epoch: float = 1_750_000_000.0) -> None:
        self._epoch = epoch
        self._t = 1000.0   # monotonic; well past 0, which the bridge reads as "long ago"
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._epoch + self._t

    def monotonic(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._t += seconds

    def set(self, epoch: float) -> None:
        """Move on to the epoch time `epoch` (not before now)."""
        with self._lock:
            if epoch < self._epoch + self._t:
                raise ValueError("a clock does not go back")
            self._t = epoch - self._epoch
