// Terminal: "#/terminal" lists open terminals and opens a shell; "#/terminal?run=ID",
// "?agent=NAME" or "?project=NAME" opens one there; "#/terminal/<id>" attaches to it.
//
// The terminal is xterm.js (vendored in /static/vendor/xterm, no CDN). Its process lives in
// the service: leaving this page only detaches (the shell survives for the idle timeout and a
// reattach replays the recent scroll-back). WebSocket protocol: docs/terminals.md.

import { del, get, post } from "../lib/api.js";
import { errorBox, field, h, setTitle, toast } from "../lib/dom.js";
import { backendOptions, backends, explainBackend, options } from "../lib/registry.js";

const VENDOR = "/static/vendor/xterm";
const KEYS = [
  ["Esc", "\x1b"], ["Tab", "\t"], ["Ctrl", null], ["←", "\x1b[D"], ["↑", "\x1b[A"], ["↓", "\x1b[B"],
  ["→", "\x1b[C"], ["|", "|"], ["~", "~"], ["/", "/"], ["-", "-"],
];
const PING_MS = 25000;

export async function render(root, params) {
  ensureStyles();
  if (params.id) return attachPage(root, params);
  const { query } = params;
  const where = ["run", "agent", "project"].find((key) => query.get(key));
  if (where) return openAndGo(root, params, { [where === "run" ? "run_id" : where]: query.get(where),
    ...(query.get("backend") ? { backend: query.get("backend") } : {}) });
  return listPage(root, params);
}

function ensureStyles() {
  for (const href of [`${VENDOR}/xterm.css`, "/static/terminal.css"]) {
    if (!document.querySelector(`link[href="${href}"]`)) {
      document.head.append(h("link", { rel: "stylesheet", href }));
    }
  }
}

async function openAndGo(root, { navigate }, body) {
  setTitle("Terminal");
  root.append(h("h1", null, "Terminal"), h("p", { class: "muted" }, "Opening a terminal…"));
  try {
    const term = await post("/api/terminals", { ...body, ...initialSize() });
    navigate(`/terminal/${encodeURIComponent(term.id)}`);
  } catch (err) {
    root.append(errorBox(err), h("p", null, h("a", { href: "#/terminal" }, "All terminals")));
  }
}

function initialSize() {
  const cols = Math.max(20, Math.min(1000, Math.floor((window.innerWidth - 32) / 8.4)));
  const rows = Math.max(8, Math.min(1000, Math.floor((window.innerHeight - 260) / 17)));
  return { cols, rows };
}

async function listPage(root, { signal, navigate }) {
  setTitle("Terminals");
  const box = h("div", { class: "terminal-list" }, h("p", { class: "muted" }, "Loading…"));
  const backend = field({ label: "Backend", name: "backend",
    input: h("select", null, options([["", "auto (routing policy)"]])) });
  const agent = field({ label: "Program", name: "agent",
    input: h("select", null, h("option", { value: "" }, "a shell")),
    hint: "A shell, or an agent's CLI started interactively (e.g. to sign it in)." });
  const open = h("button", { type: "submit" }, "Open terminal");
  const form = h("form", { class: "form card", "aria-label": "Open a terminal", onSubmit },
    h("div", { class: "form-grid" }, agent.wrap, backend.wrap), h("div", { class: "actions" }, open));
  root.append(h("div", { class: "page-head" }, h("h1", null, "Terminals")), form,
    h("h2", null, "Open terminals"), box);
  try {
    const [terms, agents, backendList] = await Promise.all([get("/api/terminals", null, { signal }),
      get("/api/agents", null, { signal }), backends()]);
    backend.input.replaceChildren(...options(backendOptions(backendList, [["", "auto (routing policy)"]])));
    explainBackend(backend, backendList);
    agent.input.append(...agents.map((a) => h("option", { value: a.name }, `${a.name} (${a.kind})`)));
    box.replaceChildren(...(terms.length ? terms.map(card) : [h("p", { class: "empty" }, "No open terminals.")]));
  } catch (err) {
    if (err.name !== "AbortError") box.replaceChildren(errorBox(err));
  }

  function card(t) {
    const close = h("button", { type: "button", class: "danger small", onClick: async () => {
      close.disabled = true;
      try {
        await del(`/api/terminals/${encodeURIComponent(t.id)}`);
        el.remove();
      } catch (err) {
        toast(err.message, "error");
        close.disabled = false;
      }
    } }, "Close");
    const el = h("div", { class: "card terminal-card" },
      h("div", { class: "card-head" },
        h("h3", null, h("a", { href: `#/terminal/${encodeURIComponent(t.id)}` }, t.command)),
        h("span", { class: "badge backend", title: t.route_reason }, t.backend),
        t.attached ? h("span", { class: "badge ok" }, "attached") : null),
      h("p", { class: "muted small mono" }, t.id),
      h("div", { class: "actions" },
        h("a", { class: "button small", href: `#/terminal/${encodeURIComponent(t.id)}` }, "Attach"), close));
    return el;
  }

  async function onSubmit(event) {
    event.preventDefault();
    open.disabled = true;
    try {
      const body = { ...initialSize() };
      if (backend.input.value) body.backend = backend.input.value;
      if (agent.input.value) body.agent = agent.input.value;
      const term = await post("/api/terminals", body);
      navigate(`/terminal/${encodeURIComponent(term.id)}`);
    } catch (err) {
      toast(err.message, "error");
    } finally {
      open.disabled = false;
    }
  }
}

