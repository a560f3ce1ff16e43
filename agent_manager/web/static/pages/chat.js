// Chat: "#/chat" lists conversations and starts one; "#/chat/<id>" shows one and streams replies.
// Every turn is a run: the reply streams from the run's SSE; after a reload, a turn that is
// still running is found (a user message without its reply) and followed again.

import { follow, get, post } from "../lib/api.js";
import { stripAnsi } from "../lib/ansi.js";
import {
  applyErrors, errorBox, field, fmtAgo, fmtDuration, h, setTitle, statusBadge, TERMINAL, toast,
} from "../lib/dom.js";
import { announce } from "../lib/attention.js";
import { copyText } from "../lib/logview.js";
import { MarkdownStream, renderMarkdown } from "../lib/markdown.js";
import { diffView, projectInputs, withProject } from "../lib/diff.js";
import { backendOptions, backends, explainBackend, options } from "../lib/registry.js";
import { stickyScroll } from "../lib/runview.js";

const LEADING = [["", "default backend"], ["auto", "auto"]];

export async function render(root, { id, query, signal, navigate }) {
  setTitle("Chat");
  let agents = [];
  let convs = [];
  let conv = null;
  let backendList = [];
  try {
    [agents, convs, conv, backendList] = await Promise.all([
      get("/api/agents", null, { signal }),
      get("/api/conversations", { limit: 100 }, { signal }),
      id ? get(`/api/conversations/${encodeURIComponent(id)}`, null, { signal }) : Promise.resolve(null),
      backends(),
    ]);
  } catch (err) {
    if (err.name === "AbortError") return undefined;
    root.append(h("h1", null, "Chat"), errorBox(err));
    return undefined;
  }
  const byId = new Map(agents.map((a) => [a.id, a]));

  const sidebar = h("aside", { class: `chat-list${id ? " has-open" : ""}`, "aria-label": "Conversations" },
    h("a", { class: "button new-chat", href: "#/chat" }, "+ New chat"),
    convs.length
      ? h("ul", null, convs.map((c) => h("li", null, h("a", {
        href: `#/chat/${encodeURIComponent(c.id)}`, "aria-current": c.id === id ? "page" : null,
      }, h("span", { class: "conv-title" }, c.title || "Untitled"),
      h("span", { class: "muted small" }, `${byId.get(c.agent_id)?.name || ""} · ${fmtAgo(c.updated_at)}`)))))
      : h("p", { class: "muted small" }, "No conversations yet."));
  const pane = h("div", { class: "chat-pane" });
  root.append(h("h1", { class: "visually-hidden" }, "Chat"), h("div", { class: "chat" }, sidebar, pane));

  // ---- the composer (shared by "new chat" and an open conversation) ----
  const rows = {};
  const defaultAgent = query.get("agent") || byId.get(conv?.agent_id)?.name || agents[0]?.name || "";
  rows.agent = field({ label: "Agent", name: "agent",
    input: h("select", null, agents.map((a) => h("option", { value: a.name, selected: a.name === defaultAgent },
      a.name))) });
  rows.backend = field({ label: "Backend", name: "backend",
    input: h("select", null, options(backendOptions(backendList, LEADING))) });
  explainBackend(rows.backend, backendList);
  rows.content = field({ label: "Message", name: "content", hint: "Enter sends; Shift+Enter adds a line.",
    input: h("textarea", { rows: "2", placeholder: "Message the agent…" }) });
  const summary = h("div", { class: "form-summary" });
  const send = h("button", { type: "submit" }, "Send");
  const composer = h("form", { class: "composer", novalidate: true, "aria-label": "Send a message", onSubmit },
    summary, rows.content.wrap,
    h("div", { class: "composer-bar" }, rows.agent.wrap, rows.backend.wrap, send));
  rows.content.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });

  if (!agents.length) {
    pane.append(h("div", { class: "empty card" }, h("p", null, "Register an agent to chat with."),
      h("a", { class: "button", href: "#/agents/new" }, "New agent")));
    return undefined;
  }

  if (!conv) {
    setTitle("New chat");
    pane.append(h("div", { class: "chat-head" }, h("h2", null, "New chat")),
      h("p", { class: "muted" }, "Pick an agent and say something. Agents that can resume a session (Claude, "
        + "Gemini, Codex, opencode) continue their own session on every turn."),
      composer);
    rows.content.input.focus();
    projectInputs(signal, query.get("project") || "").then((inputs) => {  // a chat on a project: one branch
      if (!inputs) return;
      Object.assign(rows, inputs);
      composer.querySelector(".composer-bar")?.prepend(inputs.project.wrap, inputs.base.wrap);
    });
    return undefined;
  }

  setTitle(conv.title || "Chat");
  const messages = h("div", { class: "messages", role: "log", "aria-label": "Messages", tabindex: "0",
    "data-testid": "messages" });
  const scroller = stickyScroll(messages);
  pane.append(
    h("div", { class: "chat-head" }, h("a", { class: "back", href: "#/chat" }, "← Conversations"),
      h("h2", null, conv.title || "Untitled"), scroller.jumpButton),
    messages, composer);
  const changes = conv.workspace ? diffView(`/api/conversations/${encodeURIComponent(conv.id)}`, { signal }) : null;
  if (changes) pane.insertBefore(changes.el, composer); // the message box stays last (pinned)

  let streaming = null;

  function bubble(message, previous = null, isLast = false) {
    const isUser = message.role === "user";
    const body = isUser ? h("div", { class: "plain" }, message.content) : h("div", { class: "md" },
      renderMarkdown(message.content));
    if (!isUser) addCodeCopy(body);
    const took = !isUser && previous && previous.role === "user"
      ? (Date.parse(message.created_at) - Date.parse(previous.created_at)) / 1000 : null;
    const when = h("time", { class: "muted small when", datetime: message.created_at || null,
      title: message.created_at ? new Date(message.created_at).toLocaleString() : null },
    message.created_at ? clock(message.created_at) : "",
    took !== null && Number.isFinite(took) ? ` · took ${fmtDuration(took)}` : "");
    const actions = h("div", { class: "msg-actions quiet" },
      h("button", { type: "button", class: "copy", "data-testid": "copy-message", onClick: async () => {
        toast(await copyText(message.content) ? "Copied" : "Copy failed", "ok");
      } }, "Copy"),
      isUser ? h("button", { type: "button", class: "copy", "data-testid": "edit-message", onClick: () => {
        rows.content.input.value = message.content;
        rows.content.input.focus();
      } }, "Edit & resend") : null,
      !isUser && isLast && previous && previous.role === "user"
        ? h("button", { type: "button", class: "copy", "data-testid": "regenerate", onClick: () => {
          rows.content.input.value = previous.content;
          composer.requestSubmit();
        } }, "Regenerate") : null);
    return h("div", { class: `msg ${message.role}`, "data-run": message.run_id || "" },
      h("div", { class: "who" }, isUser ? "You" : (byId.get(message.agent_id)?.name || "Assistant"),
        message.run_id ? h("a", { class: "muted small", href: `#/runs/${encodeURIComponent(message.run_id)}` },
          "run") : null, h("span", { class: "spacer" }), when),
      body, actions);
  }

  function paint(list) {
    messages.replaceChildren(...list.map((m, n) => bubble(m, list[n - 1] || null, n === list.length - 1)));
    if (!list.length) messages.append(h("p", { class: "muted" }, "No messages yet."));
    scroller.update();
  }

  function followTurn(runId) {
    if (streaming) streaming.close();
    let answer = "";
    let raw = "";
    let sawMessage = false;
    let status = "running";
    const body = h("div", { class: "md" });
    const md = new MarkdownStream(body);
    const typing = h("span", { class: "typing" }, "…");
    body.append(typing);
    const statusEl = h("span", { class: "muted small" }, "thinking…");
    const cancel = h("button", { type: "button", class: "small secondary", onClick: async () => {
      try {
        await post(`/api/runs/${encodeURIComponent(runId)}/cancel`);
      } catch (err) {
        toast(err.message, "error");
      }
    } }, "Stop");
    const el = h("div", { class: "msg assistant streaming", "data-run": runId, "aria-busy": "true" },
      h("div", { class: "who" }, rows.agent.input.value || "Assistant", statusEl, cancel), body);
    messages.append(el);
    scroller.update();
    let frame = 0;
    const repaint = () => {
      if (frame) return;
      frame = requestAnimationFrame(() => {
        frame = 0;
        const text = sawMessage ? answer : stripAnsi(raw);
        if (text) { // only the reply's last block is rendered again
          typing.remove();
          md.update(text);
        }
        scroller.update();
      });
    };
    streaming = follow(`/api/runs/${encodeURIComponent(runId)}/events`, {
      signal,
      onEvent: async (type, data) => {
        if (type === "message") {
          const text = String(data.text ?? "");
          if (data.delta || !sawMessage) answer += text;
          else answer += `\n\n${text}`;
          sawMessage = true;
          repaint();
        } else if (type === "output" && data.stream === "stdout") {
          raw += String(data.text ?? "");
          if (!sawMessage) repaint();
        } else if (type === "run.stalled") {
          statusEl.textContent = "stalled…";
        } else if (type === "run.finished") {
          status = data.status;
          streaming = null;
          await reload();
          if (status !== "succeeded") toast(`The reply ended: ${status}`, "error");
        }
      },
    });
    return el;
  }

  async function reload() {
    try {
      conv = await get(`/api/conversations/${encodeURIComponent(conv.id)}`, null, { signal });
      paint(conv.messages);
      if (changes) changes.refresh();
      resumePending();
    } catch (err) {
      if (err.name !== "AbortError") messages.append(errorBox(err));
    }
  }

  /** A user message whose run has no assistant reply yet is a turn still in flight. */
  async function resumePending() {
    const list = conv.messages || [];
    const last = list[list.length - 1];
    if (!last || last.role !== "user" || !last.run_id || streaming) return;
    try {
      const run = await get(`/api/runs/${encodeURIComponent(last.run_id)}`, null, { signal });
      if (!TERMINAL.has(run.status)) followTurn(run.id);
      else messages.append(h("div", { class: "msg assistant" }, statusBadge(run.status), " ", run.error || ""));
    } catch (err) {
      if (err.name !== "AbortError") messages.append(errorBox(err));
    }
  }

  paint(conv.messages || []);
  resumePending();
  rows.content.input.focus();

  async function onSubmit(event) {
    event.preventDefault();
    const content = rows.content.input.value;
    if (!content.trim()) { // nothing to send: no conversation is created for it
      rows.content.setError("Write a message first.");
      rows.content.input.focus();
      return;
    }
    send.disabled = true;
    try {
      if (!conv) {
        const created = await post("/api/conversations", withProject({
          title: content.trim().split("\n")[0].slice(0, 80), agent: rows.agent.input.value || null,
        }, rows));
        const posted = await post(`/api/conversations/${encodeURIComponent(created.id)}/messages`, body(content));
        announce(posted.run.id);
        navigate(`/chat/${encodeURIComponent(created.id)}`);
        return;
      }
      if (streaming) {
        applyErrors(summary, new Error("Wait for the current reply (or stop it) before sending."), rows);
        return;
      }
      const posted = await post(`/api/conversations/${encodeURIComponent(conv.id)}/messages`, body(content));
      applyErrors(summary, null, rows);
      rows.content.input.value = "";
      messages.querySelector(":scope > p.muted")?.remove();
      messages.querySelectorAll("[data-testid=regenerate]").forEach((b) => b.remove());
      messages.append(bubble(posted.message, null, false));
      conv.messages = [...(conv.messages || []), posted.message];
      announce(posted.run.id);
      followTurn(posted.run.id);
    } catch (err) {
      applyErrors(summary, err, rows);
    } finally {
      send.disabled = false;
      rows.content.input.focus();
    }
  }

  function body(content) {
    const payload = { content, agent: rows.agent.input.value || null };
    if (rows.backend.input.value) payload.backend = rows.backend.input.value;
    return payload;
  }

  return () => streaming && streaming.close();
}

function clock(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

/** A Copy button on every code block of a rendered reply. */
export function addCodeCopy(el) {
  for (const block of el.querySelectorAll(".codeblock")) {
    if (block.querySelector(".copy")) continue;
    const code = block.querySelector("code");
    block.append(h("button", { type: "button", class: "copy", "data-testid": "copy-code", onClick: async () => {
      toast(await copyText(code ? code.textContent : "") ? "Code copied" : "Copy failed", "ok");
    } }, "Copy"));
  }
}
