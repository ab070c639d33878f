"""Fixed-point scales of the Coordinator contract, conversions and packing.

One scale per quantity (the contract header in Coordinator.vy carries the same table):

    quantity                                        unit in the contract   int range
    power: x_i, xbar, zbar, u, device bounds, C, E  1e-9 kW  ("nkW")       int64 per lane
    price pi                                        1e-9 $/kWh             int64 per lane
    slot length delta                               1e-18 h  (WAD)         int256
    gamma, rho, eps_abs, eps_rel, mu, tau, alpha    1e-18    (WAD)         int256
    r, s, eps_pri, eps_dual (RoundClosed events)    1e-18 kW (WAD)         int256
    step 6's factor f (RoundClosed events)          1e-18    (WAD)         int256
    viol_tol, import/export excess (events)         1e-9 kW                int64

Rounding:
- float -> fixed (this module, the client side): round to nearest (numpy.rint: ties to
  even). A value outside int64 raises ValueError.
- fixed -> float: exact division by the scale (the float nearest the rational value).
- in the contract: every integer division rounds half away from zero (xbar = S/N, xhat,
  zbar, C/N, E/N, the price start, rescaling of rho and u by f, WAD products); isqrt
  rounds down (fixed_round.py mirrors it).

Packing: vectors of T values travel and are stored as ceil(T/4) uint256 words. Lane j
(bits 64j..64j+63) of word w holds slot 4w+j, zigzag-encoded (v >= 0 -> 2v,
v < 0 -> -2v - 1) so that small negative numbers are small words (zero calldata bytes cost
4 gas, non-zero 16; two's complement would make every negative lane 0xff..). Lanes past T
are 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KW_SCALE = 10**9  # 1 kW = 1e9 nkW; also the price scale (1e-9 $/kWh)
PRICE_SCALE = 10**9
WAD = 10**18  # scalars: delta (h), gamma, rho, tolerances, mu, tau; r, s, eps (kW)
LANES = 4
LANE_BITS = 64
INT64_MAX = 2**63 - 1
_LANE_MASK = (1 << LANE_BITS) - 1


def words_for(slots: int) -> int:
    """Number of packed words for a vector of `slots` values."""
    return (slots + LANES - 1) // LANES


def to_fixed(values: np.ndarray | Sequence[float], scale: int = KW_SCALE) -> list[int]:
    """Floats to integers at `scale`, rounded to nearest; checked against int64."""
    arr = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ValueError("to_fixed: values must be finite")
    out = [int(v) for v in np.rint(arr * scale)]
    for t, v in enumerate(out):
        if abs(v) > INT64_MAX:
            raise ValueError(f"to_fixed: value {arr.flat[t]} at index {t} exceeds int64 "
                             f"at scale {scale}")
    return out


def from_fixed(values: Sequence[int], scale: int = KW_SCALE) -> np.ndarray:
    """Integers at `scale` to floats."""
    return np.array([v / scale for v in values], dtype=float)


def wad(value: float) -> int:
    """A scalar to 1e-18 units, rounded to nearest (via its decimal repr, so 0.1 -> 1e17)."""
    from decimal import Decimal

    return int((Decimal(repr(float(value))) * WAD).to_integral_value())


def from_wad(value: int) -> float:
    return value / WAD


def zigzag(v: int) -> int:
    if abs(v) > INT64_MAX:
        raise ValueError(f"zigzag: {v} exceeds int64")
    return 2 * v if v >= 0 else -2 * v - 1


def unzigzag(z: int) -> int:
    return -(z >> 1) - 1 if z & 1 else z >> 1


def pack(ints: Sequence[int]) -> list[int]:
    """Integers (int64 range) to packed words, 4 zigzag lanes per word, zero padding."""
    out = [0] * words_for(len(ints))
    for t, v in enumerate(ints):
        out[t // LANES] |= zigzag(int(v)) << (LANE_BITS * (t % LANES))
    return out


def unpack(words: Sequence[int], slots: int) -> list[int]:
    """Packed words back to `slots` integers."""
    if len(words) != words_for(slots):
        raise ValueError(f"unpack: {len(words)} words for {slots} slots, "
                         f"expected {words_for(slots)}")
    return [unzigzag((words[t // LANES] >> (LANE_BITS * (t % LANES))) & _LANE_MASK)
            for t in range(slots)]


def pack_kw(values: np.ndarray | Sequence[float], scale: int = KW_SCALE) -> list[int]:
    """Floats (kW, or $/kWh with PRICE_SCALE) straight to packed words."""
    return pack(to_fixed(values, scale))


def unpack_kw(words: Sequence[int], slots: int, scale: int = KW_SCALE) -> np.ndarray:
    return from_fixed(unpack(words, slots), scale)


def quantize_kw(values: np.ndarray) -> np.ndarray:
    """What the contract receives for `values` (kW), back as floats: the round trip."""
    return np.rint(np.asarray(values, dtype=float) * KW_SCALE) / KW_SCALE
