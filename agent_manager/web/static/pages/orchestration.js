// Orchestrations: "#/orchestrations" lists them; "#/orchestrations/<id>" shows one live: the DAG
// (node colour = step status, durations, backend badges), the steps table, the files the plan
// wrote, Cancel / Resume / Edit & re-run. Clicking a node (or a step's name) opens that step in a
// side panel ("?step=<id>" in the URL): its live log, output, error, attempts, and Retry for a
// failed step. Also exports dagView(), which the Plans page uses for previews.

import { follow, get, post } from "../lib/api.js";
import { announce } from "../lib/attention.js";
import { errorBox, fmtAgo, fmtDuration, h, setTitle, statusBadge, toast } from "../lib/dom.js";
import { runView } from "../lib/runview.js";
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
.dag-node.open rect { stroke: var(--focus); stroke-width: 3; }
.step-panel { position: fixed; top: 3.2rem; right: 0; bottom: 0; width: min(44rem, 52vw); z-index: 8;
  background: var(--bg); border-left: 1px solid var(--border); box-shadow: -8px 0 24px rgba(0,0,0,.12);
  overflow-y: auto; padding: 1rem; display: flex; flex-direction: column; gap: .8rem; }
.step-panel-head { display: flex; align-items: center; gap: .5rem; flex-wrap: wrap; }
.step-panel-head h2 { margin: 0; flex: 1 1 8rem; min-width: 0; overflow-wrap: break-word; }
.step-output { margin: 0; padding: .6rem .8rem; background: var(--panel); border: 1px solid var(--border);
  border-radius: 8px; white-space: pre-wrap; overflow-wrap: anywhere; max-height: 40vh; overflow: auto; }
.step-facts { display: grid; grid-template-columns: repeat(auto-fit, minmax(8rem, 1fr)); gap: .4rem; margin: 0; }
.step-facts div { background: var(--panel); border: 1px solid var(--border); border-radius: 8px; padding: .35rem .6rem; }
.step-facts dt { font-size: .72rem; color: var(--muted); text-transform: uppercase; }
.step-facts dd { margin: 0; font-weight: 600; }
.step-link { background: none; border: 0; padding: 0; min-height: 0; color: var(--accent); font-weight: 700;
  text-decoration: underline; cursor: pointer; }
