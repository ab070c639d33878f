"""`lab bill RUN`: each home's bill, recomputed from chain events alone.

The Billing contract's events (BillingOpened, Readings, Settled, Deposited, Withdrawn) and
the Coordinator's (SessionOpened: prices, gamma, delta; Submitted: each final x_i) are
replayed through the contract's own integer arithmetic (aggregator_contract.billing.replay);
every recomputed bill must equal its Settled event and every balance the contract's. Written
to RUN/results/bills.json and bills.csv (the live page shows the JSON), with the settlement
identity: bills + remainder = the feeder's cost of the metered aggregate, where the remainder
is the feeder's quadratic congestion term less the deviation charges (docs/billing.md).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from aggregator_contract.billing import (
    TARIFF_FIELDS,
    WEI_PER_USD,
    Billing,
    replay,
    settlement_sums,
)
from aggregator_contract.client import Coordinator, connect

COLUMNS = ("home", "address", "import_kwh", "export_kwh", "deviation_kwh", "energy_usd",
           "export_usd", "deviation_usd", "total_usd", "balance_usd", "settled_on_chain")


def bills_of(url: str, lab: dict[str, Any]) -> dict[str, Any]:
    """The session's bills through the node at `url`; `lab` is the run's lab.json."""
    w3 = connect(url)
    coord = Coordinator(w3, lab["contract"])
    rep = replay(Billing(w3, lab["billing"]["contract"]), coord, int(lab["session"]),
                 from_block=int(lab.get("deploy_block", 0)))
    home_of = {addr.lower(): dev for dev, addr in lab["devices"].items()}
    rows = []
    for addr, b in rep.bills.items():
        rows.append({
            "home": home_of.get(addr.lower(), addr), "address": addr,
            "import_kwh": b.import_wh / 1000, "export_kwh": b.export_wh / 1000,
            "deviation_kwh": b.deviation_wh / 1000,
            **{k: round(v, 9) for k, v in b.usd().items()},
            "balance_usd": rep.balances.get(addr, 0) / WEI_PER_USD,
            "settled_on_chain": rep.settled.get(addr) == b,
            "wei": {k: v for k, v in vars(b).items() if k.endswith("_wei")},
        })
    rows.sort(key=lambda r: r["home"])
    return {"session": rep.session, "ok": rep.ok, "problems": rep.problems,
            "reading_period_slots": rep.tariff[1],
            "tariff": dict(zip(TARIFF_FIELDS, rep.tariff, strict=True)),
            "homes": rows, "settlement": settlement_sums(rep)}


def write_bills(out_dir: Path, bills: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bills.json").write_text(json.dumps(bills, indent=1))
    with (out_dir / "bills.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(bills["homes"])


def bill_run(run_dir: Path) -> dict[str, Any]:
    """`lab bill`: the run's bills from its chain (resumed if stopped), written to
    RUN/results; returns them."""
    from lab.runchain import run_chain, run_info

    lab = run_info(run_dir)
    if "billing" not in lab:
        raise SystemExit(f"error: {run_dir}: this run has no Billing contract "
                         "(billing.enabled was false, or the run predates metering)")
    with run_chain(run_dir) as url:
        bills = bills_of(url, lab)
    write_bills(run_dir / "results", bills)
    return bills
