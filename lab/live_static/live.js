// The live page's client: mirrors the server's state (lab/live.py) from one Server-Sent
// Event stream (a snapshot, then changes) and redraws what changed. Read-only: it only
// GETs. Charts are uPlot (vendored, lab/live_static/vendor/uplot/).
"use strict";

const S = { rounds: [] };          // the server's sections, as last received
const charts = {};                 // uPlot instances by name
let selected = null;               // device shown in the device chart
const $ = (id) => document.getElementById(id);

// -- formatting -------------------------------------------------------------------------
const fmtE = (v) => (v == null ? "–" : Number(v).toExponential(3));
const fmtP = (v, p = 4) => (v == null ? "–" : Number(v).toPrecision(p));
const fmtF = (v, d = 3) => (v == null ? "–" : Number(v).toFixed(d));
const fmtInt = (v) => (v == null ? "–" : Number(v).toLocaleString("en-US"));
const pos = (v) => (v > 0 ? v : 1e-12);  // log axes: no zeros

function setVal(id, text, value) {
  const el = $(id);
  el.textContent = text;
  if (value !== undefined) el.dataset.value = value == null ? "" : JSON.stringify(value);
}

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  if (text !== undefined) e.textContent = text;
  return e;
}

// -- charts -----------------------------------------------------------------------------
function width(id) {
  return Math.max(280, $(id).clientWidth - 8);
}

function makeChart(name, id, opts, data) {
  if (charts[name]) charts[name].destroy();
  // no per-point markers, a static legend (no hover read-out): a dashboard, not an explorer
  opts.series.forEach((s, i) => { if (i && !s.points) s.points = { show: false }; });
  charts[name] = new uPlot({ width: width(id), height: 220, legend: { live: false }, ...opts },
    data, $(id));
}

const expTicks = (u, vals) => vals.map((v) => (v == null ? "" : v.toExponential(0)));
const roundAxis = { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] };

function stepped() {
  return uPlot.paths && uPlot.paths.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined;
}

function ensureRoundCharts() {
  if (charts.residuals) return;
  const logY = { distr: 3 };
  makeChart("residuals", "chart-residuals", {
    title: "residuals and tolerances",
    scales: { x: { time: false }, y: logY },
    axes: [roundAxis, { size: 60, values: expTicks }],
    series: [{ label: "round" },
      { label: "r", stroke: "#1f77b4", width: 2 },
      { label: "ε_pri", stroke: "#1f77b4", dash: [6, 4] },
      { label: "s", stroke: "#d62728", width: 2 },
      { label: "ε_dual", stroke: "#d62728", dash: [6, 4] }],
  }, [[], [], [], [], []]);
  makeChart("rho", "chart-rho", {
    title: "ρ",
    scales: { x: { time: false }, y: logY },
    axes: [roundAxis, { size: 60, values: expTicks }],
    series: [{ label: "round" }, { label: "ρ", stroke: "#333", width: 2,
      points: { show: true } }],
  }, [[], []]);
}

function drawRoundCharts() {
  ensureRoundCharts();
  const R = S.rounds;
  const k = R.map((r) => r.round);
  charts.residuals.setData([k, R.map((r) => pos(r.r)), R.map((r) => pos(r.eps_pri)),
    R.map((r) => pos(r.s)), R.map((r) => pos(r.eps_dual))]);
  charts.rho.setData([k, R.map((r) => pos(r.rho))]);
  $("chart-residuals").dataset.points = R.length;   // the chart's size, for tests
  $("chart-rho").dataset.points = R.length;
}

function hours() {
  const s = S.session;
  return s ? Array.from({ length: s.slots }, (_, t) => t * s.delta_h) : [];
}

