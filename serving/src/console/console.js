/* Weir's operator console: a page per hash route (#/dags, #/dag/<id>/grid, #/task/<dag>/<run>/<task>,
   #/lake/<table>, #/streams, #/sql, …) over the serving API, with the bearer token kept in the
   tab's sessionStorage. Plain script, no libraries: everything it needs is served by weir. Every
   action asks for confirmation in a <dialog>, then shows the API's answer. */
"use strict";

// ---- token and API ----

/* The token comes in the URL's fragment, which never leaves the browser: `#token=…` (the
   banner's link) or `#/<route>?token=…` (a deep link). It moves to this tab's session storage
   and out of the URL. */
(function takeToken() {
  const [path, query] = location.hash.slice(1).split("?");
  const bare = new URLSearchParams(location.hash.slice(1)).get("token");
  const inRoute = new URLSearchParams(query || "");
  const t = bare || inRoute.get("token");
  if (!t) return;
  sessionStorage.setItem("weir-token", t);
  inRoute.delete("token");
  const rest = inRoute.toString();
  history.replaceState(null, "", location.pathname + (bare ? "#/" : "#" + path + (rest ? "?" + rest : "")));
})();
const token = () => sessionStorage.getItem("weir-token") || "";
const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const enc = encodeURIComponent;
let me = {scope: "", operate: false};

async function api(path, {method = "GET", body, raw} = {}) {
  const r = await fetch(path, {
    method,
    headers: {"Authorization": "Bearer " + token(), "Content-Type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (raw && r.ok) return r;
  const text = await r.text();
  let v;
  try { v = text ? JSON.parse(text) : {}; } catch { v = {error: text}; }
  if (!r.ok) { const e = new Error(v.error || r.status + " " + r.statusText); e.status = r.status; throw e; }
  return v;
}

function flash(message, bad) {
  const d = document.createElement("div");
  d.textContent = message;
  if (bad) d.className = "bad";
  d.dataset.flash = bad ? "error" : "ok";
  $("flash").appendChild(d);
  setTimeout(() => d.remove(), bad ? 12000 : 6000);
}

/* Asks before an action; `extra` is HTML of inputs read by `read(dialog)`. Resolves to the
   value read, or null when cancelled. */
function confirmAction(text, extra = "", read = () => true) {
  const dlg = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-extra").innerHTML = extra;
  dlg.returnValue = "";
  dlg.showModal();
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok" ? read(dlg) : null), {once: true});
  });
}

/* Runs an operate action after confirmation; shows the answer, then re-renders the page. */
async function act(text, call, extra, read) {
  if (!me.operate) { flash("refused: your token's scope is " + me.scope + "; this needs operate", true); return; }
  const input = await confirmAction(text, extra, read);
  if (input === null) return;
  try {
    const v = await call(input);
    flash("done: " + summarize(v));
  } catch (e) {
    flash("refused: " + e.message, true);
  }
  route();
}
const summarize = (v) => JSON.stringify(v).slice(0, 300);
const opAttr = () => (me.operate ? "" : ' disabled title="needs a token of scope operate"');

// ---- small renderers ----

function table(rows, columns, cell) {
  if (!rows.length) return '<span class="muted">none</span>';
  const cols = columns || Object.keys(rows[0]);
  const show = cell || ((r, c) => { const v = r[c]; return typeof v === "object" && v !== null ? esc(JSON.stringify(v)) : esc(v); });
  return "<table><tr>" + cols.map((c) => "<th>" + esc(c) + "</th>").join("") + "</tr>" +
    rows.map((r) => "<tr>" + cols.map((c) => "<td>" + show(r, c) + "</td>").join("") + "</tr>").join("") + "</table>";
}
const badge = (s) => `<span class="badge s-${esc(s)}">${esc(s)}</span>`;
const when = (t) => (t ? new Date(t).toISOString().replace("T", " ").slice(0, 19) : "—");
function ago(ms) {
  if (ms === null || ms === undefined) return "—";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 120 ? s + " s ago" : s < 7200 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
}
const bytes = (n) => (n < 1e3 ? n + " B" : n < 1e6 ? (n / 1e3).toFixed(1) + " kB" : n < 1e9 ? (n / 1e6).toFixed(1) + " MB" : (n / 1e9).toFixed(2) + " GB");
const dur = (ms) => (ms === null || ms === undefined ? "—" : ms < 1000 ? ms + " ms" : ms < 120000 ? (ms / 1000).toFixed(1) + " s" : Math.round(ms / 60000) + " min");
const errorBox = (e) => '<div class="error">' + esc(e.message || e) + "</div>";

/* A line or bar chart of series {name: [[x, y], …]} (x numbers, e.g. ms since the epoch). */
function chart(series, {kind = "line", label = "", height = 200, xTime = true} = {}) {
  const all = Object.values(series).flat();
  if (!all.length) return '<span class="muted">no data yet</span>';
  const W = 900, H = height, L = 56, B = 24;
  const [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  const [y0, y1] = [Math.min(0, ...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  const X = (x) => L + (x1 === x0 ? (W - L) / 2 : (x - x0) / (x1 - x0) * (W - L - 14));
  const Y = (y) => H - B - (y1 === y0 ? 0 : (y - y0) / (y1 - y0) * (H - B - 10));
  const colors = ["#2e90fa", "#f04438", "#12b76a", "#f79009", "#7a5af8", "#ee46bc", "#0e9384", "#667085"];
  const fmtX = (x) => (xTime ? new Date(x).toISOString().slice(11, 19) : String(x));
  let svg = `<svg viewBox="0 0 ${W} ${H}" width="100%" style="max-width:${W}px" role="img" aria-label="${esc(label)}">`;
  svg += `<line x1="${L}" y1="${H - B}" x2="${W}" y2="${H - B}" stroke="#ccc"/><text x="4" y="14">${esc(+y1.toFixed(3))}</text><text x="4" y="${H - B}">${esc(y0)}</text>`;
  svg += `<text x="${L}" y="${H - 6}">${esc(fmtX(x0))}</text><text x="${W - 70}" y="${H - 6}">${esc(fmtX(x1))}</text>`;
  const names = Object.keys(series);
  names.forEach((name, i) => {
    const p = series[name].slice().sort((a, b) => a[0] - b[0]);
    const c = colors[i % colors.length];
    if (kind === "bar") {
      const xs = new Set(all.map((q) => q[0])).size;
      const w = Math.min(40, Math.max(2, (W - L - 14) / xs / names.length - 2));
      svg += p.map((q) => `<rect x="${(X(q[0]) + i * w).toFixed(1)}" y="${Y(Math.max(0, q[1])).toFixed(1)}" width="${w.toFixed(1)}" height="${Math.abs(Y(q[1]) - Y(0)).toFixed(1)}" fill="${c}"/>`).join("");
    } else {
      svg += `<path d="${p.map((q, j) => (j ? "L" : "M") + X(q[0]).toFixed(1) + " " + Y(q[1]).toFixed(1)).join(" ")}" fill="none" stroke="${c}" stroke-width="2"/>`;
    }
  });
  const legend = names.map((name, i) => `<span style="color:${colors[i % colors.length]}">● ${esc(name)}</span>`).join(" &nbsp; ");
  return svg + `</svg><div class="legend">${legend}</div>`;
}

// ---- routing ----

const pages = {};
let timer = null;
let renderStarted = 0;

function parseRoute() {
  const [path, query] = location.hash.slice(1).split("?");
  const parts = (path || "/").split("/").filter(Boolean).map(decodeURIComponent);
  return {parts, q: new URLSearchParams(query || "")};
}

/* The URL of a page with its parameters; a link to it states exactly what it shows. */
function href(parts, params) {
  const q = params ? new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "")).toString() : "";
  return "#/" + parts.map(enc).join("/") + (q ? "?" + q : "");
}

async function route() {
  clearInterval(timer);
  timer = null;
  renderStarted = performance.now();
  const {parts, q} = parseRoute();
  const name = parts[0] || "overview";
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === name || (name === "dag" && a.dataset.page === "dags") || (name === "task" && a.dataset.page === "dags")));
  const page = pages[name];
  const main = $("page");
  if (!token()) { main.innerHTML = loginForm(); return; }
  if (!page) { main.innerHTML = errorBox("no page " + location.hash); return; }
  try {
    await page(main, parts.slice(1), q);
    document.title = "Weir · " + name;
  } catch (e) {
    main.innerHTML = errorBox(e) + (e.status === 401 ? loginForm() : "");
  }
  // How long the route took to show, up to the next frame after layout (`weir bench console`
  // reads it), and since the page's navigation began.
  void main.offsetHeight;
  await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  document.body.dataset.renderMs = (performance.now() - renderStarted).toFixed(1);
  document.body.dataset.sinceNavigationMs = performance.now().toFixed(1);
  document.body.dataset.route = location.hash;
}

