// regdiff dashboard: plain JS, no framework, nothing loaded from elsewhere.
// Every request carries the API key from sessionStorage as a bearer header (never in a URL);
// images are fetched the same way and shown through blob: URLs. The DOM is built with
// textContent only, so nothing a run holds is ever parsed as HTML.
"use strict";

const KEY = "regdiff.apiKey";
const POLL_MS = 2000;
const TERMINAL = ["succeeded", "failed", "cancelled"];
const SVG = "http://www.w3.org/2000/svg";
const view = document.getElementById("view");
let timers = [];
let blobUrls = [];

// ---- HTTP ------------------------------------------------------------------------------------

function authHeaders() {
  // X-Regdiff-Client: a keyless state change needs it (a cross-site page cannot send it).
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: "Bearer " + key, "X-Regdiff-Client": "dashboard" } : { "X-Regdiff-Client": "dashboard" };
}

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function call(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not a problem body */ }
    throw new ApiError(response.status, detail);
  }
  return response;
}

async function getJson(path) { return (await call(path)).json(); }

async function blobUrl(path) {
  const url = URL.createObjectURL(await (await call(path)).blob());
  blobUrls.push(url);
  return url;
}

// ---- DOM helpers -----------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "onclick") node.addEventListener("click", value);
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(value) {
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    return Math.abs(value) >= 1e4 || (value !== 0 && Math.abs(value) < 1e-3) ? value.toExponential(3) : value.toPrecision(4);
  }
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) =>
      c instanceof Node ? el("td", {}, c) : el("td", typeof c === "number" ? { class: "num" } : {}, fmt(c)))))));
}

function statusBadge(status) { return el("span", { class: "status status-" + status }, status); }

function link(href, text) { return el("a", { href }, text); }

function regularizerLabel(spec) {
  const reg = spec.regularizer;
  if (typeof reg === "string") return reg;
  if (Array.isArray(reg)) return reg.map((t) => (typeof t === "string" ? t : t.name)).join(" + ");
  return reg && reg.name ? reg.name : fmt(reg);
}

function show(...nodes) { view.replaceChildren(...nodes); }

function showError(error) {
  const hint = error.status === 401 ? " (enter an API key above)" : "";
  return el("p", { class: "error", role: "alert" }, "error: " + error.message + hint);
}

// ---- Charts ----------------------------------------------------------------------------------

// One SVG line chart: series = [{name, points: [[step, value], ...]}], all on one y scale.
function lineChart(title, series, width = 360, height = 200) {
  const pad = { left: 56, right: 10, top: 22, bottom: 28 };
  const all = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[1]));
  const root = svg("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                            "aria-label": title, "data-chart": title });
  root.append(svg("text", { x: pad.left, y: 14 }, title));
  if (all.length === 0) {
    root.append(svg("text", { x: pad.left, y: height / 2 }, "no data yet"));
    return root;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) { y0 -= 1e-9 + Math.abs(y0) * 0.05; y1 += 1e-9 + Math.abs(y1) * 0.05; }
  const px = (x) => pad.left + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const py = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  root.append(svg("line", { class: "axis", x1: pad.left, y1: height - pad.bottom, x2: width - pad.right, y2: height - pad.bottom }));
  root.append(svg("line", { class: "axis", x1: pad.left, y1: pad.top, x2: pad.left, y2: height - pad.bottom }));
  root.append(svg("text", { x: 2, y: pad.top + 4 }, fmt(y1)));
  root.append(svg("text", { x: 2, y: height - pad.bottom }, fmt(y0)));
  root.append(svg("text", { x: pad.left, y: height - 8 }, "step " + fmt(x0)));
  root.append(svg("text", { x: width - pad.right - 60, y: height - 8 }, "step " + fmt(x1)));
  series.forEach((s, i) => {
    const points = s.points.filter((p) => Number.isFinite(p[1]))
      .map((p) => px(p[0]).toFixed(1) + "," + py(p[1]).toFixed(1)).join(" ");
    root.append(svg("polyline", { class: "series-" + i, points, "data-series": s.name }));
    root.append(svg("text", { class: "legend-" + i, x: pad.left + 8, y: pad.top + 10 + 12 * i }, s.name));
  });
  return root;
}

const CHARTS = [
  ["loss", ["diffusion_loss", "val_loss"]],
  ["weighted penalty (lambda x penalty)", ["penalty_weighted"]],
  ["raw penalty", ["penalty_raw"]],
];

function lossCharts(seriesByName) {
  return el("div", { class: "panels" }, CHARTS
    .map(([title, names]) => [title, names.filter((n) => seriesByName[n]).map((n) => ({ name: n, points: seriesByName[n] }))])
    .filter(([, series]) => series.length > 0)
    .map(([title, series]) => lineChart(title, series)));
}

