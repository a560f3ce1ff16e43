// Orchestrations: "#/orchestrations" lists them; "#/orchestrations/<id>" shows one live: the DAG
// (node colour = step status, durations, backend badges; click a node to open its run), the
// steps table, Cancel and Resume. Also exports dagView(), which the Plans page uses for previews.

import { follow, get, post } from "../lib/api.js";
import { errorBox, fmtAgo, fmtDuration, h, setTitle, statusBadge, toast } from "../lib/dom.js";
import { diffView } from "../lib/diff.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const NODE_W = 168;
const NODE_H = 48;
const GAP_X = 28;
const GAP_Y = 56;
const PAD = 12;
const ORCH_EVENTS = ["orchestration.started", "orchestration.resumed", "orchestration.finished", "step.queued",
  "step.started", "step.retrying", "step.finished"];

// Page-scoped styles (the DAG is drawn here, so its look lives here too); added once.
const STYLE = `
.dag-wrap { overflow-x: auto; max-width: 100%; border: 1px solid var(--border); border-radius: var(--radius);
  background: var(--panel); margin: .75rem 0; }
.dag-wrap svg { display: block; }
.dag-edge { fill: none; stroke: var(--muted); stroke-width: 1.5; opacity: .7; }
.dag-node rect { fill: var(--panel); stroke: var(--border); stroke-width: 2; }
.dag-node text { fill: var(--text); font: 600 13px system-ui, sans-serif; }
.dag-node text.sub { font: 11px system-ui, sans-serif; fill: var(--muted); }
.dag-node[data-status=succeeded] rect { stroke: var(--ok); fill: color-mix(in srgb, var(--ok) 16%, var(--panel)); }
.dag-node[data-status=failed] rect { stroke: var(--danger); fill: color-mix(in srgb, var(--danger) 16%, var(--panel)); }
.dag-node[data-status=skipped] rect { stroke: var(--warn); stroke-dasharray: 5 3;
  fill: color-mix(in srgb, var(--warn) 10%, var(--panel)); }
.dag-node[data-status=running] rect { stroke: var(--accent); fill: var(--accent-soft); }
.dag-node[data-status=cancelled] rect { stroke: var(--muted); stroke-dasharray: 2 3; }
.dag-node.clickable { cursor: pointer; }
.dag-node:focus { outline: none; }
.dag-node:focus rect { stroke: var(--focus); stroke-width: 3; }
.orch-counts { display: flex; flex-wrap: wrap; gap: .4rem; align-items: center; margin: .5rem 0; }
.steps-table td, .steps-table th { vertical-align: top; }
.step-error { color: var(--danger); white-space: pre-wrap; overflow-wrap: anywhere; }
.route-reason { max-width: 18rem; }
@media (max-width: 640px) {
  .steps-table thead { display: none; }
  .steps-table, .steps-table tbody, .steps-table tr, .steps-table td { display: block; width: 100%; }
  .steps-table tr { padding: .6rem .7rem; border-bottom: 1px solid var(--border); display: flex; flex-wrap: wrap;
    gap: .25rem .7rem; align-items: center; }
  .steps-table td { border: 0; padding: 0; width: auto; }
  .steps-table td:first-child { flex-basis: 100%; }
  .steps-table .route-reason { display: none; }
}
`;

// A constructed stylesheet: the service's CSP (style-src 'self') blocks <style> elements, and
// app.css belongs to the shell; adopted sheets are CSSOM, which the CSP allows.
let sheet = null;
export function ensureStyle() {
  if (sheet) return;
  sheet = new CSSStyleSheet();
  sheet.replaceSync(STYLE);
  document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) el.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    el.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return el;
}

/** Layered layout: depth = longest chain of dependencies above a step; within a layer, steps are
 *  ordered by the mean position of their parents (one barycentre pass), which keeps edges short. */
