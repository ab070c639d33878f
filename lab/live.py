"""The live page: a read-only web view of a running lab, served on loopback.

    python -m lab.live --run-dir RUN [--port P]      (the orchestrator starts it; `lab up`
                                                       prints its URL, RUN/live/url holds it)

Everything it shows is read from what the run already exposes, never from the
orchestrator's memory, so it runs the same beside the local and the Compose runtime and can
be restarted at any time:

    RUN/lab.json, RUN/chain/network.json    where the contract is and which node to ask
    the chain (the lab's RPC node)          SessionOpened (feeder: price, C, E; devices),
                                            RoundClosed (r, s, tolerances, rho, x̄ → the
                                            aggregate), Submitted (each device's proposal),
                                            the final schedule, blocks (head, gas), and
                                            `lab verify`'s replay once final
    RUN/broker/url, RUN/bridge.json         the broker, and the run name of the topics
    lab/<run>/status, lab/<run>/plan/+      the bridge's retained status (each actuator's
                                            planned/reported state, the slot) and plans

Collectors run in threads and write sections of one JSON state (LiveState); every change
is pushed to open pages as a Server-Sent Event (aiohttp), and a page that connects gets the
whole state first, so it follows the run without reloading and survives a reconnect. The
page (lab/live_static/) draws with uPlot, vendored (no CDN at run time). Nothing here sends
a transaction or publishes on MQTT: the page commands nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

STATIC = Path(__file__).with_name("live_static")
POLL_S = 0.5  # chain poll period: rounds close every ~0.2-1 s on a small run
SERIES_MAX_DEVICES = 40  # beyond this, per-device series come from /api/device/<id> only
CHANGES_KEPT = 50  # state changes kept per actuator
KEEPALIVE_S = 15.0

log = logging.getLogger("lab.live")


def _floats(xs: Any, digits: int = 6) -> list[float]:
    """A kW/price series as JSON-safe floats (a page has no use for 1e-9 kW)."""
    return [round(float(v), digits) if math.isfinite(float(v)) else 0.0 for v in xs]


class LiveState:
    """The page's data: named sections of one JSON document. Writers are threads; every
    change is queued, under the same lock as the snapshot, to every open page's event loop
    queue, so a page sees its snapshot followed by exactly the changes after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sections: dict[str, Any] = {"rounds": [], "started": time.time()}
        self._queues: set[asyncio.Queue] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    def get(self, section: str, default: Any = None) -> Any:
        with self._lock:
            return self.sections.get(section, default)

    def set(self, section: str, value: Any) -> None:
        with self._lock:
            self.sections[section] = value
            self._push({"section": section, "value": value})

    def append(self, section: str, rows: list[Any]) -> None:
        with self._lock:
            self.sections.setdefault(section, []).extend(rows)
            self._push({"section": section, "append": rows})

    def subscribe(self, q: asyncio.Queue) -> str:
        with self._lock:
            self._queues.add(q)
            return json.dumps(self.sections, allow_nan=False)

    def unsubscribe(self, q: asyncio.Queue) -> None:
        with self._lock:
            self._queues.discard(q)

    def close(self) -> None:
        """Tell every open event stream to end (None is their sentinel)."""
        with self._lock:
            for q in self._queues:
                self._put(q, None)

    def _push(self, msg: dict) -> None:
        text = json.dumps(msg, allow_nan=False)
        for q in self._queues:
            self._put(q, text)

    def _put(self, q: asyncio.Queue, item: str | None) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(q.put_nowait, item)


def _wait_file(path: Path, stop: threading.Event) -> bool:
    """Wait until `path` exists (another process writes it later in the run)."""
    while not path.exists():
        if stop.wait(0.25):
            return False
    return True


def _read_json(path: Path, stop: threading.Event) -> dict | None:
    """`path` once it exists and parses (some run files are not written atomically)."""
    while _wait_file(path, stop):
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            if stop.wait(0.25):
                break
    return None