// ---- Evaluation: generic, so new fields (confidence intervals, verdicts) show up unchanged ----

function ciOf(value) {
  const ci = value.ci;
  if (Array.isArray(ci) && ci.length === 2) return ci;
  if (ci && typeof ci === "object") return [ci.lo ?? ci.low ?? ci.lower, ci.hi ?? ci.high ?? ci.upper];
  return null;
}

function pointOf(value) {
  for (const name of ["value", "mean", "estimate", "point"]) if (typeof value[name] === "number") return value[name];
  return null;
}

// {a: {b: 1, c: {value: 2, ci: [1, 3]}}} -> [["a.b", "1"], ["a.c", "2 [1, 3]"]]
function evaluationRows(value, path = "") {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const ci = ciOf(value);
    if (ci) {
      const point = pointOf(value);
      return [[path, (point === null ? "" : fmt(point) + " ") + "[" + fmt(ci[0]) + ", " + fmt(ci[1]) + "]"]];
    }
    return Object.entries(value).flatMap(([k, v]) => evaluationRows(v, path ? path + "." + k : k));
  }
  return [[path, fmt(value)]];
}

// ---- Pages -----------------------------------------------------------------------------------

async function runsPage() {
  const body = el("div", {}, el("p", { class: "muted" }, "loading runs..."));
  show(el("h1", {}, "Runs"), body);
  const refresh = async () => {
    try {
      const page = await getJson("/v1/runs?limit=50");
      body.replaceChildren(page.data.length === 0 ? el("p", { class: "muted" }, "no runs yet: POST /v1/runs") :
        table(["run", "status", "progress", "lambda", "regularizer", "sweep", "created"], page.data.map((r) => [
          link("#/runs/" + r.id, r.id), statusBadge(r.status),
          el("span", {}, el("progress", { max: 1, value: r.progress }), " " + Math.round(r.progress * 100) + "%"),
          r.spec.lambda, regularizerLabel(r.spec), r.sweep_id ? link("#/sweeps/" + r.sweep_id, r.sweep_id) : "",
          new Date(r.created_at).toLocaleString(),
        ])));
      body.setAttribute("data-loaded", "true");
    } catch (error) { body.replaceChildren(showError(error)); }
  };
  await refresh();
  timers.push(setInterval(refresh, POLL_MS));
}

async function runPage(id) {
  const head = el("div", {}), charts = el("div", {}), grid = el("div", {}), evaluation = el("div", { id: "evaluation" }),
    checkpoints = el("div", {});
  show(el("h1", {}, "Run ", id), head, el("h2", {}, "Loss curves"), charts, el("h2", {}, "Samples"), grid,
       el("h2", {}, "Evaluation"), evaluation, el("h2", {}, "Checkpoints"), checkpoints);
  let finished = false;
  const refresh = async () => {
    if (finished) return;
    try {
      const [run, metrics] = await Promise.all([getJson("/v1/runs/" + id), getJson("/v1/runs/" + id + "/metrics")]);
      head.replaceChildren(runHeader(run));
      charts.replaceChildren(lossCharts(metrics.series));
      if (TERMINAL.includes(run.status)) {
        finished = true;
        await Promise.all([showGrid(run, grid), showEvaluation(run, evaluation), showCheckpoints(run, checkpoints)]);
      } else {
        grid.replaceChildren(el("p", { class: "muted" }, "the preview grid appears when the run finishes"));
      }
    } catch (error) { head.replaceChildren(showError(error)); }
  };
  await refresh();
  timers.push(setInterval(refresh, POLL_MS));
}

function runHeader(run) {
  const cancel = el("button", { id: "cancel", onclick: async () => {
    cancel.disabled = true;
    try { await call(run.urls.cancel, { method: "POST" }); } catch (error) { cancel.after(showError(error)); }
  } }, "cancel run");
  if (TERMINAL.includes(run.status) || run.status === "cancelling") cancel.disabled = true;
  return el("div", {},
    el("p", {}, statusBadge(run.status), " step ", run.step, " / ", run.total_steps, " ",
       el("progress", { max: 1, value: run.progress }), " ", cancel),
    table(["lambda", "regularizer", "dataset", "preset", "sweep", "attempts"], [[
      run.spec.lambda, regularizerLabel(run.spec), run.spec.dataset, run.spec.model ? run.spec.model.preset : "",
      run.sweep_id ? link("#/sweeps/" + run.sweep_id, run.sweep_id) : "", run.attempts]]),
    run.error ? el("p", { class: "error" }, run.error) : null);
}

async function showGrid(run, target) {
  try {
    const img = el("img", { class: "pixelated", id: "grid", alt: "preview samples of " + run.id });
    img.src = await blobUrl(run.urls.samples_png);
    target.replaceChildren(img);
  } catch (error) {
    target.replaceChildren(el("p", { class: "muted" }, error.status === 404 ? "no samples" : error.message));
  }
}

