"""Playing a bridge's day on a ManualClock, slot by slot, for tests.

The bridge, the emulators and the relay recorder of a test share one ManualClock. The clock
stands still while a slot's commands travel, so every event of slot k is stamped inside
slot k however slowly a loaded machine delivers them; the test moves the clock to the next
slot only once the bridge has the acknowledgments (and whatever `settled` waits for).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from mqtt_bridge.bridge import Bridge
from mqtt_bridge.clock import ManualClock

TIMEOUT = 30.0   # s: generous; a healthy run needs milliseconds
INTO_SLOT = 1e-3  # the clock is set this far (in slots) into a slot: clear of float rounding


def wait_until(pred: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
    """Poll `pred` until it is truthy (returned); fail after `timeout` s of real time."""
    deadline = time.monotonic() + timeout
    while not (v := pred()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what or pred}"
        time.sleep(0.01)
    return v


class DrivenDay:
    """`target` (default: bridge.play) runs in a thread; `start` returns once the day is
    playing and its first slot has settled, `to_slot(k)` moves the clock into slot k and
    returns once the bridge is in it and quiet, `finish` ends the day and joins."""

    def __init__(self, bridge: Bridge, clock: ManualClock,
                 target: Callable[[], Any] | None = None,
                 settled: Callable[[], bool] = lambda: True) -> None:
        self.bridge, self.clock, self.settled = bridge, clock, settled
        self.result: Any = None
        self.error: BaseException | None = None
        self._target = target or bridge.play
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self._target()
        except BaseException as e:  # re-raised by finish()
            self.error = e

    @property
    def status(self) -> dict[str, Any]:
        return self.bridge.status()

    @property
    def day_start(self) -> float:
        return self.status["day_start"]

    @property
    def sps(self) -> float:
        return self.status["seconds_per_slot"]

    def quiet(self) -> bool:
        """No command awaits its acknowledgment and `settled` holds."""
        st = self.status
        return (all(a["state"] != "pending" for a in st["actuators"].values())
                and self.settled())

    def start(self, quiet: bool = True) -> DrivenDay:
        self._thread.start()
        wait_until(lambda: self.error or (self.status["phase"] == "playing"
                                          and self.status["slot"] is not None),
                   what="the day to start")
        self._raise()
        if quiet:
            self.wait_quiet()
        return self

    def wait_quiet(self) -> None:
        wait_until(lambda: self.error or self.quiet(), what="the slot's acknowledgments")
        self._raise()

    def advance(self, seconds: float) -> None:
        """Move the clock within the day (e.g. past an ack deadline) and wake the bridge."""
        self.clock.advance(seconds)
        self.bridge.wake()

    def to_slot(self, k: int, quiet: bool = True) -> None:
        self.clock.set(max(self.clock.time(), self.day_start + (k + INTO_SLOT) * self.sps))
        self.bridge.wake()
        wait_until(lambda: self.error or self.status["slot"] == k, what=f"slot {k}")
        self._raise()
        if quiet:
            self.wait_quiet()

    def play_to(self, last: int) -> None:
        """Every slot after the current one up to `last`, in order."""
        for k in range(self.status["slot"] + 1, last + 1):
            self.to_slot(k)

    def finish(self, tail: float = 0.0, timeout: float = TIMEOUT) -> Any:
        """Play the remaining slots, end the day and join; returns target's result. `tail`:
        how far the clock then moves on in steps (the bridge's linger)."""
        self.play_to(self.status["slots"] - 1)
        end = self.day_start + (self.status["slots"] + INTO_SLOT) * self.sps
        self.clock.set(max(self.clock.time(), end))
        self.bridge.wake()
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            if tail and self.status["phase"] != "playing":
                self.advance(tail)
            self._thread.join(0.05)
        assert not self._thread.is_alive(), f"the day did not end within {timeout} s"
        self._raise()
        return self.result

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error
