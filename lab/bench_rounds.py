"""`make bench-rounds`: the same scenario run again and again, looking for slow rounds.

    python -m lab.bench_rounds [--scenario homes10] [--runs 10]

Each run is `lab run NAME --no-compare` (local runtime). From each run's history.json: the
rounds, the median round time and the slowest round after round 0 (round 0 includes the
device processes' start-up). A round is slow when it takes longer than 3x the run's median
or 3 s, whichever is larger. Also counted: members the orchestrator restarted because they
stayed behind the signer (lab/orchestrator.py `_heal_members`). One JSON line per run on
stderr, the summary as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(scenario: str, env: dict[str, str]) -> dict:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "lab.cli", "run", scenario, "--no-compare",
                          "--runtime", "local"], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=1800)
    row: dict = {"ok": out.returncode == 0, "wall_s": round(time.monotonic() - t0, 1)}
    if out.returncode != 0:
        row["error"] = out.stderr[-1500:]
        return row
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    hist = json.loads((Path(summary["results"]) / "history.json").read_text())
    secs = [r["wall_s"] for r in hist]
    med = statistics.median(secs)
    later = secs[1:] or [0.0]
    limit = max(3 * med, 3.0)
    row.update(converged=summary["converged"], rounds=len(hist), round_s_median=med,
               round0_s=secs[0], slowest_later_s=max(later),
               slow_rounds=sum(s > limit for s in later),
               members_restarted=sum("stuck at block" in ln for ln in out.stderr.splitlines()),
               s_to_final=summary["s_to_final"], run=str(Path(summary["results"]).parent))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.bench_rounds",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="homes10")
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args(argv)
    env = dict(os.environ)
    rows = []
    for i in range(args.runs):
        row = one_run(args.scenario, env)
        print(json.dumps({"i": i, **row}), file=sys.stderr, flush=True)
        rows.append(row)
    good = [r for r in rows if r["ok"]]
    summary = {
        "scenario": args.scenario, "runs": len(rows), "runs_ok": len(good),
        "converged": sum(bool(r.get("converged")) for r in good),
        "runs_with_slow_rounds": sum(r["slow_rounds"] > 0 for r in good),
        "slow_rounds": sum(r["slow_rounds"] for r in good),
        "round_s_median": [r["round_s_median"] for r in good],
        "slowest_later_round_s": [r["slowest_later_s"] for r in good],
        "rounds": [r["rounds"] for r in good],
        "members_restarted": sum(r["members_restarted"] for r in good),
        "s_to_final": [r["s_to_final"] for r in good],
    }
    print(json.dumps(summary))
    return 0 if summary["runs_ok"] == len(rows) and summary["slow_rounds"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
