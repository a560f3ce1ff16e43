/**
 * lib/runview.js — the live view of one run, reusable by any page (run page, plan steps…).
 *
 * Exports
 *   runView(run, {signal, onFinished?, compact?}) -> {el, done}
 *       `run` is a Run from the API. The view follows GET /api/runs/{id}/events (SSE) from the
 *       start, so a reload replays everything once; `done` resolves with the final Run.
 *       Shows status, backend badge + route reason, sandbox id, exit code, duration, usage, a
 *       stalled badge, a Cancel button (asks first), parsed messages/tools/errors (each failure
 *       once), and the raw output in a logView (lib/logview.js: line numbers, search, follow…).
 *   stickyScroll(box) -> {update(), jumpButton}   keep a scroll box pinned to its bottom
 */

import { follow, get, post } from "./api.js";
import { logView } from "./logview.js";
import {
  backendBadge, fmtDuration, fmtUsage, h, statusBadge, TERMINAL, toast,
} from "./dom.js";
import { MarkdownStream } from "./markdown.js";

export function stickyScroll(box) {
  let stuck = true;
  let programmatic = false;
  const jumpButton = h("button", { type: "button", class: "jump", hidden: true, onClick: () => {
    stuck = true;
    jumpButton.hidden = true;
    toBottom();
  } }, "↓ Jump to latest");
  function toBottom() {
    programmatic = true;
    box.scrollTop = box.scrollHeight;
    requestAnimationFrame(() => {
      programmatic = false;
    });
  }
  box.addEventListener("scroll", () => {
    if (programmatic) return;
    stuck = box.scrollTop + box.clientHeight >= box.scrollHeight - 16;
    if (stuck) jumpButton.hidden = true;
  });
  return {
    jumpButton,
    update() {
      if (stuck) toBottom();
      else jumpButton.hidden = false;
    },
    isStuck: () => stuck,
  };
}