# -- the chain ------------------------------------------------------------------------------


class ChainFollower:
    """Rounds, proposals, blocks, the final schedule and the verify verdict, from the chain
    through the lab's RPC node. Keeps its progress across errors (a node restart)."""

    def __init__(self, run_dir: Path, state: LiveState, stop: threading.Event) -> None:
        self.run_dir, self.state, self.stop = run_dir, state, stop
        self.coord: Any = None
        self.next_round = 0
        self.round_from = 0      # block to read RoundClosed from (inclusive, deduplicated)
        self.sub_from = 0        # block to read Submitted from
        self.prev_round_block = 0
        self.block_gas: dict[int, tuple[int, int]] = {}  # block -> (gasUsed, transactions)
        self.scanned = -1        # highest block whose gas is known
        self.proposals: dict[str, tuple[int, list[float]]] = {}  # device -> (round, kW)
        self.final: dict[str, list[float]] | None = None
        self.verifying = False

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.coord is None and not self._connect():
                    return
                self._tick()
            except Exception as e:  # noqa: BLE001 - a node hiccup: say so, poll again
                log.warning("chain: %s", e)
                self.state.set("chain_error", f"{type(e).__name__}: {e}"[:300])
                self.stop.wait(2.0)
                continue
            if self.state.get("chain_error"):
                self.state.set("chain_error", None)
            self.stop.wait(POLL_S)

    def _connect(self) -> bool:
        from aggregator_contract.client import Coordinator, connect
        from chain.network import rpc_node_of

        lab = _read_json(self.run_dir / "lab.json", self.stop)
        if lab is None:
            return False
        node = rpc_node_of(self.run_dir)
        coord = Coordinator(connect(node.rpc_url), lab["contract"])
        self.session = int(lab["session"])
        self.deploy_block = int(lab.get("deploy_block", 0))
        info = coord.session_info(self.session, from_block=self.deploy_block)
        by_addr = {a.lower(): d for d, a in lab["devices"].items()}
        self.ids = [by_addr.get(a.lower(), a) for a in info.devices]
        self.dev_of = {a.lower(): by_addr.get(a.lower(), a) for a in info.devices}
        self.delta_h = info.feeder.delta_h
        self.round_from = self.sub_from = info.block
        self.prev_round_block = info.block  # round 0's gas: the blocks after the session opened
        self.scanned = self.deploy_block - 1
        s = info.settings
        self.state.set("session", {
            "session": self.session, "contract": lab["contract"], "node": node.name,
            "scenario": lab.get("scenario"), "runtime": lab.get("runtime"),
            "devices": self.ids, "slots": info.feeder.slots, "delta_h": self.delta_h,
            "price": _floats(info.feeder.price), "capacity": _floats(info.feeder.capacity),
            "export_limit": _floats(info.feeder.export_limit), "gamma": info.feeder.gamma,
            "rho0": s.rho0, "eps_abs": s.eps_abs, "eps_rel": s.eps_rel,
            "max_rounds": s.max_rounds, "deploy_block": self.deploy_block,
            "open_block": info.block})
        self.coord = coord
        return True

    def _tick(self) -> None:
        c, sid = self.coord, self.session
        final = self.final is None and c.is_finalized(sid)  # before the events: none missed
        self._scan_blocks(int(c.w3.eth.block_number))
        if self.final is None:
            self._rounds()
            self._proposals()
            cur = c.current()
            if cur is not None and cur.session == sid:
                self.state.set("current", {"round": cur.round, "submitted": cur.submitted,
                                           "devices": len(self.ids), "rho": cur.rho,
                                           "deadline": cur.deadline})
        if final:
            self._finalize()

    def _scan_blocks(self, head: int) -> None:
        """Gas and transactions of every block since the deployment (one get_block each)."""
        w3 = self.coord.w3
        for b in range(self.scanned + 1, head + 1):
            blk = w3.eth.get_block(b)
            self.block_gas[b] = (int(blk["gasUsed"]), len(blk["transactions"]))
            self.scanned = b
        if head >= self.deploy_block:
            gas = sum(g for g, _ in self.block_gas.values())
            txs = sum(n for _, n in self.block_gas.values())
            last = self.block_gas.get(head, (0, 0))
            chain = {"head": head, "blocks": head - self.deploy_block + 1, "gas": gas,
                     "txs": txs, "head_gas": last[0], "head_txs": last[1]}
            if chain != self.state.get("chain"):
                self.state.set("chain", chain)

    def _gas(self, after: int, upto: int) -> int:
        """Gas of blocks (after, upto], as the orchestrator counts a round's gas."""
        if upto > self.scanned:
            self._scan_blocks(upto)
        return sum(self.block_gas.get(b, (0, 0))[0] for b in range(after + 1, upto + 1))

    def _rounds(self) -> None:
        recs = [r for r in self.coord.rounds(self.session, from_block=self.round_from)
                if r.round >= self.next_round]
        rows = []
        for r in recs:
            rows.append({"round": r.round, "r": r.r, "s": r.s, "eps_pri": r.eps_pri,
                         "eps_dual": r.eps_dual, "rho": r.rho, "rho_next": r.rho_next,
                         "converged": r.converged, "stragglers": r.stragglers,
                         "import_excess_kw": r.import_excess_kw,
                         "export_excess_kw": r.export_excess_kw, "block": r.block,
                         "gas": self._gas(self.prev_round_block, r.block), "t": time.time()})
            self.prev_round_block = r.block
            self.next_round, self.round_from = r.round + 1, r.block
        if rows:
            self.state.append("rounds", rows)
            last = recs[-1]
            n = len(self.ids)
            # The aggregate the feeder sees this round: N·x̄ (x̄ as the contract holds it).
            self.state.set("aggregate", {"round": last.round, "final": False,
                                         "kw": _floats(n * last.xbar)})

    def _proposals(self) -> None:
        changed = False
        for s in self.coord.submissions(self.session, from_block=self.sub_from):
            dev = self.dev_of.get(s.device.lower(), s.device)
            self.sub_from = max(self.sub_from, s.block)
            if dev not in self.proposals or s.round > self.proposals[dev][0]:
                self.proposals[dev] = (s.round, _floats(s.x))
                changed = True
        if changed:
            self._publish_devices()

    def _publish_devices(self) -> None:
        with_series = len(self.ids) <= SERIES_MAX_DEVICES
        out = {}
        for dev in self.ids:
            row: dict[str, Any] = {}
            if dev in self.proposals:
                rnd, x = self.proposals[dev]
                row.update(round=rnd, kwh=round(sum(x) * self.delta_h, 4),
                           min_kw=min(x), max_kw=max(x))
                if with_series:
                    row["kw"] = x
            if self.final is not None:
                f = self.final[dev]
                row.update(final_kwh=round(sum(f) * self.delta_h, 4), final_min_kw=min(f),
                           final_max_kw=max(f))
                if with_series:
                    row["final_kw"] = f
            out[dev] = row
        self.state.set("devices", out)

    def device(self, dev: str) -> dict[str, Any]:
        """One device's latest proposal and final schedule (for /api/device/<id>)."""
        rnd, x = self.proposals.get(dev, (None, None))
        return {"device": dev, "round": rnd, "kw": x,
                "final_kw": None if self.final is None else self.final.get(dev)}

    def _finalize(self) -> None:
        c, sid = self.coord, self.session
        self._rounds()  # the last RoundClosed is in the finalizing block
        self._proposals()
        sched = c.schedule(sid)
        if sched is None:
            return
        self.final = {self.dev_of.get(a.lower(), a): _floats(x) for a, x in sched.x.items()}
        total = [sum(col) for col in zip(*self.final.values(), strict=True)]
        self.state.set("final", {"round": sched.round, "converged": sched.converged,
                                 "ended": sched.ended, "block": sched.block,
                                 "timestamp": sched.timestamp})
        self.state.set("aggregate", {"round": sched.round, "final": True, "kw": _floats(total)})
        self.state.set("current", None)
        self._publish_devices()
        threading.Thread(target=self._verify, name="live-verify", daemon=True).start()

    def _verify(self) -> None:
        """`lab verify`'s replay (lab/verify.py) of the finalized session, on its own client."""
        from aggregator_contract.client import Coordinator
        from lab.verify import verify_session

        self.state.set("verify", {"running": True})
        t = time.monotonic()
        try:
            coord = Coordinator(self.coord.w3, self.coord.address)
            verdict = verify_session(coord, self.session, from_block=self.deploy_block)
            out = {**verdict.as_dict(), "running": False,
                   "wall_s": round(time.monotonic() - t, 3)}
        except Exception as e:  # noqa: BLE001 - shown on the page, not fatal to it
            log.exception("verify failed")
            out = {"running": False, "ok": False, "problems": [f"{type(e).__name__}: {e}"]}
        self.state.set("verify", out)


