"""A run's results folder: the schedule (CSV, JSON), the per-round history and the plots.

Used by the orchestrator (schedule read back from the chain) and by `lab solve` alike, so
both write the same files:

    schedule.csv       slot, start time, one column per device (kW), total, capacity, price
    schedule.json      {device: [kW per slot]} plus horizon and finalization details
    history.csv/json   one row per round: r, s, eps_pri, eps_dual, rho, gas, wall_s
    convergence.png    residuals against tolerances, and rho, per round
    aggregate.png      total load against import capacity / export limit, with the price
    devices.png        every device's schedule (a heat map beyond 12 devices)
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a lab machine
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from aggregator_contract.reference import Feeder  # noqa: E402


def slot_times(start: str, slots: int, slot_minutes: float) -> list[str]:
    t0 = datetime.fromisoformat(start)
    return [(t0 + timedelta(minutes=slot_minutes * k)).isoformat() for k in range(slots)]


def write_schedule(
    out: Path, device_ids: Sequence[str], x: np.ndarray, feeder: Feeder, times: Sequence[str],
    extra: dict | None = None,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    total = x.sum(axis=0)
    with open(out / "schedule.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slot", "start", *device_ids, "total_kw", "capacity_kw", "export_limit_kw",
                    "price_per_kwh"])
        for t in range(x.shape[1]):
            w.writerow([t, times[t], *(f"{v:.6f}" for v in x[:, t]), f"{total[t]:.6f}",
                        feeder.capacity[t], feeder.export_limit[t], feeder.price[t]])
    doc = {
        "unit": "kW (consumption > 0, generation < 0)",
        "slot_hours": feeder.delta_h,
        "start": times[0] if times else None,
        "devices": {d: [float(v) for v in x[i]] for i, d in enumerate(device_ids)},
        **(extra or {}),
    }
    (out / "schedule.json").write_text(json.dumps(doc, indent=1))


def write_history(out: Path, rows: Sequence[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(list(rows), indent=1))
    if not rows:
        return
    keys = list(rows[0].keys())
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def plot_all(
    out: Path, device_ids: Sequence[str], x: np.ndarray, feeder: Feeder, rows: Sequence[dict],
    title: str,
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [
        _plot_convergence(out / "convergence.png", rows, title),
        _plot_aggregate(out / "aggregate.png", x, feeder, title),
        _plot_devices(out / "devices.png", device_ids, x, feeder, title),
    ]


def _plot_convergence(path: Path, rows: Sequence[dict], title: str) -> Path:
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    k = [r["round"] for r in rows]
    for key, style in (("r", "-"), ("s", "-"), ("eps_pri", "--"), ("eps_dual", "--")):
        ax1.semilogy(k, [max(r[key], 1e-12) for r in rows], style, label=key)
    ax1.set_ylabel("residual / tolerance")
    ax1.legend(loc="upper right")
    ax1.set_title(f"{title}: ADMM convergence")
    ax2.semilogy(k, [r["rho"] for r in rows], "k.-")
    ax2.set_ylabel("rho")
    ax2.set_xlabel("round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_aggregate(path: Path, x: np.ndarray, feeder: Feeder, title: str) -> Path:
    hours = np.arange(x.shape[1]) * feeder.delta_h
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.step(hours, x.sum(axis=0), where="post", label="total load (kW)", lw=2)
    ax.step(hours, feeder.capacity, where="post", ls="--", c="r", label="import capacity C")
    ax.step(hours, -feeder.export_limit, where="post", ls=":", c="r", label="export limit -E")
    ax.set_xlabel("hour of day")
    ax.set_ylabel("kW")
    ax2 = ax.twinx()
    ax2.step(hours, feeder.price, where="post", c="g", alpha=0.6, label="price")
    ax2.set_ylabel("$/kWh", color="g")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{title}: aggregate schedule")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_devices(path: Path, device_ids: Sequence[str], x: np.ndarray, feeder: Feeder,
                  title: str) -> Path:
    hours = np.arange(x.shape[1]) * feeder.delta_h
    n = len(device_ids)
    if n > 12:
        fig, ax = plt.subplots(figsize=(10, max(4, n * 0.08)))
        lim = float(np.abs(x).max()) or 1.0
        im = ax.imshow(x, aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim,
                       extent=(0, hours[-1] + feeder.delta_h, n, 0))
        fig.colorbar(im, ax=ax, label="kW")
        ax.set_xlabel("hour of day")
        ax.set_ylabel("device")
    else:
        cols = 2 if n > 3 else 1
        rows_ = int(np.ceil(n / cols))
        fig, axes = plt.subplots(rows_, cols, figsize=(10, 1.8 * rows_ + 1), sharex=True,
                                 squeeze=False)
        for i, d in enumerate(device_ids):
            ax = axes[i // cols][i % cols]
            ax.step(hours, x[i], where="post")
            ax.axhline(0, c="k", lw=0.5)
            ax.set_title(d, fontsize=9)
        for j in range(n, rows_ * cols):
            axes[j // cols][j % cols].axis("off")
    fig.suptitle(f"{title}: device schedules (kW)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
