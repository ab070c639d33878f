"""The geth binary and the command lines of one node.

geth v1.13.15 is required (last release with Clique sealing, DESIGN.md). It is looked up
in $GETH, then tools/bin/geth under the repository root.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from chain.genesis import CHAIN_ID, GAS_LIMIT, MIN_TIP_WEI

REQUIRED_VERSION = "1.13.15"
REPO_ROOT = Path(__file__).resolve().parent.parent
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class GethError(RuntimeError):
    pass


def geth_path() -> Path:
    """The geth binary: $GETH if set, else <repo>/tools/bin/geth. Raises if missing."""
    env = os.environ.get("GETH")
    path = Path(env) if env else REPO_ROOT / "tools" / "bin" / "geth"
    if not (path.is_file() and os.access(path, os.X_OK)):
        src = "$GETH" if env else "tools/bin/geth"
        raise GethError(f"geth not found at {path} ({src}); run `make setup` to build "
                        f"v{REQUIRED_VERSION}, or set GETH to a geth v{REQUIRED_VERSION} binary")
    return path


@functools.cache
def _version_of(path: Path) -> str:
    out = subprocess.run([str(path), "version"], capture_output=True, text=True, timeout=30)
    m = re.search(r"^Version:\s*(\S+)", out.stdout, re.M)
    return m.group(1) if m else ""


def check_geth() -> Path:
    """geth_path(), after checking that it is v1.13.15 (Clique sealing was removed in 1.14)."""
    path = geth_path()
    version = _version_of(path)
    if not version.startswith(REQUIRED_VERSION):
        raise GethError(f"{path} reports version {version or '(none)'!r}; geth "
                        f"{REQUIRED_VERSION} is required (Clique sealing was removed in 1.14)")
    return path


@dataclass(frozen=True)
class NodeSpec:
    """What the command line of one node needs. Paths are absolute."""

    name: str
    datadir: Path
    p2p_port: int
    http_port: int
    ws_port: int
    authrpc_port: int
    config: Path | None = None  # TOML with Node.P2P.StaticNodes / TrustedNodes
    signer: str | None = None  # checksum address; the node seals blocks when set
    password_file: Path | None = None  # for --unlock of the signer's keystore
    maxpeers: int = 50
    addr: str = "127.0.0.1"  # listen address of HTTP/WS (0.0.0.0 in containers)
    # False: the signer waits for `miner_start` over IPC (several signers start sealing
    # only once peered; otherwise each seals its own block 1 and they fork at once).
    mine: bool = True
    # the IPC socket (a short path: unix sockets are limited to ~108 bytes), the only way to
    # admin (peers), miner (start sealing) and clique (who sealed a block), and the only
    # RPC of a signer: its account is unlocked, so it serves no HTTP/WS at all.
    ipc_path: Path | None = None


def init_command(geth: Path, datadir: Path, genesis: Path) -> list[str]:
    # hash scheme: geth 1.13 cannot run --gcmode archive on the path scheme.
    return [str(geth), "init", "--datadir", str(datadir), "--state.scheme", "hash",
            str(genesis)]


def node_command(geth: Path, spec: NodeSpec, network_id: int = CHAIN_ID,
                 verbosity: int = 2) -> list[str]:
    """The ``geth`` argv for one node."""
    # HTTP/WS serve reads and raw transactions (signed by the lab's processes with their own
    # keys) and nothing else; a signer (unlocked account) serves neither, so geth needs no
    # --allow-insecure-unlock. admin, miner and clique exist over IPC only.
    web = spec.signer is None
    apis = "eth,net,web3,txpool"
    cmd = [
        str(geth),
        "--datadir", str(spec.datadir),
        "--networkid", str(network_id),
        "--syncmode", "full",
        # archive: every block's state is on disk at once, so a killed node restarts at
        # its head (full mode keeps recent state in memory and rewinds after a SIGKILL),
        # and anyone can read the contract at any past block.
        "--gcmode", "archive", "--state.scheme", "hash",
        "--cache", "128",
        # the p2p port from the config's ListenAddr (its address: loopback, or the compose
        # network's), else --port (every interface)
        *([] if spec.config is not None else ["--port", str(spec.p2p_port)]),
        "--nodiscover", "--nat", "none", "--maxpeers", str(spec.maxpeers),
        *(["--http", "--http.addr", spec.addr, "--http.port", str(spec.http_port),
           # Host and Origin checks: a web page in the user's browser cannot reach the
           # node by DNS rebinding or a cross-origin WebSocket
           "--http.api", apis, "--http.vhosts", "localhost,127.0.0.1",
           "--ws", "--ws.addr", spec.addr, "--ws.port", str(spec.ws_port),
           "--ws.api", apis, "--ws.origins", "localhost,127.0.0.1"] if web else []),
        "--authrpc.addr", "127.0.0.1", "--authrpc.port", str(spec.authrpc_port),
        *(["--ipcpath", str(spec.ipc_path)] if spec.ipc_path else ["--ipcdisable"]),
        "--miner.gasprice", str(MIN_TIP_WEI),
        "--txpool.pricelimit", str(MIN_TIP_WEI),
        "--rpc.txfeecap", "0",  # no cap on fee per tx (huge round-closing txs are fine)
        # eth_call/eth_estimateGas may use a whole block (open_session at N=2048: ~58M gas;
        # geth's default cap is 50M)
        "--rpc.gascap", str(GAS_LIMIT),
        "--verbosity", str(verbosity),
    ]
    if spec.addr in _LOOPBACK:
        cmd += ["--netrestrict", "127.0.0.0/8"]
    if spec.config is not None:
        cmd += ["--config", str(spec.config)]
    if spec.signer is not None:
        if spec.password_file is None:
            raise ValueError(f"node {spec.name}: a signer needs password_file for --unlock")
        cmd += (["--mine"] if spec.mine else []) + [
            "--miner.etherbase", spec.signer, "--miner.gaslimit", str(GAS_LIMIT),
            "--unlock", spec.signer, "--password", str(spec.password_file),
        ]
    return cmd


def static_nodes_toml(static: list[str], trusted: list[str], dial_ratio: int = 0,
                      listen: str | None = None) -> str:
    """A --config TOML peering a node with ``static`` (dialed) and ``trusted`` enodes.
    dial_ratio 1 lets a node dial up to --maxpeers peers (geth's default 3 allows a third).
    listen: the p2p listen address (host:port); geth's --port would listen on every
    interface, and --port given on the command line overrides the file's ListenAddr."""
    def arr(xs: list[str]) -> str:
        return "[" + ", ".join(f'"{x}"' for x in xs) + "]"
    ratio = f"DialRatio = {dial_ratio}\n" if dial_ratio else ""
    addr = f'ListenAddr = "{listen}"\n' if listen else ""
    return (f"[Node.P2P]\nStaticNodes = {arr(static)}\nTrustedNodes = {arr(trusted)}\n"
            + ratio + addr)