export function runView(run, { signal, onFinished, compact = false } = {}) {
  let state = { ...run };
  let startedAt = run.started_at ? new Date(run.started_at).getTime() : null;
  let resolveDone;
  const done = new Promise((resolve) => {
    resolveDone = resolve;
  });

  const status = h("span", { class: "run-status", "data-testid": "run-status" });
  const backend = h("span", { class: "run-backend" });
  const reason = h("span", { class: "route-reason muted" });
  const stalled = h("span", { class: "badge stalled", hidden: true, "data-testid": "stalled" }, "stalled");
  const connection = h("span", { class: "conn muted", "aria-live": "polite" });
  const exit = h("dd", { "data-testid": "exit-code" }, "—");
  const duration = h("dd", { "data-testid": "duration" }, "—");
  const usage = h("dd", { "data-testid": "usage" }, "—");
  const sandbox = h("dd", { class: "mono" }, "—");
  const cancel = h("button", { type: "button", class: "danger", "data-testid": "cancel", onClick: onCancel },
    "Cancel");
  const errorArea = h("div", { class: "run-error" });
  const activity = h("div", { class: "activity", "aria-label": "Messages and tool calls" });
  const log = logView({ label: "Output", filename: `${run.id}.log` });
  const tools = new Map();
  const errorsShown = new Set();
  let lastMessage = null;

  const el = h("div", { class: `runview${compact ? " compact" : ""}`, "data-run-id": run.id },
    h("div", { class: "run-head" }, status, backend, stalled, reason, h("span", { class: "spacer" }), connection,
      cancel),
    h("dl", { class: "facts" },
      h("div", null, h("dt", null, "Exit code"), exit),
      h("div", null, h("dt", null, "Duration"), duration),
      h("div", null, h("dt", null, "Usage"), usage),
      h("div", null, h("dt", null, "Sandbox"), sandbox)),
    errorArea,
    activity,
    h("div", { class: "output-wrap" }, log.el));

  function paint() {
    status.replaceChildren(statusBadge(state.status));
    backend.replaceChildren(state.backend ? backendBadge(state.backend, state.route_reason) : "");
    reason.textContent = state.route_reason || "";
    // A cancel is the user's own doing: no signal number dressed up as an exit code.
    exit.textContent = state.status === "cancelled" ? "— (cancelled)" : (state.exit_code ?? "—");
    usage.textContent = fmtUsage(state.usage);
    sandbox.textContent = state.sandbox_id || "—";
    cancel.hidden = TERMINAL.has(state.status);
    if (TERMINAL.has(state.status)) {
      duration.textContent = fmtDuration(state.duration_s);
    } else if (startedAt) {
      duration.textContent = `${fmtDuration((Date.now() - startedAt) / 1000)}…`;
    }
    if (state.status === "cancelled") {
      errorArea.replaceChildren(h("div", { class: "alert note", "data-testid": "run-note" }, "Cancelled."));
    } else if (state.error && TERMINAL.has(state.status) && state.status !== "succeeded"
      && !errorsShown.has(state.error.trim())) {
      errorArea.replaceChildren(h("div", { class: "alert error", role: "alert" }, state.error));
    }
    if (TERMINAL.has(state.status) && !log.lineCount()) log.el.querySelector(".output-empty").textContent =
      "The run printed nothing.";
  }

  async function onCancel() {
    if (!window.confirm("Cancel this run? Its process is stopped.")) return;
    cancel.disabled = true;
    try {
      state = { ...state, ...(await post(`/api/runs/${encodeURIComponent(run.id)}/cancel`)) };
      paint();
    } catch (err) {
      toast(err.message, "error");
    } finally {
      cancel.disabled = false;
    }
  }

  function addMessage(data) {
    const text = String(data.text ?? "");
    if (data.delta && lastMessage) {
      lastMessage.text += text;
    } else {
      const body = h("div", { class: "md" });
      lastMessage = { text, body, md: new MarkdownStream(body) };
      activity.append(h("div", { class: "item message", "data-testid": "message" },
        h("div", { class: "item-label" }, "Assistant"), body));
    }
    lastMessage.md.update(lastMessage.text);
  }

  function addTool(data) {
    lastMessage = null;
    const key = data.id || null;
    const show = (v) => (typeof v === "string" ? v : JSON.stringify(v, null, 2));
    if (key && tools.has(key)) {
      const card = tools.get(key);
      if (data.output !== undefined) card.append(h("div", { class: "tool-io" }, h("span", { class: "muted" }, "result"),
        h("pre", null, show(data.output))));
      return;
    }
    const card = h("div", { class: "item tool", "data-testid": "tool" },
      h("div", { class: "item-label" }, "Tool · ", h("strong", null, data.name || "tool")),
      data.input !== undefined && data.input !== null
        ? h("div", { class: "tool-io" }, h("span", { class: "muted" }, "input"), h("pre", null, show(data.input)))
        : null,
      data.output !== undefined && data.output !== null
        ? h("div", { class: "tool-io" }, h("span", { class: "muted" }, "result"), h("pre", null, show(data.output)))
        : null);
    if (key) tools.set(key, card);
    activity.append(card);
  }

  function onEvent(type, data) {
    if (type === "output") {
      stalled.hidden = true; // output again: no longer stalled (run.resumed may never come if it ends now)
      log.write(String(data.text ?? ""), data.stream === "stderr" ? "stderr" : "stdout", data.at);
    } else if (type === "message") {
      addMessage(data);
    } else if (type === "tool") {
      addTool(data);
    } else if (type === "error") {
      lastMessage = null;
      const text = String(data.message ?? "").trim();
      if (!text || errorsShown.has(text)) return;
      errorsShown.add(text);
      errorArea.replaceChildren(); // the same failure is not repeated as a banner
      activity.append(h("div", { class: "item error-item", role: "alert", "data-testid": "error-event" },
        h("div", { class: "item-label" }, "Error"), String(data.message ?? "")));
    } else if (type === "run.queued") {
      if (!TERMINAL.has(state.status)) state.status = state.status === "running" ? "running" : "queued";
    } else if (type === "run.started") {
      state.status = TERMINAL.has(state.status) ? state.status : "running";
      state.backend = data.backend || state.backend;
      state.route_reason = data.route_reason || state.route_reason;
      state.sandbox_id = data.sandbox_id || state.sandbox_id;
      startedAt = startedAt || Date.now();
    } else if (type === "run.stalled") {
      stalled.hidden = false;
      stalled.textContent = `stalled · ${data.silent_s ?? "?"} s silent${data.killing ? ", stopping" : ""}`;
    } else if (type === "run.resumed") {
      stalled.hidden = true;
    } else if (type === "run.finished") {
      state.status = data.status || state.status;
      state.exit_code = data.exit_code ?? state.exit_code;
      state.usage = data.usage || state.usage;
      state.error = data.error || state.error;
      log.flush();
      stalled.hidden = true;
      finish();
    }
    paint();
  }

  async function finish() {
    clearInterval(ticker);
    try {
      state = await get(`/api/runs/${encodeURIComponent(run.id)}`, null, { signal });
    } catch {
      /* keep what the events said */
    }
    paint();
    if (onFinished) onFinished(state);
    resolveDone(state);
  }

  const ticker = setInterval(() => {
    if (!TERMINAL.has(state.status)) paint();
  }, 1000);
  if (signal) signal.addEventListener("abort", () => clearInterval(ticker), { once: true });

  paint();
  follow(`/api/runs/${encodeURIComponent(run.id)}/events`, {
    onEvent,
    signal,
    onState: (s) => {
      connection.textContent = s === "reconnecting" ? "reconnecting…" : "";
    },
  });
  return { el, done };
}