function drawAggregate() {
  const s = S.session;
  if (!s) return;
  const a = S.aggregate;
  const x = hours();
  const agg = a ? a.kw : x.map(() => null);
  const data = [x, agg, s.capacity, s.export_limit.map((v) => -v), s.price];
  if (!charts.aggregate) {
    const step = stepped();
    makeChart("aggregate", "chart-aggregate", {
      height: 260,
      scales: { x: { time: false }, kw: {}, price: {} },
      axes: [{ label: "hour of the day" }, { scale: "kw", label: "kW", size: 60 },
        { scale: "price", side: 1, label: "$/kWh", grid: { show: false }, size: 60 }],
      series: [{ label: "h" },
        { label: "aggregate kW", scale: "kw", stroke: "#1f77b4", width: 2, paths: step },
        { label: "capacity C", scale: "kw", stroke: "#d62728", dash: [6, 4], paths: step },
        { label: "export limit −E", scale: "kw", stroke: "#d62728", dash: [2, 4], paths: step },
        { label: "price", scale: "price", stroke: "#2ca02c", paths: step }],
    }, data);
  } else {
    charts.aggregate.setData(data);
  }
  $("chart-aggregate").dataset.round = a ? a.round : "";
  $("aggregate-label").textContent = !a ? "" :
    a.final ? `final schedule (round ${a.round})` : `after round ${a.round}`;
}

async function drawDevice() {
  if (!S.session || !selected) return;
  let d = (S.devices || {})[selected];
  if (!d || (d.kw === undefined && d.round !== undefined)) {
    // large runs: series are not pushed; ask for this one (a GET, read-only)
    try {
      const r = await fetch(`/api/device/${encodeURIComponent(selected)}`);
      if (r.ok) { const j = await r.json(); d = { ...d, kw: j.kw, final_kw: j.final_kw }; }
    } catch (e) { /* the next update retries */ }
  }
  const x = hours();
  const nulls = x.map(() => null);
  const data = [x, (d && d.kw) || nulls, (d && d.final_kw) || nulls];
  if (!charts.device) {
    const step = stepped();
    makeChart("device", "chart-device", {
      scales: { x: { time: false } },
      axes: [{ label: "hour of the day" }, { label: "kW", size: 60 }],
      series: [{ label: "h" },
        { label: "current proposal", stroke: "#ff7f0e", width: 2, paths: step },
        { label: "final schedule", stroke: "#111", width: 1.5, paths: step }],
    }, data);
  } else {
    charts.device.setData(data);
  }
  $("chart-device").dataset.device = selected;
}

function sparkline(xs, w = 120, h = 24) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  if (!xs || !xs.length) return svg;
  const lo = Math.min(0, ...xs), hi = Math.max(0, ...xs), span = hi - lo || 1;
  const pts = xs.map((v, i) =>
    `${(i / Math.max(1, xs.length - 1)) * w},${h - ((v - lo) / span) * h}`).join(" ");
  const line = document.createElementNS(svg.namespaceURI, "polyline");
  line.setAttribute("points", pts);
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#ff7f0e");
  svg.appendChild(line);
  return svg;
}

// -- sections ---------------------------------------------------------------------------
function renderPhase() {
  const b = S.bridge || {};
  let phase = "waiting for the chain", key = "waiting";
  if (S.session) { phase = "session open"; key = "open"; }
  if (S.rounds.length) { phase = "rounds"; key = "rounds"; }
  if (S.final) { phase = "final"; key = "final"; }
  if (b.phase === "playing") {
    phase = `playing the day (slot ${b.slot ?? "–"} of ${b.slots})`; key = "playing";
  } else if (b.phase === "done" || b.phase === "stopped") {
    phase = `day ${b.phase}`; key = b.phase;
  }
  $("phase").textContent = phase;
  $("phase").dataset.phase = key;
}

function renderSession() {
  const s = S.session;
  if (!s) return;
  $("scenario").textContent = s.scenario || "";
  $("chain-contract").textContent = s.contract;
  $("chain-session").textContent = s.session;
  $("chain-node").textContent = s.node;
  const sel = $("device-select");
  if (sel.options.length !== s.devices.length) {
    sel.replaceChildren(...s.devices.map((d) => el("option", { value: d }, d)));
    selected = selected || s.devices[0];
    sel.value = selected;
  }
  drawAggregate();
  renderDevices();
}

