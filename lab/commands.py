"""The lab's runtime subcommands: `up`, `run`, `down`, `watch`, `verify`, `bill`, `end`.
Registered on the `lab` CLI
by lab/cli.py; heavy imports stay inside the functions so `lab --help` stays fast."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def add_commands(sub) -> None:
    for name, helptext in (("up", "start the lab in the foreground until Ctrl-C"),
                           ("run", "run the lab once; last stdout line is a JSON summary")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("scenario")
        p.add_argument("--runtime", default=None,
                       help="where processes run: local | compose (lab/runtimes.py; default: "
                       "compose when a Docker engine answers, else local)")
        p.add_argument("--no-compare", action="store_true",
                       help="skip the in-process ADMM comparison (gap_vs_inprocess)")
        p.set_defaults(func=_cmd_up if name == "up" else _cmd_run)
    p = sub.add_parser("down", help="stop the running lab and every process it started")
    p.set_defaults(func=_cmd_down)
    p = sub.add_parser("watch", help="readable tail of the running lab's MQTT topics")
    p.add_argument("--url", help="mqtt://host:port (default: the running lab's broker)")
    p.set_defaults(func=_cmd_watch)
    add_verify(sub)
    p = sub.add_parser("bill", help="each home's bill recomputed from chain events (CSV and "
                       "JSON in RUN/results); last stdout line is a JSON summary")
    p.add_argument("run_dir", nargs="?", help="run folder (default: the running lab's)")
    p.set_defaults(func=_cmd_bill)
    p = sub.add_parser("end", help="end the run's session unconverged (the operator's "
                       "end_session): devices and the orchestrator stop, nothing is played")
    p.add_argument("run_dir", nargs="?", help="run folder (default: the running lab's)")
    p.set_defaults(func=_cmd_end)


def _load(name: str):
    """The scenario, refused first (ScaleError) when one session or block cannot hold it:
    the solver-based feasibility check of thousands of devices would only delay that."""
    from lab.orchestrator import scale_check
    from scenario import load

    scale_check(load(name, check_feasible=False))
    return load(name)  # ScenarioError and ScaleError are reported by lab.cli.main


def _cmd_run(args: argparse.Namespace) -> int:
    from lab.orchestrator import run_once

    logging.basicConfig(level=logging.WARNING)
    summary = run_once(_load(args.scenario), interactive=False, compare=not args.no_compare,
                       runtime=args.runtime)
    print(json.dumps(summary))
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from lab.orchestrator import run_once

    logging.basicConfig(level=logging.WARNING)
    try:
        run_once(_load(args.scenario), interactive=True, compare=not args.no_compare,
                 runtime=args.runtime)
    except KeyboardInterrupt:
        print("lab stopped", file=sys.stderr)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from lab.orchestrator import down

    return down()


def _cmd_watch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lab.runfolder import active_lab
    from mqtt_bridge.watch import default_url, watch

    if args.url is None:
        info = active_lab()
        if info is None and not os.environ.get("MQTT_URL"):
            raise SystemExit("error: no lab is running (start one with `make up`), "
                             "or pass --url / set MQTT_URL")
        args.url = default_url(Path(info["run"]) if info else None)
    watch(args.url)
    return 0


def add_verify(sub) -> None:
    p = sub.add_parser("verify", help="replay a run's session from the chain through the float "
                       "reference; last stdout line is a JSON verdict")
    p.add_argument("run_dir", nargs="?", help="run folder (default: the running lab's)")
    p.set_defaults(func=_cmd_verify)


def _run_dir(arg: str | None):
    from pathlib import Path

    from lab.runfolder import active_lab

    if arg is None:
        info = active_lab()
        if info is None:
            raise SystemExit("error: no lab is running; give a run folder")
        arg = info["run"]
    return Path(arg)


def _cmd_bill(args: argparse.Namespace) -> int:
    from lab.bill import bill_run

    bills = bill_run(_run_dir(args.run_dir))
    for r in bills["homes"]:
        print(f"{r['home']:>12}  import {r['import_kwh']:8.3f} kWh  export "
              f"{r['export_kwh']:8.3f} kWh  deviation {r['deviation_kwh']:7.3f} kWh  total "
              f"${r['total_usd']:9.4f}", file=sys.stderr)
    print(json.dumps({"session": bills["session"], "ok": bills["ok"],
                      "problems": bills["problems"], **bills["settlement"]}))
    return 0 if bills["ok"] else 1


def _cmd_end(args: argparse.Namespace) -> int:
    """The operator (the run's key) ends the session; its orchestrator, if running, sees it
    and stops the run cleanly."""
    from aggregator_contract.client import Coordinator, CoordinatorError, connect
    from chain.keys import load_account, operator_path
    from lab.runchain import run_chain, run_info

    run_dir = _run_dir(args.run_dir)
    lab = run_info(run_dir)
    session = int(lab["session"])
    with run_chain(run_dir) as url:
        coord = Coordinator(connect(url), lab["contract"],
                            load_account(operator_path(run_dir)))
        try:
            coord.end_session(session)
        except CoordinatorError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print(json.dumps({"session": session, "ended": True}))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from lab.verify import verify_run

    verdict = verify_run(_run_dir(args.run_dir))
    print(json.dumps(verdict.as_dict()))
    return 0 if verdict.ok else 1
