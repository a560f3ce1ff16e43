/**
 * lib/markdown.js — a small Markdown renderer that builds DOM nodes, never HTML strings.
 *
 * Exports
 *   renderMarkdown(text) -> DocumentFragment
 *   class MarkdownStream(el) .update(fullTextSoFar)  incremental rendering of a streamed reply
 *
 * Supported: fenced code blocks (``` / ~~~, with a language label), headings, paragraphs with
 * line breaks, bullet and numbered lists (nested by indentation), tables, block quotes, horizontal rules, `code`, **bold**,
 * *italic*, [links](https://…) and bare https:// URLs. Raw HTML in the text stays text (it is
 * shown, not interpreted); links are kept only for http/https targets and open in a new tab
 * with rel="noopener noreferrer nofollow".
 */

import { h } from "./dom.js";

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const HR = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const BULLET = /^ {0,3}[-*+]\s+(.*)$/;
const ORDERED = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const LIST_ITEM = /^( *)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_ROW = /^\s*\|?.*\|.*$/;
const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  blocks(lines, fragment, 0);
  return fragment;
}

function blocks(lines, out, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) {
      i++;
      continue;
    }
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const lang = m[2];
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence)) body.push(lines[i++]);
      i++; // closing fence (or end of text while streaming)
      const code = h("code", lang ? { class: `lang-${lang.replace(/[^\w-]/g, "")}` } : null, body.join("\n"));
      out.append(h("div", { class: "codeblock" }, lang ? h("div", { class: "codelang" }, lang) : null,
        h("pre", null, code)));
      continue;
    }
    if ((m = HEADING.exec(line))) {
      const level = Math.min(6, m[1].length + 2); // agent headings sit below the page's own
      out.append(h(`h${level}`, { class: "md-h" }, inline(m[2])));
      i++;
      continue;
    }
    if (HR.test(line)) {
      out.append(h("hr"));
      i++;
      continue;
    }
    if (QUOTE.test(line) && depth < 8) {
      const body = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        body.push(m[1]);
        i++;
      }
      const quote = h("blockquote");
      blocks(body, quote, depth + 1);
      out.append(quote);
      continue;
    }
    if ((m = LIST_ITEM.exec(line)) && m[1].length <= 3 && depth < 12) {
      i = list(lines, i, out, depth);
      continue;
    }
    if (depth < 12 && TABLE_ROW.test(line) && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1])) {
      i = table(lines, i, out, depth);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i])
      && !(para.length && (BULLET.test(lines[i]) || ORDERED.test(lines[i]) || QUOTE.test(lines[i])
        || (TABLE_ROW.test(lines[i]) && TABLE_SEP.test(lines[i + 1] ?? ""))))) {
      para.push(lines[i]);
      i++;
    }
    const p = h("p");
    para.forEach((l, n) => {
      if (n) p.append(h("br"));
      p.append(inline(l.trim()));
    });
    out.append(p);
  }
}

const indentOf = (l) => l.length - l.trimStart().length;

/** A list and its items' nested blocks (sub-lists, code, quotes) by indentation. Returns the next line. */
function list(lines, i, out, depth) {
  const first = LIST_ITEM.exec(lines[i]);
  const base = first[1].length;
  const ordered = /\d/.test(first[2]);
  const sameKind = (marker) => /\d/.test(marker) === ordered;
  const items = [];
  let contentIndent = base + first[2].length + 1;
  while (i < lines.length) {
    const current = lines[i];
    const m = LIST_ITEM.exec(current);
    if (m && m[1].length <= base + 1 && m[1].length >= base - 1 && sameKind(m[2])) {
      items.push([m[3]]);
      contentIndent = m[1].length + m[2].length + 1;
      i++;
      continue;
    }
    if (!current.trim()) {
      let j = i + 1;
      while (j < lines.length && !lines[j].trim()) j++;
      const next = lines[j];
      const sibling = next !== undefined && LIST_ITEM.exec(next);
      if (next !== undefined && (indentOf(next) > base || (sibling && sibling[1].length === base
        && sameKind(sibling[2])))) {
        items[items.length - 1].push("");
        i++;
        continue;
      }
      break;
    }
    if (indentOf(current) > base) {
      items[items.length - 1].push(current.slice(Math.min(indentOf(current), contentIndent)));
      i++;
      continue;
    }
    break;
  }
  const start = ordered ? Number.parseInt(first[2], 10) : 1;
  const el = h(ordered ? "ol" : "ul", ordered && start !== 1 ? { start } : null);
  for (const itemLines of items) {
    const li = h("li");
    let n = 0; // the item's own text: lines up to a blank line or a nested block
    while (n < itemLines.length && itemLines[n].trim() && (n === 0 || !startsBlock(itemLines[n]))) {
      if (n) li.append(h("br"));
      li.append(inline(itemLines[n].trim()));
      n++;
    }
    const rest = itemLines.slice(n);
    if (rest.some((l) => l.trim())) blocks(rest, li, depth + 1);
    el.append(li);
  }
  out.append(el);
  return i;
}

