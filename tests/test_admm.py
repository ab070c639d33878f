"""Sharing ADMM: the aggregator steps (reference), residual balancing, and agreement of the
in-process ADMM with the centralized optimum."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aggregator_contract.reference import (
    AdmmSettings,
    AggregatorState,
    Feeder,
    aggregate_step,
    balancing_factor,
    step5_residuals,
    step6_rho_update,
)
from lab.admm_inprocess import run_admm
from scenario import load, parse
from scenario.central import (
    capacity_violation_kw,
    export_violation_kw,
    gap_rel,
    solve_central,
    total_cost,
)

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = AdmmSettings(rho0=1.0, eps_abs=1e-4, eps_rel=1e-3, max_rounds=100, mu=5, tau=10,
                        alpha=1.0)


def test_rho_update_scales_rho_and_keeps_unscaled_dual():
    u = np.array([1.0, -2.0])
    rho, u2 = step6_rho_update(1.5, u, factor=6.0, settings=SETTINGS)  # f > mu
    assert rho == pytest.approx(9.0) and np.allclose(u2, u / 6)
    assert np.allclose(rho * u2, 1.5 * u)  # the unscaled dual y = rho u is unchanged
    rho, u2 = step6_rho_update(1.5, u, factor=0.1, settings=SETTINGS)  # f < 1/mu
    assert rho == pytest.approx(0.15) and np.allclose(rho * u2, 1.5 * u)


def test_rho_update_keeps_rho_within_mu_and_clips_at_tau():
    u = np.array([1.0])
    rho, u2 = step6_rho_update(1.5, u, factor=4.9, settings=SETTINGS)
    assert rho == 1.5 and u2 is u
    rho, _ = step6_rho_update(1.5, u, factor=1e6, settings=SETTINGS)  # clipped to tau
    assert rho == pytest.approx(15.0)


def _feeder(t: int = 2, cap: float = 100.0) -> Feeder:
    return Feeder(delta_h=0.5, price=np.array([0.2, 0.4])[:t], capacity=np.full(t, cap),
                  export_limit=np.full(t, 50.0), gamma=0.1)


def test_aggregate_step_by_hand():
    # N = 2, T = 2, rho = 1, from the initial state, plain ADMM (alpha = 1)
    f = _feeder()
    st = AggregatorState.initial(2, 2, 1.0)
    x = np.array([[4.0, 0.0], [2.0, 2.0]])
    nxt, info = aggregate_step(st, x, f, SETTINGS)
    xbar = np.array([3.0, 1.0])
    zbar = (1.0 * xbar - 0.5 * f.price) / (1.0 + 2 * 0.5 * 0.1)  # (rho a - D pi)/(rho + N D g)
    assert np.allclose(nxt.xbar, xbar) and np.allclose(nxt.zbar, zbar)
    r = np.sqrt(2) * np.linalg.norm(xbar - zbar)
    assert info.r == pytest.approx(r)
    dz = x - xbar + zbar  # every delta is against zeros
    assert info.s == pytest.approx(np.linalg.norm(dz))
    # whichever way rho moves, y = rho u is preserved
    u_before = xbar - zbar
    assert np.allclose(nxt.rho * nxt.u, 1.0 * u_before)
    assert info.x_scale == pytest.approx(max(np.linalg.norm(x), np.linalg.norm(dz)))
    assert info.y_scale == pytest.approx(np.sqrt(2) * np.linalg.norm(u_before))


def test_aggregate_step_over_relaxation():
    f = _feeder()
    st = AggregatorState(2, 1.0, np.array([1.0, 1.0]), np.array([0.5, 0.5]),
                         np.array([0.2, 0.1]), np.array([[1.0, 1.0], [1.0, 1.0]]))
    x = np.array([[4.0, 0.0], [2.0, 2.0]])
    alpha = 1.6
    settings = AdmmSettings(rho0=1.0, mu=1e9, alpha=alpha)  # rho never moves
    nxt, info = aggregate_step(st, x, f, settings)
    xbar = x.mean(0)
    xhat = alpha * xbar + (1 - alpha) * st.zbar
    zbar = (xhat + st.u - 0.5 * f.price) / (1.0 + 2 * 0.5 * 0.1)
    assert np.allclose(nxt.zbar, zbar) and np.allclose(nxt.u, st.u + xhat - zbar)
    # s: the dual residual of (x+, u+), from the expansion a contract uses
    w = (xbar - st.xbar) - (zbar - st.zbar) - (1 - alpha) * (xbar - st.zbar)
    dx = x - st.x
    ssq = (dx ** 2).sum() - 2 * 2 * (dx.mean(0) @ w) + 2 * (w @ w)
    assert info.s == pytest.approx(np.sqrt(ssq))
    # ... which is rho (v-gap): device i's step is exact for the price rho u+ + e_i
    e = x - st.target(st.x) - nxt.u
    assert info.s == pytest.approx(np.linalg.norm(e))


def test_initial_state_starts_from_the_energy_price():
    f = _feeder()
    st = AggregatorState.initial(3, 2, 0.05, f)
    assert np.allclose(0.05 * st.u, f.delta_h * f.price)


def test_aggregate_step_balancing_raises_rho_when_primal_dominates():
    f = _feeder()
    # a state where devices barely moved (small s) but xbar is far from zbar (large r)
    x = np.array([[4.0, 0.0], [2.0, 2.0]])
    u0 = np.array([0.1, 0.1])
    zfix = (1.0 * (u0 + x.mean(0)) - f.delta_h * f.price) / (1.0 + 2 * f.delta_h * f.gamma)
    st = AggregatorState(3, 1.0, x.mean(0), zfix, u0, x)  # same x again: s = 0
    nxt, info = aggregate_step(st, x, f, SETTINGS)
    assert info.s == 0.0 and info.factor == float("inf")
    u_plain = st.u + nxt.xbar - nxt.zbar
    assert info.rho_next == nxt.rho == SETTINGS.tau  # clipped at tau
    assert np.allclose(nxt.u, u_plain / SETTINGS.tau)


def test_aggregate_step_balancing_lowers_rho_when_dual_dominates():
    f = _feeder()
    a, d = np.array([3.0, 1.0]), np.array([1.0, 1.0])
    # u chosen so that zbar+ = xbar+ = a (r = 0) while the devices swap load (s > 0)
    u = (2 * f.delta_h * f.gamma * a + f.delta_h * f.price) / 1.0
    st = AggregatorState(5, 1.0, a, a.copy(), u, np.array([a - d, a + d]))
    nxt, info = aggregate_step(st, np.array([a + d, a - d]), f, SETTINGS)
    assert info.r == pytest.approx(0.0, abs=1e-12) and info.s == pytest.approx(4.0)
    assert not info.converged and nxt.rho == pytest.approx(0.1) == info.rho_next
    assert np.allclose(nxt.u, (u + nxt.xbar - nxt.zbar) * 10)


def test_balancing_factor_is_the_normalised_ratio():
    st = AggregatorState.initial(2, 2, 1.0)
    f = _feeder()
    x = np.array([[4.0, 0.0], [2.0, 2.0]])
    xbar = x.mean(0)
    res = step5_residuals(st, x, xbar, xbar - 0.1, np.array([0.3, 0.4]), 1.0, f, SETTINGS)
    assert balancing_factor(res) == pytest.approx(
        np.sqrt((res.r / res.x_scale) / (res.s / res.y_scale)))


def test_convergence_needs_the_feeder_limits_held():
    # r and s tiny, but sum_i x_i exceeds C by 2 kW: not converged
    f = _feeder(cap=4.0)
    x = np.array([[3.0, 3.0], [3.0, 3.0]])
    st = AggregatorState(4, 1.0, x.mean(0), np.full(2, 2.0), np.zeros(2), x)
    res = step5_residuals(st, x, x.mean(0), np.full(2, 3.0), np.zeros(2), 1.0, f, SETTINGS)
    assert res.r == 0.0 and res.import_excess_kw == pytest.approx(2.0)
    assert not res.converged


def test_aggregate_step_box_clips_zbar():
    f = _feeder(cap=4.0)  # C/N = 2 kW per device
    st = AggregatorState.initial(2, 2, 1.0)
    nxt, _ = aggregate_step(st, np.array([[6.0, 6.0], [6.0, 6.0]]), f, SETTINGS)
    assert np.all(nxt.zbar <= 2.0 + 1e-12) and np.allclose(nxt.zbar, 2.0)


def test_admm_matches_central_on_homes3():
    s = load("homes3")
    res = run_admm(s)
    cen = solve_central(s)
    assert res.converged and res.rounds <= s.admm.max_rounds
    cost = total_cost(s, res.x, res.private_costs)
    assert gap_rel(cost, cen.cost) <= 1e-3
    assert capacity_violation_kw(s, res.x) <= s.admm.viol_tol_kw
    assert export_violation_kw(s, res.x) <= s.admm.viol_tol_kw
    # the aggregate is unique (gamma > 0): ADMM's total is on the central one
    assert np.abs(res.x.sum(0) - cen.x.sum(0)).max() < 0.2
    # history figures are the reference's
    assert [h["round"] for h in res.history] == list(range(res.rounds))
    assert res.history[-1]["r"] <= res.history[-1]["eps_pri"]


def _two_ev_homes(capacity: float) -> dict:
    def home(i: int, arrive: int, energy: float) -> dict:
        return {"id": f"h{i}", "components": [
            {"id": "base", "type": "fixed_load", "profile": "residential", "daily_kwh": 8},
            {"id": "ev", "type": "ev", "capacity_kwh": 60, "max_rate_kw": 7.4,
             "arrive_slot": arrive, "depart_slot": 7, "energy_kwh": energy},
            {"id": "b", "type": "battery", "capacity_kwh": 5, "max_charge_kw": 2.5,
             "max_discharge_kw": 2.5}]}
    return {"name": "two", "horizon": {"slots": 24, "slot_minutes": 60},
            "feeder": {"price": {"profile": "tou", "offpeak": 0.1, "peak": 0.4},
                       "capacity_kw": capacity, "export_limit_kw": 5, "gamma": 0.02},
            "devices": [home(1, 18, 20), home(2, 19, 25)]}


def test_admm_matches_central_with_binding_capacity():
    s = parse(_two_ev_homes(capacity=6.0), "two.yaml")
    cen = solve_central(s)
    assert cen.x.sum(0).max() == pytest.approx(6.0, abs=1e-4)  # the import limit binds
    res = run_admm(s)
    assert res.converged
    cost = total_cost(s, res.x, res.private_costs)
    assert gap_rel(cost, cen.cost) <= 1e-3
    # the stopping rule holds the limits within viol_tol_kw on the devices' own schedule
    tol = s.admm.viol_tol_kw
    assert capacity_violation_kw(s, res.x) <= tol and export_violation_kw(s, res.x) <= tol
    assert res.history[-1]["import_excess_kw"] <= tol


def test_bench_admm_cli_last_line_is_json():
    out = subprocess.run([sys.executable, "-m", "lab.cli", "bench-admm", "homes3"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True)
    fig = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("scenario", "devices", "slots", "iterations", "converged", "cost_admm",
                "cost_central", "gap_rel", "capacity_violation_kw", "export_violation_kw",
                "r_final", "s_final",
                "local_solve_ms_p50", "wall_s_admm", "wall_s_central"):
        assert key in fig
    assert fig["scenario"] == "homes3" and fig["devices"] == 3 and fig["slots"] == 96
    assert fig["converged"] and fig["gap_rel"] <= 1e-3


def test_solve_cli_writes_results(tmp_path):
    out = tmp_path / "res"
    subprocess.run([sys.executable, "-m", "lab.cli", "solve", "homes3", "--out", str(out),
                    "--no-plots"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                   check=True)
    sched = json.loads((out / "schedule.json").read_text())
    assert set(sched["devices"]) == {"home01", "home02", "home03"}
    assert (out / "schedule.csv").exists() and (out / "history.csv").exists()
    comps = json.loads((out / "components.json").read_text())
    assert "bulb" in comps["admm"]["home01"]
    assert (out / "scenario.yaml").read_text().startswith("name: homes3")


@pytest.mark.slow
def test_admm_matches_central_on_homes10():
    s = load("homes10")
    res = run_admm(s)
    cen = solve_central(s)
    assert res.converged and res.rounds <= 100
    assert gap_rel(total_cost(s, res.x, res.private_costs), cen.cost) <= 1e-3


def test_admm_holds_both_binding_feeder_limits_on_homes3_congested():
    # a small generated scenario whose import and export limits both bind at the optimum
    s = load("homes3-congested")
    cen = solve_central(s)
    f = s.feeder_params()
    tot = cen.x.sum(0)
    assert np.sum(tot >= f.capacity - 1e-6) >= 8 and np.sum(tot <= -f.export_limit + 1e-6) >= 8
    res = run_admm(s)
    assert res.converged
    tol = s.admm.viol_tol_kw
    assert capacity_violation_kw(s, res.x) <= tol and export_violation_kw(s, res.x) <= tol
    assert gap_rel(total_cost(s, res.x, res.private_costs), cen.cost) <= 1e-3
