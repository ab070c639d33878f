"""The `lab` console script.

Subcommands here: `solve NAME` (in-process ADMM + centralized yardstick, results to a folder)
and `bench-admm NAME` (its last stdout line is one JSON object). Other modules register their
own subcommands with `add_commands(subparsers)`: every module in EXTENSIONS that exists is
imported and asked to add its parsers (the orchestrator's up/run/down/watch, verify ...).
Heavy imports (cvxpy, numpy, web3) stay inside command functions so `lab --help` is fast;
extension modules should do the same.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path

EXTENSIONS = ("lab.commands",)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # clear one-line errors for expected failures
        from aggregator_contract.limits import ScaleError
        from lab.runtimes import RuntimeUnavailable
        from scenario import ScenarioError

        if isinstance(e, ScenarioError | ScaleError | RuntimeUnavailable) or (
                isinstance(e, ValueError) and str(e).startswith("RUNTIME=")):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


ENVIRONMENT = """environment variables:
  MQTT_URL            an external broker for the bridge and emulators (mqtt://host:port);
                      unset: the lab runs its own mosquitto on loopback
  LAB_RUNS            where run folders go (default: runs/)
  RUNTIME             make up / make run: local or compose (default: compose when a Docker
                      engine answers, else local); the CLI's --runtime
  DOCKER_HOST         the Docker (or podman) API the Compose runtime uses
  GETH                the geth binary of the local runtime (default: tools/bin/geth)
  LAB_PODMAN_DIR      podman's storage for the offline images (default: build/podman)
  LAB_DEBIAN_MIRROR   Debian mirror for the offline image build
  LAB_PROJECT_IMAGE, LAB_DEVICE_IMAGE, LAB_GETH_IMAGE
                      image names the Compose runtime runs
  PIP_CERT, PIP_FIND_LINKS, SSL_CERT_FILE
                      passed to image builds when set"""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("energy-chain-lab")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lab", description="Blockchain-coordinated day-ahead scheduling lab.",
        epilog=ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("solve", help="schedule a scenario with in-process ADMM (no chain) and "
                       "compare with the centralized optimum")
    p.add_argument("scenario", help="configs/<name>.yaml, a path, or homesN[-congested][-seedS] "
                   "(generated)")
    p.add_argument("--out", type=Path, help="results folder (default runs/solve-<name>-<time>)")
    p.add_argument("--solver", choices=("OSQP", "CLARABEL", "SCS"),
                   help="local-step solver (default: the scenario's admm.solver)")
    p.add_argument("--max-rounds", type=int, help="override admm.max_rounds")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser("bench-admm", help="ADMM vs centralized figures; last stdout line is "
                       "one JSON object")
    p.add_argument("scenario")
    p.add_argument("--solver", choices=("OSQP", "CLARABEL", "SCS"))
    p.add_argument("--max-rounds", type=int)
    p.set_defaults(func=cmd_bench)

    for name in EXTENSIONS:
        if importlib.util.find_spec(name) is None:
            continue
        mod = importlib.import_module(name)
        add = getattr(mod, "add_commands", None)
        if add is not None:
            add(sub)
    return parser


def _compare(scenario_name: str, solver: str | None, max_rounds: int | None,
             progress: bool) -> tuple:
    import numpy as np

    from lab.admm_inprocess import run_admm
    from scenario import central, load

    scen = load(scenario_name)

    def on_round(row: dict) -> None:
        if progress and (row["round"] % 10 == 0 or row["converged"]):
            print(f"  round {row['round']:3d}  r={row['r']:.3e} (eps {row['eps_pri']:.1e})  "
                  f"s={row['s']:.3e} (eps {row['eps_dual']:.1e})  rho={row['rho']:.4g}",
                  file=sys.stderr)

    res = run_admm(scen, solver=solver, max_rounds=max_rounds, on_round=on_round)
    cen = central.solve_central(scen)
    cost_admm = central.total_cost(scen, res.x, res.private_costs)
    last = res.history[-1]
    figures = {
        "scenario": scen.name,
        "devices": len(scen.devices),
        "slots": scen.horizon.slots,
        "iterations": res.rounds,
        "converged": res.converged,
        "cost_admm": cost_admm,
        "cost_central": cen.cost,
        "gap_rel": central.gap_rel(cost_admm, cen.cost),
        "capacity_violation_kw": central.capacity_violation_kw(scen, res.x),
        "export_violation_kw": central.export_violation_kw(scen, res.x),
        "r_final": last["r"],
        "s_final": last["s"],
        "local_solve_ms_p50": 1e3 * float(np.median(res.local_solve_s)),
        "wall_s_admm": res.wall_s,
        "wall_s_central": cen.wall_s,
        # beyond the required fields: how close the schedules themselves are (kW)
        "max_abs_dx_kw": float(np.abs(res.x - cen.x).max()),
        "max_abs_dtotal_kw": float(np.abs(res.x.sum(axis=0) - cen.x.sum(axis=0)).max()),
        "solver": solver or scen.admm.solver,
    }
    return scen, res, cen, figures


def cmd_bench(args: argparse.Namespace) -> int:
    _, _, _, fig = _compare(args.scenario, args.solver, args.max_rounds, progress=True)
    print(json.dumps(fig))
    return 0


def cmd_solve(args: argparse.Namespace) -> int:
    scen, res, cen, fig = _compare(args.scenario, args.solver, args.max_rounds, progress=True)
    out = args.out or _default_out(scen.name)
    _write(out, scen, res, cen, fig, plots=not args.no_plots)
    print(f"scenario {scen.name}: {fig['devices']} devices x {fig['slots']} slots "
          f"({scen.horizon.slot_minutes:g} min)")
    print(f"ADMM      {'converged' if res.converged else 'NOT converged'} in {res.rounds} rounds"
          f" ({res.wall_s:.1f} s, local step p50 {fig['local_solve_ms_p50']:.1f} ms), "
          f"cost {fig['cost_admm']:.4f} $")
    print(f"central   cost {fig['cost_central']:.4f} $ ({cen.wall_s:.1f} s)")
    print(f"gap_rel   {fig['gap_rel']:.2e}   capacity violation {fig['capacity_violation_kw']:.3g}"
          f" kW   export violation {fig['export_violation_kw']:.3g} kW   "
          f"max|x-x*| {fig['max_abs_dx_kw']:.3g} kW   "
          f"max|sum x - sum x*| {fig['max_abs_dtotal_kw']:.3g} kW")
    print(f"results   {out}")
    return 0 if res.converged else 1


def _default_out(name: str) -> Path:
    try:
        from lab.runfolder import runs_root
        root = runs_root()
    except ImportError:
        root = Path("runs")
    return root / f"solve-{name}-{time.strftime('%Y%m%dT%H%M%S')}"


def _write(out: Path, scen, res, cen, fig: dict, plots: bool) -> None:
    """schedule (CSV/JSON), history, component schedules, central schedule, summary, plots."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenario.yaml").write_text(scen.to_yaml())
    feeder = scen.feeder_params()
    from lab import results

    times = results.slot_times(scen.horizon.start, scen.horizon.slots, scen.horizon.slot_minutes)
    results.write_schedule(out, res.device_ids, res.x, feeder, times, extra={
        "source": "in-process ADMM", "converged": res.converged, "rounds": res.rounds})
    results.write_history(out, res.history)
    comps = {"admm": _lists(res.component_power), "central": _lists(cen.component_power)}
    (out / "components.json").write_text(json.dumps(comps, indent=1))
    (out / "central.json").write_text(json.dumps(
        {"cost": cen.cost, "devices": {d: list(map(float, cen.x[i]))
                                       for i, d in enumerate(cen.device_ids)}}, indent=1))
    (out / "summary.json").write_text(json.dumps(fig, indent=1))
    if plots:
        results.plot_all(out, res.device_ids, res.x, feeder, res.history, scen.name)


def _lists(parts: dict) -> dict:
    return {d: {c: [float(v) for v in p] for c, p in comp.items()} for d, comp in parts.items()}


if __name__ == "__main__":
    sys.exit(main())
