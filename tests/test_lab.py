"""The lab end to end on the local-process runtime: real geth nodes, real device processes,
the real contract, a real MQTT broker and emulated devices."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def lab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lab.cli", *args]


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "runs"
    monkeypatch.setenv("LAB_RUNS", str(root))
    return root


def _env() -> dict[str, str]:
    return dict(os.environ)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _lab_ports(run_dir: Path) -> list[int]:
    from chain.network import load_nodes

    ports = []
    for n in load_nodes(run_dir).values():
        ports += [n.p2p_port, n.http_port, n.ws_port, n.authrpc_port]
    url = run_dir / "broker" / "url"
    if url.exists():
        ports.append(int(url.read_text().strip().rsplit(":", 1)[1]))
    return ports


def _assert_nothing_left(run_dir: Path) -> None:
    """Every process the run recorded is gone and none of its ports listens."""
    for name, pid in json.loads((run_dir / "pids.json").read_text()).items():
        alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
        assert not alive, f"{name} (pid {pid}) still running"
    busy = [p for p in _lab_ports(run_dir) if _listening(p)]
    assert not busy, f"ports still listening: {busy}"


def _start_lab_up(runs: Path) -> tuple[subprocess.Popen, Path]:
    """`lab up homes3` in its own session; returns once its device processes are started."""
    up = subprocess.Popen(lab_cmd("up", "homes3", "--no-compare"), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
                          start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        active = runs / "ACTIVE"
        if active.exists():
            run_dir = Path(json.loads(active.read_text())["run"])
            pids = run_dir / "pids.json"
            if (run_dir / "lab.json").exists() and pids.exists() and any(
                    k.startswith("devices-") for k in json.loads(pids.read_text())):
                return up, run_dir
        if up.poll() is not None:
            raise AssertionError("lab up exited: " + up.stderr.read()[-3000:])
        time.sleep(0.5)
    up.kill()
    raise AssertionError("lab up did not start its devices in 180 s")


def test_homes3_end_to_end(runs):
    """`lab run homes3`: finalized on chain, equal to in-process ADMM, schedule readable
    from every node, every emulated actuator followed its plan, results written."""
    out = subprocess.run(lab_cmd("run", "homes3"), capture_output=True, text=True,
                         timeout=600, env=_env(), cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["finalized"] is True and summary["converged"] is True
    assert summary["devices"] == 3 and summary["nodes"] == 4  # 1 signer + 3 members
    assert summary["gap_vs_inprocess"] <= 1e-3
    assert summary["rounds"] <= 100
    mqtt = summary["mqtt"]
    assert mqtt["actuators"] >= 1
    assert mqtt["actuators_following_plan"] == mqtt["actuators"], mqtt["problems"]
    res = Path(summary["results"])
    for f in ("schedule.csv", "schedule.json", "history.csv", "history.json",
              "convergence.png", "aggregate.png", "devices.png", "summary.json"):
        assert (res / f).stat().st_size > 0, f
    sched = json.loads((res / "schedule.json").read_text())
    assert sched["nodes_agreeing"] == 4
    history = json.loads((res / "history.json").read_text())
    assert len(history) == summary["rounds"] and history[-1]["converged"]
    assert all(r["gas"] > 0 for r in history)
    run_dir = res.parent
    _assert_nothing_left(run_dir)
    # the broker wanted credentials, and the run's secrets are its own user's alone
    conf = (run_dir / "broker" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "acl_file" in conf
    for f in ("passwd", "acl", "bridge.url", "observer.url", "emulators.json"):
        assert (run_dir / "broker" / f).stat().st_mode & 0o777 == 0o600, f
    # the run replays from the chain alone (its chain is resumed from the run folder)
    ver = subprocess.run(lab_cmd("verify", str(run_dir)), capture_output=True, text=True,
                         timeout=300, env=_env(), cwd=REPO)
    assert ver.returncode == 0, ver.stdout + ver.stderr[-2000:]
    verdict = json.loads(ver.stdout.strip().splitlines()[-1])
    assert verdict["ok"] and verdict["rounds"] == summary["rounds"]
    assert verdict["max_dev_kw"] <= 1e-5
    _assert_nothing_left(run_dir)  # verify stopped what it resumed
    # every home metered and settled; the bills replay from chain events alone
    billing = summary["billing"]
    assert billing["ok"] and billing["homes_settled"] == 3, billing["problems"]
    assert billing["identity_exact"] and billing["linear_equal_exactly"]
    assert "home01" in billing["deviating_homes"]  # its PV produced 70 % of the forecast
    for f in (run_dir / "keys" / "meters").iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f
    assert (res / "bills.csv").read_text().count("\n") == 4  # header + 3 homes
    bill = subprocess.run(lab_cmd("bill", str(run_dir)), capture_output=True, text=True,
                          timeout=300, env=_env(), cwd=REPO)
    assert bill.returncode == 0, bill.stdout + bill.stderr[-2000:]
    again = json.loads(bill.stdout.strip().splitlines()[-1])
    assert again["ok"] and again["bills_usd"] == billing["bills_usd"]
    _assert_nothing_left(run_dir)


@contextlib.contextmanager
def _running_lab(scen):
    """A local-runtime Lab of `scen` with its chain, contract and device processes up;
    stopped on leaving."""
    from lab.orchestrator import Lab
    from lab.runfolder import RunFolder

    lab = Lab(scen, RunFolder.create(scen.name), out=sys.stderr)
    try:
        lab.prepare()
        lab.start_chain()
        lab.deploy()
        lab.start_devices()
        yield lab
    finally:
        lab.stop()


def test_device_process_killed_mid_run_still_finalizes(runs):
    """SIGKILL a device process after a few rounds: the supervisor restarts it, it resumes
    from chain state, and the run finalizes with the same schedule as in-process ADMM."""
    from lab.admm_inprocess import run_admm
    from lab.verify import verify_session
    from scenario import load

    scen = load("homes3")
    with _running_lab(scen) as lab:
        victim = next(iter(lab.supervisor.children.values()))
        lab.coordinator.wait_for_round(lab.session, 4, timeout=120)
        os.kill(victim.proc.pid, signal.SIGKILL)
        prog = lab.follow_rounds(timeout_s=300)
        x, meta = lab.read_schedule()
        verdict = verify_session(lab.coordinator, lab.session, from_block=lab.deploy_block)
    assert verdict.ok, verdict.problems
    assert victim.restarts >= 1
    assert meta["converged"]
    ref = run_admm(scen)
    assert np.abs(ref.x - x).max() <= 1e-3
    assert prog.rows[-1]["converged"]


def test_lab_end_stops_devices_and_orchestrator_cleanly(runs):
    """`lab end RUN` (the operator's end_session) mid-run: the orchestrator's rounds stop
    with `ended`, every device process exits 0 without publishing, later submissions get
    the typed refusal, and lab verify replays the ended session."""
    from aggregator_contract.client import Coordinator, SessionEnded
    from chain.keys import device_path, load_account
    from lab.verify import verify_session
    from scenario import load

    scen = load("homes3")
    # tolerances it cannot meet: the session would run to max_rounds, and `lab end` has
    # time to land however fast the rounds go
    scen = scen.model_copy(update={"admm": scen.admm.model_copy(
        update={"eps_abs": 1e-12, "eps_rel": 0.0, "max_rounds": 10_000})})
    with _running_lab(scen) as lab:
        lab.coordinator.wait_for_round(lab.session, 2, timeout=120)
        out = subprocess.run(lab_cmd("end", str(lab.run.path)), capture_output=True,
                             text=True, env=_env(), cwd=REPO, timeout=60)
        assert out.returncode == 0, out.stderr
        prog = lab.follow_rounds(timeout_s=60)
        deadline = time.monotonic() + 30
        children = list(lab.supervisor.children.values())
        while any(c.proc.poll() is None for c in children):
            assert time.monotonic() < deadline, "device processes did not stop"
            time.sleep(0.2)
        summary = lab.ended_summary(prog, time.monotonic())
        c = lab.coordinator
        dev = Coordinator(c.w3, c.address, load_account(device_path(lab.run.path,
                                                                    scen.devices[0].id)))
        with pytest.raises(SessionEnded):
            dev.submit(lab.session, prog.rows[-1]["round"] + 1, np.zeros(scen.horizon.slots))
        verdict = verify_session(c, lab.session, from_block=lab.deploy_block)
        published = [c.registry_schedule(lab.session, lab.accounts[d.id].address)
                     for d in scen.devices]
    assert prog.ended and summary["ended"] and not summary["converged"]
    assert all(ch.proc.returncode == 0 and ch.restarts == 0 for ch in children)
    assert published == [None] * len(scen.devices)  # an ended session is not published
    assert verdict.ok and verdict.ended, verdict.problems


def test_up_is_exclusive_and_sigint_leaves_nothing_behind(runs):
    """A second `lab up` while one runs fails clearly; SIGINT to `lab up` stops every
    process it started and frees every port."""
    up, run_dir = _start_lab_up(runs)
    try:
        second = subprocess.run(lab_cmd("up", "homes3"), capture_output=True, text=True,
                                timeout=120, env=_env(), cwd=REPO)
        assert second.returncode != 0
        assert "already running" in second.stderr and "make down" in second.stderr
        time.sleep(3)  # let a few rounds run
        pids = json.loads((run_dir / "pids.json").read_text())
        ports = _lab_ports(run_dir)
        assert len(pids) >= 5 and any(_listening(p) for p in ports)
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
    _assert_nothing_left(run_dir)
    assert not (runs / "ACTIVE").exists()


def test_infeasible_device_fails_before_the_chain_starts(runs, tmp_path):
    scen = yaml.safe_load((REPO / "configs" / "homes3.yaml").read_text())
    dev = scen["devices"][0]
    dev["components"].append({"id": "ev9", "type": "ev", "capacity_kwh": 60,
                              "max_rate_kw": 1.0, "arrive_slot": 80, "depart_slot": 84,
                              "energy_kwh": 30, "eta": 0.9})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(scen))
    out = subprocess.run(lab_cmd("run", str(path)), capture_output=True, text=True,
                         timeout=120, env=_env(), cwd=REPO)
    assert out.returncode != 0
    assert str(path) in out.stderr and dev["id"] in out.stderr, out.stderr
    assert not runs.exists() or not any(runs.glob("*/chain/network.json"))


def test_down_cleans_up_after_a_killed_orchestrator(runs):
    """SIGKILL the orchestrator of `lab up` (no clean-up runs): `lab down` still stops every
    process the lab started and frees its ports."""
    up, run_dir = _start_lab_up(runs)
    up.kill()
    up.wait(timeout=30)
    down = subprocess.run(lab_cmd("down"), capture_output=True, text=True, timeout=120,
                          env=_env(), cwd=REPO)
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    _assert_nothing_left(run_dir)
    assert not (runs / "ACTIVE").exists()


def test_scenario_too_large_refused_before_the_chain_starts(tmp_path):
    """homes3300's open_session cannot fit in one block: refused naming the limit, with no
    run folder and no process started."""
    import subprocess
    import sys

    env = {**os.environ, "LAB_RUNS": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "lab.cli", "run", "homes3300"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "open_session needs up to" in out.stderr
    assert "above the block gas limit 100,000,000" in out.stderr
    assert not any(tmp_path.iterdir()), "a run folder was created"


def test_python_m_lab_version_and_environment_in_help():
    out = subprocess.run([sys.executable, "-m", "lab", "--version"], capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0 and out.stdout.startswith("lab ")
    out = subprocess.run([sys.executable, "-m", "lab", "--help"], capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0
    for var in ("MQTT_URL", "LAB_RUNS", "RUNTIME", "DOCKER_HOST"):
        assert var in out.stdout
