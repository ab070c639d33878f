"""The meters of a run (`python -m metering`): every emulated home's meter, started with the
MQTT playback, each signing with its own key (RUN/keys/meters/<home>.key).

    during the day   follow the devices' relay reports (RelayRecorder), appended to
                     RUN/meters/relays.jsonl so a restarted process loses nothing
    after the day    (the bridge's results/bridge.json says "done", with day_start) wait for
                     the operator to open the session's billing, then for each home: split
                     its final x_i into components, measure, deposit the scenario's deposit
                     for the home, post the readings, settle the home
    results          RUN/results/meters.json: each home's readings (Wh per slot and per
                     reading period) and what was measured from relays

Every step reads the chain first (deposited? which readings are posted? settled?), so a
restart resumes where the last process stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from aggregator_contract.billing import SETTLED, WEI_PER_USD, Billing, BillingRefused
from aggregator_contract.client import Coordinator, connect
from chain import keys
from chain.network import load_nodes
from metering.emulated import EmulatedMeter, RelayRecorder
from metering.post import post_readings
from mqtt_bridge.config import BridgeConfig

log = logging.getLogger("metering")
POLL_S = 1.0


@dataclass(frozen=True)
class Day:
    """When the day was played: slot 0 began at day_start (epoch s)."""

    day_start: float
    seconds_per_slot: float


def played_day(run_dir: Path) -> Day | None:
    """The day as the bridge played it (its results/bridge.json), None until it is done."""
    f = run_dir / "results" / "bridge.json"
    try:
        st = json.loads(f.read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None
    if st.get("phase") != "done" or st.get("day_start") is None:
        return None
    return Day(float(st["day_start"]), float(st["seconds_per_slot"]))


class RunMeters:
    """The meters of one run (all its homes; one key each)."""

    def __init__(self, run_dir: Path, node: str, url: str) -> None:
        from scenario import device_from_payload, load

        self.run_dir = Path(run_dir)
        lab = json.loads((self.run_dir / "lab.json").read_text())
        self.session = int(lab["session"])
        self.homes: dict[str, str] = lab["devices"]  # device id -> address
        self.from_block = int(lab.get("deploy_block", 0))
        self.scenario = load(self.run_dir / "scenario.yaml", check_feasible=False)
        self.specs = {}
        for d in self.homes:
            f = self.run_dir / "devices" / f"{d}.yaml"
            self.specs[d] = device_from_payload(yaml.safe_load(f.read_text()), str(f))
        self.config = BridgeConfig.load(self.run_dir / "bridge.json")
        w3 = connect(load_nodes(self.run_dir)[node].rpc_url)
        self.coord = Coordinator(w3, lab["contract"])
        self.billing = Billing(w3, lab["billing"]["contract"])
        self.meters = {d: keys.load_account(keys.meter_path(self.run_dir, d))
                       for d in self.homes}
        self.url = url
        self.journal = self.run_dir / "meters" / "relays.jsonl"

    # -- during the day ----------------------------------------------------------------

    def record(self) -> tuple[Day, RelayRecorder]:
        """Follow the relays until the bridge has played the day."""
        rec = RelayRecorder(self.config.actuators, self.url, journal=self.journal)
        rec.start()
        try:
            while (day := played_day(self.run_dir)) is None:
                time.sleep(POLL_S)
        finally:
            rec.stop()
        return day, rec

    # -- after the day -----------------------------------------------------------------

    def readings(self, day: Day, rec: RelayRecorder) -> dict[str, list[int]]:
        """Each home's Wh per slot, measured."""
        b = self.scenario.billing
        slots = self.scenario.horizon.slots
        relays = rec.slots(day.day_start, day.seconds_per_slot, slots)
        sched = self.coord.schedule(self.session)
        out = {}
        for dev, addr in self.homes.items():
            meter = EmulatedMeter(self.specs[dev], b.deviations)
            mine = {a.component: relays[a.id] for a in rec.acts if a.device == dev}
            out[dev] = meter.readings_wh(meter.measure(np.asarray(sched.x[addr]), mine),
                                         self.scenario.horizon.slot_minutes / 60)
        return out

    def wait_billing_open(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.billing.events("BillingOpened", self.from_block, session=self.session):
            if time.monotonic() > deadline:
                raise TimeoutError(f"billing of session {self.session} not opened in "
                                   f"{timeout:.0f} s")
            time.sleep(POLL_S)

    def settle_home(self, dev: str, wh: list[int], period: int) -> dict[str, Any]:
        """Deposit, post what is not posted yet, settle: each step once, across restarts."""
        home = self.homes[dev]
        acct = self.meters[dev]
        bill = self.billing.with_account(acct)
        did = {"deposited": False, "posted": 0, "settled": False}
        if self.billing.state(self.session, home) == SETTLED:
            return did
        if not self.billing.events("Deposited", self.from_block, account=home,
                                   sender=acct.address):
            wei = int(round(self.scenario.billing.deposit_usd * WEI_PER_USD))
            if wei > 0:
                bill.deposit(home, wei)
                did["deposited"] = True
        posted = {int(lg["args"]["first"]) + i
                  for lg in self.billing.events("Readings", self.from_block,
                                                session=self.session, home=home)
                  for i in range(len(lg["args"]["wh"]))}
        did["posted"] = len(post_readings(bill, self.session, wh, period, secret=bytes(acct.key),
                                          skip=posted))
        bill.settle(self.session, home)
        did["settled"] = True
        return did

    def run(self) -> dict[str, Any]:
        day, rec = self.record()
        self.wait_billing_open()
        wh = self.readings(day, rec)
        period = self.scenario.billing.period_slots(self.scenario.horizon.slot_minutes)
        done = {dev: self.settle_home(dev, wh[dev], period) for dev in self.homes}
        out = {"session": self.session, "day_start": day.day_start,
               "seconds_per_slot": day.seconds_per_slot, "period_slots": period,
               "homes": {dev: {"meter": self.meters[dev].address, "slot_wh": wh[dev],
                               "this_process": done[dev]} for dev in self.homes},
               "relays_measured": sorted(a.id for a in rec.acts)}
        (self.run_dir / "results").mkdir(exist_ok=True)
        (self.run_dir / "results" / "meters.json").write_text(json.dumps(out, indent=1))
        return out


def main(argv: list[str] | None = None) -> None:
    from mqtt_bridge.mqttc import resolve_url

    p = argparse.ArgumentParser(prog="python -m metering", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--node", required=True, help="the node to read and send through")
    p.add_argument("--url", required=True, help="the broker (mqtt://... or @file)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        out = RunMeters(args.run_dir, args.node, resolve_url(args.url)).run()
    except BillingRefused as e:
        raise SystemExit(f"metering: {e}") from None
    log.info("settled %d homes", len(out["homes"]))
