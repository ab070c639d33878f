"""Clique genesis for the lab chain.

Forks homestead..london (and the difficulty-bomb delays) at block 0; no shanghaiTime,
cancunTime or terminalTotalDifficulty, because geth v1.13.15's Clique cannot seal past the
merge (DESIGN.md, "Why geth v1.13.15"). Contracts must therefore target EVM ``paris``.

Fee settings of the chain (all nodes run with the same flags, see chain/geth.py):
- ``baseFeePerGas`` starts at BASE_FEE_WEI (1 gwei). EIP-1559 lowers it by up to 1/8 per
  block while blocks are below half the gas limit (always, here), down to 7 wei where the
  1/8 step rounds to 0. Nobody needs to care: maxFeePerGas = 2*baseFee + tip covers it.
- Miner tip: MIN_TIP_WEI (1 gwei) == ``--miner.gasprice`` on every node. A transaction
  that reaches a node over p2p (every tx sent through a member node and sealed by a signer)
  is only accepted and mined if its tip (maxPriorityFeePerGas, or gasPrice - baseFee) is
  >= that value. eth_maxPriorityFeePerGas on our nodes answers >= 1 gwei, so web3's default
  fee filling works; clients that set fees themselves use ``tx_fees()``.
- Block gas limit GAS_LIMIT (100M), kept by signers with ``--miner.gaslimit`` (geth's 30M
  default would otherwise pull it down by 1/1024 per block). The contract's round-closing
  transaction needs ~2-3M gas.
- Every funded account gets FUND_WEI (1M ether): the lab never runs out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from eth_utils import to_checksum_address

CHAIN_ID = 133713  # also the --networkid
GAS_LIMIT = 100_000_000
BASE_FEE_WEI = 10**9
MIN_TIP_WEI = 10**9  # --miner.gasprice on every node
FUND_WEI = 10**24
EPOCH = 30_000

_FORKS = (
    "homesteadBlock", "eip150Block", "eip155Block", "eip158Block", "byzantiumBlock",
    "constantinopleBlock", "petersburgBlock", "istanbulBlock", "muirGlacierBlock",
    "berlinBlock", "londonBlock", "arrowGlacierBlock", "grayGlacierBlock",
)


def validate_signers(signers: int, period: int) -> None:
    """Reject Clique settings that do not run well, naming the field and the reason."""
    if signers < 1:
        raise ValueError(f"chain.signers={signers}: need at least 1 signer")
    if signers > 1 and signers % 2 == 0:
        raise ValueError(f"chain.signers={signers}: use an odd count (Clique needs a majority)")
    if period < 0:
        raise ValueError(f"chain.period={period}: must be >= 0 seconds")
    if signers > 1 and period == 0:
        raise ValueError(
            f"chain.period=0 with chain.signers={signers}: period 0 only works with one signer"
            " (several signers race on every pending tx); use period >= 1"
        )


def clique_extradata(signers: Iterable[str]) -> str:
    """32 vanity bytes + the signer addresses (sorted, as Clique keeps them) + 65 seal bytes."""
    addrs = sorted(bytes.fromhex(to_checksum_address(a)[2:]) for a in signers)
    return "0x" + "00" * 32 + "".join(a.hex() for a in addrs) + "00" * 65


def make_genesis(
    signers: Iterable[str], fund: Iterable[str], period: int = 0, chain_id: int = CHAIN_ID
) -> dict:
    """The genesis dict (geth's genesis.json format). Signers are funded too."""
    signers = [to_checksum_address(a) for a in signers]
    if not signers:
        raise ValueError("genesis: at least one signer address is needed")
    validate_signers(len(signers), period)
    accounts = sorted({*signers, *(to_checksum_address(a) for a in fund)})
    config = {"chainId": chain_id, **dict.fromkeys(_FORKS, 0),
              "clique": {"period": period, "epoch": EPOCH}}
    return {
        "config": config,
        "nonce": "0x0",
        "timestamp": "0x0",
        "extraData": clique_extradata(signers),
        "gasLimit": hex(GAS_LIMIT),
        "difficulty": "0x1",
        "baseFeePerGas": hex(BASE_FEE_WEI),
        "mixHash": "0x" + "00" * 32,
        "coinbase": "0x" + "00" * 20,
        "alloc": {a[2:].lower(): {"balance": hex(FUND_WEI)} for a in accounts},
        "number": "0x0",
        "gasUsed": "0x0",
        "parentHash": "0x" + "00" * 32,
    }


def write_genesis(path: str | Path, genesis: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(genesis, indent=2, sort_keys=True) + "\n")
    return path


def tx_fees(base_fee_wei: int) -> dict[str, int]:
    """EIP-1559 fee fields accepted by every node: tip = MIN_TIP_WEI, room for 2x base fee."""
    return {"maxPriorityFeePerGas": MIN_TIP_WEI,
            "maxFeePerGas": 2 * base_fee_wei + MIN_TIP_WEI}
