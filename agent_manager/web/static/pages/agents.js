// Agents: "#/agents" lists them, "#/agents/new" creates one, "#/agents/<id>" edits one.
// Validation is the API's: its 422 details[].field messages appear next to the fields.

import { del, get, patch, post } from "../lib/api.js";
import { applyErrors, errorBox, field, h, setTitle, toast } from "../lib/dom.js";
import { backendOptions, backends, explainBackend, kinds, options } from "../lib/registry.js";
import { agentCard } from "./dashboard.js";

const MASK = "********";
const SECRET_NAME = /(KEY|TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|AUTH|COOKIE|PRIVATE|SESSION)/i;

export async function render(root, params) {
  if (!params.id) return list(root, params);
  return form(root, params, params.id === "new" ? null : params.id);
}

async function list(root, { signal }) {
  setTitle("Agents");
  const box = h("div", { class: "grid" }, h("p", { class: "muted" }, "Loading…"));
  root.append(h("div", { class: "page-head" }, h("h1", null, "Agents"),
    h("a", { class: "button", href: "#/agents/new" }, "New agent")), box);
  try {
    const agents = await get("/api/agents", null, { signal });
    box.replaceChildren(...(agents.length ? agents.map(agentCard)
      : [h("p", { class: "empty" }, "No agents yet.")]));
  } catch (err) {
    if (err.name !== "AbortError") box.replaceChildren(errorBox(err));
  }
}

/** A list editor: one row per item, keyboard reachable add/remove buttons. */
function rowsEditor({ label, addLabel, makeRow, items, id }) {
  const list = h("div", { class: "rows", id, role: "group", "aria-label": label });
  const rows = [];
  function add(item, focus = false) {
    const row = makeRow(item);
    const remove = h("button", { type: "button", class: "icon secondary", "aria-label": `Remove ${row.name}`,
      onClick: () => {
        rows.splice(rows.indexOf(row), 1);
        row.el.remove();
        addButton.focus();
      } }, "✕");
    row.el.append(remove);
    rows.push(row);
    list.append(row.el);
    if (focus) row.first.focus();
  }
  const addButton = h("button", { type: "button", class: "secondary small", onClick: () => add(null, true) },
    addLabel);
  for (const item of items) add(item);
  return { el: h("div", null, list, addButton), rows, input: addButton };
}