# -- the bridge, over MQTT ------------------------------------------------------------------


class BridgeFollower:
    """The bridge's retained status and plans (lab/<run>/status, lab/<run>/plan/+), and a
    log of each actuator's reported state changes with the slot they were seen in."""

    def __init__(self, run_dir: Path, state: LiveState, stop: threading.Event) -> None:
        self.run_dir, self.state, self.stop = run_dir, state, stop
        self.plans: dict[str, list[int]] = {}
        self.changes: dict[str, list[dict]] = {}
        self.counts: dict[str, int] = {}
        self.last: dict[str, str | None] = {}
        self.client: Any = None

    def run(self) -> None:
        from mqtt_bridge import topics as tp
        from mqtt_bridge.broker import parse_url
        from mqtt_bridge.mqttc import make_client

        url_file = self.run_dir / "broker" / "url"  # written when the broker is up
        cfg = _read_json(self.run_dir / "bridge.json", self.stop)
        if cfg is None or not _wait_file(url_file, self.stop):
            return
        run = cfg.get("run", self.run_dir.name)
        acts = cfg.get("actuators", [])
        self.state.set("day", {k: cfg.get(k) for k in ("start", "slot_minutes", "slots",
                                                        "seconds_per_slot", "realtime")})
        self.state.set("actuators", [{"id": f"{a['device']}/{a['component']}",
                                      "device": a["device"], "component": a["component"],
                                      "protocol": a["protocol"], "address": a["address"],
                                      "real": a.get("real", False)} for a in acts])
        self.status_topic = tp.lab_status(run)
        self.plan_prefix = tp.lab_plan(run, "")
        from mqtt_bridge.auth import role_url

        url = role_url(self.run_dir, "observer") or url_file.read_text().strip()
        host, port = parse_url(url)
        c = make_client(f"lab-live-{run}-{int(time.time() * 1e3) % 100000}", url)
        c.on_connect = lambda cl, *_: cl.subscribe(
            [(self.status_topic, 1), (self.plan_prefix + "#", 1)])
        c.on_message = self._on_message
        c.connect_async(host, port, keepalive=30)
        c.loop_start()
        self.client = c
        self.state.set("mqtt", {"url": f"mqtt://{host}:{port}", "run": run})

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            data = json.loads(msg.payload.decode("utf-8"))
            if msg.topic == self.status_topic:
                self._on_status(data)
            elif msg.topic.startswith(self.plan_prefix):
                self.plans[msg.topic[len(self.plan_prefix):]] = [int(b) for b in data["plan"]]
                self.state.set("plans", dict(self.plans))
        except Exception as e:  # noqa: BLE001 - one bad payload must not stop the view
            log.warning("mqtt %s: %s", msg.topic, e)

    def _on_status(self, st: dict) -> None:
        slot = st.get("slot")
        for aid, a in (st.get("actuators") or {}).items():
            rep = a.get("reported")
            if rep is not None and aid in self.last and self.last[aid] != rep:
                self.counts[aid] = self.counts.get(aid, 0) + 1
                log_ = self.changes.setdefault(aid, [])
                log_.append({"slot": slot, "from": self.last[aid], "to": rep,
                             "t": st.get("updated")})
                del log_[:-CHANGES_KEPT]
            if rep is not None:
                self.last[aid] = rep
        keep = ("phase", "slot", "slots", "day_start", "seconds_per_slot", "actuators",
                "offline", "disagree", "stats", "finalized", "round", "updated")
        self.state.set("bridge", {**{k: st.get(k) for k in keep},
                                  "changes": self.changes, "change_counts": self.counts})


