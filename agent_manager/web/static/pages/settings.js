// Settings: GET/PATCH /api/settings. Only changed fields are sent; secrets are write-only
// (shown as "********"; an empty box keeps the stored secret). The API's errors appear next
// to the fields. The service's own settings are grouped below; each backend's section is drawn
// from the API's description of it (section_info: field names, types, defaults, descriptions,
// choices, bounds), so a backend installed as a plugin shows up with nothing to change here.
// Settings this page does not know yet still show up, under "Other". Settings an environment
// variable sets are shown read-only, naming the variable: the API refuses them.

import { get, patch } from "../lib/api.js";
import { applyErrors, errorBox, field, h, setTitle, toast } from "../lib/dom.js";
import { backends, explainBackend } from "../lib/registry.js";

const MASK = "********";
const CHOICES = {}; // filled from the registry: execution_mode is auto or an installed backend
const READ_ONLY = ["home", "host", "port", "auth"];
const GROUPS = [
  ["Execution and routing", ["execution_mode", "prefer_daytona_for_untrusted", "allow_fallback", "heavy_cpu",
    "heavy_memory_mb"]],
  ["Runs", ["max_concurrent_runs", "default_timeout_s", "kill_grace_s", "stream_close_grace_s", "output_cap_bytes",
    "history_messages", "history_chars", "max_stored_output_mb", "run_retention_days"]],
  ["Stall detection", ["stall_timeout_s", "stall_kill"]],
  ["Orchestration", ["default_planner", "orchestration_max_parallel"]],
  ["Access", ["allowed_hosts"]],
];
const HINTS = {
  execution_mode: "auto lets the routing policy pick per run; the others force one backend.",
  stall_timeout_s: "Report a run as stalled after this many silent seconds (0 = off).",
  stall_kill: "Also stop a stalled run.",
  allowed_hosts: "Extra host names the service answers to, comma separated.",
  heavy_cpu: "Runs declaring more CPUs than this count as heavy: auto sends them to a remote backend "
    + "when one is set up.",
  heavy_memory_mb: "Runs declaring more memory than this count as heavy, likewise.",
  max_stored_output_mb: "Raw output kept per run; the rest is counted, not stored (0 = keep all).",
  run_retention_days: "Delete finished runs after this many days (0 = keep forever).",
};

const LABELS = {
  heavy_cpu: "Heavy work: CPUs", heavy_memory_mb: "Heavy work: memory (MB)", output_cap_bytes: "Output cap (bytes)",
  prefer_daytona_for_untrusted: "Prefer Daytona for untrusted runs", allow_fallback: "Fall back when a backend is down",
  stall_kill: "Stop stalled runs", history_messages: "Chat history: messages", history_chars: "Chat history: characters",
};
const WORDS = { api: "API", url: "URL", uid: "UID", tmp: "/tmp", pids: "processes", id: "ID", io: "I/O", cpu: "CPU" };
const label = (name) => LABELS[name] || name.replace(/_s$/, " (s)").replace(/_mb$/, " (MB)").split("_")
  .map((w) => WORDS[w] || w).join(" ").replace(/^[a-z]/, (c) => c.toUpperCase());

