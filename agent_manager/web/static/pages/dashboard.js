// Dashboard: the agents (kind, availability, backend) and the most recent runs.

import { get } from "../lib/api.js";
import {
  backendBadge, errorBox, fmtAgo, fmtDuration, h, kindBadge, setTitle, statusBadge, TERMINAL,
} from "../lib/dom.js";

export function agentCard(agent) {
  const availability = agent.available
    ? h("span", { class: "badge ok" }, "available")
    : h("span", { class: "badge warn" }, "not installed");
  return h("article", { class: "card agent-card", "data-agent": agent.name },
    h("div", { class: "card-head" },
      h("h3", null, h("a", { href: `#/agents/${encodeURIComponent(agent.id)}` }, agent.name)),
      kindBadge(agent.kind), availability),
    h("div", { class: "meta" },
      h("span", { class: "mono" }, agent.command),
      h("span", null, "backend ", backendBadge(agent.backend)),
      agent.model ? h("span", null, "model ", h("span", { class: "mono" }, agent.model)) : null,
      agent.trusted ? null : h("span", { class: "badge warn" }, "untrusted")),
    agent.available ? null : h("p", { class: "hint install-hint" }, "Install: ", h("code", null, agent.install_hint)),
    h("div", { class: "actions" },
      h("a", { class: "button", href: `#/run?agent=${encodeURIComponent(agent.name)}` }, "Run"),
      h("a", { class: "button secondary", href: `#/chat?agent=${encodeURIComponent(agent.name)}` }, "Chat"),
      h("a", { class: "button secondary", href: `#/agents/${encodeURIComponent(agent.id)}` }, "Edit")));
}

export function runsTable(runs) {
  if (!runs.length) return h("p", { class: "empty" }, "No runs yet.");
  const rows = runs.map((run) => h("tr", { "data-run": run.id },
    h("td", null, h("a", { href: `#/runs/${encodeURIComponent(run.id)}` }, run.agent_name)),
    h("td", { class: "prompt-cell" }, h("a", { href: `#/runs/${encodeURIComponent(run.id)}`, class: "clip" },
      run.prompt.slice(0, 140))),
    h("td", null, statusBadge(run.status)),
    h("td", null, run.backend ? backendBadge(run.backend, run.route_reason) : "—",
      run.route_reason ? h("div", { class: "muted small reason", title: run.route_reason }, run.route_reason) : null),
    h("td", { class: "num" }, fmtDuration(run.duration_s)),
    h("td", { class: "num exit" }, run.exit_code ?? "—"),
    h("td", { class: "muted small" }, fmtAgo(run.created_at))));
  return h("div", { class: "table-wrap" }, h("table", { class: "runs" },
    h("thead", null, h("tr", null, ["Agent", "Prompt", "Status", "Backend", "Duration", "Exit", "When"].map(
      (t) => h("th", { scope: "col" }, t)))),
    h("tbody", null, rows)));
}

export async function render(root, { signal }) {
  setTitle("Dashboard");
  const agentsBox = h("div", { class: "grid" }, h("p", { class: "muted" }, "Loading agents…"));
  const runsBox = h("div", null, h("p", { class: "muted" }, "Loading runs…"));
  root.append(
    h("div", { class: "page-head" }, h("h1", null, "Dashboard"),
      h("div", { class: "actions" },
        h("a", { class: "button", href: "#/agents/new" }, "New agent"),
        h("a", { class: "button secondary", href: "#/run" }, "New run"))),
    h("h2", null, "Agents"), agentsBox,
    h("div", { class: "section-head" }, h("h2", null, "Recent runs"), h("a", { href: "#/history" }, "All runs →")),
    runsBox);

  async function loadRuns() {
    const page = await get("/api/runs", { limit: 10 }, { signal });
    runsBox.replaceChildren(runsTable(page.items));
    return page.items.some((r) => !TERMINAL.has(r.status));
  }

  try {
    const agents = await get("/api/agents", null, { signal });
    agentsBox.replaceChildren(...(agents.length ? agents.map(agentCard)
      : [h("div", { class: "empty card" }, h("p", null, "No agents yet. "),
        h("a", { class: "button", href: "#/agents/new" }, "Register your first agent"))]));
  } catch (err) {
    if (err.name === "AbortError") return undefined;
    agentsBox.replaceChildren(errorBox(err));
  }
  let timer = null;
  const poll = async () => {
    try {
      const busy = await loadRuns();
      if (busy && !signal.aborted) timer = setTimeout(poll, 2000);
    } catch (err) {
      if (err.name !== "AbortError") runsBox.replaceChildren(errorBox(err));
    }
  };
  await poll();
  return () => clearTimeout(timer);
}