.plan-files li { display: flex; gap: .6rem; align-items: baseline; flex-wrap: wrap; }
@media (max-width: 900px) {
  .step-panel { width: 100%; top: 0; z-index: 25; }
}
@media (max-width: 640px) {
  .steps-table td[data-label]::before { content: attr(data-label) " "; color: var(--muted); font-size: .8rem; }
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
    const clickable = Boolean(onOpen);
    const why = step.route_reason ? ` — ${step.route_reason}` : "";
    const label = `${step.id}: ${sub}${why}${clickable ? " (open its details)" : ""}`;
    const node = svg("g", { class: `dag-node${clickable ? " clickable" : ""}`, transform: `translate(${p.x},${p.y})`,
      "data-step": step.id, "data-status": status, "data-backend": step.backend || "",
      tabindex: clickable ? 0 : null, role: clickable ? "button" : "img", "aria-label": label },
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
  const wrap = h("div", { class: "dag-wrap" }, root);
  // On a narrow screen part of the graph is off to the side: say so instead of hiding it silently.
  const hint = h("p", { class: "muted dag-hint", hidden: true, "data-testid": "dag-hint" },
    "The graph is wider than the screen: scroll it sideways →");
  requestAnimationFrame(() => { hint.hidden = wrap.scrollWidth <= wrap.clientWidth + 2; });
  return h("div", null, wrap, hint);
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
  return h("div", { class: "table-wrap" }, h("table", { class: "orchestrations cards" },
    h("thead", null, h("tr", null, h("th", null, "Name"), h("th", null, "Status"), h("th", null, "Steps"),
      h("th", null, "Duration"), h("th", null, "Started"))),
    h("tbody", null, items.map((o) => h("tr", { "data-orchestration": o.id },
      h("td", null, h("a", { href: `#/orchestrations/${encodeURIComponent(o.id)}` }, o.name)),
      h("td", null, statusBadge(o.status)),
      h("td", { class: "small" }, `${o.counts.succeeded}/${o.counts.total} succeeded`
        + (o.counts.failed ? `, ${o.counts.failed} failed` : "") + (o.counts.skipped ? `, ${o.counts.skipped} skipped` : "")),
      h("td", { "data-label": "took" }, fmtDuration(o.duration_s)),
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

export async function render(root, { id, query, signal, navigate }) {
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
  const rerun = h("a", { class: "button secondary", href: `#/plans?from=${encodeURIComponent(id)}` }, "Edit & re-run");
  const meta = h("p", { class: "muted small" });
  const counts = h("div");
  const graph = h("div");
  const message = h("div");
  const table = h("div");
  const changes = view.workspace ? diffView(`/api/orchestrations/${encodeURIComponent(id)}`, { signal }) : null;
  const filesBox = h("div", { "data-testid": "plan-files" });
  const panel = h("aside", { class: "step-panel", hidden: true, "aria-label": "Step details",
    "data-testid": "step-panel", tabindex: "-1" });
  root.append(h("div", { class: "page-head" }, title, status, h("div", { class: "actions" }, cancel, resume, rerun)),
    meta, counts, message, graph, h("h2", null, "Steps"), table,
    changes ? changes.el : "", h("h2", null, "Files the plan wrote"), filesBox, panel);

  let stream = null;
  let refreshTimer = null;
  let tick = null;
  let openStep = query.get("step");
  let panelRun = null; // {runId, controller, el}
  let filesShown = "";

  function paint() {
    setTitle(view.name);
    status.replaceChildren(statusBadge(view.status));
    cancel.hidden = view.status !== "running";
    resume.hidden = !["failed", "cancelled", "interrupted"].includes(view.status);
    rerun.hidden = view.status === "running";
    meta.replaceChildren(`${view.id} · at most ${view.max_parallel} at once · started ${fmtAgo(view.started_at)}`,
      view.duration_s !== null ? ` · took ${fmtDuration(view.duration_s)}` : "");
    counts.replaceChildren(countsLine(view.counts));
    message.replaceChildren(view.error && view.status !== "running"
      ? h("div", { class: `alert ${view.status === "cancelled" ? "note" : "error"}` }, view.error) : "");
    graph.replaceChildren(dagView(view.steps, { onOpen: (step) => showStep(step.id) }));
    graph.querySelector(`.dag-node[data-step="${CSS.escape(openStep || "")}"]`)?.classList.add("open");
    table.replaceChildren(stepsTable(view.steps, (stepId) => showStep(stepId)));
    paintPanel();
    const filesKey = `${view.status}:${view.steps.filter((s) => s.status === "succeeded").length}`;
    if (filesKey !== filesShown) {
      filesShown = filesKey;
      loadFiles();
    }
  }

  async function loadFiles() {
    try {
      const data = await get(`/api/orchestrations/${encodeURIComponent(id)}/files`, null, { signal });
      const link = (f) => `/api/orchestrations/${encodeURIComponent(id)}/files?path=${encodeURIComponent(f.path)}&raw=true`;
      filesBox.replaceChildren(data.files.length
        ? h("ul", { class: "list plan-files" }, data.files.map((f) => h("li", { "data-file": f.path },
          f.type === "file" ? h("a", { href: link(f), download: f.path.split("/").pop() }, f.path)
            : h("span", null, `${f.path} (${f.type})`),
          h("span", { class: "muted small" }, f.type === "file" ? `${fmtSize(f.size)} · ${fmtAgo(f.modified)}` : ""),
          f.type === "file" && f.size <= 262144 ? h("button", { type: "button", class: "copy",
            onClick: () => previewFile(f) }, "View") : null)))
        : h("p", { class: "empty" }, view.status === "running" ? "Nothing written yet." : "This plan wrote no files."));
    } catch (err) {
      if (err.name !== "AbortError") filesBox.replaceChildren(errorBox(err));
    }
  }

  async function previewFile(f) {
    try {
      const file = await get(`/api/orchestrations/${encodeURIComponent(id)}/files`, { path: f.path }, { signal });
      const old = filesBox.querySelector(".file-preview");
      if (old) old.remove();
      filesBox.append(h("div", { class: "file-preview" }, h("h3", null, f.path),
        h("pre", { class: "step-output", "data-testid": "file-preview" },
          file.encoding === "utf-8" ? file.content : "(binary file: download it)")));
    } catch (err) {
      if (err.name !== "AbortError") toast(err.message, "error");
    }
  }

  function showStep(stepId) {
    openStep = stepId;
    history.replaceState(null, "", `#/orchestrations/${encodeURIComponent(id)}${stepId ? `?step=${encodeURIComponent(stepId)}` : ""}`);
    graph.querySelectorAll(".dag-node.open").forEach((n) => n.classList.remove("open"));
    if (stepId) graph.querySelector(`.dag-node[data-step="${CSS.escape(stepId)}"]`)?.classList.add("open");
    paintPanel(true);
  }

  function closePanel() {
    const was = openStep;
    showStep(null);
    if (was) graph.querySelector(`.dag-node[data-step="${CSS.escape(was)}"]`)?.focus();
  }

  function paintPanel(focus = false) {
    const step = openStep ? view.steps.find((s) => s.id === openStep) : null;
    if (!step) {
      panel.hidden = true;
      if (panelRun) {
        panelRun.controller.abort();
        panelRun = null;
      }
      return;
    }
    panel.hidden = false;
    const canRetry = ["failed", "skipped", "cancelled"].includes(step.status) && view.status !== "running";
    const retry = canRetry ? h("button", { type: "button", "data-testid": "retry-step", onClick: () => onRetry(step.id) },
      step.status === "failed" ? "Retry this step" : "Run this step again") : null;
    const parts = [
      h("div", { class: "step-panel-head" }, h("h2", null, step.id), statusBadge(step.status), retry,
        h("button", { type: "button", class: "secondary small", "aria-label": "Close step details",
          onClick: closePanel }, "✕")),
      h("p", { class: "muted small" }, step.agent ? `agent ${step.agent}` : step.action || "",
        step.depends_on && step.depends_on.length ? ` · after ${step.depends_on.join(", ")}` : ""),
      h("dl", { class: "step-facts" },
        h("div", null, h("dt", null, "Attempts"), h("dd", { "data-testid": "step-attempts" }, String(step.attempts))),
        h("div", null, h("dt", null, "Took"), h("dd", null, fmtDuration(elapsed(step)))),
        h("div", null, h("dt", null, "Backend"), h("dd", null, step.backend || "—"))),
      step.route_reason ? h("p", { class: "muted small" }, step.route_reason) : null,
      step.error && step.status !== "succeeded"
        ? h("div", { class: `alert ${step.status === "failed" ? "error" : "note"}`, "data-testid": "step-error" },
          step.error) : null,
      step.output ? h("div", null, h("h3", null, "Output"),
        h("pre", { class: "step-output", "data-testid": "step-output" }, step.output)) : null,
    ];
    if (step.run_id) {
      if (!panelRun || panelRun.runId !== step.run_id) {
        if (panelRun) panelRun.controller.abort();
        const controller = new AbortController();
        signal.addEventListener("abort", () => controller.abort(), { once: true });
        const el = h("div", { class: "step-run" }, h("p", { class: "muted small" }, "Loading the run…"));
        panelRun = { runId: step.run_id, controller, el };
        get(`/api/runs/${encodeURIComponent(step.run_id)}`, null, { signal: controller.signal }).then((run) => {
          el.replaceChildren(runView(run, { signal: controller.signal, compact: true }).el,
            run.workspace ? diffView(`/api/runs/${encodeURIComponent(run.id)}`,  // this step's own changes
              { signal: controller.signal, unified: true }).el : "");
        }).catch((err) => {
          if (err.name !== "AbortError") el.replaceChildren(errorBox(err));
        });
      }
      parts.push(h("h3", null, "Run ", h("a", { href: `#/runs/${encodeURIComponent(step.run_id)}`, class: "small" },
        "open the run page")), panelRun.el);
    } else if (panelRun) {
      panelRun.controller.abort();
      panelRun = null;
    }
    const keep = panelRun ? panelRun.el : null;
    panel.replaceChildren(...parts.filter(Boolean));
    if (keep && !panel.contains(keep)) panel.append(keep);
    if (focus) panel.focus({ preventScroll: true });
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
    if (!window.confirm(`Cancel "${view.name}"? Running steps are stopped and no new step starts.`)) return;
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
      announce(id, "orchestration");
      paint();
      listen();
    } catch (err) {
      if (err.name !== "AbortError") message.replaceChildren(errorBox(err));
    } finally {
      resume.disabled = false;
    }
  }

  async function onRetry(stepId) {
    try {
      view = await post(`/api/orchestrations/${encodeURIComponent(id)}/steps/${encodeURIComponent(stepId)}/retry`,
        undefined, { signal });
      announce(id, "orchestration");
      paint();
      listen();
    } catch (err) {
      if (err.name !== "AbortError") toast(err.message, "error");
    }
  }

  const onKey = (event) => {
    if (event.key === "Escape" && !panel.hidden) closePanel();
  };
  document.addEventListener("keydown", onKey);
  paint();
  if (openStep) paintPanel();
  if (view.status === "running") listen();
  tick = setInterval(() => { if (view.status === "running") paint(); }, 1000);
  return () => {
    clearInterval(tick);
    clearTimeout(refreshTimer);
    document.removeEventListener("keydown", onKey);
    if (stream) stream.close();
    if (panelRun) panelRun.controller.abort();
  };
}

function fmtSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function stepsTable(steps, onOpen) {
  return h("div", { class: "table-wrap" }, h("table", { class: "steps-table" },
    h("thead", null, h("tr", null, h("th", null, "Step"), h("th", null, "Status"), h("th", null, "Backend"),
      h("th", null, "Took"), h("th", null, "Tries"), h("th", null, "Run"))),
    h("tbody", null, steps.map((s) => h("tr", { "data-step-row": s.id },
      h("td", null, h("button", { type: "button", class: "step-link", onClick: () => onOpen(s.id) }, s.id),
        h("div", { class: "muted small" }, s.agent || s.action || ""),
        s.error && s.status !== "succeeded" ? h("div", { class: "step-error small" }, s.error) : null),
      h("td", null, statusBadge(s.status)),
      h("td", null, s.backend ? h("span", { class: `badge backend backend-${s.backend}` }, s.backend) : "—",
        s.route_reason ? h("div", { class: "muted small route-reason" }, s.route_reason) : null),
      h("td", { "data-label": "took" }, fmtDuration(elapsed(s))),
      h("td", { "data-label": "tries" }, String(s.attempts)),
      h("td", null, s.run_id ? h("a", { href: `#/runs/${encodeURIComponent(s.run_id)}`, class: "small" }, "open run")
        : "—"))))));
}
