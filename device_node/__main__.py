"""A device process: `python -m device_node --run-dir RUN --node NAME --device ID [--device ID]`.

It is given only what its devices need: each device's own scenario entry
(`RUN/devices/<id>.yaml`) and own key (`RUN/keys/devices/<id>.key`), the contract address
and session (`RUN/lab.json`) and its node's RPC/WS URLs (`RUN/chain/network.json`). It
wakes on the contract's events over its node's WebSocket (polling over HTTP when the
subscription is down), submits for every open round, publishes its plans after
finalization, and exits 0 once its session is final, or at once (publishing nothing) when
the operator ended it unconverged (`end_session`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

from aggregator_contract.client import Coordinator, connect
from chain.keys import device_path, load_account
from chain.network import load_nodes
from device_node.agent import DeviceAgent
from device_node.wakeup import ContractWakeup
from scenario import device_from_payload

log = logging.getLogger("device_node")


def build_agents(run_dir: Path, node: str, device_ids: list[str]) -> list[DeviceAgent]:
    lab = json.loads((run_dir / "lab.json").read_text())
    info = load_nodes(run_dir)[node]
    w3 = connect(info.rpc_url)
    agents = []
    for dev in device_ids:
        payload_file = run_dir / "devices" / f"{dev}.yaml"
        spec = device_from_payload(yaml.safe_load(payload_file.read_text()), str(payload_file))
        account = load_account(device_path(run_dir, dev))
        coord = Coordinator(w3, lab["contract"], account)
        agents.append(DeviceAgent(spec, account, coord, lab["solver"]))
    return agents


def run(run_dir: Path, node: str, device_ids: list[str], poll_s: float = 0.25) -> int:
    lab = json.loads((run_dir / "lab.json").read_text())
    session = int(lab["session"])
    agents = build_agents(run_dir, node, device_ids)
    coord = agents[0].coordinator
    # Wake on round changes only: a Submitted event changes nothing a device acts on.
    wake = ContractWakeup(load_nodes(run_dir)[node].ws_url, coord.address,
                          coord.topics("SessionOpened", "RoundClosed", "Finalized"))
    wake.start()
    log.info("devices %s on node %s, session %d, ws=%s", device_ids, node, session,
             wake.connected)
    try:
        while True:
            try:
                done = _tick(agents, coord, session)
            except OSError as e:  # the node restarts (lab/orchestrator.py tend): wait for it
                log.warning("node %s not answering (%s); retrying", node, e)
                time.sleep(1.0)
                continue
            if done:
                return 0
            wake.wait(poll_s)
    finally:
        wake.stop()


def _tick(agents: list[DeviceAgent], coord: Coordinator, session: int) -> bool:
    """One look at the chain: submit to an open round, or publish once final. True when
    this process is done."""
    cur = coord.current()
    if cur is not None and cur.session == session:
        # all of this process's devices send first, then wait: the round closes as soon as
        # the last submission anywhere is mined
        sent = [(a, r) for a in agents if (r := a.step(cur)) is not None]
        for agent, res in sent:
            if agent.confirm(res):
                log.info("%s: round %d submitted (solve %.1f ms)", agent.spec.id,
                         res.round, 1e3 * res.solve_s)
    elif coord.is_finalized(session):
        if coord.is_ended(session):
            log.info("session %d was ended by the operator: nothing to publish", session)
            return True
        sent = [(a, tx) for a in agents for tx in a.publish_final(session)]
        for agent, tx in sent:
            tx.receipt()
            log.info("%s: %s", agent.spec.id, tx.what)
        log.info("session %d final", session)
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device_node", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--node", required=True, help="name of this process's geth node")
    p.add_argument("--device", action="append", required=True, help="device id (repeatable)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    t0 = time.monotonic()
    code = run(args.run_dir.resolve(), args.node, args.device)
    log.info("done in %.1f s", time.monotonic() - t0)
    return code


if __name__ == "__main__":
    sys.exit(main())
