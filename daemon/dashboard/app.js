// murmur dashboard: plain ES2020, no framework, no network resources besides the
// daemon's own API. Every piece of data reaches the DOM through textContent or
// setAttribute, never innerHTML.
'use strict';

const TOKEN_KEY = 'murmur_token';
const REFRESH_MS = 5000;
const FETCH_TIMEOUT_MS = 5000;
const MAX_POINTS = 720; // one hour at one sample per 5 s
const WINDOW_MS = 3600 * 1000;
const TAIL_MAX = 200;
const DATA_MAX = 120;
const TOPICS_MAX = 500;
const AUTH_MSG = 'token missing or wrong: open the URL that `murmur dashboard` prints';
const SVG_NS = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);

// ---------- token ----------

let memToken = '';
function readToken() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    try { memToken = decodeURIComponent(m[1]); } catch (_) { memToken = m[1]; }
    try { sessionStorage.setItem(TOKEN_KEY, memToken); } catch (_) { /* storage off */ }
    const rest = location.hash.replace(/(?:^#|&)token=[^&]*/, '').replace(/^&/, '');
    history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
  }
  try { return sessionStorage.getItem(TOKEN_KEY) || memToken; } catch (_) { return memToken; }
}
const token = readToken();

// ---------- banners ----------

const errors = new Map();
function setError(key, msg) {
  if (msg) errors.set(key, msg); else errors.delete(key);
  const box = $('errors');
  box.replaceChildren(...[...errors.values()].map((m) => el('div', {}, m)));
  box.hidden = errors.size === 0;
}
function setAuthFailed(on) { $('auth-banner').hidden = !on; }
if (!token) setAuthFailed(true);

// ---------- DOM helpers ----------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}
function setText(id, text, title) {
  const e = $(id);
  e.textContent = text;
  if (title !== undefined) e.title = title;
}
function emptyRow(cols, text) {
  return el('tr', {}, el('td', { colspan: cols, class: 'muted' }, text));
}

// ---------- formatting ----------