export async function render(root, { signal }) {
  setTitle("Settings");
  root.append(h("div", { class: "page-head" }, h("h1", null, "Settings")));
  let current;
  let backendList;
  try {
    [current, backendList] = await Promise.all([get("/api/settings", null, { signal }), backends()]);
    CHOICES.execution_mode = ["auto", ...backendList.filter((b) => b.loaded).map((b) => b.name)];
  } catch (err) {
    if (err.name !== "AbortError") root.append(errorBox(err));
    return;
  }
  const mutable = new Set(current.mutable || []);
  const fromEnv = current.from_env || {};
  const shown = (n) => mutable.has(n) || n in fromEnv;
  const rows = {};
  const readers = {};
  const described = {};  // "section.field" -> the API's description of it

  // A key is a service setting ("port") or a backend section's field ("daytona.api_key").
  const split = (key) => (key.includes(".") ? key.split(".", 2) : [null, key]);
  function valueOf(data, key) {
    const [section, name] = split(key);
    return section ? ((data.sections || {})[section] || {})[name] : data[name];
  }

  function control(name, value, info) {
    const type = info ? info.type : null;
    const choices = info ? info.choices : CHOICES[name];
    if (choices) {
      const options = (info && info.nullable ? [null, ...choices] : choices)
        .map((c) => h("option", { value: c ?? "", selected: c === value }, c ?? "(not set)"));
      const select = h("select", null, options);
      readers[name] = () => (select.value === "" && info && info.nullable ? null : select.value);
      return select;
    }
    if (type === "secret") {
      const input = h("input", { type: "password", autocomplete: "new-password",
        placeholder: value ? `${MASK} (set)` : "not set" });
      readers[name] = () => (input.value ? input.value : undefined);
      return input;
    }
    if (type === "boolean" || (!type && typeof value === "boolean")) {
      const input = h("input", { type: "checkbox", checked: Boolean(value) });
      readers[name] = () => input.checked;
      return input;
    }
    if (type === "integer" || type === "number" || (!type && typeof value === "number")) {
      const attrs = { type: "number", value: value ?? "", step: type === "integer" ? "1" : "any" };
      if (info && info.minimum != null) attrs.min = String(info.minimum);
      if (info && info.maximum != null) attrs.max = String(info.maximum);
      const input = h("input", attrs);
      readers[name] = () => (input.value.trim() === "" ? null : Number(input.value));
      return input;
    }
    if (type === "list" || (!type && Array.isArray(value))) {
      const input = h("input", { type: "text", value: (value || []).join(", "), autocomplete: "off" });
      readers[name] = () => input.value.split(",").map((s) => s.trim()).filter(Boolean);
      return input;
    }
    const input = h("input", { type: "text", value: value ?? "", autocomplete: "off", spellcheck: "false" });
    readers[name] = () => (input.value.trim() === "" ? (info && !info.nullable ? "" : null) : input.value.trim());
    return input;
  }

  function hintFor(info) {
    if (!info) return undefined;
    // The models' descriptions are phrases ("uid and gid inside the sandbox"): a full stop ends
    // them here, so "Default: …" never runs on from the description's last word.
    const text = (info.description || "").trim();
    const parts = [text && (/[.!?]$/.test(text) ? text : `${text}.`)];
    if (info.type === "secret") parts.push("Write-only: leave empty to keep the stored value.");
    else if (info.default !== null && info.default !== undefined) {
      parts.push(`Default: ${Array.isArray(info.default) ? info.default.join(", ") : info.default}.`);
    }
    // `code` in a description (the same text makes docs/configuration.md's tables) is shown as code.
    return parts.filter(Boolean).join(" ").split("`").map((piece, i) => (i % 2 ? h("code", null, piece) : piece));
  }

  const known = new Set([...READ_ONLY, "mutable", "restart_required", "from_env", "sections", "section_info",
    "listening", ...GROUPS.flatMap(([, names]) => names)]);
  const others = Object.keys(current).filter((k) => !known.has(k) && shown(k));
  const groups = others.length ? [...GROUPS, ["Other", others]] : [...GROUPS];
  for (const section of current.section_info || []) {
    const keys = section.fields.map((f) => `${section.name}.${f.name}`);
    section.fields.forEach((f, i) => { described[keys[i]] = f; });
    groups.push([section.title || section.name, keys, section.name]);
  }
  const summary = h("div", { class: "form-summary" });
  const save = h("button", { type: "submit" }, "Save settings");
  const form = h("form", { class: "form settings", novalidate: true, "aria-label": "Settings", onSubmit }, summary);
  for (const [title, names, section] of groups) {
    const present = names.filter((n) => (section || n in current) && shown(n));
    if (!present.length) continue;
    const set = h("fieldset", { class: "card", "data-section": section || null }, h("legend", null, title));
    const grid = h("div", { class: "form-grid" });
    for (const name of present) {
      const info = described[name];
      const text = label(split(name)[1]);
      const value = valueOf(current, name);
      if (name in fromEnv) {  // shown, never sent: the variable wins at every start
        const input = control(name, value, info);
        delete readers[name];
        input.disabled = true;
        input.dataset.fromEnv = fromEnv[name];
        const hint = `Set by the environment variable ${fromEnv[name]}; change it where the service is started.`;
        grid.append(field({ label: text, name, input, hint }).wrap);
        continue;
      }
      rows[name] = field({ label: text, name, input: control(name, value, info), hint: HINTS[name] || hintFor(info) });
      grid.append(rows[name].wrap);
    }
    set.append(grid);
    form.append(set);
  }
  form.append(h("div", { class: "actions sticky-actions" }, save));
  if (rows.execution_mode) {  // an unavailable backend is marked, and says why when chosen
    const byName = new Map(backendList.map((b) => [b.name, b]));
    for (const option of rows.execution_mode.input.options) {
      const b = byName.get(option.value);
      if (b && !b.available) option.textContent = `${b.name} — unavailable`;
    }
    explainBackend(rows.execution_mode, backendList);
  }
  root.append(
    h("p", { class: "muted" }, "Data directory ", h("code", null, current.home), ` · listening on ${current.listening
      || `${current.host}:${current.port}`} · authentication ${current.auth ? "on" : "off"} (these need a restart to change).`),
    form);

  // The PATCH body: service settings by name, a section's fields in its own object.
  function changes() {
    const out = {};
    for (const key of Object.keys(rows)) {
      const value = readers[key]();
      if (value === undefined) continue;
      if (JSON.stringify(value) === JSON.stringify(valueOf(current, key) ?? null)) continue;
      const [section, name] = split(key);
      if (section) (out[section] ||= {})[name] = value;
      else out[name] = value;
    }
    return out;
  }

  async function onSubmit(event) {
    event.preventDefault();
    const body = changes();
    if (!Object.keys(body).length) {
      applyErrors(summary, null, rows);
      toast("Nothing changed");
      return;
    }
    save.disabled = true;
    try {
      current = await patch("/api/settings", body);
      applyErrors(summary, null, rows);
      for (const [key, row] of Object.entries(rows)) {
        if (described[key] && described[key].type === "secret") {
          row.input.value = "";
          row.input.placeholder = valueOf(current, key) ? `${MASK} (set)` : "not set";
        }
      }
      toast("Settings saved", "ok");
    } catch (err) {
      applyErrors(summary, err, rows);
    } finally {
      save.disabled = false;
    }
  }
}