function loginForm() {
  return `<section><h2>API token</h2><p>Paste a bearer token (scope read to look, operate to act).</p>
    <form id="login" class="bar"><input id="token" type="password" size="50" autocomplete="off" aria-label="API token"> <button class="primary">Use</button></form></section>`;
}

document.addEventListener("submit", (e) => {
  if (e.target.id === "login") {
    e.preventDefault();
    sessionStorage.setItem("weir-token", $("token").value.trim());
    start();
  }
});

// ---- overview ----

pages.overview = async (main) => {
  main.innerHTML = `<div class="cols">
    <section><h2>Alerts</h2><div id="ov-alerts">…</div></section>
    <section><h2>Pipelines and lag</h2><div id="ov-lag">…</div></section>
    <section><h2>Lake</h2><div id="ov-lake">…</div></section>
    <section><h2>DAGs</h2><div id="ov-dags">…</div></section></div>`;
  const fill = async (id, f) => { try { $(id).innerHTML = await f(); } catch (e) { $(id).innerHTML = errorBox(e); } };
  await Promise.all([
    fill("ov-alerts", async () => {
      const active = (await api("/api/v1/alerts")).alerts.filter((a) => a.state === "firing" || a.state === "pending");
      return active.length ? table(active, ["alert", "state", "labels", "value"], (r, c) => c === "state" ? `<span class="${esc(r.state)}">${esc(r.state)}</span>` : c === "labels" ? esc(Object.entries(r.labels).map(([k, v]) => k + "=" + v).join(" ")) : esc(typeof r[c] === "number" ? r[c].toFixed(3) : r[c])) + '<p><a href="#/streams">alerts and silences →</a></p>' : '<span class="muted">nothing firing</span>';
    }),
    fill("ov-lag", async () => {
      const c = (await api("/api/v1/lag")).consumers;
      return "<h3>consumer lag</h3>" + table(c, ["consumer", "target", "topic", "lag"]);
    }),
    fill("ov-lake", async () => {
      const t = (await api("/api/v1/lake/tables")).tables;
      return table(t, ["name", "version", "files", "last commit"], (r, c) => c === "name" ? `<a href="${href(["lake", r.name])}">${esc(r.name)}</a>` : c === "last commit" ? esc(ago(r.last_commit_ms)) : esc(r[c]));
    }),
    fill("ov-dags", async () => {
      const v = await api("/api/v1/dags");
      return table(v.dags.slice(0, 20), ["dag", "recent runs"], (r, c) => c === "dag" ? `<a href="${href(["dag", r.dag_id, "grid"])}">${esc(r.dag_id)}</a>` : recentDots(r)) +
        (v.import_errors.length ? `<p class="error">${v.import_errors.length} DAG file(s) refused — <a href="#/dags">see DAGs</a></p>` : "");
    }),
  ]);
  timer = setInterval(() => { if (location.hash === "" || location.hash === "#/") route(); }, 10000);
};

const recentDots = (d) => (d.recent_runs || []).slice().reverse().map((r) => `<span class="dot s-${esc(r.state)}" title="${esc(r.run_id)}: ${esc(r.state)}"></span>`).join("");

// ---- DAG list ----

