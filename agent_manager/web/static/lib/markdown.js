/**
 * lib/markdown.js — a small Markdown renderer that builds DOM nodes, never HTML strings.
 *
 * Exports
 *   renderMarkdown(text) -> DocumentFragment
 *
 * Supported: fenced code blocks (``` / ~~~, with a language label), headings, paragraphs with
 * line breaks, bullet and numbered lists, block quotes, horizontal rules, `code`, **bold**,
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
    if (BULLET.test(line) || ORDERED.test(line)) {
      const ordered = !BULLET.test(line);
      const re = ordered ? ORDERED : BULLET;
      const start = ordered ? Number.parseInt(ORDERED.exec(line)[1], 10) : null;
      const items = [];
      while (i < lines.length) {
        const current = lines[i];
        const hit = re.exec(current);
        if (hit) {
          items.push([ordered ? hit[2] : hit[1]]);
          i++;
        } else if (current.trim() && /^\s{2,}/.test(current) && items.length) {
          items[items.length - 1].push(current.trim());
          i++;
        } else {
          break;
        }
      }
      const list = h(ordered ? "ol" : "ul", ordered && start !== 1 ? { start } : null);
      for (const itemLines of items) {
        const li = h("li");
        itemLines.forEach((l, n) => {
          if (n) li.append(h("br"));
          li.append(inline(l));
        });
        list.append(li);
      }
      out.append(list);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i])
      && !(para.length && (BULLET.test(lines[i]) || ORDERED.test(lines[i]) || QUOTE.test(lines[i])))) {
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
