"""The lab on Docker Compose: the same processes as the local runtime, in containers.

    RUN/docker-compose.yml   generated per run from the scenario (generate)
    RUN/compose/shared/      genesis.json, and lab.json once the session is open (read-only
                             in every container)
    /tmp/ecl-podman-<hash>-run/podman.sock
                             podman's Docker API, when the lab started one (no engine
                             answered; log in RUN/compose/podman-service.log)

The chain's files come from chain.network.Network.create, the local runtime's code, with the
nodes' addresses on the compose network (one private bridge network with fixed addresses, so
every enode is known before any container starts). Services:

    signer0..    geth image; its datadir and keystore password; no HTTP/WS at all (its
                 account is unlocked) and no published port: its only RPC is an IPC socket
                 inside its container (SIGNER_IPC), which the orchestrator reaches by
                 `compose exec ... geth attach` (signer_rpc) to start the chain
    node-<dev>   device image, `python -m lab.container_entry`: its geth node + the device
                 process (`python -m device_node`, the local runtime's entry); mounts its
                 datadir, its devices' payloads and keys and nothing else. HTTP/WS serve
                 eth,net,web3,txpool only; the first one is the lab's RPC node
                 (Network.rpc_node): its HTTP/WS alone are published, on 127.0.0.1 (the
                 orchestrator deploys and follows rounds through it, the bridge, the meters
                 and the live page read the day from it); the others publish nothing

The MQTT side (broker, emulators, bridge) stays local processes in both runtimes
(Lab.start_mqtt): the bridge reads the chain through the RPC node's published loopback RPC,
so its output is the same as in the local runtime.

Start order, as in chain/network.py: signers, one new block (a non-mining geth only syncs
from a peer ahead of it and discards propagated blocks until it has synced once), then the
device containers, whose members run with --maxpeers = their neighbour count and dial the
signers and their ring neighbours (static nodes; no admin API inside containers).

Inside every container the URLs of network.json (http://127.0.0.1:PORT) are the
container's own node, so device processes run unchanged. Each node keeps the distinct ports
the local runtime would give it, so a published port has the same number on the host.

Every container and network carries the label energy-chain-lab.run=<run folder>, and the
compose project name is derived from the run folder: `down` removes exactly this lab.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from chain import keys
from chain.geth import GethError, NodeSpec, init_command, node_command
from chain.network import MEMBER, SIGNER, Network, NodeInfo, advance_head, max_peers, rpc
from chain.processes import terminate

LABEL = "energy-chain-lab.run"
IN = Path("/lab")  # the run folder's path inside containers
SUBNET_POOL = ipaddress.ip_network("10.213.0.0/16")
FIRST_HOST = 10  # .1 is the gateway; leave room
# a signer's IPC socket, in its container's own /tmp (not a bind mount: unix sockets on a
# mounted folder do not work on every engine)
SIGNER_IPC = Path("/tmp/geth.ipc")


class ComposeError(RuntimeError):
    pass


# -- which runtime -----------------------------------------------------------------------


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
    subnet: str
    groups: dict[str, list[str]]  # member node -> device ids
    rpc_node: str  # the member whose HTTP/WS are published on the host (Network.rpc_node)

    def signers(self) -> list[str]:
        return [n for n, i in self.nodes.items() if i.role == SIGNER]

    def members(self) -> list[str]:
        return [n for n, i in self.nodes.items() if i.role == MEMBER]

    def ip(self, name: str) -> str:
        return self.nodes[name].host


def choose_subnet(project: str, used: list[str]) -> str:
    """A /24 of 10.213.0.0/16 picked from the project name, skipping the networks in use."""
    taken = [ipaddress.ip_network(u, strict=False) for u in used]
    start = int(hashlib.sha256(project.encode()).hexdigest(), 16) % 256
    for k in range(256):
        net = list(SUBNET_POOL.subnets(new_prefix=24))[(start + k) % 256]
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise ComposeError(f"no free /24 in {SUBNET_POOL} for the compose network")


def engine_is_podman(docker_host: str | None) -> bool:
    """True when the Docker API at docker_host is podman's."""
    try:
        import docker

        client = (docker.DockerClient(base_url=docker_host) if docker_host
                  else docker.from_env())
        with contextlib.closing(client):
            parts = client.version().get("Components") or []
            return any("podman" in str(c.get("Name", "")).lower() for c in parts)
    except Exception:  # noqa: BLE001 - not answering: not podman as far as we know
        return False


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
    """Keys, genesis, node keys, peer configs and chain/network.json for a compose network:
    chain.network.Network.create (the local runtime's code) with enodes on the network's
    fixed addresses, datadirs as seen inside the containers, and members dialing their ring
    neighbours themselves."""
    run_dir = Path(run_dir)
    if signers != 1:
        # several signers start sealing only once peered (miner_start over IPC,
        # chain/network.py); not done here
        raise ComposeError(f"chain.signers: {signers}: the compose runtime runs one signer; "
                           "use RUNTIME=local for several signers")
    names = [f"{SIGNER}{i}" for i in range(signers)] + list(groups)
    hosts = list(ipaddress.ip_network(subnet).hosts())
    if FIRST_HOST + len(names) >= len(hosts):
        raise ComposeError(f"{len(names)} nodes do not fit in {subnet}; group devices "
                           "(chain.nodes: per_group)")
    ips = {n: str(hosts[FIRST_HOST - 1 + k]) for k, n in enumerate(names)}
    net = Network.create(run_dir, list(groups), signers, period, fund, host=ips.__getitem__,
                         datadir_root=IN / "chain" / "nodes", dial_members=True,
                         extra={"runtime": "compose", "subnet": subnet},
                         rpc_node=next(iter(groups)))
    shared = run_dir / "compose" / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "chain" / "genesis.json", shared / "genesis.json")
    (shared / "genesis.json").chmod(0o644)
    return ComposeChain(net.nodes, subnet, dict(groups), net.rpc_node())


