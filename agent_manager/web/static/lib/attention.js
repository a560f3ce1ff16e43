/**
 * lib/attention.js — what needs the user's attention while they look elsewhere.
 *
 * Every few seconds it asks which runs and orchestrations are running (the API only lists the
 * user's own unless they are the admin) and then
 *   - shows the count as a badge in the menu ([data-testid=running-badge]),
 *   - puts it in the tab title ("(2) Chat · Agent Manager") and marks the favicon (blue dot while
 *     something runs, red dot when something failed while the tab was hidden, until it is seen),
 *   - when something this tab saw running ends while the tab is hidden, shows a browser
 *     notification (Notification API) — only after the user allowed it with the bell button.
 *
 * Exports
 *   startAttention({badge, bell, navigate}) -> {refresh()}
 *   announce(id, kind="run")  a page started a run/orchestration: watch it from now on
 *   faviconFor(state) -> data: URL of the icon for "idle" | "running" | "failed"
 */

import { get } from "./api.js";
import { setTitlePrefix } from "./dom.js";

const POLL_MS = 3000;

export function announce(id, kind = "run") {
  window.dispatchEvent(new CustomEvent("am:started", { detail: { id, kind } }));
}

export function faviconFor(state) {
  const dot = state === "failed" ? "#e03131" : state === "running" ? "#3b5bdb" : null;
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">`
    + `<path d="M16 2 30 16 16 30 2 16z" fill="#3b5bdb"/>`
    + (dot ? `<circle cx="24" cy="24" r="7.5" fill="${dot}" stroke="#fff" stroke-width="2.5"/>` : "")
    + "</svg>";
  return `data:image/svg+xml,${encodeURIComponent(svg)}`;
}

export function startAttention({ badge, bell, navigate }) {
  const running = new Map(); // id → {kind: "run" | "orchestration", label}
  let failedUnseen = false;
  let timer = null;
  let busy = false;
  let iconState = "";

  const icon = document.querySelector("link[rel=icon]");

  function setIcon(state) {
    if (state === iconState || !icon) return;
    iconState = state;
    icon.setAttribute("href", state === "idle" ? "/static/favicon.svg" : faviconFor(state));
    document.documentElement.dataset.attention = state;
  }

  function paint() {
    const n = running.size;
    badge.textContent = n ? String(n) : "";
    badge.hidden = !n;
    badge.setAttribute("aria-label", `${n} running`);
    setTitlePrefix(failedUnseen ? "✕ " : n ? `(${n}) ` : "");
    setIcon(failedUnseen ? "failed" : n ? "running" : "idle");
  }

  function notify(title, body, href) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    if (document.visibilityState !== "hidden") return;
    try {
      const note = new Notification(title, { body, tag: href, icon: "/static/favicon.svg" });
      note.onclick = () => {
        window.focus();
        navigate(href);
        note.close();
      };
    } catch {
      /* a browser that only allows notifications from a service worker */
    }
  }

  async function ended(id, info) {
    try {
      if (info.kind === "run") {
        const run = await get(`/api/runs/${encodeURIComponent(id)}`);
        const bad = run.status !== "succeeded";
        if (bad && document.visibilityState === "hidden") failedUnseen = true;
        notify(`${run.agent_name}: run ${run.status.replace("_", " ")}`, (run.prompt || "").slice(0, 140),
          `/runs/${encodeURIComponent(id)}`);
      } else {
        const orch = await get(`/api/orchestrations/${encodeURIComponent(id)}`);
        const bad = orch.status !== "succeeded";
        if (bad && document.visibilityState === "hidden") failedUnseen = true;
        notify(`Plan ${orch.name}: ${orch.status}`, `${orch.counts.succeeded} of ${orch.counts.total} steps succeeded`,
          `/orchestrations/${encodeURIComponent(id)}`);
      }
    } catch {
      /* gone or not ours: nothing to say */
    }
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const [runs, orchs] = await Promise.all([
        get("/api/runs", { status: "running", limit: 100 }),
        get("/api/orchestrations", { status: "running", limit: 100 }).catch(() => ({ items: [] })),
      ]);
      const queued = await get("/api/runs", { status: "queued", limit: 100 }).catch(() => ({ items: [] }));
      const now = new Map();
      for (const r of [...runs.items, ...queued.items]) now.set(r.id, { kind: "run" });
      for (const o of orchs.items) now.set(o.id, { kind: "orchestration" });
      const gone = [...running.entries()].filter(([id]) => !now.has(id));
      running.clear();
      now.forEach((v, k) => running.set(k, v));
      paint();
      await Promise.all(gone.map(([id, info]) => ended(id, info)));
      paint();
    } catch {
      /* offline or logged out: try again later */
    } finally {
      busy = false;
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      await refresh();
      schedule();
    }, POLL_MS);
  }

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      failedUnseen = false;
      paint();
    }
    refresh();
  });
  // A page started something: count it at once (a short run may end before the next poll).
  window.addEventListener("am:started", (event) => {
    const { id, kind = "run" } = event.detail || {};
    if (id) running.set(id, { kind });
    paint();
    refresh();
  });

  if (bell) {
    const update = () => {
      const supported = "Notification" in window;
      bell.hidden = !supported || Notification.permission === "denied";
      const on = supported && Notification.permission === "granted";
      bell.setAttribute("aria-pressed", String(on));
      bell.title = on ? "Notifications are on: you hear about runs that end while this tab is hidden"
        : "Tell me when a run or plan ends while this tab is hidden";
      bell.textContent = on ? "Notify ✓" : "Notify";
    };
    bell.addEventListener("click", async () => {
      if ("Notification" in window && Notification.permission === "default") {
        await Notification.requestPermission();
      }
      update();
    });
    update();
  }

  refresh();
  schedule();
  return { refresh };
}
