"""What one Coordinator session can hold, checked before a chain starts.

The limits come from the contract (Coordinator.vy's header) and from the chain's block gas
limit (chain/genesis.py GAS_LIMIT): every call must fit in one block. Gas figures are upper
bounds of what `make bench-gas` measures on geth v1.13.15 (first session of a fresh
contract, where every storage word is written from zero).
"""

from __future__ import annotations

from aggregator_contract import fixed_point as fp
from aggregator_contract.client import REGISTER_BATCH, close_gas_bound

MAX_SLOTS = 384  # Coordinator.vy MAX_SLOTS
MAX_DEVICES = 4096  # Coordinator.vy MAX_DEVICES
SUM_LANE = 2**62  # N * max|bound| (nkW) must stay below: S fits its 64-bit lane
SQUARES = 2**118  # N * T * max|bound|^2 (nkW^2) must stay below: SQX/SQDX fit 127 bits


class ScaleError(ValueError):
    """A scenario too large for one Coordinator session or one block."""


CONSTS_BYTES = 160 + 5 * 32 * 97  # Coordinator.vy: the data contract's code, padded


def open_session_gas(devices: int, slots: int) -> int:
    """Upper bound of open_session's gas (measured 6.3M + 26k per device at T=96): the data
    contract's code (200 gas a byte), 4 vectors of ceil(T/4) words from zero, and per
    participant its state word, its whitelist read, its calldata and its event bytes."""
    return (1_000_000 + CONSTS_BYTES * 200 + fp.words_for(slots) * 7 * 22_200
            + devices * 30_000)


def register_gas(batch: int) -> int:
    """Upper bound of one register_devices transaction of `batch` devices."""
    return 100_000 + batch * 27_000


def check_scale(devices: int, slots: int, max_abs_bound_kw: float, gas_limit: int) -> dict:
    """Raise ScaleError naming the limit a scenario exceeds; else the gas of each call."""
    if slots > MAX_SLOTS:
        raise ScaleError(f"T = {slots} slots exceeds the Coordinator's {MAX_SLOTS}")
    if devices > MAX_DEVICES:
        raise ScaleError(f"N = {devices} devices exceeds the Coordinator's {MAX_DEVICES}")
    b = int(round(max_abs_bound_kw * fp.KW_SCALE))
    if devices * b >= SUM_LANE:
        raise ScaleError(f"N x max|bound| = {devices} x {max_abs_bound_kw:g} kW exceeds the "
                         f"sum's 64-bit lane ({SUM_LANE / fp.KW_SCALE:.3g} kW)")
    if devices * slots * b * b >= SQUARES:
        raise ScaleError(f"N x T x max|bound|^2 = {devices} x {slots} x "
                         f"({max_abs_bound_kw:g} kW)^2 exceeds the sums of squares' 2^118 "
                         "(1e-18 kW^2)")
    gas = {"open_session": open_session_gas(devices, slots),
           "register_devices": register_gas(min(devices, REGISTER_BATCH)),
           "submit_or_close": close_gas_bound(slots)}
    for call, need in gas.items():
        if need > gas_limit:
            raise ScaleError(f"{call} needs up to {need:,} gas for N = {devices}, T = {slots}: "
                             f"above the block gas limit {gas_limit:,} (chain/genesis.py "
                             "GAS_LIMIT)")
    return gas
