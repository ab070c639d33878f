"""The lab on Docker Compose: the same processes as the local runtime, in containers.

    RUN/docker-compose.yml   generated per run from the scenario (generate_compose)
    RUN/compose/shared/      genesis.json, and lab.json once the session is open (read-only
                             in every container)
    RUN/compose/mosquitto.conf

Services (one private bridge network with fixed addresses, so every enode is known before
any container starts and geth never resolves a name that does not exist yet):

    signer0..    geth image; its datadir, its keystore password; RPC/WS published on
                 127.0.0.1 only (the orchestrator deploys and follows rounds through it)
    node-<dev>   device image, `python -m lab.container_entry`: its geth node + the device
                 process (`python -m device_node`, the local runtime's entry); mounts its
                 datadir, its devices' payloads and keys and nothing else; no published port
    broker       mosquitto, published on 127.0.0.1 only
    bridge       (when given a command) the MQTT bridge, in signer0's network namespace so
                 the 127.0.0.1 URLs of network.json reach signer0

Inside every container the URLs of network.json (http://127.0.0.1:PORT) are the
container's own node, so device processes run unchanged. Each node keeps the distinct ports
the local runtime would give it, so a published port has the same number on the host.

Every container and network carries the label energy-chain-lab.run=<run folder>, and the
compose project name is derived from the run folder: `down` removes exactly this lab.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from eth_keys import keys as eth_keys
from eth_utils import to_checksum_address

from chain import genesis as gen
from chain import keys
from chain.geth import NodeSpec, node_command, static_nodes_toml
from chain.network import MEMBER, SIGNER, NodeInfo, _free_ports, _link, rpc

LABEL = "energy-chain-lab.run"
IN = Path("/lab")  # the run folder's path inside containers
SUBNET_POOL = ipaddress.ip_network("10.213.0.0/16")
FIRST_HOST = 10  # .1 is the gateway; leave room


class ComposeError(RuntimeError):
    pass


# -- which runtime -----------------------------------------------------------------------


def detect_runtime(requested: str | None) -> str:
    """"local" or "compose". requested (RUNTIME=, --runtime) wins; otherwise compose when a
    Docker engine answers (`docker info`) and a compose CLI is installed, else local."""
    from lab.images import engine_answers

    if requested:
        if requested not in ("local", "compose"):
            raise ValueError(f"RUNTIME={requested!r}: expected local or compose")
        return requested
    return "compose" if engine_answers() and compose_cli() else "local"


def compose_cli() -> list[str] | None:
    """`docker compose` (v2) when the plugin answers, else `docker-compose` (1.29), else None."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def project_name(run_dir: Path) -> str:
    """Compose project name of a run: lowercase letters, digits, '-' and '_' only."""
    return "ecl-" + re.sub(r"[^a-z0-9_-]", "-", Path(run_dir).name.lower())


