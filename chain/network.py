"""A Clique network of geth processes on loopback, kept in a run folder.

Layout under the run folder:

    keys/...                     see chain/keys.py
    chain/genesis.json
    chain/network.json           node metadata (ports, enode, role, pid, URLs): read by
                                 device nodes, the MQTT bridge, `lab down`, a restarted lab
    chain/nodes/<name>/          datadir (geth/nodekey, keystore/ for signers, config.toml)
    logs/geth-<name>.log         geth's output (appended across restarts)

Topology: signers form a full mesh; every member peers with every signer (a tx sent to a
member reaches a signer in one hop, a block reaches every member in one hop) and with its
two ring neighbours among the members (so blocks are relayed whole; see _link). Node keys are
generated here, so enodes are known before any node starts and go into each node's
--config TOML: all neighbours as TrustedNodes (no peer limit refuses them), the signers as
StaticNodes (dialed). Signers are told to dial members by admin_addPeer (over IPC) once the
members run, because geth retries a failed dial only after 35 s. A restarted member dials a
signer itself at once; the other signers come back within those 35 s.

Block propagation (measured, 1 signer + 10 members, period 0): geth sends a new block in
full to sqrt(peers) of the signer's peers and only announces it to the others, which fetch
it after geth's fixed 500 ms announce delay (~0.65 s in all). The member ring fixes that
tail: a member that got the block whole relays it whole to its ring neighbours at once.

Why members start after the signers have a new block (geth 1.13 legacy sync): a non-mining
node discards propagated blocks ("Syncing, discarded propagated block") until it has
completed one downloader sync, and it only syncs from a peer whose total difficulty is
strictly higher than its own, once it has min(5, --maxpeers) peers (or after a 10 s timer).
So members run with --maxpeers equal to their neighbour count (all trusted; with DialRatio 1
they may dial them all), so that having all neighbours is enough to sync, and every member
is started only after the signers' head moved past it: a fresh or resumed network first
gets one new block (with period 0, from a zero-value self-transfer by the signer), so each
member syncs in its handshake and then follows propagated blocks. Signers do not need this
(a mining node counts as synced), but a restarted signer that is behind may need geth's 10 s timer.

    with Network.start(run_dir, members=3, signers=1, period=0, fund=[addr, ...]) as net:
        w3 = net.w3("member0"); net.ws_url("member1")

Network.create() writes a network's files only (no process): Network.start() uses it, and so
does the Compose runtime (lab/compose.py) with the nodes' container addresses.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import psutil
from eth_keys import keys as eth_keys
from eth_utils import to_checksum_address

from chain import genesis as gen
from chain import keys
from chain.geth import (
    GethError,
    NodeSpec,
    check_geth,
    init_command,
    node_command,
    static_nodes_toml,
)
from chain.processes import terminate

SIGNER = "signer"
MEMBER = "member"


@dataclass
class NodeInfo:
    """One node as persisted in chain/network.json."""

    name: str
    role: str  # "signer" | "member"
    datadir: str
    p2p_port: int
    http_port: int
    ws_port: int
    authrpc_port: int
    enode: str
    signer_address: str | None = None
    pid: int | None = None
    log: str = ""
    neighbours: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"  # the address other nodes dial (the enode's host)
    ipc: str = ""  # the node's IPC socket on this machine (local runtime); "" in containers

    @property
    def http_url(self) -> str:
        """HTTP (members only: a signer serves no HTTP/WS)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def rpc_url(self) -> str:
        """Where a process of the lab talks to the node: its IPC socket (every API, for this
        user only) when it has one here, else HTTP. A signer in a container has neither."""
        if self.ipc:
            return f"ipc://{self.ipc}"
        if self.role == SIGNER:
            raise GethError(f"node {self.name}: a signer serves no HTTP and its IPC socket "
                            "is inside its container; read through the lab's RPC node")
        return self.http_url

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def node_id(self) -> str:
        return _pubkey(self.enode)


def _pubkey(enode: str) -> str:
    return enode.split("//", 1)[1].split("@", 1)[0]


def network_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / "chain" / "network.json"