async function attachPage(root, { id, signal, navigate }) {
  setTitle("Terminal");
  let info;
  try {
    info = await get(`/api/terminals/${encodeURIComponent(id)}`, null, { signal });
  } catch (err) {
    if (err.name === "AbortError") return undefined;
    root.append(h("h1", null, "Terminal"), errorBox(err), h("p", null, h("a", { href: "#/terminal" }, "All terminals")));
    return undefined;
  }
  installCspSafeStyles();
  const [{ Terminal }, { FitAddon }] = await Promise.all([import(`${VENDOR}/xterm.mjs`),
    import(`${VENDOR}/addon-fit.mjs`)]);
  const status = h("span", { class: "badge", "data-testid": "terminal-status" }, "connecting");
  const screen = h("div", { class: "terminal-screen", "data-testid": "terminal" });
  let ctrl = false;
  const keyRow = h("div", { class: "terminal-keys", role: "toolbar", "aria-label": "Extra keys" },
    KEYS.map(([label, seq]) => h("button", {
      type: "button", class: "secondary small", "aria-pressed": seq === null ? "false" : null,
      onClick: (event) => {
        if (seq === null) {
          ctrl = !ctrl;
          event.currentTarget.setAttribute("aria-pressed", String(ctrl));
        } else {
          send(seq);
        }
        term.focus();
      },
    }, label)));
  const closeButton = h("button", { type: "button", class: "danger small", onClick: closeTerminal }, "Close terminal");
  root.append(
    h("div", { class: "page-head" }, h("h1", null, "Terminal"),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "secondary small", onClick: copy }, "Copy"),
        h("button", { type: "button", class: "secondary small", onClick: paste }, "Paste"),
        h("a", { class: "button secondary small", href: "#/terminal" }, "Detach"), closeButton)),
    h("p", { class: "muted small" }, h("span", { class: "badge backend", title: info.route_reason }, info.backend),
      " ", h("span", { class: "mono" }, info.command), " ", status),
    screen, keyRow);

  const term = new Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000, fontSize: 14,
    fontFamily: 'ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace' });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(screen);
  const encoder = new TextEncoder();
  let ws = null;
  let exited = false;
  let attempts = 0;
  let pinger = null;
  let retry = null;

  term.onData((data) => {
    if (ctrl && data.length === 1 && /[a-z@[\\\]^_ ]/i.test(data)) {
      data = String.fromCharCode(data.toUpperCase().charCodeAt(0) & 0x1f);
      ctrl = false;
      keyRow.querySelector('[aria-pressed="true"]')?.setAttribute("aria-pressed", "false");
    }
    send(data);
  });
  term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0))));
  term.onResize(({ cols, rows }) => control({ resize: [cols, rows] }));
  const observer = new ResizeObserver(() => refit());
  observer.observe(screen);
  connect();
  term.focus();

  function refit() {
    try {
      if (screen.clientWidth > 0 && screen.clientHeight > 0) fit.fit();
    } catch {
      /* not laid out yet */
    }
  }

  function send(data) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(typeof data === "string" ? encoder.encode(data) : data);
  }

  function control(message) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(`${scheme}://${location.host}/api/terminals/${encodeURIComponent(id)}/ws`);
    ws.binaryType = "arraybuffer";
    let fresh = true;
    ws.onopen = () => {
      attempts = 0;
      status.textContent = "live";
      status.className = "badge ok";
      refit();
      control({ resize: [term.cols, term.rows] });
      clearInterval(pinger);
      pinger = setInterval(() => control({ ping: Date.now() }), PING_MS);
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") {
        if (fresh) {
          term.reset(); // a (re)attach starts with the scroll-back: show it once, not twice
          fresh = false;
        }
        term.write(new Uint8Array(event.data));
        return;
      }
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if ("exit" in message) {
        exited = true;
        term.write(`\r\n\x1b[2m[process exited${message.exit === null ? "" : ` with code ${message.exit}`}]\x1b[0m\r\n`);
      } else if (message.error) {
        toast(message.error, "error");
      }
    };
    ws.onclose = (event) => {
      clearInterval(pinger);
      if (signal.aborted) return;
      if (exited || event.code === 1000) {
        status.textContent = "ended";
        status.className = "badge";
        closeButton.disabled = true;
      } else if (event.code === 4001) {
        status.textContent = "attached elsewhere";
        status.className = "badge warn";
      } else if (event.code === 4404) {
        status.textContent = "gone";
        status.className = "badge";
      } else if (attempts < 8) {
        attempts += 1;
        status.textContent = "reconnecting";
        status.className = "badge warn";
        retry = setTimeout(connect, Math.min(8000, 500 * 2 ** attempts));
      } else {
        status.textContent = "disconnected";
      }
    };
  }

  async function copy() {
    const text = term.getSelection();
    if (!text) {
      toast("Select text in the terminal first.");
      return;
    }
    try {
      await navigator.clipboard.writeText(text);
      toast("Copied.");
    } catch {
      toast("The browser refused clipboard access.", "error");
    }
  }

  async function paste() {
    term.focus(); // at once: a key pressed while the clipboard is read goes to the terminal, not the button
    try {
      const text = await navigator.clipboard.readText();
      if (text) term.paste(text);
    } catch {
      toast("The browser refused clipboard access; use the keyboard shortcut to paste.", "error");
    }
    term.focus();
  }

  async function closeTerminal() {
    closeButton.disabled = true;
    try {
      await del(`/api/terminals/${encodeURIComponent(id)}`);
      navigate("/terminal");
    } catch (err) {
      toast(err.message, "error");
      closeButton.disabled = false;
    }
  }

  return () => {
    clearInterval(pinger);
    clearTimeout(retry);
    observer.disconnect();
    if (ws) ws.close(1000, "detached");
    term.dispose();
  };
}