def service_name(node: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", node)


# -- the chain's files, addressed for a compose network -----------------------------------


@dataclasses.dataclass
class ComposeChain:
    """The nodes of a run with their addresses on the compose network."""

    nodes: dict[str, NodeInfo]
    ips: dict[str, str]
    subnet: str
    groups: dict[str, list[str]]  # member node -> device ids

    def signers(self) -> list[str]:
        return [n for n, i in self.nodes.items() if i.role == SIGNER]

    def members(self) -> list[str]:
        return [n for n, i in self.nodes.items() if i.role == MEMBER]


def choose_subnet(project: str, used: list[str]) -> str:
    """A /24 of 10.213.0.0/16 picked from the project name, skipping the networks in use."""
    taken = [ipaddress.ip_network(u, strict=False) for u in used]
    start = int(hashlib.sha256(project.encode()).hexdigest(), 16) % 256
    for k in range(256):
        net = list(SUBNET_POOL.subnets(new_prefix=24))[(start + k) % 256]
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise ComposeError(f"no free /24 in {SUBNET_POOL} for the compose network")


def used_subnets(docker_host: str | None) -> list[str]:
    """Subnets of the engine's networks (to avoid), or [] when they cannot be listed."""
    try:
        import docker

        client = (docker.DockerClient(base_url=docker_host) if docker_host
                  else docker.from_env())
        with contextlib.closing(client):
            out = []
            for net in client.networks.list():
                for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
                    if cfg.get("Subnet"):
                        out.append(cfg["Subnet"])
            return out
    except Exception:  # noqa: BLE001 - best effort: the engine reports a real clash itself
        return []


def prepare_chain(run_dir: Path, groups: dict[str, list[str]], signers: int, period: int,
                  fund: list[str], subnet: str) -> ComposeChain:
    """Keys, genesis, node keys, static-peer configs and chain/network.json for a compose
    network: the local runtime's layout (chain/network.py), with enodes on the network's
    fixed addresses and datadirs as seen inside the containers."""
    run_dir = Path(run_dir)
    gen.validate_signers(signers, period)
    signer_names = [f"{SIGNER}{i}" for i in range(signers)]
    member_names = list(groups)
    names = signer_names + member_names
    hosts = list(ipaddress.ip_network(subnet).hosts())
    if FIRST_HOST + len(names) >= len(hosts):
        raise ComposeError(f"{len(names)} nodes do not fit in {subnet}; group devices "
                           "(chain.nodes: per_group)")
    ips = {n: str(hosts[FIRST_HOST - 1 + k]) for k, n in enumerate(names)}
    accts = {n: keys.ensure_signer(run_dir, n) for n in signer_names}
    genesis = gen.make_genesis([a.address for a in accts.values()],
                               [to_checksum_address(a) for a in fund], period)
    shared = run_dir / "compose" / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    gen.write_genesis(run_dir / "chain" / "genesis.json", genesis)
    gen.write_genesis(shared / "genesis.json", genesis)
    ports = iter(_free_ports(4 * len(names)))
    nodes: dict[str, NodeInfo] = {}
    for name in names:
        datadir = run_dir / "chain" / "nodes" / name
        (datadir / "geth").mkdir(parents=True, exist_ok=True)
        key = eth_keys.PrivateKey(secrets.token_bytes(32))
        (datadir / "geth" / "nodekey").write_text(key.to_bytes().hex())
        p2p, http, ws, auth = (next(ports) for _ in range(4))
        acct = accts.get(name)
        nodes[name] = NodeInfo(
            name=name, role=SIGNER if acct else MEMBER,
            datadir=str(IN / "chain" / "nodes" / name),
            p2p_port=p2p, http_port=http, ws_port=ws, authrpc_port=auth,
            enode=f"enode://{key.public_key.to_hex()[2:]}@{ips[name]}:{p2p}",
            signer_address=acct.address if acct else None,
            log=str(run_dir / "logs" / f"geth-{name}.log"))
        if acct:
            (datadir / "keystore").mkdir(exist_ok=True)
            (datadir / "keystore" / f"{name}.json").write_text(
                keys.signer_path(run_dir, name).read_text())
    _link(nodes, signer_names, member_names)
    for n in nodes.values():
        neigh = [nodes[m].enode for m in n.neighbours]
        (run_dir / "chain" / "nodes" / n.name / "config.toml").write_text(
            static_nodes_toml(neigh, neigh))
    data = {"chain_id": gen.CHAIN_ID, "period": period, "runtime": "compose",
            "subnet": subnet, "nodes": []}
    for n in nodes.values():
        data["nodes"].append({**dataclasses.asdict(n), "http_url": n.http_url,
                              "ws_url": n.ws_url, "ip": ips[n.name]})
    (run_dir / "chain" / "network.json").write_text(json.dumps(data, indent=2) + "\n")
    return ComposeChain(nodes, ips, subnet, dict(groups))


def geth_argv(info: NodeInfo, maxpeers: int) -> list[str]:
    """geth's command line inside a container (chain/geth.py, listening on all addresses of
    the container; only what compose publishes is reachable from the host)."""
    d = Path(info.datadir)
    pw = IN / "keys" / "signers" / f"{info.name}.pass" if info.role == SIGNER else None
    spec = NodeSpec(name=info.name, datadir=d, p2p_port=info.p2p_port,
                    http_port=info.http_port, ws_port=info.ws_port,
                    authrpc_port=info.authrpc_port, config=d / "config.toml",
                    signer=info.signer_address, password_file=pw, maxpeers=maxpeers,
                    addr="0.0.0.0")
    return node_command(Path("geth"), spec)


# -- the compose file --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Images:
    geth: str
    device: str
    project: str
    mosquitto: str


def _vol(src: Path, dst: Path, ro: bool = True) -> str:
    return f"{Path(src).resolve()}:{dst}" + (":ro" if ro else "")


def generate(run_dir: Path, chain: ComposeChain, images: Images, broker_port: int,
             bridge_argv: list[str] | None = None, user: str | None = None) -> dict[str, Any]:
    """The compose file of a run as a dict (compose file format 3.8: accepted by
    docker-compose 1.29 and Compose v2)."""
    run_dir = Path(run_dir).resolve()
    project = project_name(run_dir)
    user = user or f"{os.getuid()}:{os.getgid()}"
    labels = {LABEL: str(run_dir)}
    maxpeers = max(50, 3 * len(chain.nodes))
    shared = _vol(run_dir / "compose" / "shared", IN / "shared")
    netjson = _vol(run_dir / "chain" / "network.json", IN / "chain" / "network.json")
    logs = _vol(run_dir / "logs", IN / "logs", ro=False)
    services: dict[str, Any] = {}
    for name in chain.signers():
        info = chain.nodes[name]
        argv = geth_argv(info, maxpeers)
        d = info.datadir
        script = (f"test -d {d}/geth/chaindata || geth init --datadir {d} --state.scheme hash "
                  f"{IN}/shared/genesis.json >>{IN}/logs/geth-{name}.log 2>&1 && exec "
                  + shlex.join(argv) + f" >>{IN}/logs/geth-{name}.log 2>&1")
        services[service_name(name)] = {
            "image": images.geth, "user": user, "labels": labels,
            "entrypoint": ["/bin/sh", "-c", script],
            "volumes": [shared, logs,
                        _vol(run_dir / "chain" / "nodes" / name, d, ro=False),
                        _vol(keys.password_path(keys.signer_path(run_dir, name)),
                             IN / "keys" / "signers" / f"{name}.pass")],
            "ports": [f"127.0.0.1:{info.http_port}:{info.http_port}",
                      f"127.0.0.1:{info.ws_port}:{info.ws_port}"],
            "networks": {"lab": {"ipv4_address": chain.ips[name]}},
            "stop_grace_period": "20s",
        }
    for name in chain.members():
        info = chain.nodes[name]
        devs = chain.groups[name]
        vols = [shared, netjson, logs,
                _vol(run_dir / "chain" / "nodes" / name, info.datadir, ro=False)]
        for d in devs:
            vols.append(_vol(run_dir / "devices" / f"{d}.yaml", IN / "devices" / f"{d}.yaml"))
            vols.append(_vol(keys.device_path(run_dir, d),
                             IN / "keys" / "devices" / f"{d}.key"))
        cmd = ["--run-dir", str(IN), "--node", name]
        for d in devs:
            cmd += ["--device", d]
        services[service_name(name)] = {
            "image": images.device, "user": user, "labels": labels,
            "command": [*cmd, "--", *geth_argv(info, maxpeers)],
            "volumes": vols,
            "networks": {"lab": {"ipv4_address": chain.ips[name]}},
            "depends_on": [service_name(s) for s in chain.signers()],
            "stop_grace_period": "20s",
        }
    services["broker"] = {
        "image": images.mosquitto, "labels": labels,
        "command": ["mosquitto", "-c", "/etc/lab-mosquitto.conf"],
        "volumes": [_vol(run_dir / "compose" / "mosquitto.conf", "/etc/lab-mosquitto.conf")],
        "ports": [f"127.0.0.1:{broker_port}:1883"],
        "networks": ["lab"],
    }
    if bridge_argv:
        first = service_name(chain.signers()[0])
        services["bridge"] = {
            "image": images.project, "user": user, "labels": labels,
            "command": bridge_argv,
            "volumes": [shared, netjson, logs],
            # signer0's network namespace: network.json's 127.0.0.1 URLs reach signer0
            "network_mode": f"service:{first}",
            "depends_on": [first, "broker"],
        }
    return {
        "version": "3.8",
        "services": services,
        "networks": {"lab": {
            "name": project, "driver": "bridge", "labels": labels,
            "ipam": {"config": [{"subnet": chain.subnet}]},
        }},
    }


class _NoAliases(yaml.SafeDumper):
    """Plain YAML: shared label dicts are written out in full, not as &anchors."""

    def ignore_aliases(self, data: Any) -> bool:  # noqa: ARG002
        return True


def write_compose(run_dir: Path, spec: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    (run_dir / "compose").mkdir(parents=True, exist_ok=True)
    conf = run_dir / "compose" / "mosquitto.conf"
    conf.write_text("listener 1883 0.0.0.0\nallow_anonymous true\npersistence false\n")
    conf.chmod(0o644)
    path = run_dir / "docker-compose.yml"
    path.write_text(f"# generated by lab/compose.py for {run_dir.name}; "
                    "`lab down` removes what it starts\n"
                    + yaml.dump(spec, Dumper=_NoAliases, sort_keys=False, width=10_000))
    return path


# -- running it --------------------------------------------------------------------------


@dataclasses.dataclass
class ComposeProject:
    """docker-compose (or `docker compose`) on one run's file, against DOCKER_HOST."""

    run_dir: Path
    docker_host: str | None = None

    def _argv(self, *args: str) -> list[str]:
        cli = compose_cli()
        if cli is None:
            raise ComposeError("no compose CLI: install Docker Compose v2 or docker-compose "
                               "(apt-get install docker-compose)")
        return [*cli, "-p", project_name(self.run_dir), "-f",
                str(Path(self.run_dir).resolve() / "docker-compose.yml"), *args]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.docker_host:
            env["DOCKER_HOST"] = self.docker_host
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 600,
            capture: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(self._argv(*args), env=self.env(), text=True,
                           capture_output=capture, timeout=timeout)
        if check and p.returncode != 0:
            raise ComposeError(f"compose {' '.join(args)} failed ({p.returncode}) for "
                               f"{self.run_dir / 'docker-compose.yml'}:\n"
                               f"{(p.stderr or '')[-3000:]}")
        return p

    def up(self, *services: str) -> None:
        self.run("up", "-d", "--no-build", *services)

    def down(self, volumes: bool = True) -> None:
        self.run("down", "--remove-orphans", "--timeout", "20",
                 *(["--volumes"] if volumes else []))

    def container_ids(self) -> list[str]:
        p = self.run("ps", "-q", check=False)
        return [c for c in (p.stdout or "").split() if c]

    def save_logs(self) -> None:
        p = self.run("logs", "--no-color", check=False)
        (Path(self.run_dir) / "logs").mkdir(exist_ok=True)
        (Path(self.run_dir) / "logs" / "compose.log").write_text(
            (p.stdout or "") + (p.stderr or ""))

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes still carrying this run's label."""
        import docker

        client = (docker.DockerClient(base_url=self.docker_host) if self.docker_host
                  else docker.from_env())
        flt = {"label": f"{LABEL}={Path(self.run_dir).resolve()}"}
        with contextlib.closing(client):
            return {
                "containers": [c.name for c in client.containers.list(all=True, filters=flt)],
                "networks": [n.name for n in client.networks.list(filters=flt)],
                "volumes": [v.name for v in client.volumes.list(filters=flt)],
            }


def wait_chain(chain: ComposeChain, timeout: float = 120.0) -> None:
    """Until every signer answers on its published RPC port and is peered with all its
    neighbours (members are not reachable from the host; their own entry waits for them)."""
    deadline = time.monotonic() + timeout
    pending = ""
    while time.monotonic() < deadline:
        pending = ""
        for name in chain.signers():
            info = chain.nodes[name]
            try:
                peers = int(rpc(info.http_url, "net_peerCount", timeout=2), 16)
            except OSError as e:
                pending = f"{name}: no RPC on {info.http_url} ({e})"
                break
            if peers < len(info.neighbours):
                pending = f"{name} has {peers}/{len(info.neighbours)} peers"
                break
        if not pending:
            return
        time.sleep(0.3)
    raise ComposeError(f"compose chain not ready after {timeout:.0f} s: {pending}")


# -- the lab on compose ------------------------------------------------------------------


class _NameList(list):
    """Signer names, usable as `net.signers[0]` and as `net.signers()` (chain.network's API)."""

    def __call__(self) -> list[str]:
        return list(self)


class ComposeNetwork:
    """What the orchestrator needs of chain.network.Network, for nodes in containers: the
    nodes reachable from the host (the signers, on their published loopback ports)."""

    def __init__(self, chain: ComposeChain) -> None:
        self.chain = chain
        self.nodes = {n: chain.nodes[n] for n in chain.signers()}
        self.signers = _NameList(chain.signers())

    def http_url(self, name: str) -> str:
        return self.chain.nodes[name].http_url

    def ws_url(self, name: str) -> str:
        return self.chain.nodes[name].ws_url

    def stop(self) -> None:  # containers are stopped by ComposeLab.stop
        pass


def _lab_base():
    from lab.orchestrator import Lab

    return Lab


class ComposeLab(_lab_base()):
    """lab.orchestrator.Lab with its processes in containers: replaces start_chain(),
    start_devices(), read_schedule()'s per-node check and stop(); deploy, rounds and results
    are the local runtime's code."""

    runtime = "compose"

    def __init__(self, scenario, run, out=None, images: Images | None = None,
                 docker_host: str | None = None, keep_podman: bool = False) -> None:
        import sys

        super().__init__(scenario, run, out or sys.stderr)
        from lab import images as img

        self.images = images or Images(**img.offline_images())
        self.docker_host = docker_host
        self.podman: img.PodmanService | None = None
        self.project: ComposeProject | None = None
        self.chain: ComposeChain | None = None

    def _engine(self) -> str | None:
        """DOCKER_HOST of an answering engine; starts podman's Docker API for this run when
        none answers and podman is installed (this workplace's machines)."""
        from lab import images as img

        if self.docker_host or img.engine_answers():
            return self.docker_host
        if shutil.which("podman") is None:
            raise ComposeError("no Docker engine answers (`docker info`) and podman is not "
                               "installed; use RUNTIME=local")
        self.podman = img.PodmanService(self.run.path / "compose")
        self.docker_host = self.podman.start()
        self.run.record_pid("podman-service", self.podman.proc.pid)
        return self.docker_host

    def start_chain(self) -> None:
        from mqtt_bridge.broker import free_port

        s = self.scenario
        t = time.monotonic()
        host = self._engine()
        self.say(f"compose: {s.chain.signers} signer(s), period {s.chain.period}, "
                 f"{len(self.groups)} device containers, engine {host or 'default'} ...")
        project = project_name(self.run.path)
        subnet = choose_subnet(project, used_subnets(host))
        fund = [self.operator.address, *(a.address for a in self.accounts.values())]
        self.chain = prepare_chain(self.run.path, self.groups, s.chain.signers, s.chain.period,
                                   fund, subnet)
        self.broker_port = free_port()
        write_compose(self.run.path, generate(self.run.path, self.chain, self.images,
                                              self.broker_port))
        self.project = ComposeProject(self.run.path, host)
        t_up = time.monotonic()
        self.project.up()
        self.timings["compose_up_s"] = time.monotonic() - t_up
        wait_chain(self.chain)
        self.network = ComposeNetwork(self.chain)
        self.timings["chain_start_s"] = time.monotonic() - t

    def start_devices(self) -> None:
        """The device containers run since start_chain; their entry starts the device
        process once lab.json is in shared/ (it holds no key, only public facts)."""
        lab = self.run.read_json("lab.json")
        lab["runtime"] = "compose"
        self.run.write_json("lab.json", lab)
        target = self.run.path / "compose" / "shared" / "lab.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(lab, indent=2, sort_keys=True))
        tmp.chmod(0o644)
        tmp.replace(target)

    def member_heads(self, block: int) -> dict[str, str]:
        """Each member node's hash of `block`, asked inside its container."""
        out = {}
        for name in self.chain.members():
            url = self.chain.nodes[name].http_url
            code = ("from chain.network import rpc; "
                    f"print(rpc('{url}', 'eth_getBlockByNumber', ['{hex(block)}', False])"
                    "['hash'])")
            p = self.project.run("exec", "-T", service_name(name), "python", "-c", code,
                                 check=False, timeout=60)
            out[name] = p.stdout.strip() if p.returncode == 0 else f"error: {p.stderr[-200:]}"
        return out

    def read_schedule(self):
        x, meta = super().read_schedule()
        block = int(meta["block"])
        want = rpc(self.chain.nodes[self.chain.signers()[0]].http_url, "eth_getBlockByNumber",
                   [hex(block), False])["hash"]
        deadline = time.monotonic() + 30
        while True:
            heads = self.member_heads(block)
            differs = {n: h for n, h in heads.items() if h != want}
            if not differs:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"member nodes {sorted(differs)} do not have the "
                                   f"finalization block {block} ({want})")
            time.sleep(1)
        meta["nodes_agreeing"] = len(self.chain.nodes)
        return x, meta

    def stop(self) -> None:
        ids: list[str] = []
        try:
            if self.project is not None:
                with contextlib.suppress(Exception):
                    ids = self.project.container_ids()
                    self.project.save_logs()
                self.project.down()
        finally:
            if self.podman is not None:
                self.podman.stop()
                reap_conmon(ids)
            super().stop()


def reap_conmon(container_ids: list[str]) -> int:
    """podman 4.3 leaves a conmon per `exec` session after its container is removed; stop
    those of our containers (matched by container id on their command line), by pid."""
    import psutil

    if not container_ids:
        return 0
    procs = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if p.info["name"] == "conmon" and "-c" in cmd:
            cid = cmd[cmd.index("-c") + 1] if cmd.index("-c") + 1 < len(cmd) else ""
            if any(cid.startswith(i) or i.startswith(cid) for i in container_ids if cid):
                procs.append(p)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    psutil.wait_procs(procs, timeout=5)
    return len(procs)