def load_nodes(run_dir: str | Path) -> dict[str, NodeInfo]:
    """Node metadata of a run (for other processes: find your node's http/ws URL here)."""
    path = network_file(run_dir)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GethError(f"{path}: no readable network metadata ({e})") from e
    known = {f.name for f in fields(NodeInfo)}
    return {n["name"]: NodeInfo(**{k: v for k, v in n.items() if k in known})
            for n in data["nodes"]}


def rpc_node_of(run_dir: str | Path) -> NodeInfo:
    """The node the lab's processes talk to (network.json's rpc_node, see Network.create)."""
    nodes = load_nodes(run_dir)
    name = json.loads(network_file(run_dir).read_text()).get("rpc_node")
    return nodes[name] if name else next(n for n in nodes.values() if n.role == SIGNER)


def rpc(url: str, method: str, params: list | None = None, timeout: float = 10.0):
    """One JSON-RPC call over http:// or ipc:// (no web3 needed for health checks)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                       "params": params or []}).encode()
    if url.startswith("ipc://"):
        out = _ipc_call(url.removeprefix("ipc://"), body, timeout)
    else:
        req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            out = json.loads(resp.read())
    if "error" in out:
        raise GethError(f"{url} {method}: {out['error'].get('message')}")
    return out["result"]


def _ipc_call(path: str, body: bytes, timeout: float) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(body)
        buf, dec = b"", json.JSONDecoder()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError(f"ipc://{path}: connection closed before a reply")
            buf += chunk
            try:  # geth writes one JSON object per reply
                return dec.raw_decode(buf.decode().strip())[0]
            except (ValueError, UnicodeDecodeError):
                continue


def ipc_dir(run_dir: str | Path) -> Path:
    """A short folder (mode 0700) for a run's IPC sockets: unix socket paths are limited to
    ~108 bytes, and run folders can be deep."""
    import hashlib
    import tempfile

    tag = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    d = Path(tempfile.gettempdir()) / f"lab-{os.getuid()}-{tag}"
    d.mkdir(mode=0o700, exist_ok=True)
    d.chmod(0o700)
    return d


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on loopback (sockets held open until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # PR_SET_PDEATHSIG: geth gets SIGTERM if the process (thread) that started it dies, so a
    # crashed or SIGKILLed orchestrator leaves no node behind.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _is_our_geth(pid: int | None, datadir: str) -> psutil.Process | None:
    """The live geth process with this pid running on this datadir (guards pid reuse)."""
    if not pid:
        return None
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p if datadir in p.cmdline() else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _terminate(procs: Sequence[psutil.Process], timeout: float = 15.0) -> None:
    terminate(procs, timeout)  # geth flushes its state on SIGTERM: give it time


def stop_run(run_dir: str | Path) -> int:
    """Stop every geth of a run from its network.json (for `lab down`). Returns the count."""
    if not network_file(run_dir).exists():
        return 0
    procs = [p for n in load_nodes(run_dir).values() if (p := _is_our_geth(n.pid, n.datadir))]
    _terminate(procs)
    return len(procs)


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Network:
    """A running (or stopped) Clique network of a run folder. Use Network.start()."""

    verbosity = 2  # geth --verbosity: 2 = warnings (geth is chatty)

    def __init__(self, run_dir: Path, nodes: dict[str, NodeInfo], period: int,
                 die_with_parent: bool = True, extra: dict | None = None) -> None:
        self.run_dir = run_dir
        self.nodes = nodes
        self.period = period
        self.die_with_parent = die_with_parent
        self.extra = dict(extra or {})  # more top-level keys of network.json (e.g. runtime)
        self._popen: dict[str, subprocess.Popen] = {}

    @functools.cached_property
    def _geth(self) -> Path:  # only needed to run nodes here (not for Network.create)
        return check_geth()

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        run_dir: str | Path,
        members: int | Sequence[str] = 3,
        signers: int = 1,
        period: int = 0,
        fund: Iterable[str] = (),
        timeout: float = 90.0,
        die_with_parent: bool = True,
        verbosity: int = 2,
    ) -> Network:
        """Create (or resume, from the run folder) the network, start it, wait until ready.

        members: a count (names member0..) or the member node names ([A-Za-z0-9_-]+, used
        as folder names). fund: addresses funded in genesis besides the signers (operator,
        devices). Ready means: every member is peered with every signer, signers with each
        other, and every node has the first signer's head block. On resume (the run's
        network.json exists), the same signers/members/period are required, nodes keep
        their data and ports, and live nodes are adopted rather than restarted.
        die_with_parent: geth gets SIGTERM when the *thread* that started it exits (Linux
        PR_SET_PDEATHSIG), so a killed orchestrator leaves no node behind; call start()
        from a long-lived thread, or pass False and rely on stop() / stop_run().
        """
        run_dir = Path(run_dir).resolve()
        if network_file(run_dir).exists():
            signer_names, names = _names(members, signers)
            fund = [to_checksum_address(a) for a in fund]
            net = cls._resume(run_dir, signer_names, names, period, fund, die_with_parent)
        else:
            net = cls.create(run_dir, members, signers, period, fund,
                             die_with_parent=die_with_parent, ipc=True)
        net._init_datadirs()
        net.verbosity = verbosity
        try:
            net._start_signers([n for n in net.signers() if net.pid(n) is None], timeout)
            stopped = [n for n in net.members() if net.pid(n) is None]
            if stopped:
                net._advance_head(timeout)
                net._start_nodes(stopped, timeout)
            net._connect_members()
            net.wait_ready(timeout, full=True)
        except BaseException:
            net.stop()
            raise
        return net

    @classmethod
    def create(
        cls,
        run_dir: str | Path,
        members: int | Sequence[str] = 3,
        signers: int = 1,
        period: int = 0,
        fund: Iterable[str] = (),
        *,
        host: Callable[[str], str] | None = None,
        datadir_root: str | Path | None = None,
        dial_members: bool = False,
        extra: dict | None = None,
        die_with_parent: bool = True,
        ipc: bool = False,
        rpc_node: str | None = None,
    ) -> Network:
        """Write a new network's files and start nothing: signer keys, genesis, node keys,
        peer configs (config.toml) and chain/network.json. Both runtimes use it.

        host(name): the address other nodes dial to reach node `name` (the enode's host;
        default 127.0.0.1). datadir_root: where the nodes' datadirs are as the nodes see
        them (recorded in network.json; the files are always written under
        run_dir/chain/nodes). dial_members: members also dial their ring neighbours (for
        nodes that cannot be told to by admin_addPeer, e.g. in containers). extra: more
        top-level keys of network.json. ipc: every node gets an IPC socket here (ipc_dir;
        local runtime). Signers never serve HTTP/WS. rpc_node: the node the lab's processes
        talk to (deploy, rounds, bridge, meters, live page; Network.rpc_node), by default
        the first signer, over its IPC socket."""
        run_dir = Path(run_dir).resolve()
        signer_names, member_names = _names(members, signers)
        gen.validate_signers(signers, period)
        fund = [to_checksum_address(a) for a in fund]
        chain_dir = run_dir / "chain"
        signer_accts = {n: keys.ensure_signer(run_dir, n) for n in signer_names}
        genesis = gen.make_genesis([a.address for a in signer_accts.values()], fund, period)
        gen.write_genesis(chain_dir / "genesis.json", genesis)
        all_names = signer_names + member_names
        ports = iter(_free_ports(4 * len(all_names)))
        seen_as = Path(datadir_root) if datadir_root else chain_dir / "nodes"
        nodes: dict[str, NodeInfo] = {}
        sockets = ipc_dir(run_dir) if ipc else None
        for k, name in enumerate(all_names):
            datadir = chain_dir / "nodes" / name
            (datadir / "geth").mkdir(parents=True, exist_ok=True)
            datadir.chmod(0o700)  # its node key and, for a signer, its keystore
            nodekey = eth_keys.PrivateKey(secrets.token_bytes(32))
            keys.write_private(datadir / "geth" / "nodekey", nodekey.to_bytes().hex())
            p2p, http, ws, auth = (next(ports) for _ in range(4))
            acct = signer_accts.get(name)
            addr = host(name) if host else "127.0.0.1"
            nodes[name] = NodeInfo(
                name=name, role=SIGNER if acct else MEMBER, datadir=str(seen_as / name),
                p2p_port=p2p, http_port=http, ws_port=ws, authrpc_port=auth,
                enode=f"enode://{nodekey.public_key.to_hex()[2:]}@{addr}:{p2p}",
                signer_address=acct.address if acct else None,
                log=str(run_dir / "logs" / f"geth-{name}.log"), host=addr,
                ipc=str(sockets / f"{k}.ipc") if sockets else "",
            )
            if acct:  # geth --unlock finds the key in the datadir's keystore
                keys.write_private(datadir / "keystore" / f"{name}.json",
                                   keys.signer_path(run_dir, name).read_text())
        _link(nodes, signer_names, member_names)
        for n in nodes.values():
            # Members dial the signers; signers dial each other; signers and members are told
            # about members by admin_addPeer once those run (a failed dial is not retried for
            # 35 s), unless dial_members.
            trusted = [nodes[m].enode for m in n.neighbours]
            static = [nodes[m].enode for m in n.neighbours
                      if nodes[m].role == SIGNER or (dial_members and n.role == MEMBER)]
            (chain_dir / "nodes" / n.name / "config.toml").write_text(
                static_nodes_toml(static, trusted, dial_ratio=1 if n.role == MEMBER else 0,
                                  listen=f"{n.host}:{n.p2p_port}"))
        extra = {"rpc_node": rpc_node or signer_names[0], **(extra or {})}
        net = cls(run_dir, nodes, period, die_with_parent, extra)
        net._save()
        return net

    def _init_datadirs(self) -> None:
        """`geth init` every datadir that has no chain yet (in parallel)."""
        todo = [n for n in self.nodes.values()
                if not (Path(n.datadir) / "geth" / "chaindata").exists()]
        genesis_file = self.run_dir / "chain" / "genesis.json"
        procs = [subprocess.Popen(init_command(self._geth, Path(n.datadir), genesis_file),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for n in todo]
        for n, p in zip(todo, procs, strict=True):
            out, _ = p.communicate()
            if p.returncode != 0:
                raise GethError(f"geth init of node {n.name} ({n.datadir}) failed:\n{out}")

    @classmethod
    def _resume(cls, run_dir: Path, signer_names: list[str], member_names: list[str],
                period: int, fund: list[str], die_with_parent: bool) -> Network:
        path = network_file(run_dir)
        meta = json.loads(path.read_text())
        nodes = load_nodes(run_dir)
        have_signers = [n for n, i in nodes.items() if i.role == SIGNER]
        have_members = [n for n, i in nodes.items() if i.role == MEMBER]
        if (have_signers, have_members, meta["period"]) != (signer_names, member_names, period):
            raise GethError(
                f"{path}: the run has signers={len(have_signers)} members={have_members} "
                f"period={meta['period']}; asked for signers={len(signer_names)} "
                f"members={member_names} period={period}; use a new run folder")
        alloc = json.loads((run_dir / "chain" / "genesis.json").read_text())["alloc"]
        missing = [a for a in fund if a[2:].lower() not in alloc]
        if missing:
            raise GethError(f"{run_dir / 'chain' / 'genesis.json'}: accounts {missing} are not "
                            "funded in the existing genesis; use a new run folder")
        extra = {k: v for k, v in meta.items() if k not in ("chain_id", "period", "nodes")}
        net = cls(run_dir, nodes, period, die_with_parent, extra)
        for info in nodes.values():  # adopt live nodes, forget stale pids
            if not _is_our_geth(info.pid, info.datadir):
                info.pid = None
        return net

    def _save(self) -> None:
        data = {"chain_id": gen.CHAIN_ID, "period": self.period, **self.extra,
                "nodes": [asdict(n) for n in self.nodes.values()]}
        for d, n in zip(data["nodes"], self.nodes.values(), strict=True):
            # for non-Python readers: a signer serves no HTTP/WS
            web = n.role != SIGNER
            d["http_url"], d["ws_url"] = (n.http_url, n.ws_url) if web else (None, None)
        path = network_file(self.run_dir)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)

    # ---- processes ----------------------------------------------------------------------

    def _spec(self, info: NodeInfo) -> NodeSpec:
        pw = (keys.password_path(keys.signer_path(self.run_dir, info.name))
              if info.role == SIGNER else None)
        return NodeSpec(
            name=info.name, datadir=Path(info.datadir), p2p_port=info.p2p_port,
            http_port=info.http_port, ws_port=info.ws_port, authrpc_port=info.authrpc_port,
            config=Path(info.datadir) / "config.toml", signer=info.signer_address,
            password_file=pw, mine=len(self.signers()) == 1,
            maxpeers=max_peers(info, len(self.nodes)),
            ipc_path=Path(info.ipc) if info.ipc else None,
        )

    def pid(self, name: str) -> int | None:
        """pid of the node's live geth, or None."""
        info = self.nodes[name]
        return info.pid if _is_our_geth(info.pid, info.datadir) else None

    def _start_nodes(self, names: Sequence[str], timeout: float) -> None:
        for name in names:
            info = self.nodes[name]
            Path(info.log).parent.mkdir(parents=True, exist_ok=True)
            if info.ipc:  # after a reboot /tmp is empty again
                ipc_dir(self.run_dir)
            with open(info.log, "ab") as log:
                log.write(f"==== {time.strftime('%F %T')} start {name}\n".encode())
                log.flush()
                p = subprocess.Popen(
                    node_command(self._geth, self._spec(info), verbosity=self.verbosity),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if self.die_with_parent else None)
            self._popen[name] = p
            info.pid = p.pid
        self._save()
        deadline = time.monotonic() + timeout
        for name in names:
            self._wait_rpc(name, deadline)

    def _wait_rpc(self, name: str, deadline: float) -> None:
        info = self.nodes[name]
        while True:
            p = self._popen.get(name)
            if p is not None and p.poll() is not None:
                raise GethError(f"geth node {name} exited with code {p.returncode} at start; "
                                f"log {info.log}:\n{_log_tail(info.log)}")
            try:
                rpc(info.rpc_url, "web3_clientVersion", timeout=2)
                return
            except (OSError, GethError):
                if time.monotonic() > deadline:
                    raise GethError(f"geth node {name}: no RPC on {info.rpc_url}; "
                                    f"log {info.log}:\n{_log_tail(info.log)}") from None
                time.sleep(0.1)

    def wait_ready(self, timeout: float = 60.0, names: Iterable[str] | None = None,
                   full: bool = False, head: bool = True) -> None:
        """Wait until the nodes (default: all live ones) are peered and all have the first
        live signer's head block. Peered: signers with every live signer, and members
        with every live signer if ``full``, else with at least one (after a restart the
        other signers redial a member only when geth's 35 s dial back-off expires)."""
        live = {n for n in self.nodes if self.pid(n)}
        names = [n for n in (names or self.nodes) if n in live]
        deadline = time.monotonic() + timeout
        pending = ""
        while True:
            try:
                pending = self._not_ready(names, live, full, head)
            except (OSError, GethError) as e:
                pending = str(e)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise GethError(f"chain network not ready after {timeout:.0f} s: {pending}")
            time.sleep(0.1)

    def _not_ready(self, names: list[str], live: set[str], full: bool, head: bool) -> str:
        for name in names:
            info = self.nodes[name]
            want = {self.nodes[m].node_id for m in info.neighbours if m in live}
            # admin_peers' "id" is keccak(pubkey); the enode carries the pubkey itself
            have = {_pubkey(p["enode"]) for p in rpc(info.rpc_url, "admin_peers")}
            enough = want <= have if full or info.role == SIGNER else bool(want & have)
            if not enough:
                return f"{name} has {len(want & have)}/{len(want)} neighbours peered"
        if not head:
            return ""
        ref = next((n for n in self.signers() if n in live), names[0])
        top = rpc(self.nodes[ref].rpc_url, "eth_getBlockByNumber", ["latest", False])
        for name in names:
            blk = rpc(self.nodes[name].rpc_url, "eth_getBlockByNumber",
                      [top["number"], False])
            if blk is None or blk["hash"] != top["hash"]:
                return f"{name} does not have {ref}'s head block {int(top['number'], 16)}"
        return ""

    def _advance_head(self, timeout: float) -> None:
        """Wait for one new block on the first live signer (see advance_head)."""
        ref = next((n for n in self.signers() if self.pid(n)), None)
        if ref is None:
            raise GethError("no signer node is running: the chain cannot make blocks")
        advance_head(functools.partial(rpc, self.nodes[ref].rpc_url),
                     keys.signer_path(self.run_dir, ref),
                     self.period, timeout, f"{ref} (log {self.nodes[ref].log})")

    def _start_signers(self, names: Sequence[str], timeout: float) -> None:
        """Start signers; with several, start sealing only once they are all peered."""
        self._start_nodes(names, timeout)
        if len(self.signers()) > 1 and names:
            live = [s for s in self.signers() if self.pid(s)]
            self.wait_ready(timeout, names=live, head=False)
            deadline = time.monotonic() + timeout
            for s in names:
                self._wait_unlocked(s, deadline)
            for s in names:
                rpc(self.nodes[s].rpc_url, "miner_start")

    def _wait_unlocked(self, name: str, deadline: float) -> None:
        # geth unlocks --unlock accounts after RPC is up; a miner started before that fails
        # its first seal and, with period > 0 and no txs, never retries (the chain stalls).
        info = self.nodes[name]
        while True:
            try:
                rpc(info.rpc_url, "eth_sign", [info.signer_address, "0x00"])
                return
            except GethError:
                if time.monotonic() > deadline:
                    raise GethError(f"signer {name}: account {info.signer_address} not "
                                    f"unlocked; log {info.log}") from None
                time.sleep(0.05)

    def _connect_members(self) -> None:
        """Make every live signer dial every live member, and every live member its ring
        neighbours (admin_addPeer: a no-op if already peered)."""
        live = [m for m in self.members() if self.pid(m)]
        for s in self.signers():
            if self.pid(s):
                for m in live:
                    rpc(self.nodes[s].rpc_url, "admin_addPeer", [self.nodes[m].enode])
        for m in live:
            for other in self.nodes[m].neighbours:
                if self.nodes[other].role == MEMBER and other in live and other > m:
                    rpc(self.nodes[m].rpc_url, "admin_addPeer", [self.nodes[other].enode])

    def stop_node(self, name: str) -> None:
        """Stop one node (SIGTERM, then SIGKILL after 15 s). Its data stays."""
        info = self.nodes[name]
        proc = _is_our_geth(info.pid, info.datadir)
        if proc:
            _terminate([proc])
        if (p := self._popen.pop(name, None)) is not None:
            p.wait()
        info.pid = None
        self._save()

    def start_node(self, name: str, timeout: float = 60.0) -> None:
        """Start a stopped node on its data and ports, and wait until it is caught up."""
        if self.pid(name) is None:
            if self.nodes[name].role == MEMBER:
                self._advance_head(timeout)  # so that it syncs in its handshake
            if self.nodes[name].role == SIGNER:
                self._start_signers([name], timeout)
                self._connect_members()
            else:
                self._start_nodes([name], timeout)
        self.wait_ready(timeout)

    def restart_node(self, name: str, timeout: float = 60.0) -> None:
        self.stop_node(name)
        self.start_node(name, timeout)

    def stop(self) -> None:
        """Stop every node of this network; no geth process of it is left running."""
        procs = [p for n in self.nodes.values() if (p := _is_our_geth(n.pid, n.datadir))]
        _terminate(procs)
        for p in self._popen.values():
            p.wait()
        self._popen.clear()
        for n in self.nodes.values():
            n.pid = None
        self._save()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- access -------------------------------------------------------------------------

    def signers(self) -> list[str]:
        return [n for n, i in self.nodes.items() if i.role == SIGNER]

    def members(self) -> list[str]:
        return [n for n, i in self.nodes.items() if i.role == MEMBER]

    def rpc_node(self) -> str:
        """The node the lab's processes read the chain through and send transactions to
        (Network.create's rpc_node; the first signer on a network of an older run)."""
        return self.extra.get("rpc_node") or self.signers()[0]

    def rpc_url(self, name: str) -> str:
        """Where the lab talks to node `name` (its IPC socket here; NodeInfo.rpc_url)."""
        return self.nodes[name].rpc_url

    def ws_url(self, name: str) -> str:
        return self.nodes[name].ws_url

    def w3(self, name: str, timeout: float = 60.0):
        """A web3 client on the node, with Clique's extraData middleware."""
        return make_w3(self.nodes[name].rpc_url, timeout)


