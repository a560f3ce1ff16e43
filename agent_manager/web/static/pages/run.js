// Run: "#/run?agent=NAME" offers the prompt box ("&from=<run id>" fills it with that run's prompt);
// "#/runs/<id>" is that run live — its output is the page, so no form sits above it.

import { get, post } from "../lib/api.js";
import { applyErrors, errorBox, field, h, setTitle } from "../lib/dom.js";
import { announce } from "../lib/attention.js";
import { diffView, projectInputs, withProject } from "../lib/diff.js";
import { backendOptions, backends, explainBackend, options } from "../lib/registry.js";
import { runView } from "../lib/runview.js";

const LEADING = [["", "agent default / auto"], ["auto", "auto (routing policy)"]];

export async function render(root, { id, query, signal, navigate }) {
  if (id && query.get("again")) { // old "Edit & rerun" links
    navigate(`/run?from=${encodeURIComponent(id)}`);
    return;
  }
  setTitle(id ? "Run" : "New run");
  let run = null;
  let agents = [];
  let backendList = [];
  try {
    [agents, run, backendList] = await Promise.all([
      get("/api/agents", null, { signal }),
      id || query.get("from") ? get(`/api/runs/${encodeURIComponent(id || query.get("from"))}`, null, { signal })
        : Promise.resolve(null),
      backends(),
    ]);
  } catch (err) {
    if (err.name === "AbortError") return;
    root.append(h("h1", null, "Run"), errorBox(err));
    return;
  }

  const wanted = query.get("agent") || (run ? run.agent_name : "") || (agents[0] ? agents[0].name : "");
  const rows = {};
  rows.agent = field({ label: "Agent", name: "agent",
    input: h("select", null, agents.map((a) => h("option", { value: a.name, selected: a.name === wanted },
      `${a.name} (${a.kind}${a.available ? "" : ", not installed"})`))) });
  rows.backend = field({ label: "Backend", name: "backend",
    input: h("select", null, options(backendOptions(backendList, LEADING))),
    hint: "Override where this one run executes." });
  explainBackend(rows.backend, backendList);
  rows.prompt = field({ label: "Prompt", name: "prompt", hint: "Enter runs it; Shift+Enter adds a line.",
    input: h("textarea", { rows: "3", placeholder: "What should the agent do?", required: true }) });
  if (run && !id) rows.prompt.input.value = run.prompt; // "Edit & rerun"
  const summary = h("div", { class: "form-summary" });
  const submit = h("button", { type: "submit" }, "Run");
  const form = h("form", { class: "form card prompt-form", novalidate: true, "aria-label": "Start a run", onSubmit },
    summary,
    h("div", { class: "form-grid" }, rows.agent.wrap, rows.backend.wrap),
    rows.prompt.wrap,
    h("div", { class: "actions" }, submit));
  rows.prompt.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  if (id && run) {
    const again = `#/run?agent=${encodeURIComponent(run.agent_name)}&from=${encodeURIComponent(run.id)}`;
    const prompt = h("details", { class: "prompt-details" },
      h("summary", null, h("span", { class: "muted" }, "Prompt: "), h("span", { class: "prompt-line" }, run.prompt)),
      h("blockquote", { class: "prompt-text" }, run.prompt));
    root.append(h("section", { class: "run-section", "aria-label": "Run" },
      h("div", { class: "page-head run-page-head" },
        h("h1", null, "Run ", h("span", { class: "muted run-agent" }, run.agent_name)),
        h("div", { class: "actions" },
          h("a", { class: "button secondary small", href: again }, "Edit & rerun"),
          h("a", { class: "button secondary small", href: `#/run?agent=${encodeURIComponent(run.agent_name)}` },
            "New run"),
          h("a", { class: "button secondary small", href: `#/terminal?run=${encodeURIComponent(run.id)}` },
            "Terminal"))),
      prompt,
      runWithChanges(run, signal),
      h("p", { class: "muted small mono" }, run.id)));
    return;
  }
  root.append(h("div", { class: "page-head" }, h("h1", null, "New run")));
  if (!agents.length) {
    root.append(h("div", { class: "empty card" }, h("p", null, "Register an agent first."),
      h("a", { class: "button", href: "#/agents/new" }, "New agent")));
  } else {
    root.append(form);
    rows.prompt.input.focus();
  }

  projectField(rows, form, query.get("project") || (run && run.project) || "", signal);

  async function onSubmit(event) {
    event.preventDefault();
    const body = { agent: rows.agent.input.value, prompt: rows.prompt.input.value };
    if (rows.backend.input.value) body.backend = rows.backend.input.value;
    withProject(body, rows);
    submit.disabled = true;
    try {
      const started = await post("/api/runs", body);
      applyErrors(summary, null, rows);
      announce(started.id);
      navigate(`/runs/${encodeURIComponent(started.id)}`);
    } catch (err) {
      applyErrors(summary, err, rows);
    } finally {
      submit.disabled = false;
    }
  }
}

/** The live run, then (for a run on a project) its changes, reloaded when the run ends. */
function runWithChanges(run, signal) {
  const view = runView(run, { signal });
  if (!run.workspace) return view.el;
  const changes = diffView(`/api/runs/${encodeURIComponent(run.id)}`, { signal });
  view.done.then(() => changes.refresh());
  return h("div", null, view.el, changes.el);
}

/** Project / base inputs on the run form, shown once there is a project to pick. */
async function projectField(rows, form, wanted, signal) {
  const inputs = await projectInputs(signal, wanted);
  if (!inputs) return;
  Object.assign(rows, inputs);
  const grid = form.querySelector(".form-grid");
  if (grid) grid.append(inputs.project.wrap, inputs.base.wrap);
}