export function layout(steps) {
  const byId = new Map(steps.map((s) => [s.id, s]));
  const depth = new Map();
  const visiting = new Set();
  function depthOf(id) {
    if (depth.has(id)) return depth.get(id);
    if (visiting.has(id)) return 0; // a cycle (an invalid plan): draw it anyway
    visiting.add(id);
    const deps = (byId.get(id)?.depends_on || []).filter((d) => byId.has(d));
    const d = deps.length ? 1 + Math.max(...deps.map(depthOf)) : 0;
    visiting.delete(id);
    depth.set(id, d);
    return d;
  }
  steps.forEach((s) => depthOf(s.id));
  const layers = [];
  steps.forEach((s) => { (layers[depth.get(s.id)] ||= []).push(s.id); });
  const order = new Map();
  layers.forEach((row, i) => {
    if (i > 0) {
      const score = (id) => {
        const deps = (byId.get(id).depends_on || []).filter((d) => order.has(d));
        return deps.length ? deps.reduce((a, d) => a + order.get(d), 0) / deps.length : 0;
      };
      row.sort((a, b) => score(a) - score(b));
    }
    row.forEach((id, j) => order.set(id, j));
  });
  const widest = Math.max(1, ...layers.map((r) => r.length));
  const width = PAD * 2 + widest * NODE_W + (widest - 1) * GAP_X;
  const pos = new Map();
  layers.forEach((row, i) => {
    const rowWidth = row.length * NODE_W + (row.length - 1) * GAP_X;
    const left = (width - rowWidth) / 2;
    row.forEach((id, j) => pos.set(id, { x: left + j * (NODE_W + GAP_X), y: PAD + i * (NODE_H + GAP_Y) }));
  });
  const height = PAD * 2 + layers.length * NODE_H + Math.max(0, layers.length - 1) * GAP_Y;
  return { pos, width, height, layers };
}

function elapsed(step) {
  if (step.duration_s !== null && step.duration_s !== undefined) return step.duration_s;
  if (step.status === "running" && step.started_at) return (Date.now() - new Date(step.started_at).getTime()) / 1000;
  return null;
}

/** The DAG picture. steps: [{id, depends_on, status?, backend?, duration_s?, run_id?, agent?, action?}].
 *  onOpen(step) is called when a node with a run is clicked (or activated with Enter/Space). */
export function dagView(steps, { onOpen } = {}) {
  ensureStyle();
  const { pos, width, height } = layout(steps);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "group",
    "aria-label": `Plan graph with ${steps.length} steps`, "data-testid": "dag" });
  for (const step of steps) {
    for (const dep of step.depends_on || []) {
      const a = pos.get(dep);
      const b = pos.get(step.id);
      if (!a || !b) continue;
      const x1 = a.x + NODE_W / 2;
      const y1 = a.y + NODE_H;
      const x2 = b.x + NODE_W / 2;
      const y2 = b.y;
      const mid = (y1 + y2) / 2;
      root.append(svg("path", { class: "dag-edge", d: `M${x1},${y1} C${x1},${mid} ${x2},${mid} ${x2},${y2 - 4}`,
        "data-from": dep, "data-to": step.id }));
      root.append(svg("path", { class: "dag-edge", d: `M${x2 - 4},${y2 - 8} L${x2},${y2 - 2} L${x2 + 4},${y2 - 8}` }));
    }
  }
  for (const step of steps) {
    const p = pos.get(step.id);
    const status = step.status || "pending";
    const took = elapsed(step);
    const what = step.backend ? step.backend : (step.agent || step.action || "");
    // A preview (no status yet) shows who does the work; a live node also its state and time.
    const sub = [step.status, took !== null ? fmtDuration(took) : null, what].filter(Boolean).join(" · ");
    const clickable = Boolean(step.run_id && onOpen);
    const why = step.route_reason ? ` — ${step.route_reason}` : "";
    const label = `${step.id}: ${sub}${why}${clickable ? " (open its run)" : ""}`;
    const node = svg("g", { class: `dag-node${clickable ? " clickable" : ""}`, transform: `translate(${p.x},${p.y})`,
      "data-step": step.id, "data-status": status, "data-backend": step.backend || "",
      tabindex: clickable ? 0 : null, role: clickable ? "link" : "img", "aria-label": label },
    svg("title", {}, label),
    svg("rect", { width: NODE_W, height: NODE_H, rx: 8, ry: 8 }),
    svg("text", { x: 10, y: 19 }, clip(step.id, 20)),
    svg("text", { x: 10, y: 37, class: "sub" }, clip(sub, 28)));
    if (clickable) {
      node.addEventListener("click", () => onOpen(step));
      node.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          onOpen(step);
        }
      });
    }
    root.append(node);
  }
  return h("div", { class: "dag-wrap" }, root);
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