pages.dags = async (main, _, q) => {
  const v = await api("/api/v1/dags");
  const text = (q.get("q") || "").toLowerCase();
  const filter = q.get("filter") || "all";
  const keep = (d) => (!text || [d.dag_id, d.owner, d.description, d.file].join(" ").toLowerCase().includes(text)) &&
    (filter === "all" || (filter === "paused" && d.paused) || (filter === "active" && !d.paused) ||
     (filter === "failed" && (d.recent_runs || [])[0]?.state === "failed") || (filter === "running" && (d.recent_runs || []).some((r) => r.state === "running" || r.state === "queued")));
  const dags = v.dags.filter(keep);
  let html = `<h1>DAGs <span class="muted">${dags.length} of ${v.dags.length}</span></h1>
    <form class="bar" id="dag-filter"><input id="dag-q" type="search" placeholder="search id, owner, description  ( / )" value="${esc(q.get("q") || "")}" size="40" aria-label="search DAGs">
    <select id="dag-state" aria-label="filter">${["all", "active", "paused", "failed", "running"].map((f) => `<option${f === filter ? " selected" : ""}>${f}</option>`).join("")}</select></form>`;
  if (v.import_errors.length) {
    html += `<section id="import-errors"><h2 class="error">DAG files refused</h2>` + table(v.import_errors, ["file", "line", "reason"]) + "</section>";
  }
  // Only the rows in view (and a screenful around them) are in the DOM: a list of 1,000 DAGs
  // costs what 60 rows cost; search and filter above cover the rest.
  const row = (d) => `<div class="dl-row" role="row" data-dag="${esc(d.dag_id)}"><span><input type="checkbox" class="pause" aria-label="paused: ${esc(d.dag_id)}"${d.paused ? " checked" : ""}${opAttr()}></span>` +
    `<span><a href="${href(["dag", d.dag_id, "grid"])}">${esc(d.dag_id)}</a></span><span>${esc(d.owner)}</span><span>${esc(d.schedule)}</span>` +
    `<span>${d.next_run ? (d.next_run.due ? "due now" : esc(when(d.next_run.run_after))) : "—"}</span><span>${recentDots(d)}</span><span class="muted">${esc(d.description)}</span></div>`;
  html += `<section><div class="dl-row dl-head" role="row"><span title="paused">off</span><span>DAG</span><span>owner</span><span>schedule</span><span>next run</span><span>recent runs</span><span>description</span></div>
    <div id="dag-table" class="dl" role="table" data-total="${dags.length}" style="height:min(calc(100vh - 230px), ${dags.length * DL_ROW + 2}px)"><div class="dl-space" style="height:${dags.length * DL_ROW}px"></div></div></section>`;
  main.innerHTML = html;
  const list = $("dag-table");
  let shown = "";
  const paint = () => {
    const from = Math.max(0, Math.floor(list.scrollTop / DL_ROW) - 20);
    const to = Math.min(dags.length, from + Math.ceil(list.clientHeight / DL_ROW) + 40);
    if (shown === from + ":" + to) return;
    shown = from + ":" + to;
    list.firstElementChild.innerHTML = `<div style="position:relative;top:${from * DL_ROW}px">${dags.slice(from, to).map(row).join("")}</div>`;
  };
  list.onscroll = paint;
  paint();
  const go = () => { location.hash = href(["dags"], {q: $("dag-q").value, filter: $("dag-state").value === "all" ? "" : $("dag-state").value}); };
  $("dag-filter").addEventListener("submit", (e) => { e.preventDefault(); go(); });
  $("dag-state").addEventListener("change", go);
  list.addEventListener("change", (e) => {
    if (!e.target.classList.contains("pause")) return;
    const dag = e.target.closest(".dl-row").dataset.dag;
    const paused = e.target.checked;
    e.target.checked = !paused; // until confirmed
    act(`${paused ? "Pause" : "Unpause"} DAG ${dag}?`, () => api(`/api/v1/dags/${enc(dag)}`, {method: "PATCH", body: {is_paused: paused}}));
  });
};
const DL_ROW = 30;

// ---- one DAG ----

pages.dag = async (main, parts, q) => {
  const [id, tab = "grid"] = parts;
  // The grid's data is fetched alongside the DAG's, not after it.
  const grid = tab === "grid" ? api(`/api/v1/dags/${enc(id)}/grid?runs=${Number(q.get("runs") || 25)}`) : null;
  grid?.catch(() => {});
  const d = await api(`/api/v1/dags/${enc(id)}`);
  const tabs = ["grid", "graph", "runs", "code"].map((t) => `<a href="${href(["dag", id, t])}" class="${t === tab ? "active" : ""}">${t}</a>`).join("");
  main.innerHTML = `<h1>${esc(id)} ${d.paused ? '<span class="badge s-skipped">paused</span>' : ""}</h1>
    <p class="muted">${esc(d.description)} · owner ${esc(d.owner || "—")} · schedule ${esc(d.schedule)} (${esc(d.timezone)}) · ${esc(d.file)}</p>
    <div class="bar"><span class="tabs">${tabs}</span><span style="flex:1"></span>
      <button id="a-trigger"${opAttr()}>Trigger…</button><button id="a-backfill"${opAttr()}>Backfill…</button>
      <button id="a-pause"${opAttr()}>${d.paused ? "Unpause" : "Pause"}</button></div>
    <div id="tab"></div>`;
  $("a-trigger").onclick = () => act(`Trigger a run of ${id}?`,
    (input) => api(`/api/v1/dags/${enc(id)}/runs`, {method: "POST", body: input}),
    `<label>conf (JSON)<br><textarea id="t-conf" rows="4">${esc(JSON.stringify(d.params || {}, null, 1))}</textarea></label><br>
     <label>logical date (optional) <input id="t-date" placeholder="2026-12-01T00:00:00Z"></label>`,
    () => { const body = {conf: JSON.parse($("t-conf").value || "{}")}; if ($("t-date").value) body.logical_date = $("t-date").value; return body; });
  $("a-backfill").onclick = () => act(`Backfill ${id}: a run for every data interval in the range without one?`,
    (input) => api(`/api/v1/dags/${enc(id)}/backfill`, {method: "POST", body: input}),
    `<label>from <input id="b-from" placeholder="2026-11-01"></label> <label>to <input id="b-to" placeholder="2026-11-07"></label>`,
    () => ({from: $("b-from").value, to: $("b-to").value}));
  $("a-pause").onclick = () => act(`${d.paused ? "Unpause" : "Pause"} DAG ${id}?`, () => api(`/api/v1/dags/${enc(id)}`, {method: "PATCH", body: {is_paused: !d.paused}}));
  await dagTabs[tab]($("tab"), id, d, q, grid);
  if (tab === "grid" || tab === "graph") timer = setInterval(() => { if (parseRoute().parts[1] === id) dagTabs[tab]($("tab"), id, d, parseRoute().q).catch(() => {}); }, 5000);
};

const dagTabs = {};

/* Colours of task states (as in console.css), for the grid's canvas. */
const STATE_COLOURS = {success: "#12b76a", failed: "#f04438", upstream_failed: "#f04438", running: "#2e90fa", queued: "#98a2b3",
  scheduled: "#98a2b3", up_for_retry: "#f79009", skipped: "#d0d5dd", none: "#e4e7ec", mapped: "#7a5af8", removed: "#f2f4f7"};
const CELL = 16;

