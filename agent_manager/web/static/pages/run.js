// Run: "#/run?agent=NAME" offers the prompt box; "#/runs/<id>" also shows that run live.

import { get, post } from "../lib/api.js";
import { applyErrors, errorBox, field, h, setTitle } from "../lib/dom.js";
import { runView } from "../lib/runview.js";

const BACKENDS = [["", "agent default / auto"], ["auto", "auto (routing policy)"], ["local", "local"],
  ["sandbox", "sandbox"], ["daytona", "daytona"]];

export async function render(root, { id, query, signal, navigate }) {
  setTitle(id ? "Run" : "New run");
  let run = null;
  let agents = [];
  try {
    [agents, run] = await Promise.all([
      get("/api/agents", null, { signal }),
      id ? get(`/api/runs/${encodeURIComponent(id)}`, null, { signal }) : Promise.resolve(null),
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
    input: h("select", null, BACKENDS.map(([v, t]) => h("option", { value: v }, t))),
    hint: "Override where this one run executes." });
  rows.prompt = field({ label: "Prompt", name: "prompt", hint: "Enter runs it; Shift+Enter adds a line.",
    input: h("textarea", { rows: "3", placeholder: "What should the agent do?", required: true }) });
  if (run && query.get("again")) rows.prompt.input.value = run.prompt;
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

  root.append(h("div", { class: "page-head" }, h("h1", null, run ? "Run" : "New run"),
    run ? h("div", { class: "actions" },
      h("a", { class: "button secondary", href: `#/runs/${encodeURIComponent(run.id)}?again=1` }, "Edit & rerun"),
      h("a", { class: "button secondary", href: `#/terminal?run=${encodeURIComponent(run.id)}` }, "Terminal"))
      : null));
  if (!agents.length) {
    root.append(h("div", { class: "empty card" }, h("p", null, "Register an agent first."),
      h("a", { class: "button", href: "#/agents/new" }, "New agent")));
  } else {
    root.append(form);
  }
  if (run) {
    root.append(h("section", { class: "run-section", "aria-label": "Run" },
      h("div", { class: "run-meta" },
        h("span", { class: "muted" }, "Agent "), h("strong", null, run.agent_name),
        h("span", { class: "muted mono small" }, ` · ${run.id}`)),
      h("blockquote", { class: "prompt-text" }, run.prompt),
      runView(run, { signal }).el));
  } else if (agents.length) {
    rows.prompt.input.focus();
  }

  async function onSubmit(event) {
    event.preventDefault();
    const body = { agent: rows.agent.input.value, prompt: rows.prompt.input.value };
    if (rows.backend.input.value) body.backend = rows.backend.input.value;
    submit.disabled = true;
    try {
      const started = await post("/api/runs", body);
      applyErrors(summary, null, rows);
      navigate(`/runs/${encodeURIComponent(started.id)}`);
    } catch (err) {
      applyErrors(summary, err, rows);
    } finally {
      submit.disabled = false;
    }
  }
}