function renderRounds() {
  const R = S.rounds;
  $("rounds-count").textContent = R.length;
  $("rounds-count").dataset.value = R.length;
  if (!R.length) return;
  const last = R[R.length - 1];
  setVal("last-r", fmtE(last.r), last.r);
  setVal("last-eps-pri", `(ε ${fmtE(last.eps_pri)})`, last.eps_pri);
  setVal("last-s", fmtE(last.s), last.s);
  setVal("last-eps-dual", `(ε ${fmtE(last.eps_dual)})`, last.eps_dual);
  setVal("last-rho", fmtP(last.rho), last.rho);
  $("last-r").dataset.round = last.round;
  $("rho-next").textContent = last.rho_next !== last.rho ? `→ ${fmtP(last.rho_next)}` : "";
  setVal("chain-round-gas", fmtInt(last.gas), last.gas);
  const tb = $("rounds-table").tBodies[0];
  for (let i = tb.rows.length; i < R.length; i++) {
    const r = R[i];
    const tr = el("tr", { "data-round": r.round });
    for (const v of [r.round, fmtE(r.r), fmtE(r.eps_pri), fmtE(r.s), fmtE(r.eps_dual),
      fmtP(r.rho), r.stragglers, r.block, fmtInt(r.gas)]) tr.appendChild(el("td", {}, v));
    tb.appendChild(tr);
  }
  drawRoundCharts();
  renderOutcome();
}

function renderOutcome() {
  const f = S.final;
  const last = S.rounds[S.rounds.length - 1];
  $("outcome").textContent = f ? (f.converged ? `converged, final at round ${f.round}` :
    `max rounds, final at round ${f.round}`) : last ? "not yet" : "–";
}

function renderCurrent() {
  const c = S.current;
  $("open-round").textContent = c ? c.round : S.final ? "none (final)" : "–";
  $("open-submitted").textContent = c ? `${c.submitted}/${c.devices} submitted` : "";
}

function renderDevices() {
  const s = S.session;
  if (!s) return;
  const D = S.devices || {};
  const tb = $("devices-table").tBodies[0];
  const rows = s.devices.map((id) => {
    const d = D[id] || {};
    const tr = el("tr", { "data-device": id });
    tr.appendChild(el("td", {}, id));
    tr.appendChild(el("td", { className: "round" }, d.round ?? "–"));
    tr.appendChild(el("td", {}, fmtF(d.kwh)));
    tr.appendChild(el("td", {}, fmtF(d.min_kw)));
    tr.appendChild(el("td", {}, fmtF(d.max_kw)));
    const sp = el("td");
    sp.appendChild(sparkline(d.kw));
    tr.appendChild(sp);
    const fin = el("td", { className: "final" }, fmtF(d.final_kwh));
    if (d.final_max_kw !== undefined) {
      fin.dataset.finalMaxKw = JSON.stringify(d.final_max_kw);
      fin.dataset.finalMinKw = JSON.stringify(d.final_min_kw);
    }
    tr.appendChild(fin);
    tr.onclick = () => { selected = id; $("device-select").value = id; drawDevice(); };
    return tr;
  });
  tb.replaceChildren(...rows);
  drawDevice();
}

function renderChain() {
  const c = S.chain;
  if (!c) return;
  setVal("chain-head", fmtInt(c.head), c.head);
  $("chain-blocks").textContent = fmtInt(c.blocks);
  $("chain-txs").textContent = fmtInt(c.txs);
  $("chain-gas").textContent = fmtInt(c.gas);
}

function renderChainError() {
  const e = $("chain-error");
  e.hidden = !S.chain_error;
  e.textContent = S.chain_error || "";
}

function renderVerify() {
  const v = S.verify;
  if (!v) return;
  const st = $("verify-status");
  const box = $("verify");
  if (v.running) {
    st.textContent = "replaying…"; box.dataset.status = "running";
  } else {
    st.textContent = v.ok ? "ok" : "FAILED";
    box.dataset.status = v.ok ? "ok" : "failed";
    st.className = `badge ${v.ok ? "ok" : "bad"}`;
  }
  setVal("verify-rounds", v.rounds ?? "–", v.rounds);
  $("verify-figures").textContent = fmtInt(v.figures_checked);
  $("verify-dev").textContent = v.max_dev_kw == null ? "–" : fmtE(v.max_dev_kw);
  $("verify-problems").replaceChildren(...(v.problems || []).map((p) => el("li", {}, p)));
}