async function form(root, { signal, navigate }, ref) {
  setTitle(ref ? "Edit agent" : "New agent");
  let agent = null;
  let kindList = [];
  let backendList = [];
  try {
    [agent, kindList, backendList] = await Promise.all([
      ref ? get(`/api/agents/${encodeURIComponent(ref)}`, null, { signal }) : Promise.resolve(null),
      kinds(), backends()]);
  } catch (err) {
    if (err.name === "AbortError") return;
    root.append(h("h1", null, ref ? "Edit agent" : "New agent"), errorBox(err));
    return;
  }
  const installed = kindList.filter((k) => k.loaded);
  const fallback = installed.find((k) => k.default) || installed[0];
  const noDefault = installed.filter((k) => !k.default_command).map((k) => k.name);  // a plugin's kinds too
  const a = agent || { name: "", kind: fallback?.name || "", command: "", args: [], env: {}, working_dir: null,
    model: null, backend: null, trusted: true, network: false, timeout_s: 600 };
  const kindPairs = installed.map((k) => [k.name, k.title && k.title !== k.name ? `${k.name} — ${k.title}` : k.name,
    k.description]);
  if (a.kind && !kindPairs.some(([v]) => v === a.kind)) kindPairs.push([a.kind, `${a.kind} (not installed)`]);

  const rows = {};
  const input = (attrs) => h("input", { autocomplete: "off", ...attrs });
  rows.name = field({ label: "Name", name: "name", hint: "Letters, digits, '.', '_' or '-'; used as @name in the CLI.",
    input: input({ type: "text", value: a.name, required: true, spellcheck: "false" }) });
  const kind = h("select", null, options(kindPairs, a.kind));
  rows.kind = field({ label: "Kind", name: "kind", input: kind,
    hint: `How the prompt is passed and the output read. ${fallback ? `'${fallback.name}' runs any program.` : ""}` });
  rows.command = field({ label: "Command", name: "command",
    hint: `Executable name or path. Leave empty to use the kind's default${noDefault.length
      ? ` (required for ${noDefault.join(", ")}: ${noDefault.length > 1 ? "they have" : "it has"} none)` : ""}.`,
    input: input({ type: "text", value: agent ? a.command : "", spellcheck: "false", class: "mono" }) });

  const argsEditor = rowsEditor({
    label: "Arguments", addLabel: "Add argument", id: "args-rows", items: a.args,
    makeRow: (value) => {
      const el = input({ type: "text", value: value ?? "", class: "mono", "aria-label": "Argument",
        spellcheck: "false" });
      return { el: h("div", { class: "row" }, el), first: el, name: "argument", value: () => el.value };
    },
  });
  rows.args = field({ label: "Arguments", name: "args", input: argsEditor.input,
    hint: "Extra argv elements, one per row. A generic agent may use {prompt} as one element." });
  rows.args.wrap.querySelector("label").removeAttribute("for");
  rows.args.wrap.querySelector("label").after(argsEditor.el);

  const envEditor = rowsEditor({
    label: "Environment", addLabel: "Add variable", id: "env-rows", items: Object.entries(a.env || {}),
    makeRow: (pair) => {
      const [k, v] = pair || ["", ""];
      const name = input({ type: "text", value: k, class: "mono", "aria-label": "Variable name", spellcheck: "false",
        placeholder: "NAME" });
      const value = input({ type: SECRET_NAME.test(k) ? "password" : "text", value: v, class: "mono",
        "aria-label": "Variable value", placeholder: "value" });
      name.addEventListener("input", () => {
        value.type = SECRET_NAME.test(name.value) ? "password" : "text";
      });
      return { el: h("div", { class: "row env-row" }, name, value), first: name, name: "variable",
        value: () => [name.value.trim(), value.value] };
    },
  });
  rows.env = field({ label: "Environment", name: "env", input: envEditor.input,
    hint: `Secret-looking values come back as ${MASK}; leave them so to keep the stored secret.` });
  rows.env.wrap.querySelector("label").removeAttribute("for");
  rows.env.wrap.querySelector("label").after(envEditor.el);

  rows.working_dir = field({ label: "Working directory", name: "working_dir",
    hint: "Absolute path; empty = a workspace of its own in the data directory.",
    input: input({ type: "text", value: a.working_dir || "", class: "mono", spellcheck: "false" }) });
  rows.model = field({ label: "Model", name: "model", hint: "Optional; passed as --model=… where the CLI has it.",
    input: input({ type: "text", value: a.model || "", spellcheck: "false" }) });
  // An agent may name a backend whose plugin is no longer installed: it stays shown (and kept on
  // save) rather than the select falling back to "auto" and saving that without a word.
  const backendPairs = backendOptions(backendList, [["", "auto (routing policy)"]]);
  if (a.backend && !backendPairs.some(([v]) => v === a.backend)) {
    backendPairs.push([a.backend, `${a.backend} (not installed)`]);
  }
  rows.backend = field({ label: "Backend", name: "backend",
    input: h("select", null, options(backendPairs, a.backend || "")),
    hint: "Where its runs execute; auto follows the routing policy in Settings." });
  explainBackend(rows.backend, backendList);
  rows.timeout_s = field({ label: "Timeout (seconds)", name: "timeout_s",
    input: input({ type: "number", value: a.timeout_s, min: "1", step: "any" }) });
  rows.trusted = field({ label: "Trusted", name: "trusted", hint: "Untrusted agents are routed to an isolated backend.",
    input: input({ type: "checkbox", checked: a.trusted }) });
  rows.network = field({ label: "Network access", name: "network", hint: "Off: sandboxed runs get no network.",
    input: input({ type: "checkbox", checked: a.network }) });

  const summary = h("div", { class: "form-summary" });
  const submit = h("button", { type: "submit" }, agent ? "Save changes" : "Create agent");
  const remove = agent ? h("button", { type: "button", class: "danger", onClick: onDelete }, "Delete") : null;
  const formEl = h("form", { class: "form card", novalidate: true, "aria-label": "Agent", onSubmit },
    summary,
    h("div", { class: "form-grid" }, rows.name.wrap, rows.kind.wrap),
    rows.command.wrap, rows.args.wrap, rows.env.wrap,
    h("div", { class: "form-grid" }, rows.working_dir.wrap, rows.model.wrap),
    h("div", { class: "form-grid" }, rows.backend.wrap, rows.timeout_s.wrap),
    h("div", { class: "form-grid" }, rows.trusted.wrap, rows.network.wrap),
    h("div", { class: "actions" }, submit, h("a", { class: "button secondary", href: "#/agents" }, "Cancel"), remove));
  root.append(h("div", { class: "page-head" }, h("h1", null, agent ? `Edit ${agent.name}` : "New agent"),
    agent ? h("div", { class: "actions" },
      h("a", { class: "button secondary", href: `#/run?agent=${encodeURIComponent(agent.name)}` }, "Run"),
      h("a", { class: "button secondary", href: `#/terminal?agent=${encodeURIComponent(agent.name)}` }, "Terminal"))
      : null),
  formEl);
  if (!agent) rows.name.input.focus();

  function payload() {
    const env = {};
    for (const row of envEditor.rows) {
      const [k, v] = row.value();
      if (k) env[k] = v;
    }
    const body = {
      name: rows.name.input.value.trim(),
      kind: kind.value,
      args: argsEditor.rows.map((r) => r.value()),
      env,
      working_dir: rows.working_dir.input.value.trim() || null,
      model: rows.model.input.value.trim() || null,
      backend: rows.backend.input.value || null,
      trusted: rows.trusted.input.checked,
      network: rows.network.input.checked,
    };
    if (agent) {  // unchanged choices are not sent: one naming a removed plugin would be refused
      if (body.kind === agent.kind) delete body.kind;
      if (body.backend === (agent.backend || null)) delete body.backend;
    }
    const command = rows.command.input.value.trim();
    if (command || !agent) body.command = command || null;
    const timeout = rows.timeout_s.input.value.trim();
    if (timeout !== "") body.timeout_s = Number(timeout);
    return body;
  }

  async function onSubmit(event) {
    event.preventDefault();
    submit.disabled = true;
    try {
      const saved = agent
        ? await patch(`/api/agents/${encodeURIComponent(agent.id)}`, payload())
        : await post("/api/agents", payload());
      applyErrors(summary, null, rows);
      toast(agent ? `Saved ${saved.name}` : `Created ${saved.name}`, "ok");
      navigate("/agents");
    } catch (err) {
      if (!applyErrors(summary, err, rows)) summary.querySelector("[role=alert]")?.focus?.();
    } finally {
      submit.disabled = false;
    }
  }

  async function onDelete() {
    if (!window.confirm(`Delete the agent ${agent.name}? Its runs stay in the history.`)) return;
    try {
      await del(`/api/agents/${encodeURIComponent(agent.id)}`);
      toast(`Deleted ${agent.name}`, "ok");
      navigate("/agents");
    } catch (err) {
      applyErrors(summary, err, rows);
    }
  }
}
