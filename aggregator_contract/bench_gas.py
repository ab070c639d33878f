"""Gas of the Coordinator on a real geth v1.13.15 Clique chain (chain.network: one signer,
period 0, in a temporary run folder that is removed afterwards).

    python -m aggregator_contract.bench_gas [--slots 96] [--devices 10] [--rounds 12]

Deploys, registers N devices, opens a session (tolerances set to 0 so that it runs exactly
--rounds rounds) and has every device submit every round (synthetic x_i, a different value
per slot, half of them negative). Gas figures are the receipts' gasUsed:
- submit_gas_median: the median of all submissions that do not close a round;
- closing_submit_gas: the median of the submissions that close a round (steps 2-6);
  closing_submit_gas_max is the largest (the first two rounds fill empty storage: a
  session's x_i buffers are fresh, 22,100 gas per word instead of 5,000);
- submit_gas_first_round: the median non-closing submission of round 0 (same reason).
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile

import numpy as np

from aggregator_contract.client import Coordinator, connect
from aggregator_contract.reference import AdmmSettings, Feeder


def _feeder(slots: int) -> Feeder:
    hours = np.arange(slots) * 24.0 / slots
    price = np.where((hours >= 17) & (hours < 21), 0.35, 0.12)
    return Feeder(24.0 / slots, price, np.full(slots, 40.0), np.full(slots, 20.0), 0.01)


def run(slots: int, devices: int, rounds: int) -> dict:
    from eth_account import Account
    from eth_utils import keccak

    from chain.network import Network

    operator = Account.from_key(keccak(text="bench operator"))
    accts = [Account.from_key(keccak(text=f"bench device {i}")) for i in range(devices)]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-gas-") as run_dir:
        net = Network.start(run_dir, members=0, signers=1, period=0,
                            fund=[operator.address, *(a.address for a in accts)])
        try:
            w3 = connect(net.http_url(net.signers()[0]))
            coord = Coordinator.deploy(w3, operator)
            coord.register_devices([(a.address, -10.0, 10.0) for a in accts])
            settings = AdmmSettings(rho0=1.0, eps_abs=0.0, eps_rel=0.0, max_rounds=rounds)
            sid = coord.open_session(_feeder(slots), settings, [a.address for a in accts],
                                     deadline_blocks=1000)
            clients = [Coordinator(w3, coord.address, a) for a in accts]
            plain, closing, first = [], [], []
            for k in range(rounds):
                for i, c in enumerate(clients):
                    x = rng.uniform(-8, 8, slots)
                    gas = int(c.submit(sid, k, x)["gasUsed"])
                    if i == devices - 1:
                        closing.append(gas)
                    else:
                        plain.append(gas)
                        if k == 0:
                            first.append(gas)
            assert coord.is_finalized(sid), "session did not finalize after max rounds"
            version = w3.client_version
        finally:
            net.stop()
    return {
        "slots": slots,
        "devices": devices,
        "submit_gas_median": int(statistics.median(plain)) if plain else None,
        "closing_submit_gas": int(statistics.median(closing)),
        "closing_submit_gas_max": max(closing),
        "submit_gas_first_round": int(statistics.median(first)) if first else None,
        "deploy_gas": int(coord.deploy_receipt["gasUsed"]),
        "rounds": rounds,
        "measured_on": version,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=96)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=12)
    a = ap.parse_args(argv)
    if a.slots < 1 or a.devices < 1 or a.rounds < 1:
        ap.error("--slots, --devices and --rounds must be >= 1")
    print(f"bench_gas: T={a.slots} N={a.devices}, {a.rounds} rounds on geth...",
          file=sys.stderr)
    print(json.dumps(run(a.slots, a.devices, a.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
