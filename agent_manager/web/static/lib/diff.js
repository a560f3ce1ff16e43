/**
 * lib/diff.js — the changes a run (conversation, orchestration) made to its project's branch.
 *
 * Exports
 *   diffView(base, {signal, onChange?, unified?}) -> {el, refresh()}
 *       `base` is "/api/runs/<id>", "/api/conversations/<id>" or "/api/orchestrations/<id>".
 *       Shows the changed files with +/- counts, a readable diff (side by side on a wide
 *       screen, unified on a phone; simple syntax colours), and Merge / Discard / Download
 *       patch buttons. Hidden when the resource has no workspace (404). refresh() reloads.
 *   projectInputs(signal, wanted?) -> Promise<{project, base} | null>
 *       "Project" select and "Base" input rows (lib/dom.js field()s) for forms that start work on
 *       a project; null when there are no projects.
 *   parsePatch(text) -> [{path, oldPath, binary, hunks: [{header, lines: [{kind, old, new, text}]}]}]
 *
 * Everything from the patch reaches the DOM as text nodes (agent output is untrusted).
 */

import { get, post } from "./api.js";
import { errorBox, field, h, toast } from "./dom.js";

const STYLE = `
.diff-panel { margin-top: 1rem; }
.diff-head { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; justify-content: space-between; }
.diff-head h2 { margin: 0; }
.diff-actions { display: flex; flex-wrap: wrap; gap: .4rem; align-items: center; }
.diff-actions select { width: auto; margin: 0; }
.diff-summary { margin: .3rem 0 .6rem; }
.diff-files { list-style: none; padding: 0; margin: 0 0 .8rem; font-family: ui-monospace, monospace; font-size: .85rem; }
.diff-files li { display: flex; gap: .6rem; padding: .15rem 0; align-items: baseline; }
.diff-files a { overflow-wrap: anywhere; }
.diff-status { display: inline-block; min-width: 1.3em; text-align: center; font-weight: bold; border-radius: 3px; }
.diff-status.added { color: #1a7f37; } .diff-status.deleted { color: #cf222e; }
.diff-status.modified { color: #9a6700; } .diff-status.renamed { color: #8250df; }
.diff-plus { color: #1a7f37; } .diff-minus { color: #cf222e; }
.diff-file { border: 1px solid rgba(127,127,127,.35); border-radius: 6px; margin: .6rem 0; overflow: hidden; }
.diff-file > header { padding: .35rem .6rem; background: rgba(127,127,127,.12); font-family: ui-monospace, monospace;
  font-size: .85rem; overflow-wrap: anywhere; }
.diff-scroll { overflow-x: auto; }
table.diff { border-collapse: collapse; width: 100%; font-family: ui-monospace, monospace; font-size: .8rem;
  line-height: 1.35; table-layout: fixed; }
table.diff td { padding: 0 .4rem; vertical-align: top; white-space: pre-wrap; overflow-wrap: anywhere; }
table.diff col.num { width: 3.4em; }
table.diff td.num { width: 3.2em; text-align: right; color: rgba(127,127,127,.9); user-select: none; white-space: nowrap; }
table.diff tr.hunk td { background: rgba(84,174,255,.12); color: rgba(127,127,127,1); }
table.diff td.add, table.diff tr.add td { background: rgba(46,160,67,.15); }
table.diff td.del, table.diff tr.del td { background: rgba(248,81,73,.15); }
table.diff td.empty { background: rgba(127,127,127,.06); }
.tok-kw { color: #8250df; } .tok-str { color: #0a3069; } .tok-com { color: #6e7781; font-style: italic; }
.tok-num { color: #0550ae; }
@media (prefers-color-scheme: dark) {
  .tok-kw { color: #d2a8ff; } .tok-str { color: #a5d6ff; } .tok-com { color: #8b949e; } .tok-num { color: #79c0ff; }
}
.diff-note { padding: .4rem .6rem; }
`;

let sheet = null;
function ensureStyle() {
  if (sheet) return;
  sheet = new CSSStyleSheet();
  sheet.replaceSync(STYLE);
  document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
}

