"""Entry point of a device container: its geth node, then its device process (docs/architecture.md:
one container per device, or per group, holding its node and its optimizer).

    python -m lab.container_entry --run-dir /lab --node NODE [--device ID ...] -- geth ARGS...

What the container is given (lab/compose.py mounts exactly these):

    /lab/shared/genesis.json       the chain's genesis (read-only)
    /lab/shared/lab.json           appears once the contract is deployed and the session open
    /lab/chain/network.json        node metadata (ports, enodes; URLs on 127.0.0.1 are this
                                   container's own node)
    /lab/chain/nodes/NODE/         this node's datadir (read-write)
    /lab/devices/ID.yaml           each of its devices' own scenario entry
    /lab/keys/devices/ID.key       each of its devices' own key, nothing else
    /lab/logs/                     geth-NODE.log and devices-NODE.log, as in the local runtime

Steps: `geth init` on first start; start geth; wait for its RPC; wait for lab.json and for
the node to have the contract's deploy block; then run `python -m device_node` (the same
entry as the local runtime), restarting it when it dies with an error (it resumes from chain
state). After the device process is done the node keeps serving until SIGTERM (`down`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from chain.geth import init_command
from chain.network import load_nodes, rpc
from chain.processes import stop_popen

MAX_RESTARTS = 5


class Entry:
    def __init__(self, run_dir: Path, node: str, devices: list[str], geth_argv: list[str]):
        self.run_dir = run_dir
        self.node = node
        self.devices = devices
        self.geth_argv = geth_argv
        self.stopping = False
        self.geth: subprocess.Popen | None = None
        self.device: subprocess.Popen | None = None
        self.logs = run_dir / "logs"

    def say(self, msg: str) -> None:
        print(f"{time.strftime('%T')} [{self.node}] {msg}", flush=True)

    def _log(self, name: str):
        self.logs.mkdir(parents=True, exist_ok=True)
        return open(self.logs / f"{name}-{self.node}.log", "ab")  # noqa: SIM115

    def _on_term(self, signum: int, frame: object) -> None:  # noqa: ARG002
        self.stopping = True

    def init_chain(self) -> None:
        datadir = Path(self._flag("--datadir"))
        if (datadir / "geth" / "chaindata").exists():
            return
        genesis = self.run_dir / "shared" / "genesis.json"
        out = subprocess.run(init_command(Path("geth"), datadir, genesis), capture_output=True,
                             text=True)
        if out.returncode != 0:
            raise SystemExit(f"[{self.node}] geth init of {datadir} from {genesis} failed:\n"
                             f"{out.stdout}{out.stderr}")

    def _flag(self, name: str) -> str:
        return self.geth_argv[self.geth_argv.index(name) + 1]

    def start_geth(self) -> str:
        with self._log("geth") as log:
            log.write(f"==== {time.strftime('%F %T')} start {self.node}\n".encode())
            log.flush()
            self.geth = subprocess.Popen(self.geth_argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        url = load_nodes(self.run_dir)[self.node].rpc_url
        while not self.stopping:
            if self.geth.poll() is not None:
                raise SystemExit(f"[{self.node}] geth exited with code {self.geth.returncode}"
                                 f" at start; see logs/geth-{self.node}.log")
            try:
                rpc(url, "web3_clientVersion", timeout=2)
                return url
            except OSError:
                time.sleep(0.2)
        return url

    def wait_session(self, url: str) -> bool:
        """Until lab.json is there and this node has the contract's deploy block."""
        lab_file = self.run_dir / "shared" / "lab.json"
        seen = False
        while not self.stopping:
            self._check_geth()
            try:
                lab = json.loads(lab_file.read_text())
                head = int(rpc(url, "eth_blockNumber"), 16)
                if not seen:
                    seen = True
                    self.say(f"session open (deploy block {lab['deploy_block']}); "
                             f"node at block {head}")
                if head >= int(lab["deploy_block"]):
                    return True
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        return False

    def _check_geth(self) -> None:
        if self.geth is not None and self.geth.poll() is not None and not self.stopping:
            raise SystemExit(f"[{self.node}] geth died with code {self.geth.returncode}; "
                             f"see logs/geth-{self.node}.log")

    def start_device(self) -> None:
        argv = [sys.executable, "-m", "device_node", "--run-dir", str(self.run_dir),
                "--node", self.node]
        for d in self.devices:
            argv += ["--device", d]
        with self._log("devices") as log:
            self.device = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        # the device process expects RUN/lab.json; it is published in shared/ after deploy
        link = self.run_dir / "lab.json"
        if not link.exists() and not link.is_symlink():
            link.symlink_to(Path("shared") / "lab.json")
        self.init_chain()
        url = self.start_geth()
        self.say(f"geth up at {url}")
        restarts = 0
        if self.devices and self.wait_session(url):
            self.start_device()
            self.say(f"device process for {self.devices} started")
        try:
            while not self.stopping:
                self._check_geth()
                if self.device is not None and (code := self.device.poll()) is not None:
                    if code == 0:
                        self.say("device process done; node keeps serving")
                        self.device = None
                    elif restarts < MAX_RESTARTS:
                        restarts += 1
                        self.say(f"device process exited with {code}; restart {restarts}")
                        self.start_device()
                    else:
                        self.say(f"device process exited with {code}; giving up")
                        return code
                time.sleep(0.2)
            return 0
        finally:
            self.stop()

    def stop(self) -> None:
        stop_popen((self.device, self.geth), timeout=15)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: python -m lab.container_entry --run-dir DIR --node NODE "
                         "[--device ID ...] -- geth ARGS...")
    k = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m lab.container_entry")
    ap.add_argument("--run-dir", type=Path, default=Path("/lab"))
    ap.add_argument("--node", required=True)
    ap.add_argument("--device", action="append", default=[])
    args = ap.parse_args(argv[:k])
    os.umask(0o022)
    return Entry(args.run_dir, args.node, args.device, argv[k + 1:]).run()


if __name__ == "__main__":
    sys.exit(main())
