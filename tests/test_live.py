"""The live page (lab/live.py) in headless Chromium during a real homes3 run.

Chromium is Debian's `chromium` (.ci/run installs it), driven over the DevTools protocol
with a few lines of websockets (already in the lock, through web3). The test samples the
page's DOM while `lab run homes3` goes on and then checks what it saw against the run's own
files: no assertion depends on when a sample was taken, only on what the page showed and
in which order.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                               "google-chrome")) if p), None)

# One sample of the page, read from its DOM only.
SAMPLE_JS = r"""(() => {
  const q = (s) => document.querySelector(s);
  if (document.readyState !== 'complete' || !q('#rounds-count')) return null;  // loading
  const val = (s) => { const v = q(s).dataset.value; return v ? JSON.parse(v) : null; };
  const acts = {};
  for (const tr of document.querySelectorAll('#actuators-table tr[data-actuator]')) {
    acts[tr.dataset.actuator] = {
      reported: tr.querySelector('.reported').textContent,
      count: Number(tr.querySelector('.changes').dataset.count),
      log: [...tr.querySelectorAll('.changes li')].map((li) => ({
        slot: Number(li.dataset.slot), from: li.dataset.from, to: li.dataset.to})),
      on_slots: Number(tr.querySelector('.plan').dataset.onSlots || -1)};
  }
  const devs = {};
  for (const tr of document.querySelectorAll('#devices-table tr[data-device]')) {
    const f = tr.querySelector('.final');
    devs[tr.dataset.device] = {
      round: tr.querySelector('.round').textContent,
      final_max_kw: f.dataset.finalMaxKw ? JSON.parse(f.dataset.finalMaxKw) : null};
  }
  return {
    rounds: Number(q('#rounds-count').textContent),
    points: Number(q('#chart-residuals').dataset.points),
    canvas: !!q('#chart-residuals canvas'),
    r: val('#last-r'), rho: val('#last-rho'), gas: val('#chain-round-gas'),
    head: val('#chain-head'), phase: q('#phase').dataset.phase,
    verify: q('#verify').dataset.status, verify_rounds: val('#verify-rounds'),
    aggregate_round: q('#chart-aggregate').dataset.round, acts, devs,
    resources: performance.getEntriesByType('resource').map((e) => e.name)};
})()"""


BILLS_JS = """(() => {
  const t = document.querySelector('#bills-table');
  if (!t) return null;
  return {rows: [...t.tBodies[0].rows].map((r) => [r.cells[0].textContent,
                                                  r.cells[7].textContent]),
          identity: document.querySelector('#bills-identity').textContent,
          status: document.querySelector('#bills-status').className};
})()"""


class Chromium:
    """Headless Chromium and one page, over the DevTools protocol (JSON over a WebSocket)."""

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--remote-debugging-port=0", "--window-size=1400,2000",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(profile / "stderr.log", "wb"))  # noqa: SIM115
        port_file = profile / "DevToolsActivePort"  # Chromium writes its port here
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not start: "
                                   + (profile / "stderr.log").read_text()[-2000:])
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.ids = itertools.count(1)
        self.exceptions: list[str] = []  # uncaught errors of the page's scripts
        self.call("Runtime.enable")

    def call(self, method: str, **params) -> dict:
        mid = next(self.ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:  # skip events until our answer
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("method") == "Runtime.exceptionThrown":
                self.exceptions.append(msg["params"]["exceptionDetails"].get(
                    "exception", {}).get("description", str(msg["params"])))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expr: str):
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "runs"
    monkeypatch.setenv("LAB_RUNS", str(root))
    return root


def _increasing(xs: list[int]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(xs))


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_live_page_follows_a_homes3_run(runs, tmp_path):
    """Opened at the start of `lab run homes3`, the page's round counter advances and its
    residual chart grows as rounds close, a bulb's reported state changes when the bridge
    switches it, and its final figures equal the run's own (history, schedule, bridge,
    verify); nothing is loaded from outside the lab; a screenshot lands in the run folder."""
    lab = subprocess.Popen([sys.executable, "-m", "lab.cli", "run", "homes3", "--no-compare"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                           start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(lab.stderr.readline, "")),
                              daemon=True)
    reader.start()
    browser = None
    try:
        deadline = time.monotonic() + 120
        while not any(ln.startswith("live page http") for ln in lines):
            assert lab.poll() is None, "lab run exited early:\n" + "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "no live page line:\n" + "".join(lines)
            time.sleep(0.1)
        url = next(ln for ln in lines if ln.startswith("live page ")).split()[-1]
        run_dir = Path(next(ln for ln in lines if ln.startswith("run folder ")).split()[-1])
        assert url.startswith("http://127.0.0.1:")
        assert (run_dir / "live" / "url").read_text().strip() == url
        browser = Chromium(tmp_path / "chromium")
        browser.call("Page.navigate", url=url)
        samples, shot = [], run_dir / "results" / "live.png"
        deadline = time.monotonic() + 300
        while lab.poll() is None:
            assert time.monotonic() < deadline, "lab run did not finish in 300 s"
            s = browser.evaluate(SAMPLE_JS)
            if s is not None:  # None while the page is still loading
                samples.append(s)
                bulb = s["acts"].get("home01/bulb", {})
                if not shot.exists() and s["verify"] == "ok" and bulb.get("count", 0) >= 1:
                    browser.screenshot(shot)  # mid-playback: a bulb has switched
            time.sleep(0.2)
        samples.append(browser.evaluate(SAMPLE_JS))  # the server is gone; the page stays
        page_errors = list(browser.exceptions)
        out, _ = lab.communicate(timeout=60)
    finally:
        if browser is not None:
            browser.close()
        if lab.poll() is None:
            lab.kill()
    reader.join(timeout=10)
    assert lab.returncode == 0, "".join(lines)[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    res = Path(summary["results"])
    history = json.loads((res / "history.json").read_text())
    schedule = json.loads((res / "schedule.json").read_text())
    bridge = json.loads((res / "bridge.json").read_text())
    final = samples[-1]

    assert not page_errors, page_errors
    # the round counter advances and the residual chart grows, as rounds close
    counts = [s["rounds"] for s in samples]
    points = [s["points"] for s in samples]
    assert _increasing(counts) and _increasing(points)
    assert counts[0] < summary["rounds"], "the page opened only after the last round"
    assert len(set(counts)) >= 2 and len(set(points)) >= 2
    assert counts[-1] == points[-1] == summary["rounds"] == len(history)
    assert final["canvas"]
    # the last round's figures are the run's (exact: the same floats, through JSON)
    assert final["r"] == history[-1]["r"] and final["rho"] == history[-1]["rho"]
    assert final["gas"] == history[-1]["gas"]
    assert final["aggregate_round"] == str(history[-1]["round"])
    # each device's final schedule, as schedule.json has it (kW, rounded to 1e-6 for the page)
    for dev, x in schedule["devices"].items():
        assert final["devs"][dev]["final_max_kw"] == pytest.approx(max(x), abs=1e-6), dev
        assert final["devs"][dev]["round"] == str(history[-1]["round"])
    # the bulb: seen switching OFF->ON and ON->OFF, each change after the bridge's command
    bulb = final["acts"]["home01/bulb"]
    sent = [(c["slot"], c["state"]) for c in bridge["commands"]["home01/bulb"]]
    assert {(c["from"], c["to"]) for c in bulb["log"]} >= {("OFF", "ON"), ("ON", "OFF")}, bulb
    for c in bulb["log"]:
        assert any(st == c["to"] and k <= c["slot"] for k, st in sent), (c, sent)
    for aid, act in bridge["status"]["actuators"].items():
        assert final["acts"][aid]["reported"] == act["reported"], aid
    assert bulb["on_slots"] == 16  # on_hours 4 at 15 min (configs/homes3.yaml)
    # the verify replay, shown once final
    assert final["verify"] == "ok" and final["verify_rounds"] == summary["rounds"]
    assert final["phase"] == "done"
    # everything came from the lab's own server: no CDN
    assert final["resources"] and all(u.startswith(url) for u in final["resources"]), \
        final["resources"]
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000
    # stopped with the lab: its port no longer answers
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(url.rstrip("/").rsplit(":", 1)[1]))) != 0
    # the bills, on the page of the finished run (its server started again on the folder)
    bills = json.loads((res / "bills.json").read_text())
    (run_dir / "live" / "url").unlink()
    again = subprocess.Popen([sys.executable, "-m", "lab.live", "--run-dir", str(run_dir)],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    browser = Chromium(tmp_path / "chromium2")
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "live" / "url").exists():
            assert time.monotonic() < deadline and again.poll() is None, "no live server"
            time.sleep(0.1)
        browser.call("Page.navigate", url=(run_dir / "live" / "url").read_text().strip())
        while not ((shown := browser.evaluate(BILLS_JS)) and shown["rows"]):
            assert time.monotonic() < deadline, "the bills did not show"
            time.sleep(0.2)
    finally:
        browser.close()
        again.terminate()
        again.wait(timeout=10)
    assert shown["rows"] == [[h["home"], f"{h['total_usd']:.4f}"] for h in bills["homes"]]
    assert "(exact)" in shown["identity"] and "ok" in shown["status"]


def test_page_is_self_contained_and_streams_a_snapshot(tmp_path):
    """The server alone, on a run folder with nothing in it yet: it binds loopback, writes
    RUN/live/url, serves the page and its assets from the repo (no http(s) reference leaves
    the lab), and an event stream starts with the whole state; SIGTERM stops it."""
    import re
    import signal
    import urllib.request

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "lab.live", "--run-dir", str(run_dir)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url_file = run_dir / "live" / "url"
        deadline = time.monotonic() + 30
        while not url_file.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        url = url_file.read_text().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url)
        html = urllib.request.urlopen(url, timeout=10).read().decode()
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/static/") for a in assets), assets
        for a in assets:
            body = urllib.request.urlopen(url + a[1:], timeout=10).read()
            assert len(body) > 100, a
            assert not re.search(rb"""(?:src|href)=["']https?://""", body), a
        with urllib.request.urlopen(url + "events", timeout=10) as ev:
            assert ev.headers["Content-Type"].startswith("text/event-stream")
            assert ev.readline() == b"event: snapshot\n"
            snap = json.loads(ev.readline().removeprefix(b"data: "))
        assert snap["rounds"] == [] and snap["run"]["name"] == "run"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert proc.returncode == 0
