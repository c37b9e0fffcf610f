// The status page's script: polls GET /status of the agent that served the
// page, draws it, and sends the two actions (switchover, pause/resume) to
// the agents' control endpoints with the operator's token. Plain DOM and
// SVG, no library, nothing fetched from anywhere else.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";

// What the page remembers between polls: the lag history it has (it asks
// only for newer points), the last router counters (for rates) and the
// last report.
const state = { lag: {}, lagSince: 0, prevRouter: null, rates: null, report: null };

function $(id) { return document.getElementById(id); }

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmtBytes(n) {
  if (n === undefined || n === null) return "?";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}
function fmtSeconds(s) { return s < 60 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min"; }
function fmtTime(iso) {
  const d = new Date(iso);
  return isNaN(d) || d.getFullYear() < 2000 ? "" : d.toLocaleString();
}

// roleClass is the picture's class and data-role of a member.
function roleClass(m) {
  if (m.role === "leader") return "primary";
  return m.role === "sync_standby" ? "sync_standby" : "replica";
}

// ---- polling ----

async function poll() {
  try {
    const resp = await fetch("/status?since=" + state.lagSince, { cache: "no-store" });
    if (!resp.ok) throw new Error("GET /status: " + resp.status + " " + (await resp.text()));
    const rep = await resp.json();
    state.report = rep;
    mergeLag(rep);
    render(rep);
    $("fetch-error").hidden = true;
  } catch (e) {
    const b = $("fetch-error");
    b.textContent = "This agent does not answer (" + e.message + "); showing what it said last.";
    b.hidden = false;
  }
  setTimeout(poll, POLL_MS);
}

// mergeLag adds the new points: the first one may repeat (and update) the
// last point the page has, which the agent may have grown since.
function mergeLag(rep) {
  const cutoff = Date.now() - rep.lag_window_seconds * 1000;
  for (const [name, pts] of Object.entries(rep.lag || {})) {
    const have = (state.lag[name] || []).filter(p => p.t < state.lagSince && p.t >= cutoff);
    state.lag[name] = have.concat(pts);
  }
  for (const name of Object.keys(state.lag)) {
    if (!(name in (rep.lag || {}))) delete state.lag[name]; // no longer a member
  }
  let last = 0;
  for (const pts of Object.values(state.lag)) if (pts.length) last = Math.max(last, pts[pts.length - 1].t);
  if (last) state.lagSince = last;
}

function render(rep) {
  const c = rep.cluster;
  $("scope").textContent = c.scope || "";
  renderSummary(rep);
  renderMembers(c);
  renderLag(c);
  renderRouter(rep);
  renderActions(rep);
  renderEvents(rep);
}

function renderSummary(rep) {
  const c = rep.cluster, s = $("summary");
  s.replaceChildren();
  const primary = c.members.find(m => m.role === "leader");
  s.append(el("b", {}, "primary: " + (primary ? primary.name : "none")),
    el("b", {}, "epoch " + c.epoch),
    el("b", { id: "raft" }, "Raft leader: " + (c.raft_leader || "none") + (c.raft_term ? " (term " + c.raft_term + ")" : "")),
    el("b", {}, "sync set: " + ((c.sync_standbys || []).join(", ") || "none")));
  if (c.pause) s.append(el("span", { class: "badge warn", id: "paused" }, "PAUSED: no automatic failover"));
  if (c.waiting) s.append(el("span", { class: "badge warn" }, "leader waits: " + c.waiting));
  s.append(el("span", { class: "badge" }, "page served by " + rep.node));
  const probs = $("problems");
  probs.replaceChildren(...(c.problems || []).map(p => el("li", {}, p)));
  $("observer").textContent = rep.node + ", since " + fmtTime(rep.agent_started);
}

// ---- the members picture ----

// levels puts the primary on top and each standby one level below its
// upstream (cascading standbys further down); a member that streams from
// nobody sits on the first standby level.
function levels(members) {
  const byName = Object.fromEntries(members.map(m => [m.name, m]));
  const level = {};
  const depth = (m, seen) => {
    if (level[m.name] !== undefined) return level[m.name];
    if (m.role === "leader") return 0;
    const up = byName[m.upstream];
    if (!up || seen.has(m.name)) return 1;
    seen.add(m.name);
    return depth(up, seen) + 1;
  };
  for (const m of members) level[m.name] = depth(m, new Set());
  return level;
}

function renderMembers(c) {
  const W = 190, H = 104, GAPX = 20, GAPY = 46, PER_ROW = 5;
  const svg = $("members");
  const lv = levels(c.members);
  // Rows: each level wraps at PER_ROW members.
  const rows = [];
  const maxLevel = Math.max(0, ...Object.values(lv));
  for (let l = 0; l <= maxLevel; l++) {
    const ms = c.members.filter(m => lv[m.name] === l);
    for (let i = 0; i < ms.length; i += PER_ROW) rows.push(ms.slice(i, i + PER_ROW));
  }
  const cols = Math.max(1, ...rows.map(r => r.length));
  const width = cols * (W + GAPX) + GAPX, height = rows.length * (H + GAPY) + 10;
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  svg.style.maxWidth = width + "px";
  const pos = {};
  rows.forEach((r, ri) => {
    const x0 = (width - r.length * (W + GAPX) + GAPX) / 2;
    r.forEach((m, i) => { pos[m.name] = { x: x0 + i * (W + GAPX), y: 10 + ri * (H + GAPY) }; });
  });
  const defs = el("svg:defs");
  const marker = el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto" });
  marker.append(el("svg:path", { d: "M0,0 L10,5 L0,10 z" }));
  defs.append(marker);
  const nodes = [defs];
  const sync = new Set(c.sync_standbys || []);
  for (const m of c.members) {
    const from = pos[m.upstream], to = pos[m.name];
    if (!from || !to || m.upstream === m.name) continue;
    nodes.push(el("svg:line", {
      class: "edge" + (sync.has(m.name) ? " sync" : ""), "data-from": m.upstream, "data-to": m.name,
      x1: from.x + W / 2, y1: from.y + H, x2: to.x + W / 2, y2: to.y - 2, "marker-end": "url(#arrow)",
    }));
  }
  const vip = new Set(c.vip_holders || []);
  for (const m of c.members) {
    const p = pos[m.name], role = roleClass(m);
    const down = !m.reachable || m.state === "stopped" || m.state === "unknown";
    const g = el("svg:g", { class: "member " + role + (down ? " down" : ""), "data-name": m.name, "data-role": role, transform: "translate(" + p.x + "," + p.y + ")" });
    g.append(el("svg:rect", { width: W, height: H, rx: 6 }));
    const line = (y, cls, text) => g.append(el("svg:text", { x: 8, y: y, class: cls }, text));
    line(18, "head", m.name + (vip.has(m.name) ? "  ◆ VIP" : ""));
    const roleText = { primary: "primary", sync_standby: "sync standby", replica: "standby" }[role];
    line(34, "role", roleText + " · " + m.state);
    line(50, "", "Raft " + (m.raft_role || "?") + " · " + (m.raft_suffrage === "nonvoter" ? "non-voter" : m.raft_suffrage || "not in Raft config"));
    let wal = "TL " + (m.timeline || "?");
    if (role === "primary") wal += " · LSN " + lsn(m.lsn);
    else if (m.lag === "unknown" || m.lag === undefined) wal += " · lag unknown";
    else wal += " · lag " + fmtBytes(m.lag) + lagSecondsNow(m.name);
    line(66, "", wal);
    line(82, "", m.upstream ? "streams from " + m.upstream : (role === "primary" ? "" : "not streaming"));
    const flags = [];
    if (m.fenced) flags.push("FENCED");
    if (!m.reachable) flags.push("UNREACHABLE");
    if ((m.pending_restart || []).length) flags.push("PENDING RESTART");
    if (m.scheduled_restart) flags.push("RESTART SCHEDULED");
    if (m.nofailover) flags.push("nofailover");
    const f = el("svg:text", { x: 8, y: 98, class: "flags" }, flags.join(" · "));
    if (m.problem) f.append(el("svg:title", {}, m.problem));
    g.append(f);
    if (m.pending_restart && m.pending_restart.length) g.append(el("svg:title", {}, "pending restart: " + m.pending_restart.join(", ")));
    nodes.push(g);
  }
  svg.replaceChildren(...nodes);
}

function lsn(n) {
  if (typeof n !== "number") return String(n);
  return Math.floor(n / 4294967296).toString(16).toUpperCase() + "/" + (n % 4294967296).toString(16).toUpperCase();
}

function lagSecondsNow(name) {
  const pts = state.lag[name];
  return pts && pts.length ? " / " + fmtSeconds(pts[pts.length - 1].seconds) : "";
}

// ---- lag charts ----

function renderLag(c) {
  const box = $("lag");
  const rows = [];
  // The x axis spans the last hour, or less while the agent has less:
  // a young agent's few minutes fill the chart instead of a sliver.
  const now = Date.now();
  let oldest = now;
  for (const pts of Object.values(state.lag)) if (pts.length) oldest = Math.min(oldest, pts[0].t);
  const span = Math.min((state.report.lag_window_seconds || 3600) * 1000, Math.max(60000, now - oldest));
  for (const m of c.members) {
    if (m.role === "leader") continue;
    const pts = state.lag[m.name] || [];
    const last = pts[pts.length - 1];
    const row = el("div", { class: "lag-row", "data-member": m.name, "data-points": pts.length,
      "data-bytes": last ? last.bytes : "", "data-seconds": last ? last.seconds : "" });
    row.append(el("b", {}, m.name));
    const svg = el("svg:svg", { viewBox: "0 0 600 48", preserveAspectRatio: "none" });
    // Each line is scaled to its own maximum (never 0: a flat line at the bottom).
    const maxB = Math.max(0, ...pts.map(p => p.bytes)), maxS = Math.max(0, ...pts.map(p => p.seconds));
    const x = t => ((t - (now - span)) / span * 600).toFixed(1);
    const line = (cls, v) => el("svg:polyline", { class: cls, points: pts.map(p => x(p.t) + "," + (46 - v(p) * 44).toFixed(1)).join(" ") });
    if (pts.length) svg.append(line("bytes", p => p.bytes / (maxB || 1)), line("seconds", p => p.seconds / (maxS || 1)));
    svg.append(el("svg:title", {}, "the last " + fmtSeconds(span / 1000) + "; max " + fmtBytes(maxB) + ", " + fmtSeconds(pts.length ? maxS : 0)));
    row.append(svg);
    const now_ = el("span", { class: "now" }, last ? fmtBytes(last.bytes) + " · " + fmtSeconds(last.seconds) : "no samples");
    if (pts.length) now_.append(el("br"), el("small", {}, "max " + fmtBytes(maxB) + " · " + fmtSeconds(maxS)));
    row.append(now_);
    rows.push(row);
  }
  box.replaceChildren(...rows);
}

// ---- router ----

// routerRates turns the router's counters into rates between two polls; a
// new leader's router starts its counters again, so a counter that went
// down (or another node) starts a new baseline.
function routerRates(r) {
  const p = state.prevRouter;
  state.prevRouter = r;
  if (!p || p.node !== r.node) return null;
  const dt = (new Date(r.at) - new Date(p.at)) / 1000;
  if (dt <= 0) return state.rates;
  const rate = k => (r[k] >= p[k] ? (r[k] - p[k]) / dt : null);
  return { writes: rate("writes_to_primary"), readsPrimary: rate("reads_to_primary"), readsStandby: rate("reads_to_standby"), waits: rate("pool_waits") };
}

function renderRouter(rep) {
  const box = $("router");
  const r = rep.router;
  if (!r) {
    box.replaceChildren(el("p", { class: "note" }, rep.router_error || "no router"));
    return;
  }
  state.rates = routerRates(r);
  const rt = state.rates || {};
  const max = Math.max(1, rt.writes || 0, rt.readsPrimary || 0, rt.readsStandby || 0);
  const fmtRate = v => (v === null || v === undefined ? "–" : v.toFixed(1));
  const t = el("table", { id: "routes" });
  t.append(tr("th", ["route", "per second", "", "total"]));
  for (const [name, key, total] of [["writes → primary", "writes", r.writes_to_primary], ["reads → primary", "readsPrimary", r.reads_to_primary], ["reads → standbys", "readsStandby", r.reads_to_standby]]) {
    const bar = el("span", { class: "bar" });
    bar.style.width = Math.round((rt[key] || 0) / max * 120) + "px";
    const row = tr("td", [name, fmtRate(rt[key]), "", total]);
    row.children[2].append(bar);
    t.append(row);
  }
  const pools = el("table", { id: "pools" });
  pools.append(tr("th", ["pool (member / db / user)", "active", "idle", "waiting", "waits", "max wait ms"]));
  for (const p of r.pools) pools.append(tr("td", [(p.member || p.backend) + " / " + p.database + " / " + p.user, p.active, p.idle, p.waiting, p.waits, p.max_wait_ms.toFixed(1)]));
  box.replaceChildren(
    el("p", { class: "note" }, "Runs on the Raft leader, " + r.node + "; " + r.clients_active + " clients now; pool waits " + r.pool_waits + " (" + fmtRate(rt.waits) + "/s), timeouts " + r.pool_wait_timeouts + "."),
    t, pools);
}

function tr(cell, values) {
  const row = el("tr");
  values.forEach((v, i) => row.append(el(cell, { class: i > 0 && typeof v === "number" ? "num" : "" }, String(v))));
  return row;
}

// ---- events ----

function renderEvents(rep) {
  const list = $("events");
  list.replaceChildren(...(rep.events || []).map(e => {
    const li = el("li", { class: e.source + " " + e.kind.replace(/ /g, "_"), "data-kind": e.kind, "data-member": e.member || "", "data-source": e.source });
    li.append(el("span", {}, fmtTime(e.at)), el("span", { class: "kind" }, e.kind), el("span", {}, e.text));
    return li;
  }));
}

// ---- actions ----

function renderActions(rep) {
  const c = rep.cluster;
  $("auth-note").textContent = rep.auth_required
    ? "Actions need the API token (or this browser's cluster certificate); without it the agent refuses them."
    : "This cluster's control endpoints are open (no token or TLS configured).";
  const sel = $("candidate"), keep = sel.value;
  const standbys = c.members.filter(m => m.role !== "leader").map(m => m.name);
  if (standbys.join() !== Array.from(sel.options).map(o => o.value).join()) {
    sel.replaceChildren(...standbys.map(n => el("option", { value: n }, n)));
    if (standbys.includes(keep)) sel.value = keep;
  }
  $("pause").hidden = c.pause;
  $("resume").hidden = !c.pause;
}

let pending = null; // the action waiting for its confirmation

function ask(text, action) {
  pending = action;
  $("confirm-text").textContent = text;
  $("confirm").hidden = false;
}

async function control(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  const token = $("token").value.trim();
  if (token) headers["Authorization"] = "Bearer " + token;
  const res = $("action-result");
  res.className = "result";
  res.textContent = method + " " + path + "…";
  res.removeAttribute("data-status");
  try {
    const resp = await fetch(path, { method: method, headers: headers, body: body ? JSON.stringify(body) : undefined, cache: "no-store" });
    const text = await resp.text();
    let msg = text;
    try { const j = JSON.parse(text); msg = j.error || j.message || text; } catch (e) { /* not JSON */ }
    res.dataset.status = resp.status;
    res.className = "result " + (resp.ok ? "ok" : "error");
    res.textContent = (resp.ok ? "done: " : "refused (" + resp.status + "): ") + msg;
  } catch (e) {
    res.dataset.status = "0";
    res.className = "result error";
    res.textContent = "failed: " + e.message;
  }
}

function setup() {
  const saved = sessionStorage.getItem("pgha-token");
  if (saved) $("token").value = saved;
  $("token").addEventListener("change", () => sessionStorage.setItem("pgha-token", $("token").value.trim()));
  $("switchover").addEventListener("click", () => {
    const c = state.report && state.report.cluster;
    const primary = c && c.members.find(m => m.role === "leader");
    const to = $("candidate").value;
    if (!to) return;
    ask("Switch over from " + (primary ? primary.name : "the primary") + " to " + to + "?", () =>
      control("POST", "/switchover", primary ? { leader: primary.name, candidate: to } : { candidate: to }));
  });
  $("pause").addEventListener("click", () => ask("Pause the cluster (no automatic failover until resumed)?", () => control("POST", "/pause")));
  $("resume").addEventListener("click", () => ask("Resume automatic failover?", () => control("POST", "/resume")));
  $("confirm-yes").addEventListener("click", () => {
    $("confirm").hidden = true;
    const act = pending;
    pending = null;
    if (act) act();
  });
  $("confirm-no").addEventListener("click", () => { $("confirm").hidden = true; pending = null; });
  poll();
}

document.addEventListener("DOMContentLoaded", setup);
