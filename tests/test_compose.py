"""The Docker Compose runtime.

Fast tests (in `make test`): the generated compose file of a run, and the top-level
docker-compose.yml. The `compose`-marked tests (`make test-compose`) run homes3 in containers
against a real engine (podman's Docker API on these machines, lab/images.py), compare with a
local run, check key isolation and published ports, and that `lab down` leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from chain import keys
from chain.geth import GethError
from chain.network import load_nodes, rpc
from lab import compose
from lab.compose import IN, Images, generate, prepare_chain, write_compose

REPO = Path(__file__).resolve().parents[1]
IMAGES = Images(geth="geth:test", device="device:test")
DEVICES = ["home01", "home02", "home03"]
DOCKER_COMPOSE = shutil.which("docker-compose")


def _make_run(tmp_path: Path, podman: bool = False) -> tuple[Path, dict]:
    run = tmp_path / "homes3-test"
    for sub in ("devices", "logs", "chain"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    accts = keys.ensure_devices(run, DEVICES)
    op = keys.ensure_operator(run)
    for d in DEVICES:
        (run / "devices" / f"{d}.yaml").write_text(json.dumps({"id": d}))
    groups = {f"node-{d}": [d] for d in DEVICES}
    chain = prepare_chain(run, groups, signers=1, period=0,
                          fund=[op.address, *(a.address for a in accts.values())],
                          subnet="10.213.7.0/24")
    path = write_compose(run, generate(run, chain, IMAGES, podman=podman))
    return path, yaml.safe_load(path.read_text())


@pytest.fixture
def compose_run(tmp_path: Path) -> tuple[Path, dict]:
    return _make_run(tmp_path)


def _mounts(service: dict) -> dict[str, str]:
    """container path -> host path of a service's bind mounts."""
    out = {}
    for v in service.get("volumes", []):
        src, dst = v.split(":")[:2]
        out[dst] = src
    return out


def test_one_device_service_per_device_with_only_its_own_key(compose_run) -> None:
    path, spec = compose_run
    run = path.parent
    services = spec["services"]
    assert set(services) == {"signer0", *(f"node-{d}" for d in DEVICES)}
    for d in DEVICES:
        mounts = _mounts(services[f"node-{d}"])
        key_mounts = {dst: src for dst, src in mounts.items() if "/keys/" in dst}
        assert key_mounts == {f"{IN}/keys/devices/{d}.key":
                              str(keys.device_path(run, d).resolve())}
        payloads = [dst for dst in mounts if dst.startswith(f"{IN}/devices/")]
        assert payloads == [f"{IN}/devices/{d}.yaml"]
        # the genesis and lab.json come through the shared folder, read-only
        assert f"{run.resolve() / 'compose' / 'shared'}:{IN}/shared:ro" in \
            services[f"node-{d}"]["volumes"]
        assert (run / "compose" / "shared" / "genesis.json").exists()
        # no run-folder root, no other device's file, no operator or signer key
        assert str(run.resolve()) not in mounts.values()
        assert not any(other in src for src in mounts.values()
                       for other in DEVICES if other != d and "/nodes/" not in src)
        assert not any("operator" in src or "signers" in src for src in mounts.values())
        cmd = services[f"node-{d}"]["command"]
        assert cmd[:6] == ["--run-dir", str(IN), "--node", f"node-{d}", "--device", d]
    signer_mounts = _mounts(services["signer0"])
    assert not any("devices" in dst or "operator" in dst for dst in signer_mounts)


