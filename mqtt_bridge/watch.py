"""`lab watch`: a readable tail of a running lab's MQTT topics, like `mosquitto_sub -v`.

One line per message: `HH:MM:SS.mmm topic payload` (`r` after the time marks a retained
message replayed by the broker; long payloads are cut to `width` characters).
The broker URL comes from the argument, else MQTT_URL, else the newest run folder's
`broker/url` file.

    python -m mqtt_bridge.watch [--url mqtt://host:port] [--run-dir DIR] [--topic T ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

import paho.mqtt.client as mqtt

from mqtt_bridge.broker import parse_url
from mqtt_bridge.mqttc import hide, make_client, resolve_url

DEFAULT_TOPICS = ("lab/#", "cmnd/#", "stat/#", "tele/#", "zigbee2mqtt/#", "homeassistant/#",
                  "+/rpc", "+/events/rpc", "+/online")  # the last three: Shelly Gen2


def format_line(topic: str, payload: bytes, retained: bool, width: int = 160,
                t: float | None = None) -> str:
    t = time.time() if t is None else t
    text = payload.decode("utf-8", "replace").replace("\n", " ")
    if width and len(text) > width:
        text = text[: width - 1] + "…"
    stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"
    return f"{stamp}{' r' if retained else '  '} {topic} {text}"


def watch(url: str, topics: tuple[str, ...] = DEFAULT_TOPICS, out: TextIO = sys.stdout,
          duration: float | None = None, max_messages: int | None = None,
          width: int = 160) -> int:
    """Print messages until Ctrl-C, `duration` seconds or `max_messages`. Returns the count."""
    host, port = parse_url(url)
    done = threading.Event()
    count = 0

    def on_connect(c: mqtt.Client, userdata: object, flags: object, rc: object,
                   props: object = None) -> None:
        c.subscribe([(t, 1) for t in topics])

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal count
        if done.is_set():
            return
        print(format_line(msg.topic, msg.payload, bool(msg.retain), width), file=out,
              flush=True)
        count += 1
        if max_messages and count >= max_messages:
            done.set()

    c = make_client(url=url)
    c.on_connect = on_connect
    c.on_message = on_message
    c.reconnect_delay_set(0.2, 2)
    c.connect_async(host, port, keepalive=30)
    c.loop_start()
    try:
        done.wait(duration)
    except KeyboardInterrupt:
        pass
    finally:
        c.disconnect()
        c.loop_stop()
    return count


def default_url(run_dir: Path | None = None) -> str:
    if os.environ.get("MQTT_URL"):
        return os.environ["MQTT_URL"]
    candidates = [Path(run_dir) / "broker" / "url"] if run_dir else sorted(
        Path(os.environ.get("LAB_RUNS", "runs")).glob("*/broker/url"),
        key=lambda p: p.stat().st_mtime)
    for p in reversed(candidates):
        if p.exists():  # the read-only observer's URL when the broker has credentials
            observer = p.with_name("observer.url")
            return (observer if observer.exists() else p).read_text().strip()
    raise SystemExit("watch: no broker found; pass --url, set MQTT_URL or start a lab")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mqtt_bridge.watch")
    ap.add_argument("--url")
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("--topic", action="append", help="topic filter (repeatable)")
    ap.add_argument("--width", type=int, default=160, help="cut payloads (0: never)")
    args = ap.parse_args(argv)
    url = resolve_url(args.url) if args.url else default_url(args.run_dir)
    print(f"watching {hide(url)} (Ctrl-C to stop)", file=sys.stderr)
    watch(url, tuple(args.topic) if args.topic else DEFAULT_TOPICS, width=args.width)


if __name__ == "__main__":
    main()