const MAX_LINES = 4000;
const WIDE = "(min-width: 900px)";
const KEYWORDS = new Set(("def class return if elif else for while in import from as with try except finally raise "
  + "lambda yield async await pass break continue not and or is None True False function const let var new this "
  + "switch case default do typeof instanceof export extends static public private protected interface type enum "
  + "struct impl fn pub use mod match mut self Self package func go defer chan select map range nil null true false "
  + "void int float double char bool string echo fi then esac done local").split(" "));
const TOKEN = /(#.*$|\/\/.*$|\/\*.*?\*\/|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`|\b\d[\d_.]*\b|\b[A-Za-z_]\w*\b)/g;

/** Text with simple syntax colours, as nodes (never HTML). */
function colour(text, language) {
  if (!language) return [text];
  const out = [];
  let last = 0;
  for (const match of text.matchAll(TOKEN)) {
    const token = match[0];
    let cls = null;
    const hashComment = token.startsWith("#");
    const slashComment = token.startsWith("//") || token.startsWith("/*");
    if (hashComment || slashComment) cls = (hashComment ? language === "hash" : language === "slash") ? "tok-com" : null;
    else if (/^["'`]/.test(token)) cls = "tok-str";
    else if (/^\d/.test(token)) cls = "tok-num";
    else if (KEYWORDS.has(token)) cls = "tok-kw";
    if (!cls) continue;
    if (match.index > last) out.push(text.slice(last, match.index));
    out.push(h("span", { class: cls }, token));
    last = match.index + token.length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function languageOf(path) {
  const ext = (path.split(".").pop() || "").toLowerCase();
  if (["py", "sh", "bash", "rb", "pl", "yaml", "yml", "toml", "r", "mk", "conf"].includes(ext)) return "hash";
  if (["js", "mjs", "ts", "tsx", "jsx", "c", "h", "cc", "cpp", "hpp", "java", "go", "rs", "cs", "kt", "swift",
    "php", "scala", "css", "json"].includes(ext)) return "slash";
  return null;
}

export function parsePatch(text) {
  const files = [];
  let file = null;
  let hunk = null;
  let oldNo = 0;
  let newNo = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("diff --git ")) {
      const m = /^diff --git a\/(.*) b\/(.*)$/.exec(line);
      file = { path: m ? m[2] : line.slice(11), oldPath: null, binary: false, hunks: [] };
      files.push(file);
      hunk = null;
    } else if (!file) {
      continue;
    } else if (line.startsWith("@@")) {
      const m = /^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@/.exec(line);
      oldNo = m ? Number(m[1]) : 0;
      newNo = m ? Number(m[2]) : 0;
      hunk = { header: line, lines: [] };
      file.hunks.push(hunk);
    } else if (hunk && /^[ +\-\\]/.test(line)) {
      const kind = line[0];
      if (kind === "\\") continue;
      if (kind === " ") hunk.lines.push({ kind: "ctx", old: oldNo++, new: newNo++, text: line.slice(1) });
      else if (kind === "-") hunk.lines.push({ kind: "del", old: oldNo++, new: null, text: line.slice(1) });
      else hunk.lines.push({ kind: "add", old: null, new: newNo++, text: line.slice(1) });
    } else if (line.startsWith("rename from ")) {
      file.oldPath = line.slice(12);
    } else if (line.startsWith("GIT binary patch") || line.startsWith("Binary files ")) {
      file.binary = true;
      hunk = null;
    }
  }
  return files;
}

function numCell(n) {
  return h("td", { class: "num" }, n === null || n === undefined ? "" : String(n));
}

function unifiedRows(hunks, language) {
  const rows = [];
  for (const hunk of hunks) {
    rows.push(h("tr", { class: "hunk" }, h("td", { colspan: "3" }, hunk.header)));
    for (const l of hunk.lines) {
      const sign = l.kind === "add" ? "+" : l.kind === "del" ? "-" : " ";
      rows.push(h("tr", { class: l.kind }, numCell(l.old), numCell(l.new),
        h("td", null, sign, ...colour(l.text, language))));
    }
  }
  return rows;
}

function splitRows(hunks, language) {
  const rows = [];
  const side = (l, cls) => (l
    ? [numCell(cls === "del" ? l.old : l.new), h("td", { class: l.kind === "ctx" ? "" : cls }, ...colour(l.text, language))]
    : [numCell(null), h("td", { class: "empty" })]);
  for (const hunk of hunks) {
    rows.push(h("tr", { class: "hunk" }, h("td", { colspan: "4" }, hunk.header)));
    const lines = hunk.lines;
    for (let i = 0; i < lines.length;) {
      if (lines[i].kind === "ctx") {
        rows.push(h("tr", null, ...side(lines[i], "del"), ...side(lines[i], "add")));
        i++;
        continue;
      }
      const dels = [];
      const adds = [];
      while (i < lines.length && lines[i].kind === "del") dels.push(lines[i++]);
      while (i < lines.length && lines[i].kind === "add") adds.push(lines[i++]);
      for (let k = 0; k < Math.max(dels.length, adds.length); k++) {
        rows.push(h("tr", null, ...side(dels[k], "del"), ...side(adds[k], "add")));
      }
    }
  }
  return rows;
}

function fileBlock(parsed, info, wide, index) {
  const language = languageOf(parsed.path);
  const name = parsed.oldPath ? `${parsed.oldPath} → ${parsed.path}` : parsed.path;
  const block = h("section", { class: "diff-file", id: `diff-file-${index}`, "data-path": parsed.path },
    h("header", null, name));
  const total = parsed.hunks.reduce((n, hk) => n + hk.lines.length, 0);
  if (parsed.binary || (info && info.binary)) {
    block.append(h("p", { class: "diff-note muted" }, "Binary file changed (download the patch to get it)."));
  } else if (!parsed.hunks.length) {
    block.append(h("p", { class: "diff-note muted" }, info && info.status === "renamed" ? "Renamed, content unchanged."
      : "No textual change (mode or empty file)."));
  } else if (total > MAX_LINES) {
    block.append(h("p", { class: "diff-note muted" }, `${total} changed lines: too long to show; download the patch.`));
  } else {
    const cols = wide ? [h("col", { class: "num" }), h("col"), h("col", { class: "num" }), h("col")]
      : [h("col", { class: "num" }), h("col", { class: "num" }), h("col")];
    const table = h("table", { class: `diff ${wide ? "split" : "unified"}` },
      h("colgroup", null, ...cols),
      h("tbody", null, ...(wide ? splitRows(parsed.hunks, language) : unifiedRows(parsed.hunks, language))));
    block.append(h("div", { class: "diff-scroll" }, table));
  }
  return block;
}

export function diffView(base, { signal, onChange, unified = false } = {}) {
  ensureStyle();
  const el = h("section", { class: "diff-panel card", "aria-label": "Changes", hidden: true, "data-testid": "diff" });
  const media = window.matchMedia(WIDE);
  let data = null;

  const strategy = h("select", { "aria-label": "Merge strategy" },
    h("option", { value: "merge" }, "merge commit"), h("option", { value: "squash" }, "squash"));
  const mergeButton = h("button", { type: "button", onClick: onMerge }, "Merge");
  const discardButton = h("button", { type: "button", class: "danger", onClick: onDiscard }, "Discard");
  const download = h("a", { class: "button secondary", href: `${base}/diff?format=patch`, download: "" },
    "Download patch");
  const message = h("div");
  const body = h("div");

  function paint() {
    if (!data) return;
    const ws = data.workspace;
    const open = ws.state === "open";
    mergeButton.disabled = !open || !data.files.length;
    discardButton.disabled = !open;
    strategy.disabled = !open;
    const wide = media.matches && !unified;
    const parsed = parsePatch(data.patch);
    const byPath = new Map(data.files.map((f) => [f.path, f]));
    const list = h("ul", { class: "diff-files" }, data.files.map((f, i) => h("li", null,
      h("span", { class: `diff-status ${f.status}`, title: f.status }, f.status[0].toUpperCase()),
      h("a", { href: `#diff-file-${i}`, onClick: (e) => {
        e.preventDefault();
        const target = el.querySelector(`[data-path="${CSS.escape(f.path)}"]`);
        if (target) target.scrollIntoView({ block: "start" });
      } }, f.old_path ? `${f.old_path} → ${f.path}` : f.path),
      f.binary ? h("span", { class: "muted" }, "binary")
        : h("span", null, h("span", { class: "diff-plus" }, `+${f.insertions}`), " ",
          h("span", { class: "diff-minus" }, `−${f.deletions}`)))));
    const summary = h("p", { class: "diff-summary muted", "data-testid": "diff-summary" },
      `${ws.files_changed} file${ws.files_changed === 1 ? "" : "s"} changed, `,
      h("span", { class: "diff-plus" }, `+${ws.insertions}`), " ", h("span", { class: "diff-minus" }, `−${ws.deletions}`),
      ` · ${ws.branch} from ${ws.base} · ${ws.state}`, ws.note ? ` · ${ws.note}` : "");
    body.replaceChildren(summary, data.files.length ? list : h("p", { class: "muted" }, "No changes."),
      ...parsed.map((p, i) => fileBlock(p, byPath.get(p.path), wide, i)),
      data.truncated ? h("p", { class: "muted" }, "The patch is too large to show in full: download it.") : "");
    el.hidden = false;
  }

  async function refresh() {
    try {
      data = await get(`${base}/diff`, null, { signal });
      message.replaceChildren();
      paint();
    } catch (err) {
      if (err.name === "AbortError") return;
      if (err.status === 404) {
        el.hidden = true;
        return;
      }
      message.replaceChildren(errorBox(err));
      el.hidden = false;
    }
  }

  async function onMerge() {
    mergeButton.disabled = true;
    try {
      await post(`${base}/merge`, { strategy: strategy.value }, { signal });
      toast(`Merged into ${data.workspace.base}`);
      message.replaceChildren();
      await refresh();
      if (onChange) onChange();
    } catch (err) {
      if (err.name === "AbortError") return;
      const paths = Array.isArray(err.details) ? err.details.map((d) => d.field).filter(Boolean) : [];
      message.replaceChildren(h("div", { class: "alert error", role: "alert", "data-testid": "merge-error" },
        err.message, paths.length ? h("ul", null, paths.map((p) => h("li", { class: "mono" }, p))) : ""));
      mergeButton.disabled = false;
    }
  }

  async function onDiscard() {
    if (!window.confirm(`Discard ${data.workspace.branch}? Its worktree and branch are deleted.`)) return;
    discardButton.disabled = true;
    try {
      await post(`${base}/discard`, undefined, { signal });
      toast("Changes discarded");
      await refresh();
      if (onChange) onChange();
    } catch (err) {
      if (err.name !== "AbortError") message.replaceChildren(errorBox(err));
      discardButton.disabled = false;
    }
  }

  const onMedia = () => paint();
  media.addEventListener("change", onMedia);
  if (signal) signal.addEventListener("abort", () => media.removeEventListener("change", onMedia));
  el.append(h("div", { class: "diff-head" }, h("h2", null, "Changes"),
    h("div", { class: "diff-actions" }, strategy, mergeButton, discardButton, download)), message, body);
  refresh();
  return { el, refresh };
}

export async function projectInputs(signal, wanted = "") {
  let projects = [];
  try {
    projects = await get("/api/projects", null, { signal });
  } catch {
    return null;
  }
  if (!projects.length) return null;
  return {
    project: field({ label: "Project", name: "project", hint: "Work on its own branch of this repository.",
      input: h("select", null, h("option", { value: "" }, "none"),
        projects.map((p) => h("option", { value: p.name, selected: p.name === wanted }, p.name))) }),
    base: field({ label: "Base", name: "base", hint: "Branch or commit to start from (default: the project's).",
      input: h("input", { type: "text", placeholder: "default branch", autocomplete: "off" }) }),
  };
}

/** Adds the chosen project/base (if any) to a request body. */
export function withProject(body, rows) {
  if (rows.project && rows.project.input.value) body.project = rows.project.input.value;
  if (rows.project && rows.base && rows.base.input.value.trim()) body.base = rows.base.input.value.trim();
  return body;
}
