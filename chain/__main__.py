"""Small CLI on a run's chain.

    python -m chain status RUN_DIR    nodes, pids, URLs, head, peers (JSON per node)
    python -m chain down RUN_DIR      stop every geth of the run
    python -m chain bench [--members 10] [--signers 1] [--period 0] [--txs 5]
        start a fresh network in a temporary folder and print, as the last stdout line, one
        JSON object: start_s (until peered and synced), rss_mb per geth (median, max), and
        propagation: a signed transfer sent to member0, mined and seen on the last member.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import psutil
from eth_account import Account
from web3.exceptions import TransactionIndexingInProgress, TransactionNotFound

from chain import genesis as gen
from chain import keys
from chain.geth import GethError
from chain.network import Network, load_nodes, rpc, stop_run


def status(run_dir: str) -> int:
    for n in load_nodes(run_dir).values():
        web = n.role != "signer"  # a signer serves no HTTP/WS
        row = {"name": n.name, "role": n.role, "pid": n.pid,
               "http": n.http_url if web else None, "ws": n.ws_url if web else None}
        try:
            row["head"] = int(rpc(n.rpc_url, "eth_blockNumber", timeout=2), 16)
            row["peers"] = int(rpc(n.rpc_url, "net_peerCount", timeout=2), 16)
        except (OSError, GethError):  # down, or a signer in a container (no RPC here)
            row["head"] = None
        print(json.dumps(row))
    return 0


def bench(members: int, signers: int, period: int, txs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="chainbench") as d:
        sender = keys.ensure_operator(d)
        t0 = time.monotonic()
        with Network.start(d, members=members, signers=signers, period=period,
                           fund=[sender.address]) as net:
            start_s = time.monotonic() - t0
            rss = [psutil.Process(net.pid(n)).memory_info().rss / 2**20 for n in net.nodes]
            src, dst = net.w3(net.members()[0]), net.w3(net.members()[-1])
            lat = []
            for i in range(txs):
                base = src.eth.get_block("latest")["baseFeePerGas"]
                tx = {"to": Account.create().address, "value": 1, "gas": 21000, "nonce": i,
                      "chainId": gen.CHAIN_ID, "type": 2, **gen.tx_fees(base)}
                raw = sender.sign_transaction(tx).raw_transaction
                t = time.monotonic()
                h = src.eth.send_raw_transaction(raw)
                while True:
                    try:
                        dst.eth.get_transaction_receipt(h)
                        break
                    except (TransactionNotFound, TransactionIndexingInProgress):
                        time.sleep(0.005)
                lat.append(time.monotonic() - t)
            return {"members": members, "signers": signers, "period": period,
                    "start_s": round(start_s, 2),
                    "rss_mb_median": round(statistics.median(rss), 1),
                    "rss_mb_max": round(max(rss), 1),
                    "propagation_s_median": round(statistics.median(lat), 3),
                    "propagation_s_max": round(max(lat), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chain")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("status", "down"):
        sub.add_parser(name).add_argument("run_dir")
    b = sub.add_parser("bench")
    b.add_argument("--members", type=int, default=10)
    b.add_argument("--signers", type=int, default=1)
    b.add_argument("--period", type=int, default=0)
    b.add_argument("--txs", type=int, default=5)
    a = ap.parse_args(argv)
    if a.cmd == "status":
        return status(a.run_dir)
    if a.cmd == "down":
        print(f"stopped {stop_run(a.run_dir)} geth process(es)")
        return 0
    print(json.dumps(bench(a.members, a.signers, a.period, a.txs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