function countsLine(counts) {
  const parts = ["succeeded", "running", "failed", "skipped", "cancelled", "pending"]
    .filter((k) => counts[k]).map((k) => h("span", { class: `badge status-${k}`, "data-count": k }, `${counts[k]} ${k}`));
  return h("div", { class: "orch-counts", "data-testid": "counts" },
    h("span", { class: "muted small" }, `${counts.total} steps:`), parts);
}

export function orchestrationsTable(items) {
  return h("div", { class: "table-wrap" }, h("table", { class: "orchestrations" },
    h("thead", null, h("tr", null, h("th", null, "Name"), h("th", null, "Status"), h("th", null, "Steps"),
      h("th", null, "Duration"), h("th", null, "Started"))),
    h("tbody", null, items.map((o) => h("tr", { "data-orchestration": o.id },
      h("td", null, h("a", { href: `#/orchestrations/${encodeURIComponent(o.id)}` }, o.name)),
      h("td", null, statusBadge(o.status)),
      h("td", { class: "small" }, `${o.counts.succeeded}/${o.counts.total} succeeded`
        + (o.counts.failed ? `, ${o.counts.failed} failed` : "") + (o.counts.skipped ? `, ${o.counts.skipped} skipped` : "")),
      h("td", null, fmtDuration(o.duration_s)),
      h("td", { class: "small muted" }, fmtAgo(o.created_at)))))));
}