/* Airflow's grid: a row per task, a column per run (oldest left). Drawn on one canvas, so 200
   tasks × 100 runs is one element, not 20,000; task names stay text beside it. Hover shows a
   cell's try and duration; a click (or arrows and Enter, once focused) opens the task, or the
   run's graph from the header row. */
dagTabs.grid = async (el, id, _d, q, prefetched) => {
  const n = Number(q.get("runs") || 25);
  const g = await (prefetched || api(`/api/v1/dags/${enc(id)}/grid?runs=${n}`));
  const filled = g.cells.reduce((k, row) => k + row.filter((c) => c).length, 0);
  el.innerHTML = `<section><div class="bar"><span class="muted">${g.runs.length} runs × ${g.tasks.length} tasks, oldest left</span>
    <select id="grid-n" aria-label="runs shown">${[10, 25, 50, 100, 200].map((k) => `<option${k === n ? " selected" : ""}>${k}</option>`).join("")}</select></div>
    <div class="gridwrap"><div class="gridnames" style="padding-top:${CELL}px">${g.tasks.map((t) => `<div title="${esc(t)}">${esc(t)}</div>`).join("")}</div>
    <canvas id="grid" tabindex="0" role="img" data-cells="${filled}" aria-label="grid of ${g.runs.length} runs × ${g.tasks.length} tasks: arrows move, Enter opens"></canvas></div></section>
    <section><h2>Runs</h2>${runsTable(id, g.runs.slice().reverse().slice(0, 10))}</section>`;
  $("grid-n").onchange = (e) => { location.hash = href(["dag", id, "grid"], {runs: e.target.value}); };
  const cv = $("grid"), dpr = window.devicePixelRatio || 1;
  const W = g.runs.length * CELL, H = (g.tasks.length + 1) * CELL;
  cv.width = W * dpr; cv.height = H * dpr;
  Object.assign(cv.style, {width: W + "px", height: H + "px"});
  const cx = cv.getContext("2d");
  cx.scale(dpr, dpr);
  let focus = null;
  const draw = () => {
    cx.clearRect(0, 0, W, H);
    g.runs.forEach((r, ri) => { cx.fillStyle = STATE_COLOURS[r.state] || "#98a2b3"; cx.fillRect(ri * CELL, 4, CELL - 2, CELL - 6); });
    const byColour = {};
    g.cells.forEach((row, ri) => row.forEach((c, ti) => { if (c) (byColour[STATE_COLOURS[g.states[c[0]]]] ||= []).push(ri, ti); }));
    for (const [colour, at] of Object.entries(byColour)) {
      cx.fillStyle = colour;
      for (let i = 0; i < at.length; i += 2) cx.fillRect(at[i] * CELL, (at[i + 1] + 1) * CELL, CELL - 2, CELL - 2);
    }
    if (focus) { cx.strokeStyle = "#1d2430"; cx.lineWidth = 2; cx.strokeRect(focus.ri * CELL - 1, (focus.ti + 1) * CELL - 1, CELL, CELL); }
  };
  draw();
  const describe = ({ri, ti}) => {
    const r = g.runs[ri];
    if (!r) return null;
    if (ti < 0) return `${r.run_id}\n${r.state}`;
    const c = g.cells[ri][ti];
    return c ? `${g.tasks[ti]}\n${r.run_id}\n${g.states[c[0]]} · try ${c[1]} · ${dur(c[2])}` : null;
  };
  const at = (e) => { const b = cv.getBoundingClientRect(); return {ri: Math.floor((e.clientX - b.left) / CELL), ti: Math.floor((e.clientY - b.top) / CELL) - 1}; };
  const tip = (text, x, y) => {
    $("tip").hidden = !text;
    if (text) { $("tip").textContent = text; Object.assign($("tip").style, {left: x + 12 + "px", top: y + 12 + "px"}); }
  };
  const open = ({ri, ti}) => {
    const r = g.runs[ri];
    if (!r) return;
    if (ti < 0) location.hash = href(["dag", id, "graph"], {run: r.run_id});
    else if (g.cells[ri][ti]) location.hash = href(["task", id, r.run_id, g.tasks[ti]]);
  };
  cv.onmousemove = (e) => tip(describe(at(e)), e.clientX, e.clientY);
  cv.onmouseleave = () => tip(null);
  cv.onclick = (e) => open(at(e));
  cv.onkeydown = (e) => {
    const moves = {ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1]};
    if (e.key === "Enter" && focus) { open(focus); return; }
    if (!moves[e.key]) return;
    e.preventDefault();
    focus = focus || {ri: g.runs.length - 1, ti: 0};
    focus = {ri: Math.min(g.runs.length - 1, Math.max(0, focus.ri + moves[e.key][0])), ti: Math.min(g.tasks.length - 1, Math.max(-1, focus.ti + moves[e.key][1]))};
    draw();
    const b = cv.getBoundingClientRect();
    tip(describe(focus), b.left + focus.ri * CELL, b.top + (focus.ti + 1) * CELL);
  };
};

function runsTable(id, runs) {
  return table(runs, ["run_id", "state", "run_type", "data interval", "conf", "version"], (r, c) => {
    if (c === "run_id") return `<a href="${href(["dag", id, "graph"], {run: r.run_id})}">${esc(r.run_id)}</a>`;
    if (c === "state") return badge(r.state);
    if (c === "data interval") return esc(when(r.data_interval_start) + " → " + when(r.data_interval_end));
    if (c === "conf") return `<code>${esc(JSON.stringify(r.conf))}</code>`;
    if (c === "version") return `<a href="${href(["dag", id, "code"], {version: r.version})}">${esc(r.version.slice(0, 10))}</a>`;
    return esc(r[c]);
  });
}

dagTabs.runs = async (el, id) => {
  const runs = (await api(`/api/v1/dags/${enc(id)}/runs`)).runs;
  el.innerHTML = `<section><h2>Runs</h2>${runsTable(id, runs)}</section>`;
};

/* Tasks left to right by layer (longest path from a root), coloured by the chosen run's states. */
/* A task's id within its group (the group is drawn on the node). */
const short = (n) => (n.group && n.id.startsWith(n.group + ".") ? n.id.slice(n.group.length + 1) : n.id);

