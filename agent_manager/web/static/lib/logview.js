/**
 * lib/logview.js — raw output shown like a CI log: line numbers, optional per-line timestamps,
 * search with next/previous, copy and download, collapsible `::group::` sections and a Follow
 * toggle. It stays smooth at 100,000 lines because only the rows in view (plus a margin) exist
 * in the DOM: every row has the same height, a sizer gives the scroll box its full height and
 * the window of rows is moved under the viewport as it scrolls.
 *
 * Exports
 *   logView({label?, filename?}) -> {el, write(text, stream?, at?), flush(), text(), lineCount(),
 *                                     rendered(), search(query) -> matches, next(), prev(), box}
 *       write(): a chunk of terminal output (ANSI colours kept, other escapes dropped; chunks may
 *       split lines and escape sequences anywhere); `stream` "stderr" marks it red; `at` is the
 *       ISO time the chunk was stored (the SSE `at`), shown when Timestamps is on.
 *       The box (`[data-testid=output]`) also has `.logText()` for tests and tools.
 */

import { AnsiRenderer } from "./ansi.js";
import { h, toast } from "./dom.js";

export const ROW = 20; // px — the height of .log-row in app.css
const OVERSCAN = 40;
const GROUP_START = /^(?:::group::|##\[group\])(.*)$/;
const GROUP_END = /^(?:::endgroup::|##\[endgroup\])\s*$/;

export function logView({ label = "Output", filename = "output.log" } = {}) {
  const lines = []; // {t: text, s: [[text, className, rgb|null]]|null, at: ms|null, err, g: group|-1, head, done}
  const groups = []; // {start, open, size}
  let visible = []; // indices of lines shown (collapsed group bodies are left out)
  let line = null; // the line being written (its "\n" has not arrived yet)
  let openGroup = -1;
  let chunkAt = null;
  let chunkErr = false;
  let dirty = false;
  let frame = 0;
  let follow = true;
  let programmatic = false;
  let showTimes = false;
  let query = "";
  let matches = [];
  let scanned = 0; // lines searched so far for the current query
  let currentMatch = -1;
  let lastRange = "";

  const ansi = new AnsiRenderer(null, sink);

  // ---- DOM ----
  const rowsEl = h("div", { class: "log-rows" });
  const sizer = h("div", { class: "log-sizer" }, rowsEl);
  const box = h("div", { class: "log-scroll term", tabindex: "0", role: "log", "aria-label": `${label} (raw)`,
    "data-testid": "output" }, sizer);
  box.logText = () => text();
  const empty = h("p", { class: "muted small output-empty" }, "No output yet.");
  const searchInput = h("input", { type: "search", class: "log-search", placeholder: "Search the log",
    "aria-label": "Search the log", autocomplete: "off", spellcheck: "false", "data-testid": "log-search" });
  const count = h("span", { class: "muted small log-count", "aria-live": "polite", "data-testid": "log-count" });
  const prevBtn = h("button", { type: "button", class: "small secondary", title: "Previous match (Shift+Enter)",
    "aria-label": "Previous match", onClick: () => step(-1) }, "↑");
  const nextBtn = h("button", { type: "button", class: "small secondary", title: "Next match (Enter)",
    "aria-label": "Next match", onClick: () => step(1) }, "↓");
  const followBox = h("input", { type: "checkbox", checked: true, id: `log-follow-${++uid}` });
  const timesBox = h("input", { type: "checkbox", id: `log-times-${uid}` });
  const copyBtn = h("button", { type: "button", class: "small secondary", onClick: copyAll }, "Copy");
  const downloadBtn = h("button", { type: "button", class: "small secondary", onClick: download }, "Download");
  const collapseBtn = h("button", { type: "button", class: "small secondary", hidden: true, onClick: toggleAll },
    "Expand all");
  const stats = h("span", { class: "muted small", "data-testid": "log-lines" });
  const toolbar = h("div", { class: "log-toolbar" },
    h("span", { class: "log-title" }, label), stats,
    h("span", { class: "log-find" }, searchInput, prevBtn, nextBtn, count),
    h("label", { class: "log-check", for: followBox.id }, followBox, "Follow"),
    h("label", { class: "log-check", for: timesBox.id }, timesBox, "Timestamps"),
    collapseBtn, copyBtn, downloadBtn);
  const el = h("div", { class: "logview" }, toolbar, empty, box);

  searchInput.addEventListener("input", () => setQuery(searchInput.value));
  searchInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      step(event.shiftKey ? -1 : 1);
    } else if (event.key === "Escape") {
      searchInput.value = "";
      setQuery("");
    }
  });
  followBox.addEventListener("change", () => {
    follow = followBox.checked;
    if (follow) toBottom();
  });
  timesBox.addEventListener("change", () => {
    showTimes = timesBox.checked;
    box.classList.toggle("with-times", showTimes);
    invalidate();
  });
  box.addEventListener("scroll", () => {
    if (!programmatic) {
      const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - ROW;
      if (follow !== atEnd) {
        follow = atEnd;
        followBox.checked = atEnd;
      }
    }
    renderRows();
  });
  rowsEl.addEventListener("click", (event) => {
    const head = event.target.closest("[data-group]");
    if (head) toggleGroup(Number(head.dataset.group));
  });
  rowsEl.addEventListener("keydown", (event) => {
    const head = event.target.closest("[data-group]");
    if (head && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      toggleGroup(Number(head.dataset.group));
    }
  });

  // ---- the model ----
  function newLine() {
    line = { t: "", s: null, at: chunkAt, err: chunkErr, g: openGroup, head: false, done: false };
    lines.push(line);
    if (openGroup < 0 || groups[openGroup].open) visible.push(lines.length - 1);
    if (openGroup >= 0) groups[openGroup].size += 1;
  }

  function endLine() {
    if (!line) newLine();
    line.done = true;
    const idx = lines.length - 1;
    const start = GROUP_START.exec(line.t);
    if (start) {
      if (openGroup >= 0) groups[openGroup].size -= 1; // a header belongs to its own group, not the last
      openGroup = groups.length;
      groups.push({ start: idx, open: false, size: 0, title: start[1].trim() || "group" });
      line.head = true;
      line.g = openGroup;
      if (!visible.length || visible[visible.length - 1] !== idx) {
        visible.push(idx); // it was hidden inside the previous (collapsed) group
      }
      collapseBtn.hidden = false;
    } else if (GROUP_END.test(line.t) && openGroup >= 0) {
      openGroup = -1;
    }
    line = null;
  }

  function sink(piece, cls, rgb) {
    const parts = piece.split("\n");
    parts.forEach((part, i) => {
      if (i > 0) endLine();
      if (!part) return;
      if (!line) newLine();
      if (cls || rgb) {
        if (!line.s) line.s = line.t ? [[line.t, "", null]] : [];
        line.s.push([part, cls, rgb]);
      } else if (line.s) {
        line.s.push([part, "", null]);
      }
      line.t += part;
      if (chunkErr) line.err = true;
    });
  }

  function write(chunk, stream = "stdout", at = null) {
    chunkAt = at ? Date.parse(at) : Date.now();
    chunkErr = stream === "stderr";
    ansi.write(String(chunk ?? ""), chunkErr ? "stderr" : "");
    invalidate();
  }

  function flush() {
    ansi.flush();
    invalidate();
  }

  function text() {
    let out = "";
    for (const l of lines) out += l.done ? `${l.t}\n` : l.t;
    return out;
  }

  // ---- rendering ----
  function invalidate() {
    dirty = true;
    if (!frame) frame = requestAnimationFrame(paint);
  }

  function paint() {
    frame = 0;
    if (!dirty) return;
    dirty = false;
    empty.hidden = lines.length > 0;
    stats.textContent = lines.length ? `${lines.length.toLocaleString()} line${lines.length === 1 ? "" : "s"}` : "";
    sizer.style.height = `${visible.length * ROW}px`;
    lastRange = "";
    if (follow) toBottom();
    renderRows();
    if (query && scanned < lines.length) updateMatches();
  }

  function toBottom() {
    const target = Math.max(0, box.scrollHeight - box.clientHeight);
    if (Math.abs(box.scrollTop - target) > 1) {
      setScroll(target);
    }
  }

  /** Scroll without the scroll handler taking it for the user (which would switch Follow off). */
  function setScroll(top) {
    programmatic = true;
    box.scrollTop = top;
    requestAnimationFrame(() => requestAnimationFrame(() => { programmatic = false; }));
  }

  function renderRows() {
    const top = box.scrollTop;
    const height = box.clientHeight || 400;
    const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
    const last = Math.min(visible.length, Math.ceil((top + height) / ROW) + OVERSCAN);
    const key = `${first}:${last}:${visible.length}`;
    if (key === lastRange) return;
    lastRange = key;
    const rows = [];
    for (let v = first; v < last; v++) rows.push(row(visible[v]));
    rowsEl.style.transform = `translateY(${first * ROW}px)`;
    rowsEl.replaceChildren(...rows);
  }

  function row(idx) {
    const l = lines[idx];
    const cls = ["log-row"];
    if (l.err) cls.push("err");
    if (l.head) cls.push("log-group");
    if (matches[currentMatch] === idx) cls.push("current");
    const el = document.createElement("div");
    el.className = cls.join(" ");
    el.dataset.line = String(idx + 1);
    const num = document.createElement("span");
    num.className = "log-num";
    num.textContent = String(idx + 1);
    el.append(num);
    if (showTimes) {
      const ts = document.createElement("span");
      ts.className = "log-ts";
      ts.textContent = l.at ? clock(l.at) : "";
      el.append(ts);
    }
    const body = document.createElement("span");
    body.className = "log-text";
    if (l.head) {
      const g = groups[l.g];
      el.dataset.group = String(l.g);
      el.tabIndex = 0;
      el.setAttribute("role", "button");
      el.setAttribute("aria-expanded", String(g.open));
      body.textContent = `${g.open ? "▾" : "▸"} ${g.title}`;
      const size = document.createElement("span");
      size.className = "log-group-size";
      size.textContent = `${g.size} line${g.size === 1 ? "" : "s"}`;
      body.append(size);
    } else if (query && l.t.toLowerCase().includes(query)) {
      highlight(body, l.t, matches[currentMatch] === idx);
    } else if (l.s) {
      for (const [t, c, rgb] of l.s) {
        if (!c && !rgb) {
          body.append(t);
          continue;
        }
        const span = document.createElement("span");
        if (c) span.className = c;
        if (rgb) Object.assign(span.style, rgb);
        span.textContent = t;
        body.append(span);
      }
    } else {
      body.textContent = l.t;
    }
    el.append(body);
    return el;
  }

  function highlight(body, t, current) {
    const lower = t.toLowerCase();
    let at = 0;
    let hit = lower.indexOf(query);
    while (hit >= 0) {
      if (hit > at) body.append(t.slice(at, hit));
      const mark = document.createElement("mark");
      if (current) mark.className = "current";
      mark.textContent = t.slice(hit, hit + query.length);
      body.append(mark);
      at = hit + query.length;
      hit = lower.indexOf(query, at);
    }
    if (at < t.length) body.append(t.slice(at));
  }

  // ---- groups ----
  function rebuildVisible() {
    visible = [];
    for (let i = 0; i < lines.length; i++) {
      const l = lines[i];
      if (l.g < 0 || l.head || groups[l.g].open) visible.push(i);
    }
  }

  function toggleGroup(g, open = !groups[g].open) {
    groups[g].open = open;
    rebuildVisible();
    collapseBtn.textContent = groups.every((x) => x.open) ? "Collapse all" : "Expand all";
    invalidate();
  }

  function toggleAll() {
    const open = !groups.every((x) => x.open);
    groups.forEach((g) => { g.open = open; });
    rebuildVisible();
    collapseBtn.textContent = open ? "Collapse all" : "Expand all";
    invalidate();
  }

  // ---- search ----
  let searchTimer = null;
  function setQuery(value) {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      query = value.toLowerCase();
      matches = [];
      scanned = 0;
      currentMatch = -1;
      updateMatches();
      if (matches.length) step(1);
      else invalidateRows();
    }, 120);
  }

  function updateMatches() {
    if (!query) {
      count.textContent = "";
      return;
    }
    // The last line may still grow: rescan it next time.
    if (scanned > 0 && matches[matches.length - 1] === scanned - 1 && !lines[scanned - 1].done) matches.pop();
    for (let i = Math.max(0, scanned - 1); i < lines.length; i++) {
      if (matches[matches.length - 1] !== i && lines[i].t.toLowerCase().includes(query)) matches.push(i);
    }
    scanned = lines.length;
    count.textContent = matches.length ? `${currentMatch + 1 || 0}/${matches.length}` : "no match";
  }

  function invalidateRows() {
    lastRange = "";
    renderRows();
  }

  function step(direction) {
    if (!query) {
      searchInput.focus();
      return;
    }
    updateMatches();
    if (!matches.length) return;
    currentMatch = (currentMatch + direction + matches.length) % matches.length;
    count.textContent = `${currentMatch + 1}/${matches.length}`;
    scrollToLine(matches[currentMatch]);
    // and the page too, if the box's part holding the line is off screen
    rowsEl.querySelector(".log-row.current")?.scrollIntoView({ block: "nearest" });
  }

  function scrollToLine(idx) {
    const l = lines[idx];
    if (l && l.g >= 0 && !l.head && !groups[l.g].open) toggleGroup(l.g, true);
    let lo = 0;
    let hi = visible.length - 1;
    while (lo < hi) { // visible is sorted: binary search for the line's position
      const mid = (lo + hi) >> 1;
      if (visible[mid] < idx) lo = mid + 1;
      else hi = mid;
    }
    follow = false;
    followBox.checked = false;
    sizer.style.height = `${visible.length * ROW}px`;
    setScroll(Math.max(0, lo * ROW - box.clientHeight / 2 + ROW));
    invalidateRows();
  }

  // ---- copy / download ----
  async function copyAll() {
    const ok = await copyText(text());
    toast(ok ? `Copied ${lines.length.toLocaleString()} lines` : "Copy failed: your browser refused", ok ? "ok" : "error");
  }

  function download() {
    const url = URL.createObjectURL(new Blob([text()], { type: "text/plain;charset=utf-8" }));
    const a = document.createElement("a");
    a.href = url; // set directly: h() only allows http(s)/relative links
    a.download = filename;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  return {
    el, box, write, flush, text,
    lineCount: () => lines.length,
    rendered: () => rowsEl.childElementCount,
    search: (q) => {
      searchInput.value = q;
      query = q.toLowerCase();
      matches = [];
      scanned = 0;
      currentMatch = -1;
      updateMatches();
      return matches.length;
    },
    next: () => step(1),
    prev: () => step(-1),
    scrollToLine,
  };
}

let uid = 0;

function clock(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** Clipboard text with a fallback for pages that are not a secure context (a LAN address). */
export async function copyText(value) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(value);
      return true;
    }
  } catch {
    /* fall through */
  }
  const area = document.createElement("textarea");
  area.value = value;
  area.setAttribute("readonly", "");
  area.className = "visually-hidden";
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}