function renderBills() {
  const b = S.bills;
  if (!b) return;
  const st = $("bills-status");
  st.textContent = b.ok ? "settled, replayed from the chain" : "replay differs";
  st.className = `badge ${b.ok ? "ok" : "bad"}`;
  const f = (v, d) => Number(v).toFixed(d);
  $("bills-table").tBodies[0].replaceChildren(...b.homes.map((h) => {
    const tr = el("tr");
    tr.append(...[h.home, f(h.import_kwh, 3), f(h.export_kwh, 3), f(h.deviation_kwh, 3),
      f(h.energy_usd, 4), f(h.export_usd, 4), f(h.deviation_usd, 4), f(h.total_usd, 4),
      h.settled_on_chain ? "yes" : "NO"].map((c) => el("td", {}, c)));
    return tr;
  }));
  const s = b.settlement;
  $("bills-identity").textContent = `bills $${f(s.bills_usd, 4)} + remainder ` +
    `$${f(s.remainder_usd, 4)} (congestion $${f(s.congestion_usd, 4)} − deviation ` +
    `$${f(s.deviation_usd, 4)}) = feeder cost of the metered aggregate ` +
    `$${f(s.feeder_cost_usd, 4)}` + (s.identity_exact ? " (exact)" : " (NOT exact)");
  $("bills-problems").replaceChildren(...(b.problems || []).map((p) => el("li", {}, p)));
}

function clock(start, minutes) {
  // the scenario's wall-clock time of a slot (start "YYYY-MM-DDTHH:MM", local)
  const m = /T(\d\d):(\d\d)/.exec(start || "");
  const t0 = m ? Number(m[1]) * 60 + Number(m[2]) : 0;
  const t = (t0 + minutes) % 1440;
  return `${String(Math.floor(t / 60)).padStart(2, "0")}:${String(Math.round(t % 60)).padStart(2, "0")}`;
}

function nextSwitch(aid) {
  const plan = (S.plans || {})[aid];
  const b = S.bridge || {};
  const day = S.day || {};
  if (!plan) return { text: "no plan yet" };
  const playing = b.phase === "playing" && b.slot != null;
  const cur = playing ? b.slot : -1;
  const now = cur >= 0 ? plan[cur] : null;
  let k = cur + 1;
  while (k < plan.length && now !== null && plan[k] === now) k++;
  if (k >= plan.length || b.phase === "done" || b.phase === "stopped") {
    return { text: "none left today" };
  }
  const state = plan[k] ? "ON" : "OFF";
  let text = `${state} at slot ${k} (${clock(day.start, k * (day.slot_minutes || 15))})`;
  if (playing && b.day_start) {
    const secs = b.day_start + k * b.seconds_per_slot - Date.now() / 1000;
    text += `, in ${Math.max(0, secs).toFixed(1)} s`;
  }
  return { text, slot: k, state };
}

