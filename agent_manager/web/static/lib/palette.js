/**
 * lib/palette.js — the command palette (Ctrl/Cmd-K): type to jump to any page, agent (run or
 * chat with it) or recent run; ↑/↓ choose, Enter goes, Escape closes.
 *
 * Exports
 *   openPalette({pages: [[href, label]], navigate})
 */

import { get } from "./api.js";
import { h } from "./dom.js";

let open = null;

export async function openPalette({ pages, navigate }) {
  if (open) {
    open.input.focus();
    return;
  }
  const input = h("input", { type: "text", class: "palette-input", placeholder: "Jump to a page, agent or run…",
    "aria-label": "Command palette", autocomplete: "off", spellcheck: "false", role: "combobox",
    "aria-expanded": "true", "aria-controls": "palette-list" });
  const list = h("ul", { class: "palette-list", id: "palette-list", role: "listbox", "data-testid": "palette-list" });
  const dialog = h("div", { class: "palette", role: "dialog", "aria-modal": "true", "aria-label": "Command palette",
    "data-testid": "palette" }, input, list);
  const backdrop = h("div", { class: "palette-backdrop", onClick: (e) => { if (e.target === backdrop) close(); } },
    dialog);
  const previous = document.activeElement;
  document.body.append(backdrop);
  input.focus();

  let items = pages.map(([href, label]) => ({ label, hint: "page", href }));
  let shown = [];
  let active = 0;

  function close() {
    backdrop.remove();
    open = null;
    if (previous && previous.focus) previous.focus({ preventScroll: true });
  }

  function go(item) {
    close();
    navigate(item.href);
  }

  function paint() {
    const words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    shown = items.filter((it) => words.every((w) => `${it.label} ${it.hint}`.toLowerCase().includes(w))).slice(0, 30);
    active = Math.min(active, Math.max(0, shown.length - 1));
    list.replaceChildren(...shown.map((it, n) => h("li", {
      role: "option", id: `palette-${n}`, "aria-selected": String(n === active), class: n === active ? "active" : null,
      onClick: () => go(it),
    }, h("span", { class: "palette-label" }, it.label), h("span", { class: "muted small" }, it.hint))));
    if (!shown.length) list.append(h("li", { class: "muted small palette-none" }, "Nothing matches."));
    input.setAttribute("aria-activedescendant", shown.length ? `palette-${active}` : "");
    list.querySelector(".active")?.scrollIntoView({ block: "nearest" });
  }

  input.addEventListener("input", () => {
    active = 0;
    paint();
  });
  dialog.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      close();
    } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const d = event.key === "ArrowDown" ? 1 : -1;
      active = shown.length ? (active + d + shown.length) % shown.length : 0;
      paint();
    } else if (event.key === "Enter") {
      event.preventDefault();
      if (shown[active]) go(shown[active]);
    } else if (event.key === "Tab") {
      event.preventDefault(); // focus stays in the dialog
    }
  });
  open = { input, close };
  paint();
  try {
    const [agents, runs] = await Promise.all([get("/api/agents"), get("/api/runs", { limit: 15 })]);
    if (!open) return;
    for (const a of agents) {
      items.push({ label: `Run ${a.name}`, hint: `agent · ${a.kind}`, href: `/run?agent=${encodeURIComponent(a.name)}` });
      items.push({ label: `Chat with ${a.name}`, hint: "agent", href: `/chat?agent=${encodeURIComponent(a.name)}` });
    }
    for (const r of runs.items) {
      items.push({ label: `${r.agent_name}: ${(r.prompt || "").split("\n")[0].slice(0, 60)}`,
        hint: `run · ${r.status.replace("_", " ")}`, href: `/runs/${encodeURIComponent(r.id)}` });
    }
    items = [...items];
    paint();
  } catch {
    /* pages still work without the lists */
  }
}
