"""`make bench-scale`: the whole lab on geth at growing N, one JSON line per scenario.

    python -m lab.bench_scale [homes10 homes100 homes300 homes1000] [--no-compare NAME ...]

Each scenario runs as `lab run NAME` in a child process (the README's path, playback
included), while this process samples the resident memory of the whole lab every second:
the sum of RSS over `lab run` and every process it started (geth nodes, device processes,
broker, bridge, emulators). From the run's summary: rounds, round_s_median, wall_s_total,
gas per round (median of the rounds' gas), nodes, device processes, seconds from start to
the first closed round and to the finalized schedule read back (the playback excluded), and
gap_vs_inprocess (skipped, as null, for the names given to --no-compare: the in-process
comparison of homes1000 takes as long again and is better run apart with `make
bench-admm`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

DEFAULT = ("homes10", "homes100", "homes300", "homes1000")


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_one(name: str, compare: bool, timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", "lab.cli", "run", name, "--runtime", "local"]
    if not compare:
        cmd.append("--no-compare")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.wait(1.0):
            peak[0] = max(peak[0], _tree_rss(root))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=120)
        return {"scenario": name, "error": f"timeout after {timeout_s:.0f} s",
                "stderr_tail": err[-1500:]}
    finally:
        done.set()
        th.join()
    if proc.returncode != 0:
        return {"scenario": name, "error": f"lab run exited {proc.returncode}",
                "stderr_tail": err[-1500:]}
    summary = json.loads(out.strip().splitlines()[-1])
    history = json.loads((Path(summary["results"]) / "history.json").read_text())
    gas = [r["gas"] for r in history]
    return {
        "scenario": name,
        "devices": summary["devices"],
        "nodes": summary["nodes"],
        "device_processes": summary["device_processes"],
        "converged": summary["converged"],
        "rounds": summary["rounds"],
        "round_s_median": summary["round_s_median"],
        "s_to_first_round": summary["s_to_first_round"],
        "s_to_final": summary["s_to_final"],
        "wall_s_total": summary["wall_s_total"],
        "wall_s_bench": round(time.monotonic() - t0, 1),
        "gas_per_round_median": int(statistics.median(gas)),
        "gas_per_round_max": max(gas),
        "peak_rss_gib": round(peak[0] / 2**30, 2),
        "gap_vs_inprocess": summary.get("gap_vs_inprocess"),
        "rounds_inprocess": summary.get("rounds_inprocess"),
        "results": summary["results"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="*", default=list(DEFAULT))
    ap.add_argument("--no-compare", nargs="*", default=["homes1000"], metavar="NAME",
                    help="scenarios run without the in-process comparison (default homes1000)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per scenario")
    a = ap.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for name in a.scenarios:
        print(f"bench_scale: {name} ...", file=sys.stderr, flush=True)
        print(json.dumps(run_one(name, name not in a.no_compare, a.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