def make_w3(url: str, timeout: float = 60.0):
    """web3 (v8) client for a Clique node over http(s):// or ipc://, with
    ExtraDataToPOAMiddleware injected."""
    from web3 import Web3
    from web3.middleware import ExtraDataToPOAMiddleware

    if url.startswith("ipc://"):
        w3 = Web3(Web3.IPCProvider(url.removeprefix("ipc://"), timeout=timeout))
    elif url.startswith(("http://", "https://")):
        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
    else:
        raise ValueError(f"node URL {url!r}: expected http(s):// or ipc://")
    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    return w3


def _link(nodes: dict[str, NodeInfo], signer_names: list[str], member_names: list[str]) -> None:
    """Signers: full mesh. Members: every signer, plus a ring of members. Symmetric lists.

    The ring is for block propagation: geth sends a new block whole to only sqrt(peers) of
    the signer's peers and announces it to the rest, which fetch it ~0.5 s later. A member
    that got the block whole relays it whole along the ring within milliseconds."""
    edges: set[frozenset[str]] = set()
    for i, a in enumerate(signer_names):
        edges |= {frozenset((a, b)) for b in signer_names[i + 1:]}
    for m in member_names:
        edges |= {frozenset((m, s)) for s in signer_names}
    if len(member_names) > 1:
        ring = member_names + member_names[:1] if len(member_names) > 2 else member_names
        edges |= {frozenset(pair) for pair in zip(ring, ring[1:], strict=False)}
    for n in nodes.values():
        n.neighbours = sorted(next(iter(e - {n.name})) for e in edges if n.name in e)