function startsBlock(l) {
  return LIST_ITEM.test(l) || FENCE.test(l) || QUOTE.test(l) || HEADING.test(l);
}

function cells(row) {
  let text = row.trim();
  if (text.startsWith("|")) text = text.slice(1);
  if (text.endsWith("|") && !text.endsWith("\\|")) text = text.slice(0, -1);
  return text.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

/** A GitHub-style table (header row, separator with optional :alignment:, body rows). */
function table(lines, i, out) {
  const head = cells(lines[i]);
  const align = cells(lines[i + 1]).map((c) => (c.startsWith(":") && c.endsWith(":") ? "center"
    : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : null));
  i += 2;
  const body = [];
  while (i < lines.length && lines[i].trim() && lines[i].includes("|")) body.push(cells(lines[i++]));
  const cell = (tag, text, n) => h(tag, align[n] ? { class: `align-${align[n]}` } : null, inline(text));
  out.append(h("div", { class: "md-table-wrap" }, h("table", { class: "md-table" },
    h("thead", null, h("tr", null, head.map((c, n) => cell("th", c, n)))),
    h("tbody", null, body.map((r) => h("tr", null, head.map((_, n) => cell("td", r[n] ?? "", n))))))));
  return i;
}

/**
 * Markdown that grows (a streamed reply): blocks that can no longer change — those before a blank
 * line outside a code fence, not followed by an indented or list line — are rendered once and
 * kept; only the open block at the end is rendered again on each update. Rendering a reply
 * delta by delta therefore costs about the size of the reply, not its square.
 */
export class MarkdownStream {
  constructor(el) {
    this.el = el;
    this.reset();
  }

  reset() {
    this.text = "";
    this.committed = 0;
    this.scan = 0;
    this.fence = null;
    this.boundary = -1;
    this.tail = [];
    this.el.replaceChildren();
  }

  update(text) {
    text = String(text ?? "").replace(/\r\n?/g, "\n");
    if (!text.startsWith(this.text)) this.reset();
    this.text = text;
    let nl;
    while ((nl = text.indexOf("\n", this.scan)) >= 0) {
      const line = text.slice(this.scan, nl);
      const m = FENCE.exec(line);
      if (!line.trim()) {
        if (!this.fence) this.boundary = nl + 1;
      } else {
        if (this.boundary > this.committed && !this.fence && !/^\s/.test(line) && !LIST_ITEM.test(line)
          && !line.startsWith("|")) {
          this.commit(this.boundary);
        }
        this.boundary = -1;
        if (m && !this.fence) this.fence = m[1];
        else if (this.fence && line.trim().startsWith(this.fence)) this.fence = null;
      }
      this.scan = nl + 1;
    }
    for (const node of this.tail) node.remove();
    const fragment = renderMarkdown(text.slice(this.committed));
    this.tail = [...fragment.childNodes];
    this.el.append(fragment);
  }

  commit(end) {
    for (const node of this.tail) node.remove();
    this.tail = [];
    this.el.append(renderMarkdown(this.text.slice(this.committed, end)));
    this.committed = end;
  }
}

// One pass over the line: the earliest match of any inline construct wins.
const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__|\*(?=[^\s*])([\s\S]*?[^\s*])\*|(?<![\w])_(?=[^\s_])([\s\S]*?[^\s_])_(?![\w])|\[([^\]\n]{1,500})\]\(\s*<?([^()\s<>]{1,2000})>?\s*\)|(https?:\/\/[^\s<>"'`]+[^\s<>"'`.,;:!?)\]])/;

function inline(text, depth = 0) {
  const fragment = document.createDocumentFragment();
  let rest = text;
  while (rest) {
    const m = depth < 6 ? INLINE.exec(rest) : null;
    if (!m) {
      fragment.append(document.createTextNode(rest));
      break;
    }
    if (m.index) fragment.append(document.createTextNode(rest.slice(0, m.index)));
    if (m[1] !== undefined) fragment.append(h("code", null, m[2].replace(/^ (.+) $/, "$1")));
    else if (m[3] !== undefined) fragment.append(h("strong", null, inline(m[3], depth + 1)));
    else if (m[4] !== undefined) fragment.append(h("strong", null, inline(m[4], depth + 1)));
    else if (m[5] !== undefined) fragment.append(h("em", null, inline(m[5], depth + 1)));
    else if (m[6] !== undefined) fragment.append(h("em", null, inline(m[6], depth + 1)));
    else if (m[7] !== undefined) fragment.append(link(m[8], inline(m[7], depth + 1), m[0]));
    else if (m[9] !== undefined) fragment.append(link(m[9], m[9], m[0]));
    rest = rest.slice(m.index + m[0].length);
  }
  return fragment;
}

function link(url, label, original) {
  let parsed = null;
  try {
    parsed = new URL(url);
  } catch {
    parsed = null;
  }
  if (!parsed || (parsed.protocol !== "http:" && parsed.protocol !== "https:")) {
    return document.createTextNode(original); // javascript:, data:, relative… stay plain text
  }
  return h("a", { href: parsed.href, target: "_blank", rel: "noopener noreferrer nofollow" }, label);
}