def test_only_the_rpc_members_loopback_ports_are_published(compose_run) -> None:
    """The signer (unlocked account) serves no HTTP/WS and publishes nothing: its RPC is an
    IPC socket inside its container. The lab's RPC node, a member, publishes its HTTP/WS on
    loopback, with eth,net,web3,txpool only and Host/Origin checks."""
    path, spec = compose_run
    meta = json.loads((path.parent / "chain" / "network.json").read_text())
    assert meta["rpc_node"] == "node-home01"
    published = {name: s.get("ports", []) for name, s in spec["services"].items()}
    for name, ports in published.items():
        for p in ports:
            assert p.startswith("127.0.0.1:"), f"{name} publishes {p} beyond loopback"
    assert {n for n, p in published.items() if p} == {"node-home01"}
    rpc_node = {n["name"]: n for n in meta["nodes"]}["node-home01"]
    assert published["node-home01"] == [f"127.0.0.1:{rpc_node['http_port']}:"
                                        f"{rpc_node['http_port']}", f"127.0.0.1:"
                                        f"{rpc_node['ws_port']}:{rpc_node['ws_port']}"]
    signer = spec["services"]["signer0"]["entrypoint"][-1]
    for flag in ("--http", "--ws", "--allow-insecure-unlock", "--ipcdisable"):
        assert f" {flag} " not in signer, flag
    assert f"--ipcpath {compose.SIGNER_IPC} " in signer and "--unlock " in signer
    signer_meta = {n["name"]: n for n in meta["nodes"]}["signer0"]
    assert signer_meta["http_url"] is None and signer_meta["ws_url"] is None
    for d in DEVICES:
        argv = spec["services"][f"node-{d}"]["command"]
        assert argv[argv.index("--http.api") + 1] == "eth,net,web3,txpool"
        assert argv[argv.index("--http.vhosts") + 1] == "localhost,127.0.0.1"
        assert argv[argv.index("--ws.origins") + 1] == "localhost,127.0.0.1"
        assert "--unlock" not in argv


def test_chain_files_are_the_local_runtimes_with_container_addresses(compose_run) -> None:
    path, spec = compose_run
    run = path.parent
    meta = json.loads((run / "chain" / "network.json").read_text())
    assert meta["runtime"] == "compose" and meta["subnet"] == "10.213.7.0/24"
    nodes = {n["name"]: n for n in meta["nodes"]}
    enodes = {n["name"]: n["enode"] for n in nodes.values()}
    for n in nodes.values():
        assert n["enode"].endswith(f"@{n['host']}:{n['p2p_port']}")
        assert n["host"].startswith("10.213.7.")
        assert n["datadir"] == f"{IN}/chain/nodes/{n['name']}"
        svc = spec["services"][n["name"]]
        assert svc["networks"]["lab"]["ipv4_address"] == n["host"]
        toml = (run / "chain" / "nodes" / n["name"] / "config.toml").read_text()
        assert "127.0.0.1" not in toml
        if n["role"] == "member":
            # members dial the signer and their ring neighbours themselves (no admin API in
            # containers), and accept exactly their neighbours (chain/network.py)
            assert sorted(n["neighbours"]) == sorted(set(enodes) - {n["name"]})
            static = toml.split("StaticNodes = ")[1].split("\n")[0]
            assert all(enodes[m] in static for m in n["neighbours"])
            argv = svc["command"]
            assert argv[argv.index("--maxpeers") + 1] == str(len(n["neighbours"]))
    label = {compose.LABEL: str(run.resolve())}
    assert all(s["labels"] == label for s in spec["services"].values())
    assert spec["networks"]["lab"]["labels"] == label
    assert "&id" not in path.read_text()  # plain YAML, no anchors


def test_several_signers_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(compose.ComposeError, match="chain.signers: 3"):
        prepare_chain(tmp_path, {"node-a": ["a"]}, signers=3, period=1, fund=[],
                      subnet="10.213.8.0/24")


def test_subnet_choice_avoids_networks_in_use() -> None:
    first = compose.choose_subnet("ecl-x", [])
    assert compose.choose_subnet("ecl-x", []) == first
    second = compose.choose_subnet("ecl-x", [first, "10.88.0.0/16"])
    assert second != first


