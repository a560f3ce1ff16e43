// Settings: GET/PATCH /api/settings. Only changed fields are sent; secrets are write-only
// (shown as "********"; an empty box keeps the stored secret). The API's errors appear next
// to the fields. Settings this page does not know yet still show up, under "Other". Settings an
// environment variable sets are shown read-only, naming the variable: the API refuses them.

import { get, patch } from "../lib/api.js";
import { applyErrors, errorBox, field, h, setTitle, toast } from "../lib/dom.js";
import { backends } from "../lib/registry.js";

const MASK = "********";
const SECRETS = new Set(["daytona_api_key"]);
const CHOICES = {}; // filled from the registry: execution_mode is auto or an installed backend
const READ_ONLY = ["home", "host", "port", "auth"];
const GROUPS = [
  ["Execution and routing", ["execution_mode", "prefer_daytona_for_untrusted", "allow_fallback", "heavy_cpu",
    "heavy_memory_mb"]],
  ["Runs", ["max_concurrent_runs", "default_timeout_s", "kill_grace_s", "stream_close_grace_s", "output_cap_bytes",
    "history_messages", "history_chars", "max_stored_output_mb", "run_retention_days"]],
  ["Stall detection", ["stall_timeout_s", "stall_kill"]],
  ["Daytona", ["daytona_api_key", "daytona_api_url", "daytona_target", "daytona_image", "daytona_snapshot",
    "daytona_auto_stop_minutes", "daytona_auto_delete_minutes", "daytona_create_timeout_s", "daytona_warm_pool"]],
  ["Sandbox (bubblewrap)", ["sandbox_uid", "sandbox_memory_mb", "sandbox_pids_max", "sandbox_tmp_mb"]],
  ["Orchestration", ["default_planner", "orchestration_max_parallel"]],
  ["Access", ["allowed_hosts"]],
];
const HINTS = {
  execution_mode: "auto lets the routing policy pick per run; the others force one backend.",
  stall_timeout_s: "Report a run as stalled after this many silent seconds (0 = off).",
  stall_kill: "Also stop a stalled run.",
  daytona_api_key: "Write-only. Leave empty to keep the stored key.",
  daytona_auto_delete_minutes: "-1 = never, 0 = when stopped.",
  allowed_hosts: "Extra host names the service answers to, comma separated.",
  heavy_cpu: "Runs declaring at least this many CPUs count as heavy (routed to Daytona when configured).",
  max_stored_output_mb: "Raw output kept per run; the rest is counted, not stored (0 = keep all).",
  run_retention_days: "Delete finished runs after this many days (0 = keep forever).",
};

const LABELS = {
  heavy_cpu: "Heavy work: CPUs", heavy_memory_mb: "Heavy work: memory (MB)", output_cap_bytes: "Output cap (bytes)",
  prefer_daytona_for_untrusted: "Prefer Daytona for untrusted runs", allow_fallback: "Fall back when a backend is down",
  daytona_api_key: "Daytona API key", daytona_api_url: "Daytona API URL", sandbox_uid: "Sandbox uid",
  stall_kill: "Stop stalled runs", history_messages: "Chat history: messages", history_chars: "Chat history: characters",
};
const label = (name) => LABELS[name] || name.replace(/_s$/, " (s)").replace(/_mb$/, " (MB)").replace(/_/g, " ")
  .replace(/^./, (c) => c.toUpperCase());

export async function render(root, { signal }) {
  setTitle("Settings");
  root.append(h("div", { class: "page-head" }, h("h1", null, "Settings")));
  let current;
  try {
    let backendList;
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

  function control(name, value) {
    if (CHOICES[name]) {
      const select = h("select", null, CHOICES[name].map((c) => h("option", { value: c, selected: c === value }, c)));
      readers[name] = () => select.value;
      return select;
    }
    if (SECRETS.has(name)) {
      const input = h("input", { type: "password", autocomplete: "new-password",
        placeholder: value ? `${MASK} (set)` : "not set" });
      readers[name] = () => (input.value ? input.value : undefined);
      return input;
    }
    if (typeof value === "boolean") {
      const input = h("input", { type: "checkbox", checked: value });
      readers[name] = () => input.checked;
      return input;
    }
    if (typeof value === "number") {
      const input = h("input", { type: "number", value: String(value), step: "any" });
      readers[name] = () => (input.value.trim() === "" ? null : Number(input.value));
      return input;
    }
    if (Array.isArray(value)) {
      const input = h("input", { type: "text", value: value.join(", "), autocomplete: "off" });
      readers[name] = () => input.value.split(",").map((s) => s.trim()).filter(Boolean);
      return input;
    }
    const input = h("input", { type: "text", value: value ?? "", autocomplete: "off", spellcheck: "false" });
    readers[name] = () => (input.value.trim() === "" ? null : input.value.trim());
    return input;
  }

  const known = new Set([...READ_ONLY, "mutable", "restart_required", "from_env",
    ...GROUPS.flatMap(([, names]) => names)]);
  const others = Object.keys(current).filter((k) => !known.has(k) && shown(k));
  const groups = others.length ? [...GROUPS, ["Other", others]] : GROUPS;
  const summary = h("div", { class: "form-summary" });
  const save = h("button", { type: "submit" }, "Save settings");
  const form = h("form", { class: "form settings", novalidate: true, "aria-label": "Settings", onSubmit }, summary);
  for (const [title, names] of groups) {
    const present = names.filter((n) => n in current && shown(n));
    if (!present.length) continue;
    const set = h("fieldset", { class: "card" }, h("legend", null, title));
    const grid = h("div", { class: "form-grid" });
    for (const name of present) {
      if (name in fromEnv) {  // shown, never sent: the variable wins at every start
        const input = control(name, current[name]);
        delete readers[name];
        input.disabled = true;
        input.dataset.fromEnv = fromEnv[name];
        const hint = `Set by the environment variable ${fromEnv[name]}; change it where the service is started.`;
        grid.append(field({ label: label(name), name, input, hint }).wrap);
        continue;
      }
      rows[name] = field({ label: label(name), name, input: control(name, current[name]), hint: HINTS[name] });
      grid.append(rows[name].wrap);
    }
    set.append(grid);
    form.append(set);
  }
  form.append(h("div", { class: "actions sticky-actions" }, save));
  root.append(
    h("p", { class: "muted" }, "Data directory ", h("code", null, current.home), ` · listening on ${current.listening
      || `${current.host}:${current.port}`} · authentication ${current.auth ? "on" : "off"} (these need a restart to change).`),
    form);

  function changes() {
    const out = {};
    for (const name of Object.keys(rows)) {
      const value = readers[name]();
      if (value === undefined) continue;
      if (JSON.stringify(value) !== JSON.stringify(current[name])) out[name] = value;
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
      for (const name of Object.keys(body)) {
        if (SECRETS.has(name)) {
          rows[name].input.value = "";
          rows[name].input.placeholder = current[name] ? `${MASK} (set)` : "not set";
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
