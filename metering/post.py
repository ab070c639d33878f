"""Readings to the Billing contract, per slot or as hourly totals with commitments.

Per slot (`period` 1): every slot's Wh is on chain, public: a 15-minute load profile shows
when people are up, away, cooking, charging. Hourly (`period` k slots): only each hour's
total is public, with keccak(abi_encode(the hour's slot readings, salt)) beside it; the
salt is derived from the meter's own secret, so the meter (or its home) can later reveal
one hour's slot readings in a dispute, and no one can find them by trying the few
plausible values. Either way, posts go out in batches of `batch` readings per
transaction (the contract takes consecutive readings).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from aggregator_contract.billing import Billing, commitment, salt_for


def periods(slot_wh: Sequence[int], period: int) -> list[int]:
    return [sum(slot_wh[p * period:(p + 1) * period]) for p in range(len(slot_wh) // period)]


def post_readings(billing: Billing, session: int, slot_wh: Sequence[int], period: int = 1,
                  secret: bytes = b"", batch: int = 24, skip: Collection[int] = ()
                  ) -> list[Any]:
    """Post a home's day through its meter's client (`billing` signs with the meter key),
    except the reading periods in `skip` (already on chain); returns the receipts."""
    values = periods(slot_wh, period)
    coms = [commitment(slot_wh[p * period:(p + 1) * period], salt_for(secret, session, p))
            for p in range(len(values))] if period > 1 else []
    runs: list[tuple[int, int]] = []  # [first, end) of consecutive periods to post
    for p in range(len(values)):
        if p in skip:
            continue
        if runs and runs[-1][1] == p and p - runs[-1][0] < batch:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    pending = [billing.post(session, a, values[a:b], coms[a:b], wait=False) for a, b in runs]
    return [p.receipt() for p in pending]