function renderActuators() {
  const A = S.actuators || [];
  const b = S.bridge || {};
  const st = b.actuators || {};
  const tb = $("actuators-table").tBodies[0];
  const rows = A.map((a) => {
    const s = st[a.id] || {};
    const tr = el("tr", { "data-actuator": a.id });
    tr.appendChild(el("td", {}, a.id + (a.real ? " (real)" : "")));
    tr.appendChild(el("td", {}, `${a.protocol} · ${a.address}`));
    tr.appendChild(el("td", { className: "planned" }, s.planned ?? "–"));
    const rep = el("td", { className: `reported st-${(s.reported || "none").toLowerCase()}` },
      s.reported ?? "–");
    tr.appendChild(rep);
    tr.appendChild(el("td", { className: "online" },
      s.online == null ? "–" : s.online ? "online" : "offline"));
    tr.appendChild(el("td", { className: `state st-${s.state || "unknown"}` }, s.state ?? "–"));
    const nx = nextSwitch(a.id);
    const ntd = el("td", { className: "next" }, nx.text);
    if (nx.slot !== undefined) ntd.dataset.slot = nx.slot;
    tr.appendChild(ntd);
    const log = ((b.changes || {})[a.id]) || [];
    const count = ((b.change_counts || {})[a.id]) || 0;
    const ch = el("td", { className: "changes", "data-count": count });
    const det = el("details");
    det.appendChild(el("summary", {}, String(count)));
    const ul = el("ul");
    for (const c of log) {
      ul.appendChild(el("li", { "data-slot": c.slot, "data-from": c.from, "data-to": c.to },
        `slot ${c.slot}: ${c.from} → ${c.to}`));
    }
    det.appendChild(ul);
    ch.appendChild(det);
    tr.appendChild(ch);
    const plan = (S.plans || {})[a.id];
    const ptd = el("td", { className: "plan" });
    if (plan) {
      ptd.dataset.onSlots = plan.reduce((n, v) => n + v, 0);
      ptd.appendChild(planStrip(plan, b.phase === "playing" ? b.slot : null));
    }
    tr.appendChild(ptd);
    return tr;
  });
  // keep open <details> open across redraws
  const open = new Set([...tb.querySelectorAll("tr[data-actuator] details[open]")]
    .map((d) => d.closest("tr").dataset.actuator));
  tb.replaceChildren(...rows);
  for (const tr of tb.rows) if (open.has(tr.dataset.actuator)) tr.querySelector("details").open = true;
  const pb = b.phase ? `· bridge ${b.phase}${b.slot != null ? `, slot ${b.slot}/${b.slots}` : ""}` +
    (b.stats ? `, ${b.stats.commands} commands, ${b.stats.acks} acks` : "") : "";
  $("playback").textContent = pb;
}

function planStrip(plan, cur) {
  const w = 192, h = 14, cw = w / plan.length;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  plan.forEach((v, t) => {
    if (!v && t !== cur) return;
    const r = document.createElementNS(svg.namespaceURI, "rect");
    r.setAttribute("x", t * cw);
    r.setAttribute("width", Math.max(cw, 1));
    r.setAttribute("y", t === cur ? 0 : 3);
    r.setAttribute("height", t === cur ? h : h - 6);
    r.setAttribute("fill", t === cur ? "#d62728" : "#f2b700");
    svg.appendChild(r);
  });
  return svg;
}

const RENDER = {
  run: () => { $("run-name").textContent = S.run ? S.run.name : "…"; },
  session: () => { renderSession(); renderPhase(); },
  rounds: () => { renderRounds(); renderPhase(); },
  current: renderCurrent,
  aggregate: drawAggregate,
  devices: renderDevices,
  final: () => { renderOutcome(); renderCurrent(); renderPhase(); },
  chain: renderChain,
  chain_error: renderChainError,
  verify: renderVerify,
  bills: renderBills,
  actuators: renderActuators,
  plans: renderActuators,
  day: renderActuators,
  bridge: () => { renderActuators(); renderPhase(); },
};

function renderAll() {
  for (const f of Object.values(RENDER)) f();
}

// -- the event stream -------------------------------------------------------------------
function setConn(state, text) {
  $("conn").dataset.state = state;
  $("conn").textContent = text || state;
}

function connect() {
  const es = new EventSource("/events");
  es.addEventListener("snapshot", (e) => {
    for (const k of Object.keys(S)) delete S[k];
    Object.assign(S, { rounds: [] }, JSON.parse(e.data));
    renderAll();
    setConn("live");
  });
  es.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.append) {  // rows with a round number: skip any already held
      const arr = S[m.section] || (S[m.section] = []);
      const last = arr.length ? arr[arr.length - 1].round : -1;
      for (const r of m.append) if (r.round > last) arr.push(r);
    } else {
      S[m.section] = m.value;
    }
    (RENDER[m.section] || (() => {}))();
  };
  // EventSource reconnects by itself; the new snapshot replaces everything.
  es.onerror = () => setConn("reconnecting", "server gone (run over?): showing the last state");
}

$("device-select").onchange = (e) => { selected = e.target.value; drawDevice(); };
window.addEventListener("resize", () => {
  for (const [name, c] of Object.entries(charts)) {
    const id = { residuals: "chart-residuals", rho: "chart-rho", aggregate: "chart-aggregate",
      device: "chart-device" }[name];
    c.setSize({ width: width(id), height: c.height });
  }
});
setInterval(() => { if (S.bridge && S.bridge.phase === "playing") renderActuators(); }, 500);
connect();
