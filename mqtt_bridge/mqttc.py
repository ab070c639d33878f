"""A paho-mqtt 2 client set up the way every lab process wants it."""

from __future__ import annotations

import socket
from typing import Any

import paho.mqtt.client as mqtt


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # paho leaves Nagle on: a command written while a PUBACK is outstanding would wait for
    # the peer's delayed ACK (~40 ms on Linux), which would dominate command latency.
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_client(client_id: str = "") -> mqtt.Client:
    """MQTT 3.1.1 client (callback API v2), TCP_NODELAY, fast reconnect (0.1..0.5 s: the
    lab's broker is local, and a command due during an outage waits for the reconnect)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.on_socket_open = _nodelay
    c.reconnect_delay_set(0.1, 0.5)
    return c