def _names(members: int | Sequence[str], signers: int) -> tuple[list[str], list[str]]:
    """(signer names, member names), member names checked."""
    names = ([f"member{i}" for i in range(members)] if isinstance(members, int)
             else list(members))
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_-]+", n) or n.startswith(SIGNER)]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"members={names}: names must be unique, [A-Za-z0-9_-]+ and "
                         f"not start with {SIGNER!r} (bad: {bad})")
    return [f"{SIGNER}{i}" for i in range(signers)], names


def max_peers(info: NodeInfo, n_nodes: int) -> int:
    """geth --maxpeers of a node: members exactly their neighbours (so that having them all
    is enough to sync, see the module docstring); signers room to dial every node."""
    if info.role == SIGNER:
        return max(50, 3 * n_nodes)
    return max(1, len(info.neighbours))


def advance_head(call: Callable[..., Any], signer_key: Path, period: int, timeout: float,
                 label: str = "signer") -> None:
    """Wait for one new block on a signer node, reached by call(method, params) (e.g.
    functools.partial(rpc, url)); with period 0, cause it by a zero-value self-transfer of
    the signer (signed here with its key file: geth may not have unlocked the key yet).
    Members started after this sync in their handshake."""
    start = int(call("eth_blockNumber"), 16)
    if period == 0:
        acct = keys.load_account(signer_key)
        base = int(call("eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16)
        nonce = int(call("eth_getTransactionCount", [acct.address, "pending"]), 16)
        tx = {"to": acct.address, "value": 0, "gas": 21000, "nonce": nonce, "type": 2,
              "chainId": gen.CHAIN_ID, **gen.tx_fees(base)}
        raw = acct.sign_transaction(tx).raw_transaction
        call("eth_sendRawTransaction", ["0x" + bytes(raw).hex()])
    deadline = time.monotonic() + timeout
    while int(call("eth_blockNumber"), 16) <= start:
        if time.monotonic() > deadline:
            raise GethError(f"{label} made no block within {timeout:.0f} s")
        time.sleep(0.05)