dagTabs.graph = async (el, id, d, q) => {
  const runs = (await api(`/api/v1/dags/${enc(id)}/runs`)).runs;
  const runId = q.get("run") || runs[0]?.run_id;
  const run = runs.find((r) => r.run_id === runId);
  const version = run && run.version !== d.version ? await api(`/api/v1/dags/${enc(id)}/versions/${enc(run.version)}`) : null;
  const graph = (version && version.graph) || d.graph;
  const states = {};
  if (run) for (const t of (await api(`/api/v1/dags/${enc(id)}/runs/${enc(run.run_id)}/tasks`)).tasks) states[t.task_id] = t;
  const lineage = run ? await api(`/api/v1/dags/${enc(id)}/runs/${enc(run.run_id)}/lineage`) : {tasks: []};
  const layers = [];
  for (const n of graph.nodes) (layers[n.layer] = layers[n.layer] || []).push(n);
  const NW = 170, NH = 30, GX = 60, GY = 14, pos = {};
  layers.forEach((nodes, l) => nodes.forEach((n, i) => { pos[n.id] = {x: 10 + l * (NW + GX), y: 10 + i * (NH + GY)}; }));
  const W = 20 + layers.length * (NW + GX), H = 20 + Math.max(...layers.map((l) => l.length)) * (NH + GY);
  let svg = `<svg class="graph" id="graph" width="${W}" height="${H}" role="img" aria-label="task graph">`;
  for (const [a, b] of graph.edges) {
    const p = pos[a], r = pos[b];
    const x1 = p.x + NW, y1 = p.y + NH / 2, x2 = r.x, y2 = r.y + NH / 2, mx = (x1 + x2) / 2;
    svg += `<path class="edge" d="M${x1} ${y1} C${mx} ${y1} ${mx} ${y2} ${x2} ${y2}"/>`;
  }
  for (const n of graph.nodes) {
    const st = states[n.id]?.state || "none";
    const p = pos[n.id];
    svg += `<g data-task="${esc(n.id)}" style="cursor:pointer"><title>${esc(n.id)} (${esc(n.kind)}, ${esc(n.trigger_rule)}) ${esc(n.detail)}: ${esc(st)}</title>` +
      `<rect class="node s-${esc(st)}" x="${p.x}" y="${p.y}" width="${NW}" height="${NH}" fill-opacity="0.85"/>` +
      `<text x="${p.x + 8}" y="${p.y + 19}">${n.kind === "branch" ? "◇ " : ""}${esc(short(n).length > 20 ? short(n).slice(0, 19) + "…" : short(n))}</text>` +
      (n.group ? `<text class="group" x="${p.x + NW - 4}" y="${p.y + 10}" text-anchor="end">${esc(n.group)}</text>` : "") + "</g>";
  }
  svg += "</svg>";
  const choose = `<select id="graph-run" aria-label="run">${runs.map((r) => `<option value="${esc(r.run_id)}"${r.run_id === runId ? " selected" : ""}>${esc(r.run_id)} (${esc(r.state)})</option>`).join("")}</select>`;
  el.innerHTML = `<section><div class="bar">run ${choose} ${run ? badge(run.state) + ` <span class="muted">data interval ${esc(when(run.data_interval_start))} → ${esc(when(run.data_interval_end))} · conf <code>${esc(JSON.stringify(run.conf))}</code> · version <a href="${href(["dag", id, "code"], {version: run.version})}">${esc(run.version.slice(0, 10))}</a></span>` : ""}</div>${svg}
    <p class="muted">${Object.entries({success: 1, failed: 1, running: 1, queued: 1, up_for_retry: 1, skipped: 1, upstream_failed: 1, mapped: 1, none: 1}).map(([s]) => `<span class="dot s-${s}"></span>${s}`).join(" &nbsp;")}</p></section>
    ${run && run.inputs && Object.keys(run.inputs).length ? `<section><h2>Triggered by commits</h2>${table(Object.entries(run.inputs).map(([t, i]) => ({table: t, previous: i.previous, version: i.version})), ["table", "previous", "version"])}</section>` : ""}
    <section id="lineage"><h2>Lineage <span class="muted">table@version → SQL task → view@version</span></h2>${table(lineage.tasks.map((t) => ({
      read: Object.entries(t.read).map(([n, v]) => `${n}@${v}`).join(", ") || "—", task: `${t.task_id} (try ${t.try_number})`,
      wrote: t.wrote ? `${t.wrote.table}@${t.wrote.version}` : "—"})), ["read", "task", "wrote"])}</section>`;
  $("graph-run").onchange = (e) => { location.hash = href(["dag", id, "graph"], {run: e.target.value}); };
  $("graph").onclick = (e) => {
    const g = e.target.closest("g[data-task]");
    if (g && run) location.hash = href(["task", id, run.run_id, g.dataset.task]);
  };
};

/* The DAG file of a version, and what changed from it to the current one (a line diff). */
dagTabs.code = async (el, id, d, q) => {
  const hash = q.get("version") || d.version;
  const v = hash === d.version ? {source: d.source, file: d.file} : await api(`/api/v1/dags/${enc(id)}/versions/${enc(hash)}`);
  const same = hash === d.version;
  el.innerHTML = `<section><h2>${same ? "current version" : "version"} <code>${esc(hash.slice(0, 16))}</code> <span class="muted">${esc(v.file)}</span></h2>
    <pre class="code" id="code">${esc(v.source)}</pre></section>` +
    (same ? "" : `<section><h2>changes from this version to the current one</h2><pre class="code diff" id="diff">${diff(v.source, d.source)}</pre></section>`);
};

function diff(a, b) {
  const x = a.split("\n"), y = b.split("\n");
  if (x.length * y.length > 4e6) return esc("(too large to compare here)");
  const n = x.length, m = y.length, L = Array.from({length: n + 1}, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) { out.push("  " + esc(x[i])); i++; j++; }
    else if (j < m && (i === n || L[i][j + 1] >= L[i + 1][j])) { out.push(`<span class="add">+ ${esc(y[j])}</span>`); j++; }
    else { out.push(`<span class="del">- ${esc(x[i])}</span>`); i++; }
  }
  return x.join("\n") === y.join("\n") ? esc("(no changes)") : out.join("\n");
}

// ---- a task instance ----