async function renderList(root, signal) {
  setTitle("Orchestrations");
  root.append(h("div", { class: "page-head" }, h("h1", null, "Orchestrations"),
    h("a", { class: "button", href: "#/plans" }, "New plan")));
  const box = h("div", { "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  root.append(box);
  try {
    const data = await get("/api/orchestrations", { limit: 100 }, { signal });
    box.replaceChildren(data.items.length ? orchestrationsTable(data.items)
      : h("p", { class: "empty" }, "Nothing has run yet. Draft a plan on the Plans page."));
  } catch (err) {
    if (err.name !== "AbortError") box.replaceChildren(errorBox(err));
  }
}

export async function render(root, { id, signal, navigate }) {
  ensureStyle();
  if (!id) return renderList(root, signal);
  setTitle("Orchestration");
  let view;
  try {
    view = await get(`/api/orchestrations/${encodeURIComponent(id)}`, null, { signal });
  } catch (err) {
    if (err.name === "AbortError") return undefined;
    root.append(h("h1", null, "Orchestration"), errorBox(err));
    return undefined;
  }
  const title = h("h1", null, view.name);
  const status = h("span", { "data-testid": "orch-status" });
  const cancel = h("button", { type: "button", class: "danger", onClick: onCancel }, "Cancel");
  const resume = h("button", { type: "button", class: "secondary", onClick: onResume }, "Resume");
  const meta = h("p", { class: "muted small" });
  const counts = h("div");
  const graph = h("div");
  const message = h("div");
  const table = h("div");
  const changes = view.workspace ? diffView(`/api/orchestrations/${encodeURIComponent(id)}`, { signal }) : null;
  root.append(h("div", { class: "page-head" }, title, status, h("div", { class: "actions" }, cancel, resume)),
    meta, counts, message, graph, h("h2", null, "Steps"), table, changes ? changes.el : "");

  let stream = null;
  let refreshTimer = null;
  let tick = null;
  const openRun = (step) => navigate(`/runs/${encodeURIComponent(step.run_id)}`);

  function paint() {
    setTitle(view.name);
    status.replaceChildren(statusBadge(view.status));
    cancel.hidden = view.status !== "running";
    resume.hidden = !["failed", "cancelled", "interrupted"].includes(view.status);
    meta.replaceChildren(`${view.id} · at most ${view.max_parallel} at once · started ${fmtAgo(view.started_at)}`,
      view.duration_s !== null ? ` · took ${fmtDuration(view.duration_s)}` : "");
    counts.replaceChildren(countsLine(view.counts));
    message.replaceChildren(view.error && view.status !== "running"
      ? h("div", { class: `alert ${view.status === "cancelled" ? "" : "error"}` }, view.error) : "");
    graph.replaceChildren(dagView(view.steps, { onOpen: openRun }));
    table.replaceChildren(stepsTable(view.steps));
  }

  async function refresh() {
    try {
      view = await get(`/api/orchestrations/${encodeURIComponent(id)}`, null, { signal });
      paint();
      if (changes && view.status !== "running") changes.refresh();
      if (view.status !== "running" && stream) {
        stream.close();
        stream = null;
      }
    } catch (err) {
      if (err.name !== "AbortError") message.replaceChildren(errorBox(err));
    }
  }

  function soon() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, 120);
  }

  function listen() {
    if (stream) stream.close();
    // No client-side terminal type: a resumed orchestration has more than one
    // orchestration.finished; refresh() closes the stream once the state is final.
    stream = follow(`/api/orchestrations/${encodeURIComponent(id)}/events`, {
      signal, terminal: [], types: ORCH_EVENTS,
      after: 0, onEvent: () => soon(),
    });
  }

  async function onCancel() {
    cancel.disabled = true;
    try {
      view = await post(`/api/orchestrations/${encodeURIComponent(id)}/cancel`, undefined, { signal });
      paint();
      toast("Orchestration cancelled");
    } catch (err) {
      if (err.name !== "AbortError") message.replaceChildren(errorBox(err));
    } finally {
      cancel.disabled = false;
    }
  }

  async function onResume() {
    resume.disabled = true;
    try {
      view = await post(`/api/orchestrations/${encodeURIComponent(id)}/resume`, undefined, { signal });
      paint();
      listen();
    } catch (err) {
      if (err.name !== "AbortError") message.replaceChildren(errorBox(err));
    } finally {
      resume.disabled = false;
    }
  }

  paint();
  if (view.status === "running") listen();
  tick = setInterval(() => { if (view.status === "running") paint(); }, 1000);
  return () => {
    clearInterval(tick);
    clearTimeout(refreshTimer);
    if (stream) stream.close();
  };
}

function stepsTable(steps) {
  return h("div", { class: "table-wrap" }, h("table", { class: "steps-table" },
    h("thead", null, h("tr", null, h("th", null, "Step"), h("th", null, "Status"), h("th", null, "Backend"),
      h("th", null, "Time"), h("th", null, "Tries"), h("th", null, "Run"))),
    h("tbody", null, steps.map((s) => h("tr", { "data-step-row": s.id },
      h("td", null, h("strong", null, s.id), h("div", { class: "muted small" }, s.agent || s.action || ""),
        s.error && s.status !== "succeeded" ? h("div", { class: "step-error small" }, s.error) : null),
      h("td", null, statusBadge(s.status)),
      h("td", null, s.backend ? h("span", { class: `badge backend backend-${s.backend}` }, s.backend) : "—",
        s.route_reason ? h("div", { class: "muted small route-reason" }, s.route_reason) : null),
      h("td", null, fmtDuration(elapsed(s))),
      h("td", null, String(s.attempts)),
      h("td", null, s.run_id ? h("a", { href: `#/runs/${encodeURIComponent(s.run_id)}`, class: "mono small" }, "open")
        : "—"))))));
}