def geth_argv(info: NodeInfo, n_nodes: int) -> list[str]:
    """geth's command line inside a container (chain/geth.py, listening on all addresses of
    the container; only what compose publishes is reachable from the host). A signer serves
    no HTTP/WS, only its IPC socket SIGNER_IPC."""
    d = Path(info.datadir)
    pw = IN / "keys" / "signers" / f"{info.name}.pass" if info.role == SIGNER else None
    spec = NodeSpec(name=info.name, datadir=d, p2p_port=info.p2p_port,
                    http_port=info.http_port, ws_port=info.ws_port,
                    authrpc_port=info.authrpc_port, config=d / "config.toml",
                    signer=info.signer_address, password_file=pw,
                    maxpeers=max_peers(info, n_nodes), addr="0.0.0.0",
                    ipc_path=SIGNER_IPC if info.role == SIGNER else None)
    return node_command(Path("geth"), spec)


# -- the compose file --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Images:
    geth: str
    device: str


def _vol(src: Path, dst: Path, ro: bool = True) -> str:
    return f"{Path(src).resolve()}:{dst}" + (":ro" if ro else "")


def generate(run_dir: Path, chain: ComposeChain, images: Images,
             user: str | None = None, podman: bool = False) -> dict[str, Any]:
    """The compose file of a run as a dict (compose file format 3.8: accepted by
    docker-compose 1.29 and Compose v2). podman: the engine is podman's Docker API, which
    reports IPAM option driver=host-local; declared here, else docker-compose 1.29 refuses
    a second `up` ("network needs to be recreated")."""
    ipam: dict[str, Any] = {"config": [{"subnet": chain.subnet}]}
    if podman:
        ipam = {"driver": "default", "options": {"driver": "host-local"}, **ipam}
    run_dir = Path(run_dir).resolve()
    project = project_name(run_dir)
    user = user or f"{os.getuid()}:{os.getgid()}"
    labels = {LABEL: str(run_dir)}
    n_nodes = len(chain.nodes)
    shared = _vol(run_dir / "compose" / "shared", IN / "shared")
    netjson = _vol(run_dir / "chain" / "network.json", IN / "chain" / "network.json")
    logs = _vol(run_dir / "logs", IN / "logs", ro=False)
    services: dict[str, Any] = {}
    for name in chain.signers():
        info = chain.nodes[name]
        d = info.datadir
        init = shlex.join(init_command(Path("geth"), Path(d), IN / "shared" / "genesis.json"))
        script = (f"test -d {d}/geth/chaindata || {init} >>{IN}/logs/geth-{name}.log 2>&1 && exec "
                  + shlex.join(geth_argv(info, n_nodes)) + f" >>{IN}/logs/geth-{name}.log 2>&1")
        services[service_name(name)] = {
            "image": images.geth, "user": user, "labels": labels,
            "entrypoint": ["/bin/sh", "-c", script],
            "volumes": [shared, logs,
                        _vol(run_dir / "chain" / "nodes" / name, d, ro=False),
                        _vol(keys.password_path(keys.signer_path(run_dir, name)),
                             IN / "keys" / "signers" / f"{name}.pass")],
            "networks": {"lab": {"ipv4_address": chain.ip(name)}},
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
            "command": [*cmd, "--", *geth_argv(info, n_nodes)],
            "volumes": vols,
            # the lab's RPC node only, on host loopback (eth,net,web3,txpool)
            **({"ports": [f"127.0.0.1:{info.http_port}:{info.http_port}",
                          f"127.0.0.1:{info.ws_port}:{info.ws_port}"]}
               if name == chain.rpc_node else {}),
            "networks": {"lab": {"ipv4_address": chain.ip(name)}},
            "depends_on": [service_name(s) for s in chain.signers()],
            "stop_grace_period": "20s",
        }
    return {
        "version": "3.8",
        "services": services,
        "networks": {"lab": {
            "name": project, "driver": "bridge", "labels": labels,
            "ipam": ipam,
        }},
    }