const LOG_PAGE = 256 * 1024;
const stripAnsi = (s) => s.replace(/\x1b\[[0-9;?]*[ -\/]*[@-~]/g, "").replace(/\x1b[@-_]/g, "");

pages.task = async (main, [dag, run, task], q) => {
  const t = await api(`/api/v1/dags/${enc(dag)}/runs/${enc(run)}/tasks/${enc(task)}`);
  const tryNo = Number(q.get("try") || t.try_number || 0);
  const tries = t.tries.map((x) => `<a href="${href(["task", dag, run, task], {try: x.try_number})}" class="${x.try_number === tryNo ? "active" : ""}">try ${x.try_number}</a>`).join(" ");
  main.innerHTML = `<h1><a href="${href(["dag", dag, "grid"])}">${esc(dag)}</a> · ${esc(task)} ${badge(t.state)}</h1>
    <p class="muted">run <a href="${href(["dag", dag, "graph"], {run})}">${esc(run)}</a> · ${esc(t.kind)} · try ${t.try_number} of ${t.max_tries} · pool ${esc(t.pool)} · queue ${esc(t.queue)}
    · upstream ${esc((t.upstream || []).join(", ") || "—")} · downstream ${esc(t.downstream.join(", ") || "—")}</p>
    ${t.why_not_running ? `<section id="why"><b>Why it is not running:</b> ${esc(t.why_not_running)}</section>` : ""}
    ${t.approval ? approvalBox(t.approval) : ""}
    ${t.map_item ? `<section id="map-item"><b>Mapped item ${t.map_item.index}:</b> <code>${esc(JSON.stringify(t.map_item.item))}</code></section>` : ""}
    ${t.mapped ? `<section id="mapped"><h2>Mapped instances (${t.mapped.length})</h2>${table(t.mapped, ["task_id", "state", "try_number"], (r, c) =>
      c === "task_id" ? `<a href="${href(["task", dag, run, r.task_id])}">${esc(r.task_id)}</a>` : c === "state" ? badge(r.state) : esc(r[c]))}</section>` : ""}
    <div class="bar">
      <button id="a-clear"${opAttr()}>Clear…</button>
      <button id="a-success"${opAttr()}>Mark success</button>
      <button id="a-failed" class="danger"${opAttr()}>Mark failed</button></div>
    <section><h2>Tries</h2>${table(t.tries, ["try_number", "state", "started_at", "ended_at", "duration", "reason"], (r, c) =>
      c === "state" ? badge(r.state) : c === "duration" ? esc(dur(r.ended_at ? Date.parse(r.ended_at) - Date.parse(r.started_at) : null)) : c.endsWith("_at") ? esc(when(r[c])) : esc(r[c]))}</section>
    <section><h2>Log <span class="tabs">${tries}</span></h2><div class="bar"><button id="log-older" hidden>Load earlier</button><span id="log-info" class="muted"></span></div><pre class="log" id="log"></pre></section>`;
  $("a-clear").onclick = () => act(`Clear ${task} in ${run} so it runs again?`,
    (input) => api(`/api/v1/dags/${enc(dag)}/clear`, {method: "POST", body: input}),
    `<label><input type="checkbox" id="c-down"> with downstream tasks</label><br><label><input type="checkbox" id="c-failed"> only failed ones</label>`,
    () => ({task, run_id: run, downstream: $("c-down").checked, only_failed: $("c-failed").checked}));
  for (const s of ["success", "failed"]) {
    $("a-" + s).onclick = () => act(`Mark ${task} in ${run} as ${s}?`,
      () => api(`/api/v1/dags/${enc(dag)}/runs/${enc(run)}/tasks/${enc(task)}/state`, {method: "POST", body: {state: s}}));
  }
  for (const decision of ["approve", "reject"]) {
    const button = $("a-" + decision);
    if (button) button.onclick = () => act(`${decision === "approve" ? "Approve" : "Reject"} ${task} in ${run}?`,
      (input) => api(`/api/v1/dags/${enc(dag)}/runs/${enc(run)}/tasks/${enc(task)}/approval`, {method: "POST", body: input}),
      `<label>by <input id="ap-by"></label><br><label>comment <input id="ap-comment"></label>`,
      () => ({decision, by: $("ap-by").value, comment: $("ap-comment").value}));
  }
  if (tryNo > 0) await showLog(dag, run, task, tryNo);
  else $("log-info").textContent = "no try yet";
};

/* An approval task: its question, who may decide, and the decision or the buttons to make it. */
function approvalBox(a) {
  const d = a.decision;
  const decided = d ? `<p id="ap-decision"><b>${esc(d.decision)}</b> by ${esc(d.by)} ${esc(when(d.at))}${d.comment ? " — " + esc(d.comment) : ""}</p>` : "";
  const buttons = a.waiting ? `<div class="bar"><button id="a-approve"${opAttr()}>Approve…</button>
      <button id="a-reject" class="danger"${opAttr()}>Reject…</button></div>` : "";
  return `<section id="approval"><h2>Approval</h2><p>${esc(a.message)}</p>
    <p class="muted">approvers: ${esc(a.approvers.join(", ") || "anyone who may operate")} · times out after ${esc(dur(a.timeout_s * 1000))}</p>${decided}${buttons}</section>`;
}

/* The log a page at a time: its end first, earlier pages on demand, new bytes while the try runs. */
async function showLog(dag, run, task, tryNo) {
  const base = `/api/v1/dags/${enc(dag)}/runs/${enc(run)}/tasks/${enc(task)}/logs?try=${tryNo}`;
  const get = async (query) => {
    const r = await api(base + query, {raw: true});
    return {text: await r.text(), start: Number(r.headers.get("x-log-start")), size: Number(r.headers.get("x-log-size")), state: r.headers.get("x-try-state")};
  };
  const pre = $("log");
  let part = await get(`&limit=${LOG_PAGE}`);
  let first = part.start, end = part.start + new Blob([part.text]).size;
  pre.textContent = stripAnsi(part.text);
  pre.scrollTop = pre.scrollHeight;
  const info = () => { $("log-info").textContent = `${bytes(end - first)} of ${bytes(Math.max(end, part.size))} shown`; $("log-older").hidden = first === 0; };
  info();
  $("log-older").onclick = async () => {
    const from = Math.max(0, first - LOG_PAGE);
    const older = await get(`&offset=${from}&limit=${first - from}`);
    pre.prepend(document.createTextNode(stripAnsi(older.text)));
    first = from;
    info();
  };
  if (part.state === "running") {
    timer = setInterval(async () => {
      if (!pre.isConnected) return;
      const next = await get(`&offset=${end}&limit=${LOG_PAGE}`);
      if (next.text) {
        const follow = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.append(document.createTextNode(stripAnsi(next.text)));
        end += new Blob([next.text]).size;
        if (follow) pre.scrollTop = pre.scrollHeight;
      }
      part = next;
      info();
      if (next.state !== "running") clearInterval(timer);
    }, 1500);
  }
}

// ---- lake ----

pages.lake = async (main, [name], q) => {
  if (!name) {
    const t = (await api("/api/v1/lake/tables")).tables;
    main.innerHTML = `<h1>Lake <span class="muted">${t.length} tables</span></h1><section>` + table(t, ["name", "version", "files", "size", "last commit"], (r, c) =>
      c === "name" ? `<a href="${href(["lake", r.name])}">${esc(r.name)}</a>` : c === "size" ? esc(bytes(r.bytes)) : c === "last commit" ? esc(ago(r.last_commit_ms)) : esc(r[c])) + "</section>";
    return;
  }
  const version = q.get("version");
  const t = await api(`/api/v1/lake/tables/${enc(name)}` + (version ? `?version=${enc(version)}` : ""));
  const rows = Array.isArray(t.rows) ? t.rows : [];
  const f = t.freshness;
  main.innerHTML = `<h1><a href="#/lake">Lake</a> · ${esc(name)} <span class="muted">version ${t.version}${t.version !== t.latest_version ? ` (latest ${t.latest_version}) — <a href="${href(["lake", name])}">latest</a>` : ""}</span></h1>
    <p class="muted">${t.files} files · ${esc(bytes(t.bytes))}${t.partition_columns.length ? " · partitioned by " + esc(t.partition_columns.join(", ")) : ""}</p>
    ${f ? `<section id="freshness"><b>Freshness:</b> built from ${esc(f.change_log)} version ${esc(f.built_from_version ?? "—")}; the change log is at version ${esc(f.change_log_version)} (${esc(f.versions_behind ?? "?")} behind), last change ${esc(ago(f.change_log_commit_ms))}, last build ${esc(ago(f.built_ms))}</section>` : ""}
    <div class="cols"><section><h2>Schema</h2>${table(t.schema, ["name", "type", "nullable"])}</section>
    <section><h2>History</h2>${table(t.history, ["version", "when", "operation", "detail"], (r, c) =>
      c === "version" ? `<a href="${href(["lake", name], {version: r.version})}">${esc(r.version)}</a>` : c === "when" ? esc(when(r.timestamp_ms)) :
      c === "detail" ? `<code>${esc(JSON.stringify(Object.assign({}, r.parameters, r.weir)).slice(0, 160))}</code>` : esc(r[c]))}</section></div>
    <section><h2>First rows at version ${t.version}</h2>${t.rows.error ? errorBox(t.rows.error) : table(rows)}</section>`;
};

// ---- streams and alerts ----

pages.streams = async (main) => {
  const [pipes, hist, alerts, silences, changes] = await Promise.all([
    api("/api/v1/pipelines").catch((e) => ({error: e.message, pipelines: []})),
    api("/api/v1/lag/history"),
    api("/api/v1/alerts"),
    api("/api/v1/silences"),
    api("/api/v1/alerts/history"),
  ]);
  const lag = {}, wm = {};
  for (const s of hist.samples) {
    for (const [k, v] of Object.entries(s.lag)) (lag[k] = lag[k] || []).push([s.at_ms, v]);
    for (const [k, v] of Object.entries(s.watermark_delay_ms)) (wm[k] = wm[k] || []).push([s.at_ms, v / 1000]);
  }
  const labels = (l) => Object.entries(l || {}).map(([k, v]) => k + "=" + v).join(" ");
  main.innerHTML = `<h1>Streams &amp; alerts</h1>
    <section><h2>Pipelines</h2>${pipes.error ? errorBox(pipes.error) : table(pipes.pipelines, ["pipeline", "topic", "lag", "checkpoint_age_s", "watermark", "realtime_rows"])}</section>
    <div class="cols"><section><h2>Consumer lag (records)</h2><div id="lag-chart">${chart(lag, {label: "consumer lag"})}</div></section>
    <section><h2>Watermark delay (s)</h2><div id="wm-chart">${chart(wm, {label: "watermark delay"})}</div></section></div>
    <section><h2>Alerts</h2>${table(alerts.alerts, ["alert", "state", "labels", "value", "since", ""], (r, c) =>
      c === "state" ? `<span class="${esc(r.state)}">${esc(r.state)}</span>` : c === "labels" ? esc(labels(r.labels)) : c === "since" ? esc(r.active_at ? ago(Date.parse(r.active_at)) : "") :
      c === "value" ? esc(typeof r.value === "number" ? r.value.toFixed(3) : r.value) :
      c === "" ? (r.silenced_by.length ? '<span class="muted">silenced</span>' : `<button class="silence" data-labels="${esc(JSON.stringify(r.labels))}"${opAttr()}>Silence…</button>`) : esc(r[c]))}</section>
    <section><h2>Alert history <span class="muted">newest first</span></h2><div id="alert-history">${table(changes.changes.slice(0, 50), ["evaluated_at", "alert", "state", "labels", "value", "silenced"], (r, c) =>
      c === "state" ? `<span class="${esc(r.state)}">${esc(r.state)}</span>` : c === "labels" ? esc(labels(r.labels)) : c === "evaluated_at" ? esc(when(r.evaluated_at)) :
      c === "value" ? esc(typeof r.value === "number" ? r.value.toFixed(3) : r.value) : esc(r[c]))}</div></section>
    <section><h2>Silences</h2><div class="bar"><button id="new-silence"${opAttr()}>New silence…</button></div>${table(silences.silences || silences, ["id", "state", "matchers", "endsAt", "createdBy", "comment", ""], (r, c) =>
      c === "state" ? esc(r.status?.state) : c === "matchers" ? esc(r.matchers.map((m) => m.name + (m.isEqual === false ? "!=" : "=") + m.value).join(", ")) : c === "endsAt" ? esc(when(r.endsAt)) :
      c === "" ? (r.status?.state !== "expired" ? `<button class="expire" data-id="${esc(r.id)}"${opAttr()}>Expire</button>` : "") : esc(r[c]))}</section>`;
  const silenceForm = (l) => `<label>matchers (name=value, one per line)<br><textarea id="s-m" rows="4">${esc(Object.entries(l).map(([k, v]) => k + "=" + v).join("\n"))}</textarea></label><br>
      <label>for <select id="s-for"><option value="1">1 h</option><option value="4">4 h</option><option value="24">24 h</option></select></label> <label>comment <input id="s-c" value="silenced from the console"></label>`;
  const readSilence = () => ({
    matchers: $("s-m").value.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => { const i = l.indexOf("!=") >= 0 ? l.indexOf("!=") : l.indexOf("="); const neg = l.includes("!="); return {name: l.slice(0, i).trim(), value: l.slice(i + (neg ? 2 : 1)).trim(), isEqual: !neg}; }),
    endsAt: new Date(Date.now() + Number($("s-for").value) * 3600e3).toISOString(), createdBy: "console", comment: $("s-c").value,
  });
  const create = (l) => act("Create this silence?", (body) => api("/api/v1/silences", {method: "POST", body}), silenceForm(l), readSilence);
  $("new-silence").onclick = () => create({});
  main.querySelectorAll("button.silence").forEach((b) => { b.onclick = () => create(JSON.parse(b.dataset.labels)); });
  main.querySelectorAll("button.expire").forEach((b) => { b.onclick = () => act(`Expire silence ${b.dataset.id} now?`, () => api(`/api/v1/silence/${enc(b.dataset.id)}`, {method: "DELETE"})); });
  timer = setInterval(() => { if (parseRoute().parts[0] === "streams" && !$("confirm").open) route(); }, 10000);
};

