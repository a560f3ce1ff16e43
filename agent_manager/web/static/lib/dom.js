/**
 * lib/dom.js — small, safe DOM helpers shared by every page. Nothing here parses HTML:
 * text always becomes text nodes, so agent output can never turn into markup.
 *
 * Exports
 *   h(tag, attrs?, ...children) -> Element
 *       attrs: {class, id, for, href, type, ...} set as attributes; `on<Event>` keys (onClick,
 *       onSubmit, …) add listeners; `dataset`, `style` objects; boolean true/false toggles an
 *       attribute; null/undefined skipped. `href` values other than http(s), mailto, "#…" and
 *       same-origin "/…" are dropped. Children: strings/numbers (text), Nodes, arrays, null.
 *   clear(el) -> el                 remove every child
 *   field({label, input, hint?, name}) -> {wrap, input, error, setError(msg)}
 *       A labelled form row with an error slot wired by aria-describedby/aria-invalid.
 *   applyErrors(form, apiError, fields) -> bool  show ApiError.fields next to matching rows
 *       (fields: {name: fieldRow}); sets the form's summary; true if any field matched.
 *   statusBadge(status), backendBadge(backend, reason?), kindBadge(kind) -> Element
 *   fmtDuration(seconds), fmtTime(iso), fmtAgo(iso), fmtUsage(usage) -> string
 *   toast(message, kind="info")     transient notice in the corner (aria-live)
 *   errorBox(err) -> Element        a role=alert box for any thrown error
 *   setTitle(text)                  the browser tab title ("text · Agent Manager")
 *   setTitlePrefix(prefix)          "(2) " before it, for the running count
 *   TERMINAL                        Set of terminal run statuses
 */

export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out", "interrupted"]);

const SAFE_HREF = /^(https?:|mailto:|#|\/(?!\/))/i;

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "style" && typeof value === "object") {
      Object.assign(el.style, value);
    } else if (key === "value" && ("value" in el)) {
      el.value = value;
    } else if (key === "checked" || key === "selected") {
      el[key] = Boolean(value);
    } else if (key === "href") {
      const href = String(value);
      if (SAFE_HREF.test(href.trim())) el.setAttribute("href", href);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

let uid = 0;

export function field({ label, input, hint, name }) {
  const id = input.id || `f-${name || "x"}-${++uid}`;
  input.id = id;
  if (name && !input.name) input.name = name;
  const error = h("div", { class: "field-error", id: `${id}-err`, "aria-live": "polite" });
  const hintEl = hint ? h("div", { class: "hint", id: `${id}-hint` }, hint) : null;
  const describedBy = [hintEl ? `${id}-hint` : null, `${id}-err`].filter(Boolean).join(" ");
  input.setAttribute("aria-describedby", describedBy);
  const isCheck = input.type === "checkbox";
  const labelEl = h("label", { for: id }, label);
  const wrap = isCheck
    ? h("div", { class: "field check" }, input, labelEl, hintEl, error)
    : h("div", { class: "field" }, labelEl, input, hintEl, error);
  // An error is about the value that was sent: editing the field takes it away (no stale messages).
  input.addEventListener("input", () => setError(""));
  input.addEventListener("change", () => setError(""));
  function setError(message) {
    error.textContent = message || "";
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
    wrap.classList.toggle("invalid", Boolean(message));
  }
  return { wrap, input, error, setError };
}

export function applyErrors(summary, err, rows) {
  let matched = false;
  let first = null;
  for (const [name, row] of Object.entries(rows)) {
    const message = err && err.fields ? err.fieldError(name) : "";
    row.setError(message);
    if (message) {
      matched = true;
      first = first || row.input;
    }
  }
  if (summary) {
    clear(summary);
    // Field messages are shown under their fields; the banner is for what no field explains.
    const unmatched = err && Array.isArray(err.details) && err.details.some((d) => d && d.field
      && !Object.keys(rows).some((name) => d.field === name || d.field.startsWith(`${name}.`)));
    if (err && (!matched || unmatched)) summary.append(errorBox(err));
  }
  if (first) first.focus();
  return matched;
}

export function errorBox(err) {
  const message = err && err.message ? err.message : String(err);
  const box = h("div", { class: "alert error", role: "alert" }, message);
  if (err && err.status === 401) {
    box.append(" ", h("a", { href: "/login" }, "Log in again"));
  }
  return box;
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status || "unknown"}`, "data-status": status || "" },
    (status || "unknown").replace("_", " "));
}

export function backendBadge(backend, reason) {
  const label = backend || "auto";
  return h("span", { class: `badge backend backend-${label}`, title: reason || null }, label);
}

export function kindBadge(kind) {
  return h("span", { class: "badge kind" }, kind);
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds % 60);
  if (m < 60) return `${m} m ${s} s`;
  return `${Math.floor(m / 60)} h ${m % 60} m`;
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export function fmtAgo(iso) {
  if (!iso) return "";
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (!Number.isFinite(seconds)) return "";
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

export function fmtUsage(usage) {
  if (!usage || typeof usage !== "object") return "—";
  const parts = [];
  const input = usage.input_tokens ?? usage.prompt_tokens;
  const output = usage.output_tokens ?? usage.completion_tokens;
  if (input !== undefined) parts.push(`${input} in`);
  if (output !== undefined) parts.push(`${output} out`);
  if (usage.total_tokens !== undefined && !parts.length) parts.push(`${usage.total_tokens} tokens`);
  const cost = usage.cost_usd ?? usage.total_cost_usd;
  if (typeof cost === "number") parts.push(`$${cost.toFixed(4)}`);
  return parts.length ? parts.join(" · ") : "—";
}

export function toast(message, kind = "info") {
  const host = document.getElementById("toasts");
  if (!host) return;
  const el = h("div", { class: `toast ${kind}` }, message);
  host.append(el);
  setTimeout(() => el.remove(), 4000);
}

let baseTitle = "Agent Manager";
let titlePrefix = "";

export function setTitle(text) {
  baseTitle = text ? `${text} · Agent Manager` : "Agent Manager";
  document.title = titlePrefix + baseTitle;
}

/** A prefix for the tab title, e.g. "(2) " while two runs work (lib/attention.js sets it). */
export function setTitlePrefix(prefix) {
  titlePrefix = prefix || "";
  document.title = titlePrefix + baseTitle;
}
