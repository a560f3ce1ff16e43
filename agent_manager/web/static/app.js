/**
 * app.js — the shell: navigation and a hash router that loads one page module at a time.
 *
 * Page convention (for anyone adding a page):
 *   - A page is `static/pages/<name>.js` exporting `render(root, params)` (may be async).
 *     `root` is an empty <section> inside <main>; build into it with lib/dom.js's h().
 *   - params = {id, parts, query, path, signal, navigate}
 *       id       the first path segment after the page name ("#/runs/abc" → "abc"), or null
 *       parts    all segments after the page name (decoded)
 *       query    URLSearchParams of the part after "?" in the hash ("#/history?q=x")
 *       path     the whole route, e.g. "/runs/abc"
 *       signal   AbortSignal aborted when the user leaves the page: pass it to api()/follow()
 *       navigate(path)  go to another route ("/chat/123")
 *   - `render` may return a cleanup function; it runs before the next page renders.
 *   - Set the tab title with setTitle(text) from lib/dom.js.
 *
 * Routes: "#/<name>/<id>…" loads pages/<ROUTES[name] || name>.js. The page list comes from
 * /ui/pages.json, so a nav entry whose module does not exist yet shows "not available"
 * instead of a failed import.
 */

import { clear, errorBox, h, setTitle } from "./lib/dom.js";

const ROUTES = {
  "": "dashboard",
  agents: "agents",
  run: "run",
  runs: "run",
  chat: "chat",
  history: "history",
  settings: "settings",
  plans: "plans",
  orchestration: "orchestration",
  orchestrations: "orchestration",
  files: "files",
  users: "users",
  terminal: "terminal",
  terminals: "terminal",
};

const NAV = [
  ["/", "Dashboard", ["dashboard"]],
  ["/agents", "Agents", ["agents"]],
  ["/run", "Run", ["run"]],
  ["/chat", "Chat", ["chat"]],
  ["/history", "History", ["history"]],
  ["/plans", "Plans", ["plans", "orchestration"]],
  ["/files", "Files", ["files"]],
  ["/terminal", "Terminals", ["terminal"]],
  ["/users", "Users", ["users"]],
  ["/settings", "Settings", ["settings"]],
];

let available = null;
let current = { controller: null, cleanup: null };
let renderCount = 0;

export function navigate(path) {
  const target = `#${path.startsWith("/") ? path : `/${path}`}`;
  if (location.hash === target) route();
  else location.hash = target;
}

async function pageList(refresh = false) {
  if (available && !refresh) return available;
  try {
    const response = await fetch("/ui/pages.json", { credentials: "same-origin" });
    if (response.status === 401) {
      location.href = "/login";
      return new Set();
    }
    const body = await response.json();
    available = new Set(body.pages || []);
  } catch {
    available = available || new Set();
  }
  return available;
}

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [pathPart, queryPart = ""] = raw.split("?", 2);
  const segments = pathPart.split("/").filter(Boolean).map((s) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  });
  const name = segments[0] || "";
  return { name, parts: segments.slice(1), query: new URLSearchParams(queryPart), path: `/${segments.join("/")}` };
}

function buildNav(activeModule) {
  const nav = document.getElementById("nav");
  clear(nav);
  const list = h("ul", { class: "nav-list" });
  for (const [href, label, modules] of NAV) {
    const active = modules.includes(activeModule);
    list.append(h("li", null, h("a", { href: `#${href}`, "aria-current": active ? "page" : null }, label)));
  }
  nav.append(list);
}

async function route() {
  const myTurn = ++renderCount;
  const { name, parts, query, path } = parseHash();
  const module = ROUTES[name] ?? name;
  buildNav(module);
  if (current.controller) current.controller.abort();
  if (typeof current.cleanup === "function") {
    try {
      current.cleanup();
    } catch (err) {
      console.warn("page cleanup failed", err);
    }
  }
  current = { controller: new AbortController(), cleanup: null };
  const { signal } = current.controller;
  const main = document.getElementById("main");
  clear(main);
  const root = h("section", { class: `page page-${module || "dashboard"}` });
  main.append(root);

  if (!/^[a-z][a-z0-9_-]*$/.test(module)) {
    notFound(root, path);
    return;
  }
  let pages = await pageList();
  if (!pages.has(module)) pages = await pageList(true);
  if (myTurn !== renderCount) return;
  if (!pages.has(module)) {
    notAvailable(root, module);
    return;
  }
  setTitle("");
  try {
    const page = await import(`./pages/${module}.js`);
    if (myTurn !== renderCount) return;
    const cleanup = await page.render(root, {
      id: parts[0] ?? null, parts, query, path, signal, navigate,
    });
    if (myTurn === renderCount) current.cleanup = cleanup;
    else if (typeof cleanup === "function") cleanup();
  } catch (err) {
    if (err && err.name === "AbortError") return;
    if (myTurn !== renderCount) return;
    clear(root);
    root.append(h("h1", null, "Something went wrong"), errorBox(err));
    console.warn(err);
  }
}

function notAvailable(root, module) {
  const label = (NAV.find(([, , mods]) => mods.includes(module)) || [null, module])[1];
  setTitle(label);
  root.append(
    h("h1", null, label),
    h("div", { class: "empty card" },
      h("p", null, `The ${label} page is not available in this version of Agent Manager yet.`),
      h("p", null, h("a", { href: "#/" }, "Back to the dashboard"))),
  );
}

function notFound(root, path) {
  setTitle("Not found");
  root.append(h("h1", null, "Not found"), h("p", null, `There is no page at ${path}. `,
    h("a", { href: "#/" }, "Go to the dashboard")));
}

window.addEventListener("hashchange", () => {
  route().then(() => {
    const main = document.getElementById("main");
    if (main && !main.contains(document.activeElement)) main.focus({ preventScroll: true });
  });
});
route(); // module scripts run once the document is parsed
