// Herald's dashboard: polls /dashboard/data every second and draws each chart on its canvas.
// No dependencies, no build step. This node's points come with their history; every other
// node's come one summary at a time and are kept here, at most WINDOW per node.
"use strict";

const WINDOW = 300;           // points kept per node: five minutes at one a second
const SPAN_MS = WINDOW * 1000;
const STALE_MS = 10000;       // a node not seen for this long is shown as gone
const COLORS = ["#58a6ff", "#f0883e", "#56d364", "#d2a8ff", "#ff7b72", "#e3b341",
                "#39c5cf", "#db61a2", "#a5d6ff", "#8b949e"];

const state = {
  self: null,        // this node's id
  redis: false,      // the cluster shares through Redis
  since: 0,          // the last point of this node received (unix ms)
  nodes: new Map(),  // node id -> its points, oldest first
  lastSeen: new Map(),
  cluster: [],       // the latest summary of every live node
};

function $(id) { return document.getElementById(id); }

function colorOf(key) {
  // A stable color per series name, whatever order series appear in.
  let h = 0;
  for (const c of key) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return COLORS[h % COLORS.length];
}

function keep(node, point) {
  let points = state.nodes.get(node);
  if (!points) { points = []; state.nodes.set(node, points); }
  if (points.length && points[points.length - 1].at >= point.at) return;
  points.push(point);
  while (points.length > WINDOW) points.shift();
  state.lastSeen.set(node, point.at);
}

function ingest(d) {
  state.self = d.node;
  state.redis = d.redis;
  for (const p of d.points) keep(d.node, p);
  if (d.points.length) state.since = d.points[d.points.length - 1].at;
  state.cluster = d.cluster.nodes || [];
  for (const p of state.cluster) if (p.node !== d.node) keep(p.node, p);
  if (!state.cluster.some(p => p.node === d.node) && d.points.length) {
    state.cluster.push(d.points[d.points.length - 1]);
  }
  state.cluster.sort((a, b) => a.node.localeCompare(b.node));
  state.clusterError = d.cluster.error;
}

function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
  return v.toFixed(digits === undefined ? 0 : digits);
}

// Draws `series` ([{label, color, points: [[t, v], ...]}]) on `canvas`: a time axis over the
// last SPAN_MS, a y axis from 0 to the largest value, one line per series, a legend.
function draw(canvas, series, opts) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio)) canvas.width = Math.round(w * ratio);
  if (canvas.height !== Math.round(h * ratio)) canvas.height = Math.round(h * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 46, right = 8, top = 22, bottom = 18;
  const now = Date.now(), t0 = now - SPAN_MS;
  let max = opts.max || 0;
  for (const s of series) for (const [, v] of s.points) if (v !== null && v > max) max = v;
  if (!opts.max) max = max <= 0 ? 1 : max * 1.15;
  const x = t => left + (w - left - right) * (t - t0) / SPAN_MS;
  const y = v => top + (h - top - bottom) * (1 - v / max);
  g.font = "11px system-ui, sans-serif";
  g.strokeStyle = "#26303b"; g.fillStyle = "#8b96a5"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = max * i / 4, yy = Math.round(y(v)) + 0.5;
    g.beginPath(); g.moveTo(left, yy); g.lineTo(w - right, yy); g.stroke();
    g.fillText(fmt(v, max < 10 ? 1 : 0), 4, yy + 4);
  }
  g.textAlign = "center";
  for (let m = 0; m <= 5; m++) {
    const t = now - m * 60000, xx = Math.round(x(t)) + 0.5;
    if (m === 0) g.textAlign = "right";
    g.fillText(m === 0 ? "now" : `-${m}m`, m === 0 ? w - right : xx, h - 4);
    g.textAlign = "center";
  }
  g.textAlign = "left";
  let drawn = 0, lx = left;
  for (const s of series) {
    g.strokeStyle = s.color; g.lineWidth = 1.8; g.beginPath();
    let pen = false;
    for (const [t, v] of s.points) {
      if (t < t0 || v === null || v === undefined) { pen = false; continue; }
      if (pen) g.lineTo(x(t), y(v)); else g.moveTo(x(t), y(v));
      pen = true; drawn++;
    }
    g.stroke();
    g.fillStyle = s.color; g.fillRect(lx, 6, 9, 9);
    g.fillStyle = "#e6e9ee"; g.fillText(s.label, lx + 13, 15);
    lx += 22 + g.measureText(s.label).width;
  }
  if (!series.length || !drawn) {
    g.fillStyle = "#8b96a5"; g.fillText(opts.empty || "no data yet", left + 8, top + 16);
  }
  canvas.dataset.points = String(drawn);
}

