/**
 * lib/registry.js — the installed backends and agent kinds (GET /api/backends, GET /api/kinds).
 *
 * Every list of backends or kinds in the UI comes from here, never from an array in a page:
 * a plugin installed with pip (docs/plugins.md) then shows up in every choice. Each list is
 * fetched once per page load and shared by the pages; a failed fetch is retried next time.
 *
 * Exports
 *   backends() -> Promise<[{name, title, description, capabilities, available, reason, loaded, ...}]>
 *   kinds()    -> Promise<[{name, title, description, default_command, available, loaded, ...}]>
 *       Entries with loaded=false (a plugin that failed to load) are listed but never offered.
 *   backendOptions(list, leading=[]) -> [[value, label, tooltip], ...]
 *       `leading` are the page's own first options (e.g. [["", "auto (routing policy)"]]); then
 *       one per backend: its title, marked "unavailable" with the reason as the tooltip.
 *   options(pairs, selected) -> <option> elements for a <select>
 *   explainBackend(row, list) -> adds a line under a backend field (a `field()` row) that says
 *       why the chosen backend is unavailable (the API's reason), failed to load, or is not
 *       installed (an agent saved when a since-removed plugin was). An option's tooltip alone is
 *       never seen: phones show no tooltips, nor does a desktop's open drop-down.
 */

import { get } from "./api.js";
import { h } from "./dom.js";

const cache = new Map();

function load(path) {
  if (!cache.has(path)) {
    // Not tied to one page's AbortSignal: the answer is shared by every page.
    const pending = get(path).catch((err) => {
      cache.delete(path);
      throw err;
    });
    cache.set(path, pending);
  }
  return cache.get(path);
}

export const backends = () => load("/api/backends");
export const kinds = () => load("/api/kinds");

export function backendOptions(list, leading = []) {
  return [...leading, ...list.filter((b) => b.loaded).map((b) => [b.name,
    b.available ? b.title : `${b.title} — unavailable`, b.available ? b.description : b.reason])];
}

export function options(pairs, selected = "") {
  return pairs.map(([value, text, tip]) => h("option", { value, selected: value === selected,
    title: tip || null }, text));
}

export function explainBackend(row, list) {
  const byName = new Map(list.map((b) => [b.name, b]));
  const note = h("div", { class: "backend-note", id: `${row.input.id}-why`, role: "status",
    "data-testid": "backend-reason" });
  row.input.setAttribute("aria-describedby",
    `${row.input.getAttribute("aria-describedby") || ""} ${note.id}`.trim());
  row.input.after(note);
  const update = () => {
    const value = row.input.value;
    const chosen = byName.get(value);
    const why = chosen && (chosen.reason || "no reason given");
    if (chosen) note.textContent = chosen.available ? "" : chosen.loaded ? `${chosen.name} is unavailable: ${why}`
      : `${chosen.name} is installed but failed to load: ${why}`;
    else note.textContent = value && value !== "auto" ? `${value} is not installed: its runs fail until it is `
      + "(pip install its plugin and restart the service), or choose another backend" : "";
  };
  row.input.addEventListener("change", update);
  update();
  return update;
}