// ---- SQL ----

const HISTORY_KEY = "weir-sql-history";
pages.sql = async (main, _, q) => {
  const history = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
  const sql = q.get("q") || history[0] || "SELECT * FROM information_schema.tables LIMIT 20";
  main.innerHTML = `<h1>SQL</h1><section><textarea id="sql" rows="6" aria-label="SQL">${esc(sql)}</textarea>
    <div class="bar"><button id="run" class="primary">Run</button><span class="muted"><span class="kbd">Ctrl</span>+<span class="kbd">Enter</span></span>
    <span id="took" class="muted"></span><span style="flex:1"></span><button id="csv" disabled>Download CSV</button></div>
    <div class="bar" id="chart-opts"></div><div id="chart"></div><div id="result"></div></section>
    <section><h2>History</h2><div id="history">${history.length ? "<ol>" + history.map((h) => `<li><a href="${href(["sql"], {q: h})}"><code>${esc(h.slice(0, 160))}</code></a></li>`).join("") + "</ol>" : '<span class="muted">queries you run are kept here (this browser)</span>'}</div></section>`;
  $("run").onclick = runSql;
  $("sql").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); runSql(); } });
  if (q.get("q")) await runSql();
};

let lastResult = null;
async function runSql() {
  const text = $("sql").value.trim();
  $("result").innerHTML = "";
  try {
    const v = await api("/api/v1/query", {method: "POST", body: {sql: text}});
    lastResult = v;
    const past = [text, ...JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]").filter((h) => h !== text)].slice(0, 30);
    localStorage.setItem(HISTORY_KEY, JSON.stringify(past));
    // The URL says which query is shown (a link reruns it), without re-rendering the page.
    window.history.replaceState(null, "", href(["sql"], {q: text}));
    $("took").textContent = `${v.row_count} row(s) in ${v.elapsed_ms.toFixed(1)} ms${v.truncated ? " (truncated)" : ""}`;
    $("csv").disabled = false;
    $("result").innerHTML = table(v.rows.slice(0, 500), v.columns.map((c) => c.name));
    chartOptions(v);
  } catch (e) {
    $("chart").innerHTML = "";
    $("chart-opts").innerHTML = "";
    $("result").innerHTML = errorBox(e);
  }
}