/**
 * xterm.js writes its generated CSS into <style> elements and truecolor cells as style="..."
 * attributes, both of which the UI's Content-Security-Policy (style-src 'self', no
 * 'unsafe-inline') refuses. Rather than weaken the policy for every page, <style> text goes into
 * a constructable stylesheet (document.adoptedStyleSheets) and style attributes through the
 * CSSOM (element.style.cssText); CSP restricts neither. Removing the element removes its sheet.
 */
function installCspSafeStyles() {
  if (document.__amCspSafeStyles) return;
  document.__amCspSafeStyles = true;
  const create = document.createElement.bind(document);
  document.createElement = (tag, options) => {
    const isStyle = String(tag).toLowerCase() === "style";
    // Even an empty <style> in the document is a CSP violation: a <template> stands in (inert, never rendered).
    const el = create(isStyle ? "template" : tag, isStyle ? undefined : options);
    const setAttribute = el.setAttribute.bind(el);
    el.setAttribute = (name, value) => { // style="..." is inline style too; the CSSOM is not
      if (String(name).toLowerCase() === "style") el.style.cssText = String(value);
      else setAttribute(name, value);
    };
    if (!isStyle) return el;
    const sheet = new CSSStyleSheet();
    let text = "";
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
    Object.defineProperty(el, "textContent", {
      get: () => text,
      set: (value) => {
        text = String(value ?? "");
        sheet.replaceSync(text);
      },
    });
    const remove = el.remove.bind(el);
    el.remove = () => {
      document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => s !== sheet);
      remove();
    };
    return el;
  };
}
