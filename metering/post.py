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

from collections.abc import Sequence
from typing import Any

from aggregator_contract.billing import Billing, commitment, salt_for


def periods(slot_wh: Sequence[int], period: int) -> list[int]:
    return [sum(slot_wh[p * period:(p + 1) * period]) for p in range(len(slot_wh) // period)]


def post_readings(billing: Billing, session: int, slot_wh: Sequence[int], period: int = 1,
                  secret: bytes = b"", batch: int = 24) -> list[Any]:
    """Post a home's day through its meter's client (`billing` signs with the meter key);
    returns the receipts."""
    values = periods(slot_wh, period)
    coms = [commitment(slot_wh[p * period:(p + 1) * period], salt_for(secret, session, p))
            for p in range(len(values))] if period > 1 else []
    pending = [billing.post(session, k, values[k:k + batch], coms[k:k + batch], wait=False)
               for k in range(0, len(values), batch)]
    return [p.receipt() for p in pending]