function chartOptions(v) {
  const cols = v.columns;
  const num = cols.filter((c) => /Int|Float|Decimal/.test(c.type));
  if (!num.length || !v.rows.length) { $("chart-opts").innerHTML = ""; $("chart").innerHTML = ""; return; }
  const xDefault = cols.find((c) => c.type.startsWith("Timestamp") || c.type.startsWith("Date")) || cols[0];
  const texts = cols.filter((c) => /Utf8/.test(c.type) && c.name !== xDefault.name).map((c) => c.name);
  const sel = (id, options, chosen) => `<select id="${id}">${options.map((o) => `<option${o === chosen ? " selected" : ""}>${esc(o)}</option>`).join("")}</select>`;
  $("chart-opts").innerHTML = `chart: ${sel("ch-kind", ["line", "bar", "none"], "line")} x ${sel("ch-x", cols.map((c) => c.name), xDefault.name)}
    y ${sel("ch-y", num.map((c) => c.name), num.find((c) => c.name !== xDefault.name)?.name || num[0].name)}
    series ${sel("ch-s", ["—", ...texts], texts[0] || "—")}`;
  const draw = () => {
    const kind = $("ch-kind").value;
    if (kind === "none") { $("chart").innerHTML = ""; return; }
    const x = $("ch-x").value, y = $("ch-y").value, s = $("ch-s").value;
    const xType = cols.find((c) => c.name === x).type;
    const isTime = /Timestamp|Date/.test(xType);
    const series = {};
    v.rows.forEach((r, i) => {
      const key = s === "—" ? y : String(r[s]);
      const xv = isTime ? Date.parse(r[x]) : /Int|Float|Decimal/.test(xType) ? Number(r[x]) : i;
      (series[key] = series[key] || []).push([xv, Number(r[y])]);
    });
    $("chart").innerHTML = chart(series, {kind, label: "chart of " + y, xTime: isTime});
  };
  $("chart-opts").querySelectorAll("select").forEach((e) => { e.onchange = draw; });
  draw();
}

document.addEventListener("click", (e) => {
  if (e.target.id !== "csv" || !lastResult) return;
  const cols = lastResult.columns.map((c) => c.name);
  const cell = (v) => { const s = v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v); return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; };
  const csv = [cols.map(cell).join(","), ...lastResult.rows.map((r) => cols.map((c) => cell(r[c])).join(","))].join("\n") + "\n";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([csv], {type: "text/csv"}));
  a.download = "weir-query.csv";
  a.click();
});

// ---- keyboard ----

document.addEventListener("keydown", (e) => {
  if (e.target.matches("input, textarea, select") || e.ctrlKey || e.metaKey || e.altKey) return;
  const go = {d: "#/dags", l: "#/lake", s: "#/streams", q: "#/sql", o: "#/"}[e.key];
  if (e.key === "/") { const s = document.querySelector("input[type=search]"); if (s) { e.preventDefault(); s.focus(); } }
  else if (go) location.hash = go;
});

async function start() {
  if (token()) {
    try { me = await api("/api/v1/whoami"); $("who").textContent = "token scope: " + me.scope; }
    catch (e) { me = {scope: "", operate: false}; $("who").textContent = e.message; }
  }
  route();
}
window.addEventListener("hashchange", route);
start();
