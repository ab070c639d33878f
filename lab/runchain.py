"""The chain of a run folder, for commands that read it after the fact (`lab verify`,
`lab bill`): the running lab's node when it answers, else the run's chain resumed from its
data folders for the duration and stopped again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml


def run_info(run_dir: Path) -> dict:
    """The run's lab.json (contract, session, devices, deploy block, billing)."""
    f = Path(run_dir) / "lab.json"
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {f}: not a run folder with a deployed contract ({e})") from None


@contextmanager
def run_chain(run_dir: Path) -> Iterator[str]:
    """The RPC URL of the run's chain (the lab's RPC node, chain.network.rpc_node_of)."""
    from chain.network import Network, load_nodes, rpc, rpc_node_of

    nodes = load_nodes(run_dir)
    node = rpc_node_of(run_dir)
    net = None
    try:
        rpc(node.rpc_url, "web3_clientVersion", timeout=1)
    except Exception:  # noqa: BLE001 - not running: resume it from its data
        chain = yaml.safe_load((run_dir / "scenario.yaml").read_text()).get("chain") or {}
        members = [n.name for n in nodes.values() if n.role == "member"]
        signers = sum(1 for n in nodes.values() if n.role == "signer")
        net = Network.start(run_dir, members=members, signers=signers,
                            period=int(chain.get("period", 0)))
    try:
        yield node.rpc_url
    finally:
        if net is not None:
            net.stop()
