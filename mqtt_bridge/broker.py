"""The lab's MQTT broker: mosquitto when installed, else an embedded amqtt broker.

`MqttBroker.from_env(run_dir)` honours `MQTT_URL=mqtt://host:port`: the lab then uses that
broker and starts nothing. Otherwise the broker listens on loopback on a free port, with its
files in `<run_dir>/broker/`:
    mosquitto.conf   (mosquitto) listener, access, persistence in this folder, so
                     retained messages survive a restart
    broker.pid       pid of the running broker process
    broker.log       its log
    url              mqtt://127.0.0.1:PORT, for `lab watch` and other processes
The amqtt broker runs in its own process (`python -m mqtt_bridge.broker amqtt --port P`); it
keeps retained messages in memory only, which the bridge and emulators cover by
republishing their retained topics on every (re)connect.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mqtt_bridge.mqttc import parse_url

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    exe = shutil.which("mosquitto")
    if exe:
        return exe
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class BrokerError(RuntimeError):
    pass


class MqttBroker:
    """Start/stop/restart one broker. kind: "mosquitto", "amqtt", "external" or "auto"."""

    def __init__(self, run_dir: Path, kind: str = "auto", port: int | None = None,
                 host: str = "127.0.0.1", url: str | None = None,
                 users: dict | None = None) -> None:
        """users: mqtt_bridge.auth.plan_users(...) to require credentials and enforce ACLs
        (mosquitto); None: anonymous on loopback (tests, and the amqtt fallback)."""
        self.dir = Path(run_dir) / "broker"
        self.users = users
        if url:
            kind = "external"
        elif kind == "auto":
            kind = "mosquitto" if find_mosquitto() else "amqtt"
        if kind not in ("mosquitto", "amqtt", "external"):
            raise ValueError(f"broker kind {kind!r}: expected mosquitto, amqtt or external")
        self.kind = kind
        if url:
            self.host, self.port = parse_url(url)
        else:
            self.host, self.port = host, port or free_port(host)
        self.proc: subprocess.Popen | None = None

    @classmethod
    def from_env(cls, run_dir: Path, kind: str = "auto", users: dict | None = None
                 ) -> MqttBroker:
        return cls(run_dir, kind=kind, url=os.environ.get("MQTT_URL") or None, users=users)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def authenticated(self) -> bool:
        """Whether clients need credentials (mosquitto with users)."""
        return bool(self.users) and self.kind == "mosquitto"

    def _command(self) -> list[str]:
        if self.kind == "mosquitto":
            exe = find_mosquitto()
            if not exe:
                raise BrokerError("mosquitto is not installed")
            conf = self.dir / "mosquitto.conf"
            if self.users:
                from mqtt_bridge.auth import write_mosquitto

                passwd, acl = write_mosquitto(self.dir, self.users)
                access = ["allow_anonymous false", f"password_file {passwd}",
                          f"acl_file {acl}"]
            else:
                access = ["allow_anonymous true"]
            lines = [f"listener {self.port} {self.host}", *access,
                     "persistence true", f"persistence_location {self.dir}/",
                     "autosave_interval 30", "set_tcp_nodelay true", "log_type error",
                     "log_type warning", "log_type notice", "log_timestamp true"]
            if os.geteuid() == 0:
                lines.append("user root")  # else mosquitto drops to a user that can't write here
            conf.write_text("\n".join(lines) + "\n")
            return [exe, "-c", str(conf)]
        return [sys.executable, "-m", "mqtt_bridge.broker", "amqtt", "--host", self.host,
                "--port", str(self.port)]

    def start(self, timeout: float = 15.0) -> str:
        """Start the broker (nothing for an external one) and wait until it accepts
        connections. Returns its URL."""
        if self.kind == "external":
            if not wait_port(self.host, self.port, timeout):
                raise BrokerError(f"MQTT_URL {self.url}: no broker answers")
            return self.url
        if self.running():
            return self.url
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = self._command()
        with open(self.dir / "broker.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        (self.dir / "broker.pid").write_text(f"{self.proc.pid}\n")
        (self.dir / "url").write_text(self.url + "\n")
        if self.users and self.kind == "mosquitto":
            from mqtt_bridge.auth import write_urls

            write_urls(self.dir, self.url, self.users)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"{self.kind} exited with code {self.proc.returncode}; "
                                  f"see {self.dir / 'broker.log'}")
            if wait_port(self.host, self.port, 0.1):
                return self.url
        self.stop()
        raise BrokerError(f"{self.kind} did not listen on {self.url} within {timeout} s")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None
        (self.dir / "broker.pid").unlink(missing_ok=True)

    def restart(self, down_seconds: float = 0.0) -> str:
        """Stop, stay down `down_seconds`, start again on the same port."""
        if self.kind == "external":
            raise BrokerError("cannot restart an external broker (MQTT_URL)")
        self.stop()
        time.sleep(down_seconds)
        return self.start()

    def __enter__(self) -> MqttBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_amqtt(host: str, port: int) -> None:
    """Run an amqtt broker in this process until SIGTERM/SIGINT."""
    import asyncio
    import logging

    from amqtt.broker import Broker

    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # our readiness probe (connect, close) makes amqtt log an error per probe
    logging.getLogger("amqtt.broker").addFilter(
        lambda r: "No data" not in r.getMessage() and "initialize client session"
        not in r.getMessage())
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                    {"allow_anonymous": True}},
    }

    async def serve() -> None:
        broker = Broker(config)
        await broker.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        try:  # amqtt's shutdown can hang on busy sessions; a broker restart must not wait
            await asyncio.wait_for(broker.shutdown(), 0.5)
        except Exception as e:  # noqa: BLE001 (leaving anyway)
            logging.warning("amqtt shutdown: %r; exiting", e)

    asyncio.run(serve())
    logging.shutdown()
    os._exit(0)  # do not wait for connection tasks that ignored the shutdown


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mqtt_bridge.broker")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("amqtt", help="run an embedded amqtt broker in the foreground")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, required=True)
    s = sub.add_parser("serve", help="start the lab broker (or use MQTT_URL) until Ctrl-C")
    s.add_argument("--run-dir", type=Path, required=True)
    s.add_argument("--kind", default="auto", choices=["auto", "mosquitto", "amqtt"])
    args = ap.parse_args(argv)
    if args.cmd == "amqtt":
        run_amqtt(args.host, args.port)
        return
    broker = MqttBroker.from_env(args.run_dir, kind=args.kind)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    print(broker.start(), flush=True)
    try:
        while not stopping and (broker.kind == "external" or broker.running()):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