const pad = (n, w = 2) => String(n).padStart(w, '0');
function fmtBytes(n) {
  if (n === undefined || n === null) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + ' ' + u[i];
}
function fmtNum(n) {
  if (typeof n !== 'number' || !isFinite(n)) return '—';
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + 'M';
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + 'k';
  return Number.isInteger(n) ? String(n) : n.toFixed(n < 10 ? 2 : 1);
}
function fmtDuration(secs) {
  if (typeof secs !== 'number') return '—';
  const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
  const m = Math.floor(secs / 60) % 60, s = Math.floor(secs % 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}
function fmtAgo(secs) {
  if (typeof secs !== 'number') return '—';
  return secs < 120 ? `${secs} s ago` : `${fmtDuration(secs)} ago`;
}
function fmtClock(ms, withDate) {
  const d = new Date(ms);
  const t = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const sameDay = new Date().toDateString() === d.toDateString();
  return withDate && !sameDay ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${t}` : t;
}
const shortId = (id) => (id ? String(id).slice(0, 8) : '—');
// libp2p peer ids share their first characters (12D3KooW…): show the end.
const shortPeer = (id) => (id && id.length > 10 ? '…' + id.slice(-8) : id || '—');

// ---------- API ----------

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}
const authHeaders = () => (token ? { Authorization: `Bearer ${token}` } : {});

async function readError(res) {
  const text = await res.text().catch(() => '');
  let body = null;
  try { body = JSON.parse(text); } catch (_) { /* not JSON */ }
  const msg = (body && body.error) || text.slice(0, 200) || res.statusText || 'error';
  return new ApiError(res.status, (body && body.code) || '', `HTTP ${res.status}: ${msg}`);
}

async function api(path, { json = true } = {}) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
  try {
    const res = await fetch(path, { headers: authHeaders(), signal: ctl.signal, cache: 'no-store' });
    if (res.status === 401) {
      setAuthFailed(true);
      throw new ApiError(401, 'unauthorized', AUTH_MSG);
    }
    setAuthFailed(false);
    if (!res.ok) throw await readError(res);
    const text = await res.text();
    if (!json) return text;
    try { return JSON.parse(text); } catch (_) { throw new ApiError(res.status, 'bad_json', 'answer is not JSON'); }
  } catch (e) {
    if (e.name === 'AbortError') throw new ApiError(0, 'timeout', `no answer within ${FETCH_TIMEOUT_MS / 1000} s`);
    throw e;
  } finally {
    clearTimeout(timer);
  }
}
// Replication off: /v1/peers and /v1/replication answer 409 p2p_disabled (or 503).
const replicationOff = (e) => e instanceof ApiError && (e.code === 'p2p_disabled' || e.status === 503 || e.status === 409);

// ---------- time series and charts ----------

const series = { publish: [], received: [], lag: [], peers: [] };
const chartNotes = {}; // shown instead of "no data yet", e.g. replication off
function addPoint(name, t, v) {
  if (typeof v !== 'number' || !isFinite(v)) return;
  const s = series[name];
  s.push([t, v]);
  while (s.length > MAX_POINTS || (s.length && s[0][0] < t - WINDOW_MS)) s.shift();
}

// Draws one series into its <svg class="chart">: a single polyline, y labels with the
// min and max of the axis, and start / middle / end times.
function drawChart(name, fmt = fmtNum) {
  const box = document.querySelector(`svg.chart[data-series="${name}"]`);
  if (!box) return;
  const pts = series[name];
  const W = 480, H = 160, L = 48, R = 8, T = 10, B = 22;
  const pw = W - L - R, ph = H - T - B;
  const line = svg('polyline', { class: 'line', points: '' });
  const parts = [svg('rect', { class: 'plot', x: L, y: T, width: pw, height: ph })];
  const now = document.querySelector(`[data-now="${name}"]`);
  if (pts.length === 0) {
    parts.push(svg('text', { class: 'empty', x: L + pw / 2, y: T + ph / 2, 'text-anchor': 'middle' }, chartNotes[name] || 'no data yet'));
    parts.push(line);
    box.replaceChildren(...parts);
    if (now) now.textContent = '';
    return;
  }
  const t0 = pts[0][0], t1 = Math.max(pts[pts.length - 1][0], t0 + 1000);
  let lo = Infinity, hi = -Infinity;
  for (const [, v] of pts) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const vmin = Math.min(0, lo);
  const vmax = hi > vmin ? hi : vmin + 1;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * pw;
  const y = (v) => T + ph - ((v - vmin) / (vmax - vmin)) * ph;
  line.setAttribute('points', pts.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' '));
  for (const v of [vmax, (vmax + vmin) / 2]) {
    parts.push(svg('line', { class: 'gridline', x1: L, x2: L + pw, y1: y(v), y2: y(v) }));
  }
  parts.push(svg('text', { class: 'axis', x: L - 4, y: T + 4, 'text-anchor': 'end' }, fmt(vmax)));
  parts.push(svg('text', { class: 'axis', x: L - 4, y: T + ph, 'text-anchor': 'end' }, fmt(vmin)));
  const tm = (t0 + t1) / 2;
  parts.push(svg('text', { class: 'axis', x: L, y: H - 6, 'text-anchor': 'start' }, fmtClock(t0)));
  parts.push(svg('text', { class: 'axis', x: x(tm), y: H - 6, 'text-anchor': 'middle' }, fmtClock(tm)));
  parts.push(svg('text', { class: 'axis', x: L + pw, y: H - 6, 'text-anchor': 'end' }, fmtClock(t1)));
  parts.push(line);
  const last = pts[pts.length - 1];
  parts.push(svg('circle', { class: 'dot', cx: x(last[0]), cy: y(last[1]), r: 2.5 }));
  box.replaceChildren(...parts);
  if (now) now.textContent = `now ${fmt(last[1])} · min ${fmt(lo)} · max ${fmt(hi)}`;
}
const drawCharts = () => Object.keys(series).forEach((n) => drawChart(n));

// Counter → rate: remembers the previous sample of each counter.
const prevCounters = {};
function rate(name, t, value) {
  const p = prevCounters[name];
  prevCounters[name] = { t, value };
  if (!p || t <= p.t || value < p.value) return undefined; // first sample, or restart
  return (value - p.value) / ((t - p.t) / 1000);
}

// Sums `murmur_events_received_total{...}` over its labels in Prometheus text.
function parseReceived(text) {
  let sum = 0, found = false;
  for (const line of text.split('\n')) {
    const m = /^murmur_events_received_total(?:\{[^}]*\})?\s+([0-9.eE+-]+)/.exec(line);
    if (m) { sum += Number(m[1]); found = true; }
  }
  return found ? sum : undefined;
}

// ---------- sections ----------

let lastStatus = null;

function renderStatus(st) {
  lastStatus = st;
  setText('h-node', shortId(st.author), st.author);
  setText('h-version', st.version || '—');
  setText('h-uptime', fmtDuration(st.uptime_secs));
  const fleet = st.fleet || '—';
  setText('h-fleet', fleet.split(':')[0], fleet);
  setText('h-events', fmtNum(st.events), `${st.events} stored, ${st.held ?? '?'} held, ${st.pruned ?? 0} pruned`);
  const warn = [];
  if (st.disk_full) warn.push('disk full: publishing answers 507 and replication pulls nothing');
  if (st.store_problem) warn.push('store problem: ' + st.store_problem);
  if (st.publishing_held) warn.push('publishing held until a sync round after `murmur repair`');
  if (st.forks) warn.push(`${st.forks} log(s) frozen by forks`);
  if (st.fleet && st.fleet.includes('NOT admitted')) warn.push(st.fleet);
  $('warnings').replaceChildren(...warn.map((w) => el('div', {}, w)));
  $('warnings').hidden = warn.length === 0;
}

const FLAG_HELP = {
  stale: 'no heartbeat for a while',
  disk: 'disk above 80% of its budget',
  lag_growing: 'replication lag growing',
  forks: 'logs frozen by forks',
  cert_expiring: 'fleet certificate expires soon',
  store_problem: 'the store scan found a problem',
};

function isProblem(n) {
  return n.state !== 'up' || (Array.isArray(n.flags) && n.flags.length > 0);
}

function lagGrowing(n, hb) {
  if ((n.flags || []).includes('lag_growing')) return true;
  const h = hb.lag_history || [];
  return h.length >= 2 && h[h.length - 1] > h[h.length - 2];
}

function fleetRow(n) {
  const hb = n.heartbeat || {};
  const flags = Array.isArray(n.flags) ? n.flags : [];
  const nodeCell = el('td', { class: 'mono', title: n.node }, shortId(n.node));
  if (n.this_node) nodeCell.append(' ', el('span', { class: 'badge badge-self' }, 'this'));

  let disk = el('td', {}, '—');
  if (typeof hb.disk_bytes === 'number') {
    disk = el('td', {});
    const budget = hb.disk_budget_bytes || 0;
    if (budget > 0) {
      const pct = (hb.disk_bytes / budget) * 100;
      const fill = el('span', { class: 'bar-fill' + (pct > 80 ? ' bar-red' : '') });
      fill.style.width = Math.min(100, pct).toFixed(1) + '%';
      disk.append(el('span', { class: 'bar', title: `${pct.toFixed(1)}% of the budget` }, fill));
      disk.append(`${fmtBytes(hb.disk_bytes)} / ${fmtBytes(budget)}`);
    } else {
      disk.append(fmtBytes(hb.disk_bytes), el('span', { class: 'muted' }, ' (no budget)'));
    }
  }

  const peers = hb.peers || [];
  const relayed = peers.filter((p) => p.path === 'relayed').length;
  const peerText = typeof hb.peer_count === 'number' ? String(hb.peer_count) + (relayed ? ` (${relayed} relayed)` : '') : '—';
  const peerTitle = peers.map((p) => `${p.peer} ${p.path}`).join('\n');

  const lagCell = el('td', { class: 'num', title: (hb.lag_topics || []).map((t) => `${t.topic}: ${t.behind} behind`).join('\n') },
    typeof hb.lag === 'number' ? fmtNum(hb.lag) : '—');
  if (lagGrowing(n, hb)) lagCell.append(' ', el('span', { class: 'arrow-up', title: 'growing' }, '▲'));

  const flagCell = el('td', {});
  for (const f of flags) {
    let title = FLAG_HELP[f] || f;
    if (f === 'forks' && hb.forks) title += ` (${hb.forks})`;
    if (f === 'cert_expiring' && hb.cert_expires_ms) title += `: ${new Date(hb.cert_expires_ms).toISOString()}`;
    flagCell.append(el('span', { class: `badge flag flag-${f.replace(/[^a-z_]/g, '')}`, title }, f), ' ');
  }
  if (hb.clock_ahead_ms > 1000) flagCell.append(el('span', { class: 'badge flag', title: 'events from this node were ahead of a clock' }, `clock +${fmtNum(hb.clock_ahead_ms / 1000)} s`));

  const tr = el('tr', { 'data-node': n.node, class: isProblem(n) ? 'problem' : null },
    el('td', {}, n.host || '—'),
    nodeCell,
    el('td', {}, el('span', { class: `badge state-${n.state === 'up' ? 'up' : 'stale'}` }, n.state || '?')),
    el('td', { title: n.seen_ms ? new Date(n.seen_ms).toISOString() : null }, fmtAgo(n.seen_secs_ago)),
    el('td', { class: 'num' }, fmtNum(hb.events)),
    disk,
    el('td', { class: 'num' }, fmtBytes(hb.memory_bytes)),
    el('td', { class: 'num', title: peerTitle }, peerText),
    lagCell,
    flagCell);
  tr.title = [hb.version && `murmur ${hb.version}`, typeof hb.uptime_secs === 'number' && `up ${fmtDuration(hb.uptime_secs)}`].filter(Boolean).join(', ');
  return tr;
}

function renderFleet(resp) {
  const nodes = Array.isArray(resp.nodes) ? resp.nodes.slice() : [];
  nodes.sort((a, b) => (isProblem(b) - isProblem(a))
    || ((a.state === 'up') - (b.state === 'up'))
    || String(a.host || '~').localeCompare(String(b.host || '~'))
    || String(a.node).localeCompare(String(b.node)));
  const up = nodes.filter((n) => n.state === 'up').length;
  const problems = nodes.filter(isProblem).length;
  let line = `${nodes.length} node${nodes.length === 1 ? '' : 's'}: ${up} up, ${nodes.length - up} stale`;
  if (problems) line += ` · ${problems} with problems`;
  if (resp.interval_ms) line += ` · heartbeat every ${fmtDuration(Math.round(resp.interval_ms / 1000))}`;
  setText('fleet-count', line);
  $('fleet-rows').replaceChildren(...(nodes.length ? nodes.map(fleetRow) : [emptyRow(10, 'no heartbeats yet')]));
}

function renderPeers(resp) {
  const peers = resp.peers || [];
  setText('peers-note', `${peers.length} connected · our id ${shortPeer(resp.peer_id)}`, (resp.listen || []).join('\n'));
  $('peer-rows').replaceChildren(...(peers.length ? peers.map((p) => el('tr', {},
    el('td', { class: 'mono', title: p.peer }, shortPeer(p.peer)),
    el('td', { class: 'mono wrap' }, p.addr),
    el('td', {}, p.how),
    el('td', { class: 'num' }, typeof p.rtt_ms === 'number' ? `${p.rtt_ms.toFixed(1)} ms` : '—'),
    el('td', { class: 'num' }, typeof p.score === 'number' ? p.score.toFixed(2) : '—'),
    el('td', {}, p.path || '—'))) : [emptyRow(6, 'no peers connected')]));
}

function renderTopics(resp) {
  const topics = resp.topics || [];
  const shown = topics.slice(0, TOPICS_MAX);
  setText('topics-note', topics.length > TOPICS_MAX ? `first ${TOPICS_MAX} of ${topics.length}` : `${topics.length}`);
  $('topic-rows').replaceChildren(...(shown.length ? shown.map((t) => el('tr', {},
    el('td', { class: 'mono' }, t.topic),
    el('td', { class: 'num', title: t.pruned ? `${t.pruned} pruned` : null }, fmtNum(t.events)),
    el('td', { class: 'num' }, (t.logs || []).length),
    el('td', { class: 'num' }, fmtBytes(t.bytes)))) : [emptyRow(4, 'no topics')]));
}

// ---------- periodic refresh ----------

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try { await refreshOnce(Date.now()); } catch (e) { setError('refresh', `refresh: ${e.message}`); } finally { busy = false; }
}

async function refreshOnce(t) {
  const [st, fleet, peers, topics, repl, metrics] = await Promise.allSettled([
    api('/v1/status'), api('/v1/fleet/nodes'), api('/v1/peers'), api('/v1/topics'),
    api('/v1/replication'), api('/metrics', { json: false }),
  ]);
  const report = (key, r, onOk) => {
    if (r.status === 'fulfilled') {
      setError(key, null);
      try { onOk(r.value); } catch (e) { setError(key, `${key}: cannot show the answer: ${e.message}`); }
    } else if (r.reason && r.reason.status === 401) {
      setError(key, null); // the auth banner says it
    } else {
      setError(key, `${key}: ${r.reason && r.reason.message}`);
    }
  };
  report('/v1/status', st, (s) => {
    renderStatus(s);
    addPoint('publish', t, rate('events', t, s.events));
    addPoint('peers', t, s.peers);
  });
  report('/v1/fleet/nodes', fleet, renderFleet);
  if (fleet.status === 'rejected') setText('fleet-count', `fleet view unavailable: ${fleet.reason.message}`);
  if (peers.status === 'rejected' && replicationOff(peers.reason)) {
    setError('/v1/peers', null);
    setText('peers-note', 'replication is off on this node');
    $('peer-rows').replaceChildren(emptyRow(6, 'replication is off (p2p.enabled = false)'));
  } else {
    report('/v1/peers', peers, renderPeers);
  }
  report('/v1/topics', topics, renderTopics);
  if (repl.status === 'fulfilled') {
    let behind = 0;
    for (const tp of repl.value.topics || []) for (const p of tp.peers || []) behind += p.behind || 0;
    addPoint('lag', t, behind);
    setError('/v1/replication', null);
    chartNotes.lag = null;
  } else if (replicationOff(repl.reason)) {
    setError('/v1/replication', null);
    chartNotes.lag = 'replication is off on this node';
  } else {
    report('/v1/replication', repl, () => {});
  }
  // /metrics is optional (it may be off the dashboard's port): no banner for it.
  if (metrics.status === 'fulfilled') addPoint('received', t, rate('received', t, parseReceived(metrics.value)));
  else chartNotes.received = 'no /metrics here (murmur_events_received_total)';
  drawCharts();
  setError('refresh', null);
  setText('h-refresh', fmtClock(t) + (errors.size ? ' (with errors)' : ''));
}

// ---------- live tail ----------

let tailCtl = null;
let tailCount = 0;

function payloadText(ev) {
  if (ev.kind === 'doc') return `doc ${ev.doc || '?'}: change of ${b64Len(ev.data)} bytes`;
  if (ev.encoding !== 'base64') return ev.data || '';
  let bytes;
  try { bytes = Uint8Array.from(atob(ev.data || ''), (c) => c.charCodeAt(0)); } catch (_) { return '[bad base64]'; }
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    // eslint-disable-next-line no-control-regex
    if (!/[\u0000-\u0008\u000e-\u001f]/.test(text)) return text;
  } catch (_) { /* not UTF-8: show hex */ }
  const hex = Array.from(bytes.slice(0, 48), (b) => pad(b.toString(16))).join('');
  return `[${bytes.length} bytes] ${hex}${bytes.length > 48 ? '…' : ''}`;
}
function b64Len(s) { return s ? Math.floor((s.length * 3) / 4) - (s.endsWith('==') ? 2 : s.endsWith('=') ? 1 : 0) : 0; }

function tailRow(ev) {
  let data = payloadText(ev);
  const full = data;
  if (data.length > DATA_MAX) data = data.slice(0, DATA_MAX) + '…';
  const time = ev.time && typeof ev.time.ms === 'number' ? ev.time.ms : null;
  return el('tr', { 'data-offset': ev.offset },
    el('td', { class: 'num' }, ev.offset ?? '—'),
    el('td', { class: 'mono' }, ev.topic),
    el('td', { class: 'mono', title: ev.author }, shortId(ev.author)),
    el('td', { class: 'num' }, ev.seq),
    el('td', { title: time !== null ? new Date(time).toISOString() : null }, time !== null ? fmtClock(time, true) : '—'),
    el('td', { class: 'mono data', title: full.length > DATA_MAX ? full.slice(0, 2000) : null }, data));
}

function showEvents(events) {
  const body = $('tail-rows');
  const frag = document.createDocumentFragment();
  for (const ev of events.slice(-TAIL_MAX).reverse()) frag.append(tailRow(ev));
  body.prepend(frag);
  while (body.rows.length > TAIL_MAX) body.lastElementChild.remove();
  tailCount += events.length;
  setText('tail-note', `following · ${tailCount} received, last ${Math.min(body.rows.length, TAIL_MAX)} shown`);
}

function setTailRunning(on, note) {
  $('tail-button').textContent = on ? 'Stop' : 'Start';
  $('tail-pattern').disabled = on;
  if (note !== undefined) setText('tail-note', note);
}

async function startTail() {
  const pattern = $('tail-pattern').value.trim() || '#';
  const ctl = new AbortController();
  tailCtl = ctl;
  tailCount = 0;
  $('tail-rows').replaceChildren();
  setTailRunning(true, 'connecting…');
  let url = `/v1/follow?pattern=${encodeURIComponent(pattern)}&format=ndjson`;
  // Start a little back so the table is not empty; events pruned there are skipped.
  if (lastStatus && typeof lastStatus.events === 'number') {
    url += `&from=${Math.max(0, lastStatus.events - TAIL_MAX)}&skip_pruned=true`;
  }
  try {
    const res = await fetch(url, { headers: authHeaders(), signal: ctl.signal, cache: 'no-store' });
    if (res.status === 401) { setAuthFailed(true); throw new ApiError(401, 'unauthorized', AUTH_MSG); }
    if (!res.ok) throw await readError(res);
    setError('tail', null);
    setText('tail-note', 'following · waiting for events');
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      const lines = buf.split('\n');
      buf = lines.pop();
      if (buf.length > 16 * 1024 * 1024) throw new Error('line too long in the follow stream');
      const events = [];
      for (const line of lines) {
        if (!line.trim()) continue;
        try { events.push(JSON.parse(line)); } catch (_) { /* skip a bad line */ }
      }
      if (events.length) showEvents(events);
    }
    if (tailCtl === ctl) setTailRunning(false, `stream ended · ${tailCount} received`);
  } catch (e) {
    if (tailCtl !== ctl) return; // stopped or restarted: a newer stream owns the UI
    if (e.name === 'AbortError') { setTailRunning(false, 'stopped'); return; }
    setError('tail', `live tail: ${e.message}`);
    setTailRunning(false, 'failed');
  } finally {
    if (tailCtl === ctl) tailCtl = null;
  }
}

function stopTail() {
  const ctl = tailCtl;
  tailCtl = null;
  if (ctl) ctl.abort();
  setTailRunning(false, `stopped · ${tailCount} received`);
}

// ---------- documents ----------

let docsTopic = '';

async function listDocs() {
  const topic = $('docs-topic').value.trim();
  if (!topic) { setText('docs-note', 'enter a topic'); return; }
  setText('docs-note', 'loading…');
  try {
    const resp = await api(`/v1/docs?topic=${encodeURIComponent(topic)}`);
    docsTopic = resp.topic || topic;
    const docs = resp.docs || [];
    setText('docs-note', `${docs.length} document${docs.length === 1 ? '' : 's'} in ${docsTopic}`);
    $('docs-list').replaceChildren(...docs.map((d) => {
      const b = el('button', { type: 'button', class: 'link', 'data-doc': d }, d);
      b.addEventListener('click', () => showDoc(docsTopic, d, b));
      return el('li', {}, b);
    }));
    setError('docs', null);
  } catch (e) {
    setText('docs-note', '');
    if (e.status !== 401) setError('docs', `documents: ${e.message}`);
  }
}

async function showDoc(topic, doc, button) {
  for (const b of $('docs-list').querySelectorAll('button.selected')) b.classList.remove('selected');
  if (button) button.classList.add('selected');
  setText('doc-meta', `loading ${doc}…`);
  try {
    const d = await api(`/v1/doc?topic=${encodeURIComponent(topic)}&doc=${encodeURIComponent(doc)}`);
    const heads = (d.heads || []).map(shortId).join(', ') || 'none';
    setText('doc-meta', `${d.topic}/${d.doc} · heads ${heads}${d.missing ? ` · ${d.missing} changes missing` : ''}`, (d.heads || []).join('\n'));
    $('doc-value').textContent = JSON.stringify(d.value, null, 2);
    setError('doc', null);
  } catch (e) {
    setText('doc-meta', '');
    $('doc-value').textContent = '';
    if (e.status !== 401) setError('doc', `document ${doc}: ${e.message}`);
  }
}

// ---------- start ----------

function start() {
  $('tail-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (tailCtl) stopTail(); else startTail();
  });
  $('docs-form').addEventListener('submit', (e) => { e.preventDefault(); listDocs(); });
  drawCharts();
  refresh();
  setInterval(refresh, REFRESH_MS);
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
