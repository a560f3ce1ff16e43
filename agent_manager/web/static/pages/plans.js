// Plans: a goal goes to the planner agent; the draft appears as a DAG picture and as YAML you
// can edit (validated by the server as you type, every problem naming its step); Run starts it.
// "Save plan" keeps the editor's plan under a name; saved plans can be edited, run or deleted.
// Below: the recent orchestrations.

import { del, get, post } from "../lib/api.js";
import { announce } from "../lib/attention.js";
import { errorBox, field, fmtAgo, h, setTitle, toast } from "../lib/dom.js";
import { dagView, ensureStyle, orchestrationsTable } from "./orchestration.js";

const EXAMPLE = `name: example
steps:
  - id: write
    agent: AGENT
    prompt: "Write a haiku about graphs"
  - id: save
    action: write_file
    path: haiku.txt
    content: "{{ steps.write.output }}"
    depends_on: [write]
`;

export async function render(root, { query, signal, navigate }) {
  setTitle("Plans");
  ensureStyle();
  let agents = [];
  let settings = {};
  try {
    [agents, settings] = await Promise.all([get("/api/agents", null, { signal }),
      get("/api/settings", null, { signal }).catch(() => ({}))]);
  } catch (err) {
    if (err.name === "AbortError") return undefined;
    root.append(h("h1", null, "Plans"), errorBox(err));
    return undefined;
  }

  // -- goal → draft ------------------------------------------------------------------------
  const goal = field({ label: "Goal", name: "goal",
    input: h("textarea", { rows: "3", placeholder: "What should the agents achieve together?" }) });
  const fallback = settings.default_planner || (agents[0] ? agents[0].name : "");
  const planner = field({ label: "Planner agent", name: "planner",
    input: h("select", null, agents.map((a) => h("option", { value: a.name, selected: a.name === fallback },
      `${a.name} (${a.kind})`))) });
  const draftButton = h("button", { type: "submit" }, "Draft plan");
  const draftStatus = h("div", { "aria-live": "polite" });
  const goalForm = h("form", { class: "form card", "aria-label": "Draft a plan", onSubmit: onDraft },
    h("div", { class: "form-grid" }, goal.wrap, planner.wrap),
    h("div", { class: "actions" }, draftButton, h("span", { class: "muted small" },
      "The planner only drafts: nothing runs until you press Run.")), draftStatus);

  // -- editor + preview ----------------------------------------------------------------------
  const editor = h("textarea", { id: "plan-yaml", rows: "16", spellcheck: "false", class: "mono",
    "aria-label": "Plan (YAML)", "aria-describedby": "plan-errors", style: { width: "100%" } });
  editor.value = EXAMPLE.replace("AGENT", agents[0] ? agents[0].name : "my-agent");
  const errors = h("div", { id: "plan-errors", role: "status", "aria-live": "polite", "data-testid": "plan-errors" });
  const preview = h("div", { "data-testid": "plan-preview" });
  const runButton = h("button", { type: "button", onClick: onRun, disabled: true }, "Run");
  const raw = h("details", { hidden: true }, h("summary", null, "The planner's raw answer"), h("pre", { class: "mono small" }));
  const recent = h("div", { "aria-live": "polite" });
  const saveName = h("input", { type: "text", id: "plan-save-name", placeholder: "nightly-report", autocomplete: "off",
    spellcheck: "false", class: "mono", "aria-describedby": "plan-save-error" });
  const saveError = h("div", { class: "field-error", id: "plan-save-error", "aria-live": "polite" });
  const saveForm = h("form", { class: "actions save-plan", "aria-label": "Save the plan", novalidate: true,
    onSubmit: onSave }, h("label", { for: "plan-save-name" }, "Save as"), saveName,
  h("button", { type: "submit", class: "secondary" }, "Save plan"), saveError);
  const savedBox = h("div", { "data-testid": "saved-plans" });

  root.append(h("div", { class: "page-head" }, h("h1", null, "Plans"),
    h("a", { class: "button secondary", href: "#/orchestrations" }, "All orchestrations")),
  agents.length ? goalForm : h("div", { class: "empty card" }, h("p", null, "Register an agent first."),
    h("a", { class: "button", href: "#/agents/new" }, "New agent")),
  h("section", { class: "card", "aria-label": "Plan editor", style: { marginTop: "1rem" } },
    h("div", { class: "section-head" }, h("h2", null, "Plan")),
    preview, h("label", { for: "plan-yaml" }, "Plan (YAML or JSON)"), editor, errors, raw,
    h("div", { class: "actions" }, runButton), saveForm),
  h("h2", null, "Saved plans"), savedBox,
  h("h2", null, "Recent orchestrations"), recent);

  let timer = null;
  let checking = 0;
  editor.addEventListener("input", () => {
    runButton.disabled = true;
    clearTimeout(timer);
    timer = setTimeout(validate, 300);
  });

  async function validate() {
    const mine = ++checking;
    try {
      const result = await post("/api/plans/validate", { yaml: editor.value }, { signal });
      if (mine !== checking) return;
      runButton.disabled = !result.valid;
      errors.replaceChildren(result.valid
        ? h("p", { class: "muted small", "data-valid": "true" }, `Valid: ${result.plan.steps.length} steps in `
          + `${result.layers.length} layer${result.layers.length === 1 ? "" : "s"}.`)
        : h("ul", { class: "alert error", "data-valid": "false" }, result.errors.map((e) => h("li", null, e.message))));
      if (result.plan) preview.replaceChildren(dagView(result.plan.steps));
    } catch (err) {
      if (err.name !== "AbortError") errors.replaceChildren(errorBox(err));
    }
  }

  async function onDraft(event) {
    event.preventDefault();
    if (!goal.input.value.trim()) {
      goal.setError("Describe the goal first.");
      goal.input.focus();
      return;
    }
    goal.setError("");
    draftButton.disabled = true;
    draftStatus.replaceChildren(h("p", { class: "muted" }, "The planner is thinking…"));
    try {
      const draft = await post("/api/plans", { goal: goal.input.value, planner: planner.input.value || undefined },
        { signal });
      const checked = await post("/api/plans/validate", { plan: draft.plan }, { signal });
      editor.value = checked.yaml || JSON.stringify(draft.plan, null, 2);
      raw.hidden = false;
      raw.querySelector("pre").textContent = draft.raw;
      draftStatus.replaceChildren(h("p", { class: "muted small" },
        "Draft ready: review and edit it below, then press Run."));
      await validate();
      editor.focus();
    } catch (err) {
      if (err.name !== "AbortError") draftStatus.replaceChildren(errorBox(err));
    } finally {
      draftButton.disabled = false;
    }
  }

  async function onSave(event) {
    event.preventDefault();
    saveError.textContent = "";
    const name = saveName.value.trim();
    if (!name) {
      saveError.textContent = "Give the plan a name.";
      saveName.focus();
      return;
    }
    try {
      await post("/api/plans/saved", { name, yaml: editor.value }, { signal });
      toast(`Saved "${name}"`, "ok");
      loadSaved();
    } catch (err) {
      if (err.name !== "AbortError") saveError.textContent = err.message;
    }
  }

  async function loadSaved() {
    try {
      const items = await get("/api/plans/saved", null, { signal });
      savedBox.replaceChildren(items.length ? h("ul", { class: "list saved-plans" }, items.map((p) => h("li", {
        "data-saved": p.name }, h("strong", null, p.name),
      h("span", { class: "muted small" }, ` · ${p.steps} step${p.steps === 1 ? "" : "s"} · saved ${fmtAgo(p.updated_at)} `),
      h("span", { class: "actions" },
        h("button", { type: "button", class: "small secondary", onClick: () => loadPlan(p) }, "Edit"),
        h("button", { type: "button", class: "small", onClick: () => runSaved(p) }, "Run"),
        h("button", { type: "button", class: "small danger", onClick: () => deleteSaved(p) }, "Delete")))))
        : h("p", { class: "empty" }, "No saved plans yet: write one above and press Save plan."));
    } catch (err) {
      if (err.name !== "AbortError") savedBox.replaceChildren(errorBox(err));
    }
  }

  async function loadPlan(saved) {
    const checked = await post("/api/plans/validate", { plan: saved.plan }, { signal });
    editor.value = checked.yaml || JSON.stringify(saved.plan, null, 2);
    saveName.value = saved.name;
    await validate();
    editor.focus();
  }

  async function runSaved(saved) {
    try {
      const orch = await post("/api/orchestrations", { plan: saved.plan }, { signal });
      announce(orch.id, "orchestration");
      navigate(`/orchestrations/${encodeURIComponent(orch.id)}`);
    } catch (err) {
      if (err.name !== "AbortError") toast(err.message, "error");
    }
  }

  async function deleteSaved(saved) {
    if (!window.confirm(`Delete the saved plan "${saved.name}"?`)) return;
    try {
      await del(`/api/plans/saved/${encodeURIComponent(saved.id)}`, { signal });
      loadSaved();
    } catch (err) {
      if (err.name !== "AbortError") toast(err.message, "error");
    }
  }

  async function onRun() {
    runButton.disabled = true;
    try {
      const orch = await post("/api/orchestrations", { yaml: editor.value }, { signal });
      announce(orch.id, "orchestration");
      navigate(`/orchestrations/${encodeURIComponent(orch.id)}`);
    } catch (err) {
      if (err.name !== "AbortError") errors.replaceChildren(errorBox(err));
      runButton.disabled = false;
    }
  }

  const from = query.get("from");
  if (from) { // "Edit & re-run" of an orchestration: its plan, as YAML, ready to change
    try {
      const orch = await get(`/api/orchestrations/${encodeURIComponent(from)}`, null, { signal });
      const checked = await post("/api/plans/validate", { plan: orch.plan }, { signal });
      editor.value = checked.yaml || JSON.stringify(orch.plan, null, 2);
      draftStatus.replaceChildren(h("p", { class: "muted small", "data-testid": "rerun-note" },
        `The plan of "${orch.name}": edit it below, then press Run.`));
    } catch (err) {
      if (err.name !== "AbortError") errors.replaceChildren(errorBox(err));
    }
  }
  validate();
  loadSaved();
  try {
    const data = await get("/api/orchestrations", { limit: 20 }, { signal });
    recent.replaceChildren(data.items.length ? orchestrationsTable(data.items)
      : h("p", { class: "empty" }, "Nothing has run yet."));
  } catch (err) {
    if (err.name !== "AbortError") recent.replaceChildren(errorBox(err));
  }
  return () => clearTimeout(timer);
}