function perNode(pick) {
  const out = [];
  for (const [node, points] of state.nodes) {
    const label = node === state.self ? `${node} (this node)` : node;
    out.push({ label, color: colorOf(node), points: points.map(p => [p.at, pick(p)]) });
  }
  return out;
}

function render() {
  const mine = state.nodes.get(state.self) || [];
  const last = mine[mine.length - 1];
  $("node").textContent = state.self ? `node ${state.self}` : "";
  if (!last) return;
  const lat = last.publish_to_write_ms;

  $("v-connections").textContent = fmt(last.connections);
  $("v-deliveries").textContent = fmt(last.deliveries_per_sec, 1);
  $("v-deliveries-total").textContent = fmt(last.deliveries_total);
  $("v-latency").textContent = `p50 ${fmt(lat.last_p50, 2)} · p99 ${fmt(lat.last_p99, 2)}`;
  const disc = Object.values(last.disconnects_per_sec).reduce((a, b) => a + b, 0);
  $("v-disconnects").textContent = fmt(disc, 1);
  $("v-slow").textContent = fmt(last.slow_consumers_per_sec, 1);
  $("v-slow-total").textContent = fmt(last.slow_consumers_total);
  if (last.redis) {
    $("v-redis").textContent = last.redis.connected ? "connected" : "down";
    $("v-redis").className = "value " + (last.redis.connected ? "up" : "down");
    $("v-reconnects").textContent = fmt(last.redis.reconnects);
  } else {
    $("v-redis").textContent = "no Redis";
    $("v-redis").className = "value none";
  }

  draw($("c-connections"), perNode(p => p.connections), {});
  draw($("c-deliveries"), perNode(p => p.deliveries_per_sec), {});
  const latency = [
    ["first p50", p => p.publish_to_write_ms.first_p50],
    ["first p99", p => p.publish_to_write_ms.first_p99],
    ["last p50", p => p.publish_to_write_ms.last_p50],
    ["last p99", p => p.publish_to_write_ms.last_p99],
  ].map(([label, pick]) => ({ label, color: colorOf(label), points: mine.map(p => [p.at, pick(p)]) }));
  draw($("c-latency"), latency, { empty: "no message timed in the last 10 s" });
  const codes = new Set();
  for (const p of mine) for (const c of Object.keys(p.disconnects_per_sec)) codes.add(c);
  const byCode = [...codes].sort().map(code => ({
    label: code, color: colorOf("code " + code),
    points: mine.map(p => [p.at, p.disconnects_per_sec[code] ?? 0]),
  }));
  draw($("c-disconnects"), byCode, { empty: "no disconnect yet" });
  draw($("c-slow"), perNode(p => p.slow_consumers_per_sec), {});
  draw($("c-redis"), state.redis ? perNode(p => (p.redis && p.redis.connected ? 1 : 0)) : [],
       { max: 1.2, empty: "in-process bus: no Redis" });

  const body = $("nodes").tBodies[0];
  body.replaceChildren(...state.cluster.map(p => {
    const tr = document.createElement("tr");
    tr.dataset.node = p.node;
    const age = Date.now() - p.at;
    const redis = p.redis ? (p.redis.connected ? ["connected", "up"] : ["down", "down"]) : ["–", "none"];
    const cells = [p.node, fmt(p.connections), fmt(p.deliveries_per_sec, 1),
                   fmt(p.publish_to_write_ms.last_p99, 2), fmt(p.slow_consumers_total), redis[0],
                   fmt(p.cpu * 100) + "%", fmt(p.rss_bytes / 1048576, 1) + " MiB",
                   age > STALE_MS ? "gone" : `${Math.max(0, Math.round(age / 1000))} s ago`];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      if (i === 0) {
        const sw = document.createElement("span");
        sw.className = "swatch"; sw.style.background = colorOf(p.node);
        td.append(sw);
      }
      td.append(text);
      if (i === 5) td.className = redis[1];
      tr.append(td);
    });
    return tr;
  }));
}

function status(text, bad) {
  $("status").textContent = text;
  $("status").className = bad ? "bad" : "";
}

async function poll() {
  try {
    const r = await fetch(`/dashboard/data?since=${state.since}`,
                          { credentials: "same-origin", cache: "no-store" });
    if (!r.ok) {
      status(r.status === 401 ? "not authorized: open /dashboard?key=<admin key>" : `error ${r.status}`, true);
      return;
    }
    ingest(await r.json());
    render();
    const err = state.clusterError ? ` · cluster: ${state.clusterError}` : "";
    status(`updated ${new Date().toLocaleTimeString()} · ${state.cluster.length} node(s)${err}`, !!err);
  } catch (e) {
    status("node unreachable", true);
  }
}

poll();
setInterval(poll, 1000);
window.addEventListener("resize", render);