def test_runtime_registry_honours_the_request() -> None:
    from lab.orchestrator import Lab
    from lab.runtimes import RuntimeUnavailable, choose, registry

    assert set(registry()) == {"local", "compose"}
    assert choose("local") is Lab
    if compose.ComposeLab.unavailable() is None:
        assert choose("compose") is compose.ComposeLab
    else:  # refused with the reason and the way out
        with pytest.raises(RuntimeUnavailable, match="RUNTIME=local"):
            choose("compose")
    with pytest.raises(ValueError, match="RUNTIME='kubernetes': expected one of compose, local"):
        choose("kubernetes")
    assert choose(None) in (Lab, compose.ComposeLab)


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose missing")
@pytest.mark.parametrize("podman", [False, True])
def test_docker_compose_accepts_the_file(tmp_path: Path, podman: bool) -> None:
    path, _ = _make_run(tmp_path, podman=podman)
    p = subprocess.run([DOCKER_COMPOSE, "-p", compose.project_name(path.parent), "-f",
                        str(path), "config", "--quiet"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose missing")
def test_top_level_compose_file_builds_the_images_the_runtime_uses() -> None:
    from lab.images import compose_images

    p = subprocess.run([DOCKER_COMPOSE, "-f", str(REPO / "docker-compose.yml"), "config"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    services = yaml.safe_load(p.stdout)["services"]
    images = {s["image"] for s in services.values()}
    assert set(compose_images().values()) <= images
    for s in services.values():
        assert "ports" not in s
        assert (REPO / s["build"]["context"] / s["build"]["dockerfile"]).exists()


# -- the real thing ----------------------------------------------------------------------


def _engine_or_skip() -> None:
    from lab import images

    if shutil.which("podman") is None and not images.engine_answers():
        pytest.skip("no Docker engine and no podman")
    if compose.compose_cli() is None:
        pytest.skip("no compose CLI")


def _lab(*args: str, runs: Path, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env["LAB_RUNS"] = str(runs)
    return subprocess.Popen([sys.executable, "-m", "lab.cli", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _run_lab(*args: str, runs: Path, timeout: float = 900) -> tuple[dict, str]:
    p = _lab(*args, runs=runs)
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-4000:]
    return json.loads(out.strip().splitlines()[-1]), out


def _run_dir(runs: Path) -> Path:
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


def _our_processes(run: Path) -> list[str]:
    """Processes of a run's containers or podman service still alive (podman service by its
    socket, conmon/geth/python by the run folder or a container id of the run)."""
    marks = (str(run), str(compose.podman_sock_dir(run)), str(compose.podman_sock_dir(run, "down")))
    left = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(m in cmd for m in marks) and p.info["name"] in (
                "podman", "conmon", "geth", "python3", "docker-compose", "runc"):
            left.append(f"{p.pid} {cmd[:160]}")
    return left


def _leftovers(run: Path) -> dict[str, list[str]]:
    """Containers/networks/volumes labelled with the run, asked on a fresh podman service
    (or the default engine)."""
    from lab import images

    project = compose.ComposeProject(run)
    if images.engine_answers():
        return project.leftovers()
    with images.PodmanService(compose.podman_sock_dir(run, "check"),
                              log_dir=run / "compose") as svc:
        project.docker_host = svc.docker_host
        return project.leftovers()


def _schedule(run: Path) -> np.ndarray:
    data = json.loads((run / "results" / "schedule.json").read_text())
    return np.array([data["devices"][d] for d in sorted(data["devices"])])


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> tuple[dict, Path]:
    runs = tmp_path_factory.mktemp("local-runs")
    summary, _ = _run_lab("run", "homes3", "--runtime", "local", runs=runs)
    return summary, _run_dir(runs)


@pytest.mark.compose
def test_homes3_under_compose_matches_local(tmp_path: Path, local_run) -> None:
    """`lab run homes3 --runtime compose`: same summary fields and values as the local
    runtime (runtime aside), the same schedule, and nothing left behind."""
    _engine_or_skip()
    from lab import images

    images.build_offline() if not images.engine_answers() else None
    local, local_dir = local_run
    t0 = time.monotonic()
    summary, out = _run_lab("run", "homes3", "--runtime", "compose", runs=tmp_path / "runs")
    wall = time.monotonic() - t0
    run = _run_dir(tmp_path / "runs")
    assert summary["runtime"] == "compose" and local["runtime"] == "local"
    assert set(summary) == set(local)
    same = ("scenario", "nodes", "devices", "finalized", "converged", "rounds_inprocess")
    assert {k: summary[k] for k in same} == {k: local[k] for k in same}
    stragglers = sum(r["stragglers"] for d in (run, local_dir)
                     for r in json.loads((d / "results" / "history.json").read_text()))
    if stragglers == 0:  # the same trajectory, round for round
        assert summary["rounds"] == local["rounds"]
    else:  # a round the deadline closed without a stalled device (docs/faults.md, "The
        # stall") keeps its previous x_i: another trajectory to the same optimum
        print(f"\n{stragglers} straggler(s): rounds {summary['rounds']} vs {local['rounds']}")
    assert summary["gap_vs_inprocess"] <= 1e-3
    assert set(summary["mqtt"]) == set(local["mqtt"])
    for k in ("broker", "actuators", "actuators_following_plan", "problems", "commands"):
        assert summary["mqtt"][k] == local["mqtt"][k], k
    assert np.abs(_schedule(run) - _schedule(local_dir)).max() <= 1e-3
    assert json.loads((run / "results" / "schedule.json").read_text())["nodes_agreeing"] == 4
    # the device processes ran in the containers, from the same entry
    for d in ("home01", "home02", "home03"):
        assert "submitted" in (run / "logs" / f"devices-node-{d}.log").read_text()
    assert not _our_processes(run)
    assert not compose.podman_sock_dir(run).exists()
    assert _leftovers(run) == {"containers": [], "networks": [], "volumes": []}
    print(f"\nhomes3 compose: {summary['rounds']} rounds, lab run {wall:.1f} s "
          f"(local {local['wall_s_total']} s)")


@pytest.mark.compose
def test_compose_up_isolates_keys_publishes_loopback_only_and_down_cleans(
        tmp_path: Path) -> None:
    """`lab up --runtime compose` (stays up): each device container holds only its own key,
    only the RPC node's (a member) RPC is published and on loopback, the signer publishes
    nothing and answers over IPC in its container only; then `lab down` (no DOCKER_HOST)
    removes containers, network, podman service and conmon."""
    _engine_or_skip()
    import docker
    from lab import images

    # a first `make up`: the device image is missing and is built (from the layer cache)
    podman = images.Podman()
    podman.run("rmi", "--force", images.DEVICE_IMAGE, check=False)
    assert not podman.has_image(images.DEVICE_IMAGE)
    runs = tmp_path / "runs"
    up = _lab("up", "homes3", "--runtime", "compose", runs=runs, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not list(runs.glob("*/results/summary.json")):
            assert up.poll() is None, up.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "lab up did not finalize"
            time.sleep(1)
        run = _run_dir(runs)
        project = compose.ComposeProject(run, compose._run_podman_socket(run))
        client = docker.DockerClient(base_url=project.docker_host)
        try:
            containers = client.containers.list(
                filters={"label": f"{compose.LABEL}={run.resolve()}"})
            names = {c.labels["com.docker.compose.service"]: c for c in containers}
            assert set(names) == {"signer0", "node-home01", "node-home02", "node-home03"}
            for name, c in names.items():
                ports = c.attrs["HostConfig"].get("PortBindings") or {}
                bound = [b for binds in ports.values() for b in (binds or [])]
                if name == "node-home01":  # the lab's RPC node
                    assert bound and all(b["HostIp"] == "127.0.0.1" for b in bound), bound
                else:
                    assert not bound, f"{name} publishes {bound}"
        finally:
            client.close()
        # the signer answers over IPC inside its container, with every API; the published
        # member refuses admin, miner, clique and personal
        assert compose.signer_rpc(project, "signer0", "admin_peers")
        url = load_nodes(run)["node-home01"].http_url
        for method in ("admin_peers", "miner_start", "clique_getSigner", "personal_listAccounts"):
            with pytest.raises(GethError, match="does not exist|not available"):
                rpc(url, method)
        for d in ("home01", "home02", "home03"):
            # every key-like file under /lab: device keys, signer passwords and keystores,
            # the operator's key
            p = project.exec(f"node-{d}", "find", "/lab", "-type", "f", "(", "-name", "*.key",
                             "-o", "-name", "*.pass", "-o", "-name", "operator*", "-o",
                             "-path", "*keystore*", ")")
            assert p.returncode == 0, p.stderr
            assert sorted(p.stdout.split()) == [f"/lab/keys/devices/{d}.key"]
    finally:
        down = _lab("down", runs=runs)
        out, _ = down.communicate(timeout=180)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    assert down.returncode == 0, out
    assert up.returncode is not None
    said = up.stdout.read() if up.stdout else ""
    assert "missing; building them" in said and podman.has_image(images.DEVICE_IMAGE), said[-2000:]
    assert not _our_processes(run)
    assert _leftovers(run) == {"containers": [], "networks": [], "volumes": []}
