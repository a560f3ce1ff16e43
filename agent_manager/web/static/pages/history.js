// History: runs (search, agent and status filters, pages) and conversations (search).
// The filters live in the URL ("#/history?tab=runs&q=…&agent=…&status=…&page=2") so a reload
// or a shared link shows the same list. The runs list refreshes itself while the page is open
// (statuses change live); the search covers prompts, answers and what runs wrote to stderr.

import { get } from "../lib/api.js";
import { errorBox, field, fmtAgo, h, setTitle } from "../lib/dom.js";
import { runsTable } from "./dashboard.js";

const STATUSES = ["", "queued", "running", "succeeded", "failed", "cancelled", "timed_out", "interrupted"];
const PAGE = 20;

export async function render(root, { query, signal, navigate }) {
  setTitle("History");
  const tab = query.get("tab") === "chats" ? "chats" : "runs";
  const q = query.get("q") || "";
  const page = Math.max(1, Number.parseInt(query.get("page") || "1", 10) || 1);

  const tabs = h("div", { class: "tabs", role: "tablist", "aria-label": "History" },
    h("a", { role: "tab", href: "#/history?tab=runs", "aria-selected": String(tab === "runs"),
      class: tab === "runs" ? "active" : null }, "Runs"),
    h("a", { role: "tab", href: "#/history?tab=chats", "aria-selected": String(tab === "chats"),
      class: tab === "chats" ? "active" : null }, "Conversations"));
  root.append(h("div", { class: "page-head" }, h("h1", null, "History")), tabs);

  const search = field({ label: "Search", name: "q",
    input: h("input", { type: "search", value: q, placeholder: tab === "runs" ? "Words in prompts and output (stdout and stderr)"
      : "Words in titles and messages", autocomplete: "off" }) });
  const results = h("div", { class: "results", "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  const filters = h("form", { class: "filters", role: "search", onSubmit: apply }, search.wrap);
  root.append(filters, results);

  function go(changes) {
    const next = new URLSearchParams(query);
    for (const [key, value] of Object.entries(changes)) {
      if (value) next.set(key, value);
      else next.delete(key);
    }
    navigate(`/history?${next.toString()}`);
  }

  let agentSelect = null;
  let statusSelect = null;
  function apply(event) {
    if (event) event.preventDefault();
    go({ q: search.input.value.trim(), agent: agentSelect?.value, status: statusSelect?.value, page: "" });
  }

  try {
    if (tab === "chats") {
      filters.append(h("button", { type: "submit" }, "Search"));
      const convs = await get("/api/conversations", { q, limit: 100 }, { signal });
      results.replaceChildren(convs.length
        ? h("ul", { class: "list" }, convs.map((c) => h("li", null,
          h("a", { href: `#/chat/${encodeURIComponent(c.id)}` }, c.title || "Untitled"),
          h("span", { class: "muted small" }, ` · ${fmtAgo(c.updated_at)}`))))
        : h("p", { class: "empty" }, q ? "No conversation matches." : "No conversations yet."));
      return undefined;
    }
    const agents = await get("/api/agents", null, { signal });
    const agent = query.get("agent") || "";
    const status = query.get("status") || "";
    agentSelect = h("select", { onChange: apply }, h("option", { value: "" }, "all agents"),
      agents.map((a) => h("option", { value: a.name, selected: a.name === agent }, a.name)));
    statusSelect = h("select", { onChange: apply },
      STATUSES.map((s) => h("option", { value: s, selected: s === status }, s ? s.replace("_", " ") : "any status")));
    filters.append(field({ label: "Agent", name: "agent", input: agentSelect }).wrap,
      field({ label: "Status", name: "status", input: statusSelect }).wrap,
      h("button", { type: "submit" }, "Search"));
    const knownAgent = !agent || agents.some((a) => a.name === agent);
    const load = () => get("/api/runs", { q, agent: knownAgent ? agent : "", status, limit: PAGE,
      offset: (page - 1) * PAGE }, { signal });
    show(await load());
    // Live: the list is fetched again every few seconds, so statuses and new runs show up by themselves.
    let timer = null;
    const poll = () => {
      timer = setTimeout(async () => {
        try {
          show(await load());
        } catch (err) {
          if (err.name === "AbortError") return;
        }
        poll();
      }, 2500);
    };
    poll();
    return () => clearTimeout(timer);
  } catch (err) {
    if (err.name !== "AbortError") results.replaceChildren(errorBox(err));
  }
  return undefined;

  function show(data) {
    const pages = Math.max(1, Math.ceil(data.total / PAGE));
    results.replaceChildren(
      h("p", { class: "muted small", "data-testid": "total" }, `${data.total} run${data.total === 1 ? "" : "s"}`),
      data.items.length ? runsTable(data.items) : h("p", { class: "empty" }, "No run matches."),
      pages > 1 ? h("nav", { class: "pager", "aria-label": "Pages" },
        h("button", { type: "button", class: "secondary", disabled: page <= 1,
          onClick: () => go({ page: String(page - 1) }) }, "← Newer"),
        h("span", null, `Page ${page} of ${pages}`),
        h("button", { type: "button", class: "secondary", disabled: page >= pages,
          onClick: () => go({ page: String(page + 1) }) }, "Older →")) : "");
  }
}
