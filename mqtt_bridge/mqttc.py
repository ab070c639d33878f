"""A paho-mqtt 2 client set up the way every lab process wants it, and broker URLs.

A URL is `mqtt://[user:password@]host[:port]` or `mqtts://...` (TLS; port 8883 by default,
the CA from `MQTT_CA_FILE` or the system's). Lab processes are given `--url @FILE`, a file of
the run folder (mode 0600) holding the URL with their own credentials, so no password
appears on a command line (which any local user can read in /proc).
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # paho leaves Nagle on: a command written while a PUBACK is outstanding would wait for
    # the peer's delayed ACK (~40 ms on Linux), which would dominate command latency.
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of `mqtt[s]://[user:pass@]host[:port]` (1883, or 8883 with TLS)."""
    u = urlparse(url)
    if u.scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not u.hostname:
        raise ValueError(f"MQTT URL {hide(url)!r}: expected mqtt[s]://[user:pass@]host:port")
    return u.hostname, u.port or (8883 if u.scheme in ("mqtts", "ssl") else 1883)


def hide(url: str) -> str:
    """The URL without its password, for messages and logs."""
    u = urlparse(url)
    if u.password is None:
        return url
    return url.replace(f":{u.password}@", ":***@", 1)


def resolve_url(arg: str) -> str:
    """`@FILE`: the URL in FILE (a process's own credentials); anything else as given."""
    if arg.startswith("@"):
        return Path(arg[1:]).read_text().strip()
    return arg


def make_client(client_id: str = "", url: str | None = None) -> mqtt.Client:
    """MQTT 3.1.1 client (callback API v2), TCP_NODELAY, fast reconnect (0.1..0.5 s: the
    lab's broker is local, and a command due during an outage waits for the reconnect);
    with `url`, its credentials and TLS."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.on_socket_open = _nodelay
    c.reconnect_delay_set(0.1, 0.5)
    if url:
        u = urlparse(url)
        if u.username is not None:
            c.username_pw_set(unquote(u.username),
                              None if u.password is None else unquote(u.password))
        if u.scheme in ("mqtts", "ssl"):
            c.tls_set(ca_certs=os.environ.get("MQTT_CA_FILE") or None,
                      cert_reqs=ssl.CERT_REQUIRED)
    return c


def start_subscriber(client_id: str, url: str, topics: Sequence[str],
                     on_message: Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None],
                     timeout: float = 10.0) -> mqtt.Client:
    """A client that subscribes to `topics` (QoS 1) on every (re)connect, started; returns
    once its first subscription is acknowledged, so nothing published after the return is
    missed (TimeoutError otherwise). Stop it with disconnect() and loop_stop()."""
    host, port = parse_url(url)
    c = make_client(client_id, url)
    up = threading.Event()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                   props: Any = None) -> None:
        if rc.is_failure:
            return
        if topics:
            client.subscribe([(t, 1) for t in topics])
        else:
            up.set()

    c.on_connect = on_connect
    c.on_subscribe = lambda *_: up.set()
    c.on_message = on_message
    c.connect_async(host, port, keepalive=5)
    c.loop_start()
    if not up.wait(timeout):
        c.loop_stop()
        raise TimeoutError(f"no connection to {hide(url)} in {timeout} s")
    return c
