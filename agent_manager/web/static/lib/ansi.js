/**
 * lib/ansi.js — render terminal output with ANSI SGR colours as <span>s, safely.
 *
 * Exports
 *   class AnsiRenderer
 *     new AnsiRenderer(container, sink?)   appends into `container` (a <pre> or <div class="term">),
 *                                   or, with `sink(text, className, rgbStyle|null)`, hands styled
 *                                   pieces to it instead (and keeps no copy of the text)
 *     .write(text, cls?)            append a chunk; escape sequences may be split across chunks;
 *                                   `cls` adds a class to every span of this chunk (e.g. "stderr")
 *     .flush()                      emit a dangling partial escape sequence as text
 *     .text()                       everything written so far, escape sequences removed
 *   stripAnsi(text) -> string
 *
 * Only SGR (colour/bold/italic/underline/inverse) is interpreted; every other control
 * sequence (cursor moves, OSC titles, …) is dropped. Text only ever becomes text nodes.
 */

const CSI_RE = /\x1b\[([0-9;?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;
// A chunk may end in the middle of an escape sequence: keep such a tail for the next chunk.
const PARTIAL_RE = /\x1b(\[[0-9;?]*|\][^\x07\x1b]*(\x1b)?)?$/;

export function stripAnsi(text) {
  return text.replace(CSI_RE, "");
}

function fresh() {
  return { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, inverse: false };
}

export class AnsiRenderer {
  constructor(container, sink = null) {
    this.container = container;
    this.sink = sink; // (text, className, rgbStyle|null) instead of DOM nodes (see logview.js)
    this.state = fresh();
    this.pending = "";
    this.plain = "";
  }

  write(text, cls = "") {
    let input = this.pending + text.replace(/\r\n/g, "\n");
    this.pending = "";
    const partial = PARTIAL_RE.exec(input);
    if (partial && input.length - partial.index <= 256) {
      this.pending = input.slice(partial.index);
      input = input.slice(0, partial.index);
    }
    let last = 0;
    CSI_RE.lastIndex = 0;
    let match;
    while ((match = CSI_RE.exec(input)) !== null) {
      this.emit(input.slice(last, match.index), cls);
      if (match[2] === "m") this.sgr(match[1]);
      last = match.index + match[0].length;
    }
    this.emit(input.slice(last), cls);
  }

  flush() {
    if (this.pending) {
      const rest = this.pending;
      this.pending = "";
      this.emit(rest.replace(/\x1b/g, "␛"), "");
    }
  }

  text() {
    return this.plain;
  }

  emit(text, cls) {
    if (!text) return;
    text = text.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, ""); // keeps \t and \n; drops \r and stray controls
    if (!text) return;
    if (!this.sink) this.plain += text;
    const s = this.state;
    const classes = [];
    let fg = s.inverse ? s.bg : s.fg;
    let bg = s.inverse ? s.fg : s.bg;
    if (s.inverse && fg === null) fg = "inv-fg";
    if (s.inverse && bg === null) bg = "inv-bg";
    if (typeof fg === "number") classes.push(`fg${fg}`);
    else if (fg === "inv-fg") classes.push("fg-inv");
    if (typeof bg === "number") classes.push(`bg${bg}`);
    else if (bg === "inv-bg") classes.push("bg-inv");
    if (s.bold) classes.push("ansi-bold");
    if (s.dim) classes.push("ansi-dim");
    if (s.italic) classes.push("ansi-italic");
    if (s.underline) classes.push("ansi-underline");
    if (cls) classes.push(cls);
    const rgb = {};
    if (Array.isArray(fg)) rgb.color = `rgb(${fg.join(",")})`;
    if (Array.isArray(bg)) rgb.backgroundColor = `rgb(${bg.join(",")})`;
    if (this.sink) {
      this.sink(text, classes.join(" "), rgb.color || rgb.backgroundColor ? rgb : null);
      return;
    }
    if (!classes.length && !rgb.color && !rgb.backgroundColor) {
      const lastNode = this.container.lastChild;
      if (lastNode && lastNode.nodeType === Node.TEXT_NODE) lastNode.appendData(text);
      else this.container.appendChild(document.createTextNode(text));
      return;
    }
    const span = document.createElement("span");
    if (classes.length) span.className = classes.join(" ");
    Object.assign(span.style, rgb); // CSSOM, not a style attribute: allowed by the CSP
    span.textContent = text;
    this.container.appendChild(span);
  }

  sgr(params) {
    const codes = params === "" ? [0] : params.split(";").map((p) => Number.parseInt(p || "0", 10));
    const s = this.state;
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) Object.assign(s, fresh());
      else if (c === 1) s.bold = true;
      else if (c === 2) s.dim = true;
      else if (c === 3) s.italic = true;
      else if (c === 4) s.underline = true;
      else if (c === 7) s.inverse = true;
      else if (c === 22) s.bold = s.dim = false;
      else if (c === 23) s.italic = false;
      else if (c === 24) s.underline = false;
      else if (c === 27) s.inverse = false;
      else if (c >= 30 && c <= 37) s.fg = c - 30;
      else if (c >= 90 && c <= 97) s.fg = c - 90 + 8;
      else if (c === 39) s.fg = null;
      else if (c >= 40 && c <= 47) s.bg = c - 40;
      else if (c >= 100 && c <= 107) s.bg = c - 100 + 8;
      else if (c === 49) s.bg = null;
      else if ((c === 38 || c === 48) && codes[i + 1] === 5) {
        const n = codes[i + 2];
        const value = Number.isInteger(n) && n >= 0 && n <= 255 ? (n < 16 ? n : xterm(n)) : null;
        if (c === 38) s.fg = value;
        else s.bg = value;
        i += 2;
      } else if ((c === 38 || c === 48) && codes[i + 1] === 2) {
        const rgb = codes.slice(i + 2, i + 5).map((v) => Math.max(0, Math.min(255, v || 0)));
        if (c === 38) s.fg = rgb;
        else s.bg = rgb;
        i += 4;
      }
    }
  }
}

function xterm(n) {
  if (n >= 232) {
    const v = 8 + (n - 232) * 10;
    return [v, v, v];
  }
  const i = n - 16;
  const steps = [0, 95, 135, 175, 215, 255];
  return [steps[Math.floor(i / 36)], steps[Math.floor(i / 6) % 6], steps[i % 6]];
}