function showEvaluation(run, target) {
  target.replaceChildren(run.evaluation ? table(["metric", "value [95% CI]"], evaluationRows(run.evaluation))
    : el("p", { class: "muted" }, "no evaluation"));
}

async function showCheckpoints(run, target) {
  const list = (await getJson("/v1/runs/" + run.id + "/checkpoints")).data;
  target.replaceChildren(list.length === 0 ? el("p", { class: "muted" }, "none") :
    table(["step", "final", "size (bytes)", "created", ""], list.map((c) => [
      c.step, c.is_final ? "yes" : "", c.size, new Date(c.created_at).toLocaleString(),
      el("button", { onclick: () => download("/v1/checkpoints/" + c.id, c.id + ".safetensors") }, "download"),
    ])));
}

async function download(path, filename) {
  const a = el("a", { href: await blobUrl(path), download: filename });
  document.body.append(a);
  a.click();
  a.remove();
}

async function sweepsPage() {
  const body = el("div", {});
  show(el("h1", {}, "Sweeps"), body);
  const refresh = async () => {
    try {
      const page = await getJson("/v1/sweeps?limit=50");
      body.replaceChildren(page.data.length === 0 ? el("p", { class: "muted" }, "no sweeps yet: POST /v1/sweeps") :
        table(["sweep", "status", "points", "varies", "created"], page.data.map((s) => [
          link("#/sweeps/" + s.id, s.id), statusBadge(s.status), s.points, Object.keys(s.vary).join(", "),
          new Date(s.created_at).toLocaleString()])));
    } catch (error) { body.replaceChildren(showError(error)); }
  };
  await refresh();
  timers.push(setInterval(refresh, POLL_MS));
}

async function sweepPage(id) {
  const head = el("div", {}), report = el("div", {}), figure = el("div", {});
  show(el("h1", {}, "Sweep ", id), head, el("h2", {}, "Report"), report, el("h2", {}, "Trade-off"), figure);
  let finished = false;
  const refresh = async () => {
    if (finished) return;
    try {
      const sweep = await getJson("/v1/sweeps/" + id);
      head.replaceChildren(el("p", {}, statusBadge(sweep.status), " ", sweep.points, " runs: ",
        Object.entries(sweep.counts).map(([k, v]) => k + " " + v).join(", ")));
      const data = await getJson(sweep.urls.report);
      report.replaceChildren(reportView(data));
      if (!["queued", "running"].includes(sweep.status)) {
        finished = true;
        try {
          const img = el("img", { class: "figure", id: "report-figure", alt: "trade-off of sweep " + id });
          img.src = await blobUrl(sweep.urls.report_png);
          figure.replaceChildren(img);
        } catch (error) { figure.replaceChildren(el("p", { class: "muted" }, error.message)); }
      }
    } catch (error) { head.replaceChildren(showError(error)); }
  };
  await refresh();
  timers.push(setInterval(refresh, POLL_MS));
}

function reportView(data) {
  const keys = data.keys || [];
  const rows = data.rows.map((r) => [link("#/runs/" + r.run_id, r.run_id), statusBadge(r.status),
    ...keys.map((k) => fmt(r.values[k])), r.lambda, r.fcd, r.confidence, r.penalty_samples, r.penalty_real, r.seconds]);
  return el("div", {},
    data.best ? el("p", { class: "best", id: "best" }, "recommended: ",
      evaluationRows(data.best).map(([k, v]) => k + " " + v).join(", ")) : null,
    table(["run", "status", ...keys, "lambda", "fcd", "confidence", "penalty (samples)", "penalty (real)", "seconds"], rows),
    data.reference ? el("p", { class: "muted" }, "real data: ",
      Object.entries(data.reference).map(([k, v]) => k + " " + fmt(v)).join(", ")) : null);
}

// ---- Navigation and the key ------------------------------------------------------------------

function route() {
  timers.forEach(clearInterval);
  timers = [];
  blobUrls.forEach((url) => URL.revokeObjectURL(url));
  blobUrls = [];
  const hash = location.hash.replace(/^#/, "") || "/";
  let match;
  if ((match = hash.match(/^\/runs\/([\w-]+)$/))) return runPage(match[1]);
  if ((match = hash.match(/^\/sweeps\/([\w-]+)$/))) return sweepPage(match[1]);
  if (hash === "/sweeps") return sweepsPage();
  return runsPage();
}

function showKeyState() {
  document.getElementById("key-state").textContent = sessionStorage.getItem(KEY) ? "key set" : "no key";
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key-input");
  if (input.value.trim()) sessionStorage.setItem(KEY, input.value.trim());
  input.value = "";
  showKeyState();
  route();
});
document.getElementById("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  showKeyState();
  route();
});
window.addEventListener("hashchange", route);
showKeyState();
route();
