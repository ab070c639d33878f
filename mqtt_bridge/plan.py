"""The on/off plan of a switched load, derived from its continuous relaxation.

A switched load (a bulb, a plug) is either on at `rated_kw` or off. Its device model
schedules it as a continuous power p_t in [0, rated_kw] with the energy requirement
Σ_t p_t·Δ = rated_kw·on_hours inside its window. This module turns that relaxed schedule
into an on/off plan with one deterministic rule, so every reader (the device node that
publishes the plan on chain, the bridge, a verifier) gets the same plan:

    Rule (largest relaxed power first).
    1. Candidates are the slots of the window [first, end) (wrapping past the last slot when
       first >= end, e.g. [88, 8) with T = 96), or every slot when there is no window.
    2. Each candidate's score is its relaxed power clipped to [0, rated_kw], quantized to
       1e-6 of rated_kw, so solver noise (0.0599999 vs 0.06) counts as a tie.
    3. The plan is on in exactly `on_slots` candidates: those with the largest scores, ties
       broken by the earliest slot in window order (chronological from the window start).

It keeps the energy requirement exactly: the plan is on for `on_slots` slots, which is
`required_on_slots(on_hours, slot_minutes)` (on_hours rounded up to whole slots). Where the
relaxation is already 0/1 (the usual case for an LP relaxation at a vertex), the plan equals
it.

On chain a plan is an integer bitmask, bit t = slot t (`pack_plan`), which fits one uint256
for T <= 256; longer horizons use a list of 256-bit words, word k holding slots 256k..256k+255
(`plan_to_words`).
"""

from __future__ import annotations

import math

import numpy as np

from scenario.horizon import window_order

WORD_BITS = 256
_QUANTUM = 1e-6  # score resolution, as a fraction of rated_kw


def window_slots(slots: int, window: tuple[int, int] | None) -> np.ndarray:
    """Slot indices of a window `[first, end)` in chronological order, wrapping past the
    horizon's end when first > end (scenario.horizon.window_order: one rule for the models
    and the plans); first == end means the whole day starting at `first`."""
    if window is None:
        return np.arange(slots)
    first, end = int(window[0]), int(window[1])
    if not (0 <= first <= slots and 0 <= end <= slots):
        raise ValueError(f"window {list(window)}: expected slots in 0..{slots}")
    return window_order(first % slots, end % slots, slots)


def required_on_slots(on_hours: float, slot_minutes: float) -> int:
    """Whole slots needed to deliver `on_hours` at rated power (rounded up; a 1e-9 slack
    absorbs float noise such as 4 h / 0.25 h = 16.000000000000004)."""
    if on_hours < 0 or slot_minutes <= 0:
        raise ValueError(f"on_hours={on_hours}, slot_minutes={slot_minutes}: expected "
                         "on_hours >= 0 and slot_minutes > 0")
    return int(math.ceil(on_hours * 60.0 / slot_minutes - 1e-9))


def on_off_plan(power_kw: np.ndarray, rated_kw: float, on_slots: int,
                window: tuple[int, int] | None = None) -> np.ndarray:
    """On/off plan (bool array, length T) of a switched load from its relaxed schedule.

    See the module docstring for the rule. Raises ValueError when the inputs are not a finite
    1-D schedule, rated_kw <= 0, or on_slots does not fit in the window.
    """
    p = np.asarray(power_kw, dtype=float)
    if p.ndim != 1 or p.size == 0 or not np.all(np.isfinite(p)):
        raise ValueError(f"power_kw: expected a non-empty 1-D array of finite numbers, "
                         f"got shape {p.shape}")
    if not rated_kw > 0:
        raise ValueError(f"rated_kw={rated_kw}: expected > 0")
    cand = window_slots(p.size, window)
    if not 0 <= int(on_slots) <= cand.size:
        raise ValueError(f"on_slots={on_slots}: expected 0..{cand.size} (slots in window "
                         f"{None if window is None else list(window)})")
    score = np.round(np.clip(p[cand], 0.0, rated_kw) / (rated_kw * _QUANTUM)).astype(np.int64)
    # lexsort: last key is primary. Descending score, then ascending window position.
    order = np.lexsort((np.arange(cand.size), -score))
    plan = np.zeros(p.size, dtype=bool)
    plan[cand[order[: int(on_slots)]]] = True
    return plan


def pack_plan(plan: np.ndarray | list[bool]) -> int:
    """Bitmask of a plan: bit t set when the load is on in slot t."""
    mask = 0
    for t, on in enumerate(plan):
        if on:
            mask |= 1 << t
    return mask


def unpack_plan(mask: int, slots: int) -> np.ndarray:
    """Inverse of `pack_plan` for a horizon of `slots` slots."""
    if mask < 0 or mask >> slots:
        raise ValueError(f"plan mask {mask:#x}: expected a non-negative integer below 2**{slots}")
    return np.array([(mask >> t) & 1 == 1 for t in range(slots)], dtype=bool)


def plan_to_words(plan: np.ndarray | list[bool]) -> list[int]:
    """Plan as uint256 words (word k = slots 256k..256k+255), for horizons longer than 256."""
    mask = pack_plan(plan)
    n = max(1, -(-len(plan) // WORD_BITS))
    return [(mask >> (WORD_BITS * k)) & ((1 << WORD_BITS) - 1) for k in range(n)]


def words_to_plan(words: list[int], slots: int) -> np.ndarray:
    """Inverse of `plan_to_words`."""
    mask = 0
    for k, w in enumerate(words):
        if not 0 <= w < 1 << WORD_BITS:
            raise ValueError(f"plan word {k}: expected a uint256, got {w}")
        mask |= int(w) << (WORD_BITS * k)
    return unpack_plan(mask, slots)