class _NoAliases(yaml.SafeDumper):
    """Plain YAML: shared label dicts are written out in full, not as &anchors."""

    def ignore_aliases(self, data: Any) -> bool:  # noqa: ARG002
        return True


def write_compose(run_dir: Path, spec: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    path = run_dir / "docker-compose.yml"
    path.write_text(f"# generated by lab/compose.py for {run_dir.name}; "
                    "`make down` (lab down) removes what it starts\n"
                    + yaml.dump(spec, Dumper=_NoAliases, sort_keys=False, width=10_000))
    return path


# -- running it --------------------------------------------------------------------------


def podman_sock_dir(run_dir: Path, purpose: str = "run") -> Path:
    """A short folder for the podman socket of a run (unix socket paths are limited to 107
    bytes; run folders can be deeper): /tmp/ecl-podman-<hash of the run folder>-<purpose>."""
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"ecl-podman-{digest}-{purpose}"


def _run_podman_socket(run_dir: Path) -> str:
    return f"unix://{podman_sock_dir(run_dir) / 'podman.sock'}"


@dataclasses.dataclass
class ComposeProject:
    """docker-compose (or `docker compose`) on one run's file, against an engine: docker_host,
    else the run's own podman service when it answers, else $DOCKER_HOST / the default."""

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
        """Remove the run's containers and network (and podman's exec leftovers). Without
        docker_host (`lab down` after a crash), finds the engine: the run's podman socket,
        else the default engine, else a podman service started for this call and stopped
        after; the run's own podman service is stopped too."""
        from lab import images as img

        temp: img.PodmanService | None = None
        if self.docker_host is None:
            if img.engine_answers(_run_podman_socket(self.run_dir)):
                self.docker_host = _run_podman_socket(self.run_dir)
            elif not img.engine_answers() and shutil.which("podman"):
                temp = img.PodmanService(podman_sock_dir(self.run_dir, "down"),
                                         log_dir=Path(self.run_dir) / "compose")
                self.docker_host = temp.start()
        try:
            ids = self.container_ids()
            self.run("down", "--remove-orphans", "--timeout", "20",
                     *(["--volumes"] if volumes else []))
            reap_conmon(ids)
        finally:
            if temp is not None:
                temp.stop()
            stop_run_podman(self.run_dir)

    def container_ids(self) -> list[str]:
        p = self.run("ps", "-q", check=False)
        return [c for c in (p.stdout or "").split() if c]

    def exec(self, service: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run("exec", "-T", service, *argv, check=False, timeout=timeout)

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


def stop_run_podman(run_dir: Path) -> bool:
    """Stop the podman service a run started (pid in RUN/pids.json, checked to be podman
    serving this run's socket). True if one was stopped."""
    import psutil

    pids = Path(run_dir) / "pids.json"
    try:
        pid = json.loads(pids.read_text()).get("podman-service")
        proc = psutil.Process(pid)
        sock = podman_sock_dir(run_dir) / "podman.sock"
        mine = str(sock) in " ".join(proc.cmdline())
    except (OSError, ValueError, TypeError, psutil.Error):
        return False
    if not mine:
        return False
    terminate([proc], timeout=10)
    sock.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        sock.parent.rmdir()
    return True


def signer_rpc(project: ComposeProject, name: str, method: str, params: list | None = None,
               timeout: float = 30.0) -> Any:
    """One JSON-RPC call to a signer over its IPC socket inside its container (`geth attach
    --exec`: the geth image has no other client). OSError when the container or the socket
    does not answer yet, GethError for an RPC error."""
    payload = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                          "params": params or []})
    js = f"JSON.stringify(web3.currentProvider.send({payload}))"
    try:
        p = project.exec(service_name(name), "geth", "attach", "--exec", js,
                         str(SIGNER_IPC), timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise OSError(f"{name} {method}: no answer in {timeout:.0f} s") from e
    try:  # geth prints the string's JS literal: JSON of a JSON string
        out = json.loads(json.loads(p.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError, TypeError):
        raise OSError(f"{name} {method}: {(p.stdout + p.stderr).strip()[-300:]}") from None
    if "error" in out:
        raise GethError(f"{name} {method}: {out['error'].get('message')}")
    return out["result"]


def wait_signers(project: ComposeProject, chain: ComposeChain, peers: bool,
                 timeout: float = 120.0) -> None:
    """Until every signer answers on its IPC socket and, if peers, is peered with all its
    neighbours (every member dials the signers)."""
    deadline = time.monotonic() + timeout
    pending = ""
    while time.monotonic() < deadline:
        pending = ""
        for name in chain.signers():
            info = chain.nodes[name]
            try:
                have = int(signer_rpc(project, name, "net_peerCount", timeout=10), 16)
            except OSError as e:
                pending = f"{name}: no RPC on its IPC socket ({e})"
                break
            if peers and have < len(info.neighbours):
                pending = f"{name} has {have}/{len(info.neighbours)} peers"
                break
        if not pending:
            return
        time.sleep(0.2)
    raise ComposeError(f"compose chain not ready after {timeout:.0f} s: {pending}")


# -- the lab on compose ------------------------------------------------------------------


class _NameList(list):
    """Signer names, usable as `net.signers[0]` and as `net.signers()` (chain.network's API)."""

    def __call__(self) -> list[str]:
        return list(self)


class ComposeNetwork:
    """What the orchestrator needs of chain.network.Network, for nodes in containers. All
    nodes are listed (the summary counts them); only the RPC node is reachable from the host
    (published loopback ports), the others are asked inside their containers."""

    def __init__(self, chain: ComposeChain) -> None:
        self.chain = chain
        self.nodes = dict(chain.nodes)
        self.signers = _NameList(chain.signers())

    def rpc_node(self) -> str:
        return self.chain.rpc_node

    def _published(self, name: str) -> NodeInfo:
        if name != self.chain.rpc_node:
            raise ComposeError(f"node {name} runs in a container; its RPC is not published "
                               f"(only {self.chain.rpc_node}'s is)")
        return self.chain.nodes[name]

    def rpc_url(self, name: str) -> str:
        return self._published(name).http_url

    def ws_url(self, name: str) -> str:
        return self._published(name).ws_url

    def stop(self) -> None:  # containers are stopped by ComposeLab.stop
        pass


def _lab_base():
    from lab.orchestrator import Lab

    return Lab


class ComposeLab(_lab_base()):
    """lab.orchestrator.Lab with its chain and device processes in containers: replaces
    start_chain(), start_devices(), read_schedule()'s per-node check and stop(), and
    publishes the session to the containers after deploy(); deploy, rounds, results and
    MQTT are the local runtime's code."""

    runtime = "compose"
    preference = 0  # a Docker user's first command: compose whenever an engine answers

    @classmethod
    def unavailable(cls) -> str | None:
        from lab import images as img

        if compose_cli() is None:
            return ("no compose CLI (`docker compose` v2 or `docker-compose`) is installed; "
                    "install one, or use RUNTIME=local")
        if not img.engine_answers() and shutil.which("podman") is None:
            return ("no Docker engine answers (`docker info`) and podman is not installed; "
                    "start Docker, or use RUNTIME=local")
        return None

    @classmethod
    def by_default(cls) -> bool:
        """Only when a Docker engine answers: podman's API is started on request only."""
        from lab import images as img

        return compose_cli() is not None and img.engine_answers()

    @classmethod
    def clean_up(cls, run_dir: Path) -> None:
        if (Path(run_dir) / "docker-compose.yml").exists():
            ComposeProject(run_dir).down()
        stop_run_podman(run_dir)

    def __init__(self, scenario, run, out=None, images: Images | None = None,
                 docker_host: str | None = None) -> None:
        import sys

        super().__init__(scenario, run, out or sys.stderr)
        from lab import images as img

        self.images = images or Images(**img.compose_images())
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
        self.podman = img.PodmanService(podman_sock_dir(self.run.path),
                                        log_dir=self.run.path / "compose")
        self.docker_host = self.podman.start()
        self.run.record_pid("podman-service", self.podman.proc.pid)
        return self.docker_host

    def start_chain(self) -> None:
        s = self.scenario
        t = time.monotonic()
        host = self._engine()
        from lab import images as img

        # a Docker user's first `make up`: the images are built here when missing
        built = img.ensure_images(host, engine_is_podman(host), self.say)
        if built["built"]:
            self.say(f"compose: images built in {built['seconds']:.0f} s")
        self.say(f"compose: {s.chain.signers} signer(s), period {s.chain.period}, "
                 f"{len(self.groups)} device containers, engine {host or 'default'} ...")
        subnet = choose_subnet(project_name(self.run.path), used_subnets(host))
        self.chain = prepare_chain(self.run.path, self.groups, s.chain.signers, s.chain.period,
                                   self.funded(), subnet)
        write_compose(self.run.path, generate(self.run.path, self.chain, self.images,
                                              podman=engine_is_podman(host)))
        self.project = ComposeProject(self.run.path, host)
        signers = self.chain.signers()
        self.project.up(*map(service_name, signers))
        wait_signers(self.project, self.chain, peers=False)
        first = self.chain.nodes[signers[0]]
        # members start once the signer's head moved past theirs: they sync in the handshake
        advance_head(functools.partial(signer_rpc, self.project, first.name),
                     keys.signer_path(self.run.path, first.name),
                     s.chain.period, 60, f"{first.name} (log {first.log})")
        self.project.up()
        wait_signers(self.project, self.chain, peers=True)
        self.network = ComposeNetwork(self.chain)
        self.wait_members_at(int(self._signer_rpc("eth_blockNumber"), 16), 60)
        self._wait_published(60)
        self.timings["chain_start_s"] = time.monotonic() - t

    def _signer_rpc(self, method: str, params: list | None = None) -> Any:
        return signer_rpc(self.project, self.chain.signers()[0], method, params)

    def _wait_published(self, timeout: float) -> None:
        """Until the RPC node answers on its published loopback port."""
        url = self.chain.nodes[self.chain.rpc_node].http_url
        deadline = time.monotonic() + timeout
        while True:
            try:
                rpc(url, "eth_blockNumber", timeout=2)
                return
            except (OSError, GethError) as e:
                if time.monotonic() > deadline:
                    raise ComposeError(f"{self.chain.rpc_node}: no RPC on {url} after "
                                       f"{timeout:.0f} s ({e})") from None
                time.sleep(0.2)

    def deploy(self) -> None:
        super().deploy()
        self._publish_session()  # devices start while the MQTT side starts (a few s early)

    def start_devices(self) -> None:
        """The device containers run since start_chain; their entry starts the device
        process once lab.json is in shared/ (published at the end of deploy)."""
        self._publish_session()

    def _publish_session(self) -> None:
        """lab.json (contract, session, public addresses: no key) into shared/."""
        target = self.run.path / "compose" / "shared" / "lab.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.run.read_json("lab.json"), indent=2, sort_keys=True))
        tmp.chmod(0o644)
        tmp.replace(target)

    def member_hashes(self, block: int) -> dict[str, str]:
        """Each member node's hash of `block` (None: it does not have it), asked inside its
        container (members publish no port), in parallel."""
        from concurrent.futures import ThreadPoolExecutor

        def ask(name: str) -> str | None:
            url = self.chain.nodes[name].http_url
            code = ("import json; from chain.network import rpc; "
                    f"b = rpc('{url}', 'eth_getBlockByNumber', ['{hex(block)}', False]); "
                    "print(json.dumps(b and b['hash']))")
            p = self.project.exec(service_name(name), "python", "-c", code)
            if p.returncode != 0:
                return f"error: {(p.stderr or '')[-300:]}"
            return json.loads(p.stdout.strip().splitlines()[-1])

        members = self.chain.members()
        with ThreadPoolExecutor(max_workers=min(8, len(members) or 1)) as pool:
            return dict(zip(members, pool.map(ask, members), strict=True))

    def wait_members_at(self, block: int, timeout: float) -> None:
        """Until every member node has the signer's `block` (same hash)."""
        want = self._signer_rpc("eth_getBlockByNumber", [hex(block), False])["hash"]
        deadline = time.monotonic() + timeout
        while True:
            differs = {n: h for n, h in self.member_hashes(block).items() if h != want}
            if not differs:
                return
            if time.monotonic() > deadline:
                raise ComposeError(f"member nodes do not have block {block} ({want}) after "
                                   f"{timeout:.0f} s: {differs}")
            time.sleep(0.5)

    def _schedule_readers(self) -> dict[str, str]:
        """Only the RPC node's RPC is published on the host; the other nodes are checked by
        block hash (_confirm_elsewhere)."""
        return {self.chain.rpc_node: self.network.rpc_url(self.chain.rpc_node)}

    def _confirm_elsewhere(self, final_block: int) -> int:
        """Every member holds the signer's finalization block (same hash, same state): the
        nodes but the RPC node, read directly."""
        self.wait_members_at(final_block, 30)
        return len(self.chain.nodes) - 1

    def stop(self) -> None:
        try:
            if self.project is not None:
                with contextlib.suppress(Exception):
                    self.project.save_logs()
                self.project.down()
        finally:
            if self.podman is not None:
                self.podman.stop()
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
    terminate(procs, timeout=5)
    return len(procs)
