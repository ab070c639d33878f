"""Gas of the Coordinator and its ScheduleRegistry on a real geth v1.13.15 Clique chain
(chain.network: one signer, period 0, in a temporary run folder removed afterwards).

    python -m aggregator_contract.bench_gas [--slots 96] [--devices 10,100,1000,2048]
                                            [--rounds 4]

For each N: deploy, register N devices, open a session (tolerances 0, so that it runs
exactly --rounds rounds) and have every device submit every round, one device per
transaction, signed with its own key: fresh values uniform in [-8, 8] kW per slot each
round. A round's submissions are all sent, then waited for; the last device's submission
of a round is the one that closes it (it is sent only after the others are mined). Gas
figures are the receipts' gasUsed, every transaction counted:
- submit_gas_median / submit_gas_max: the submissions that do not close a round;
- closing_submit_gas (median) / closing_submit_gas_max: the ones that do (the last one
  also finalizes the session and writes the registry record);
- first_round_surcharge: median non-closing submission of round 0 minus that of the later
  rounds (0: the session's storage is written by open_session, not by the devices);
- open_session_gas, register_gas, deploy_gas (registry + coordinator + bind),
  runtime_bytes of both contracts (EIP-170 limit 24,576);
- billing (aggregator_contract/Billing.vy), on the finalized session, for min(N, 10) homes,
  each with its own meter key: per-slot readings posted 24 per transaction, and hourly
  totals with their commitments (a second Billing contract, reading period 4 slots); gas
  per reading (a transaction's gas over its readings), the largest posting transaction,
  and the settlement of a home (median and max), per mode.
One JSON line per N on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import numpy as np

from aggregator_contract.client import Coordinator, connect
from aggregator_contract.compile import load as load_artifact
from aggregator_contract.reference import AdmmSettings, Feeder

BILLED_HOMES = 10  # homes metered and settled per N (billing gas does not depend on N)


def _feeder(slots: int, devices: int) -> Feeder:
    hours = np.arange(slots) * 24.0 / slots
    price = np.where((hours >= 17) & (hours < 21), 0.35, 0.12)
    return Feeder(24.0 / slots, price, np.full(slots, 4.0 * devices),
                  np.full(slots, 2.0 * devices), 0.01)


def run(slots: int, devices: int, rounds: int) -> dict:
    from eth_account import Account
    from eth_utils import keccak

    from chain.network import Network

    t0 = time.monotonic()
    operator = Account.from_key(keccak(text="bench operator"))
    accts = [Account.from_key(keccak(text=f"bench device {i}")) for i in range(devices)]
    meters = [Account.from_key(keccak(text=f"bench meter {i}"))
              for i in range(min(devices, BILLED_HOMES))]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-gas-") as run_dir:
        net = Network.start(run_dir, members=0, signers=1, period=0,
                            fund=[operator.address, *(a.address for a in accts),
                                  *(m.address for m in meters)])
        try:
            w3 = connect(net.rpc_url(net.rpc_node()))
            coord = Coordinator.deploy(w3, operator)
            register = sum(int(r["gasUsed"]) for r in coord.register_devices(
                [(a.address, -10.0, 10.0) for a in accts]))
            settings = AdmmSettings(rho0=1.0, eps_abs=0.0, eps_rel=0.0, max_rounds=rounds)
            sid = coord.open_session(_feeder(slots, devices), settings,
                                     [a.address for a in accts], deadline_s=10**6)
            open_gas = int(coord.open_receipt["gasUsed"])
            clients = [Coordinator(w3, coord.address, a) for a in accts]
            plain: list[list[int]] = []
            closing: list[int] = []
            for k in range(rounds):
                pending = [c.submit(sid, k, rng.uniform(-8, 8, slots), wait=False)
                           for c in clients[:-1]]
                plain.append([int(p.receipt()["gasUsed"]) for p in pending])
                closing.append(int(clients[-1].submit(sid, k, rng.uniform(-8, 8, slots))
                                   ["gasUsed"]))
            assert coord.is_finalized(sid), "session did not finalize after max rounds"
            billing = _billing_gas(w3, operator, coord, sid, clients[:len(meters)], meters,
                                   slots, rng)
            version = w3.client_version
        finally:
            net.stop()
    later = [g for r in plain[1:] for g in r]
    every_plain = [g for r in plain for g in r]
    return {
        "slots": slots,
        "devices": devices,
        "rounds": rounds,
        "submit_gas_median": int(statistics.median(every_plain)) if every_plain else None,
        "submit_gas_max": max(every_plain) if every_plain else None,
        "closing_submit_gas": int(statistics.median(closing)),
        "closing_submit_gas_max": max(closing),
        "closing_submit_gas_min": min(closing),
        "first_round_surcharge": (int(statistics.median(plain[0]) - statistics.median(later))
                                  if later and plain[0] else None),
        "open_session_gas": open_gas,
        "register_gas": register,
        "deploy_gas": sum(coord.deploy_gas.values()),
        "runtime_bytes": {n: load_artifact(n).runtime_size
                          for n in ("Coordinator", "ScheduleRegistry")},
        "billing": billing,
        "wall_s": round(time.monotonic() - t0, 1),
        "measured_on": version,
    }


def _billing_gas(w3, operator, coord: Coordinator, sid: int, homes: list[Coordinator],
                 meters: list, slots: int, rng: np.random.Generator) -> dict:
    """Post a day of readings for each home and settle it, per slot and hourly."""
    from aggregator_contract.billing import Billing, Tariff
    from metering.post import post_readings

    for h in homes:  # the settlement reads each home's schedule from the registry
        h.publish_schedule(sid)
    out: dict = {"homes": len(homes)}
    for mode, period in (("slot", 1), ("hourly", 4)):
        if slots % period:
            continue
        bill = Billing.deploy(w3, operator, coord.address)
        bill.register_meters({m.address: h.account.address
                              for m, h in zip(meters, homes, strict=True)})
        bill.open_billing(sid, Tariff(delta_h=24.0 / slots, period=period),
                          [h.account.address for h in homes])
        per_reading: list[float] = []
        tx_max = 0
        for m in meters:
            wh = [int(v) for v in rng.integers(-2000, 2000, slots)]
            batch = 24
            for r in post_readings(bill.with_account(m), sid, wh, period,
                                   secret=bytes(m.key), batch=batch):
                n = len(bill.contract.events.Readings().process_receipt(r)[0]["args"]["wh"])
                per_reading.append(int(r["gasUsed"]) / n)
                tx_max = max(tx_max, int(r["gasUsed"]))
        settle = [int(bill.settle(sid, h.account.address)["gasUsed"]) for h in homes]
        out[mode] = {"post_gas_per_reading_median": round(statistics.median(per_reading)),
                     "post_tx_gas_max": tx_max,
                     "settle_gas_median": int(statistics.median(settle)),
                     "settle_gas_max": max(settle)}
    out["deploy_gas"] = int(bill.deploy_receipt["gasUsed"])
    out["runtime_bytes"] = load_artifact("Billing").runtime_size
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=96)
    ap.add_argument("--devices", default="10,100,1000,2048",
                    help="comma-separated N values (default 10,100,1000,2048)")
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args(argv)
    try:
        ns = [int(v) for v in a.devices.split(",")]
    except ValueError:
        ap.error("--devices: expected comma-separated integers")
    if a.slots < 1 or a.rounds < 2 or min(ns) < 2:
        ap.error("--slots >= 1, --rounds >= 2 and every N >= 2")
    for n in ns:
        print(f"bench_gas: T={a.slots} N={n}, {a.rounds} rounds on geth...", file=sys.stderr)
        print(json.dumps(run(a.slots, n, a.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