# -- the server -----------------------------------------------------------------------------


def make_app(state: LiveState, chain: ChainFollower | None = None) -> Any:
    from aiohttp import web

    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def whole(request: web.Request) -> web.Response:
        with state._lock:
            text = json.dumps(state.sections, allow_nan=False)
        return web.Response(text=text, content_type="application/json")

    async def device(request: web.Request) -> web.Response:
        if chain is None:
            raise web.HTTPNotFound()
        return web.json_response(chain.device(request.match_info["id"]))

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        q: asyncio.Queue = asyncio.Queue()
        snap = state.subscribe(q)
        try:
            await resp.write(f"event: snapshot\ndata: {snap}\n\n".encode())
            while True:
                try:
                    msg = await asyncio.wait_for(q.get(), KEEPALIVE_S)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if msg is None:
                    break
                await resp.write(f"data: {msg}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            state.unsubscribe(q)
        return resp

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/api/state", whole)
    app.router.add_get("/api/device/{id:.+}", device)
    app.router.add_get("/events", events)
    app.router.add_static("/static/", STATIC)
    return app


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def url_file(run_dir: Path) -> Path:
    return Path(run_dir) / "live" / "url"


def _port(run_dir: Path, requested: int | None) -> int:
    """The port asked for, else the one of a previous start (a restarted server keeps the
    URL the lab printed), else 0 (a free one)."""
    if requested is not None:
        return requested
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(url_file(run_dir).read_text().strip().rstrip("/").rsplit(":", 1)[1])
    return 0


async def serve(run_dir: Path, port: int | None = None) -> None:
    from aiohttp import web

    state = LiveState()
    state.loop = asyncio.get_running_loop()
    stop = threading.Event()
    chain = ChainFollower(run_dir, state, stop)
    bridge = BridgeFollower(run_dir, state, stop)
    state.set("run", {"name": run_dir.name, "path": str(run_dir)})

    def bills() -> None:  # written once, by the orchestrator after settlement (lab/bill.py)
        got = _read_json(run_dir / "results" / "bills.json", stop)
        if got is not None:
            state.set("bills", got)

    for name, target in (("live-chain", chain.run), ("live-bridge", bridge.run),
                         ("live-bills", bills)):
        threading.Thread(target=target, name=name, daemon=True).start()
    runner = web.AppRunner(make_app(state, chain), access_log=None)
    await runner.setup()
    try:
        sock = _bind(_port(run_dir, port))
    except OSError:  # the previous port is taken meanwhile: any free one
        sock = _bind(0)
    site = web.SockSite(runner, sock, shutdown_timeout=1.0)
    await site.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    target = url_file(run_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(url + "\n")
    tmp.replace(target)  # atomic: the orchestrator polls for it
    log.info("live page at %s", url)
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        state.loop.add_signal_handler(sig, done.set)
    await done.wait()
    stop.set()
    state.close()
    bridge.close()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lab.live",
                                 description="Serve a run's live page on 127.0.0.1.")
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--port", type=int, default=None,
                    help="default: the port of RUN/live/url, else a free one")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    asyncio.run(serve(args.run_dir.resolve(), args.port))


if __name__ == "__main__":
    main()
