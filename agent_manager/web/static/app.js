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
 * Routes: "#/<name>/<id>…" loads pages/<ROUTES[name]>.js; a page is added with ONE register() line
 * below. An unknown route says "Not found"; a registered page whose module is not shipped yet
 * (absent from /ui/pages.json) says "not available" instead of failing an import.
 * The shell also runs the theme toggle, the keyboard shortcuts ("/" search, Ctrl/Cmd-K palette)
 * and lib/attention.js (running badge, tab title/favicon, notifications).
 */

import { startAttention } from "./lib/attention.js";
import { clear, errorBox, h, setTitle } from "./lib/dom.js";
import { openPalette } from "./lib/palette.js";

// The pages: one register() line each — route names (the first word of "#/<route>/…"), the module
// in pages/<module>.js, and the menu label (null: reachable by link only).
const ROUTES = {};
const NAV = [];
function register(routes, module, label = null, menuOf = null) {
  for (const r of routes) ROUTES[r] = module;
  if (label) NAV.push([`/${routes[0]}`.replace(/^\/$/, "/"), label, [module]]);
  if (menuOf) NAV.find(([, l]) => l === menuOf)[2].push(module); // highlight that menu entry
}
register([""], "dashboard", "Dashboard");
register(["agents"], "agents", "Agents");
register(["run", "runs"], "run", "Run");
register(["chat"], "chat", "Chat");
register(["history"], "history", "History");
register(["plans"], "plans", "Plans");
register(["projects"], "projects", "Projects");
register(["orchestrations", "orchestration"], "orchestration", null, "Plans");
register(["files"], "files", "Files");
register(["terminal", "terminals"], "terminal", "Terminals");
register(["users"], "users", "Users");
register(["settings"], "settings", "Settings");

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

async function sessionAlive() {
  try {
    const response = await fetch("/ui/pages.json", { credentials: "same-origin" });
    if (response.status !== 401) return true;
  } catch {
    return true; // the network is down: the error says so
  }
  location.href = "/login";
  return false;
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

// The running count lives in the menu (History lists the runs); kept across route changes.
const runningBadge = h("span", { class: "nav-badge", hidden: true, "data-testid": "running-badge" });

function buildNav(activeModule) {
  const nav = document.getElementById("nav");
  clear(nav);
  const list = h("ul", { class: "nav-list" });
  for (const [href, label, modules] of NAV) {
    const active = modules.includes(activeModule);
    list.append(h("li", null, h("a", { href: `#${href}`, "aria-current": active ? "page" : null }, label,
      label === "History" ? runningBadge : null)));
  }
  nav.append(list);
}

async function route() {
  const myTurn = ++renderCount;
  const { name, parts, query, path } = parseHash();
  const module = ROUTES[name];
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

  if (!module) {
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
    // A page module that cannot be fetched most often means the session ended (logged out in
    // another tab, the token rotated, expiry): the UI's files need it too. Then: the login page,
    // not "Failed to fetch dynamically imported module".
    if (err instanceof TypeError && !(await sessionAlive())) return;
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
  root.append(h("h1", null, "Not found"), h("div", { class: "empty card", "data-testid": "not-found" },
    h("p", null, `There is no page at ${path}.`),
    h("p", null, h("a", { href: "#/" }, "Go to the dashboard"), " · or press ",
      h("kbd", null, "Ctrl"), " ", h("kbd", null, "K"), " to jump anywhere.")));
}

window.addEventListener("hashchange", () => {
  route().then(() => {
    const main = document.getElementById("main");
    if (main && !main.contains(document.activeElement)) main.focus({ preventScroll: true });
  });
});
// ---- theme: the system's by default, or the one the user picked (kept in this browser) ----
const THEMES = ["system", "light", "dark"];
function applyTheme(theme) {
  const root = document.documentElement;
  if (theme === "light" || theme === "dark") root.dataset.theme = theme;
  else delete root.dataset.theme;
  const button = document.getElementById("theme-toggle");
  if (button) {
    button.textContent = { system: "◐", light: "☀", dark: "☾" }[theme] || "◐";
    button.title = `Theme: ${theme} (click to change)`;
    button.setAttribute("aria-label", `Theme: ${theme}`);
    button.dataset.theme = theme;
  }
}
function storedTheme() {
  try {
    return localStorage.getItem("am-theme") || "system";
  } catch {
    return "system";
  }
}
applyTheme(storedTheme());
document.getElementById("theme-toggle")?.addEventListener("click", () => {
  const next = THEMES[(THEMES.indexOf(storedTheme()) + 1) % THEMES.length];
  try {
    localStorage.setItem("am-theme", next);
  } catch {
    /* private mode: this page only */
  }
  applyTheme(next);
});

// ---- keyboard: "/" finds, Ctrl/Cmd-K jumps ----
const palette = () => openPalette({ pages: NAV.map(([href, label]) => [href, label]), navigate });
document.getElementById("palette-open")?.addEventListener("click", palette);
document.addEventListener("keydown", (event) => {
  const typing = event.target instanceof HTMLElement
    && (event.target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(event.target.tagName));
  if ((event.ctrlKey || event.metaKey) && !event.altKey && event.key.toLowerCase() === "k") {
    event.preventDefault();
    palette();
  } else if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
    const search = document.querySelector("main input[type=search]");
    if (search) {
      event.preventDefault();
      search.focus();
      search.select();
    }
  }
});

startAttention({ badge: runningBadge, bell: document.getElementById("notify-toggle"), navigate });
route(); // module scripts run once the document is parsed
