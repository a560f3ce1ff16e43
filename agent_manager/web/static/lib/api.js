/**
 * lib/api.js — talking to the Agent Manager API from the browser.
 *
 * The browser is authenticated by the HttpOnly session cookie set at /login; fetch() sends it
 * and, for POST/PATCH/DELETE, the same-origin Origin header the server's CSRF check wants.
 *
 * Exports
 *   api(path, {method="GET", body, query, signal})  -> Promise<parsed JSON | null (204)>
 *       `body` is JSON-encoded; `query` is an object turned into ?a=b (null/""/undefined skipped).
 *       Any non-2xx answer throws an ApiError.
 *   get(path, query?, opts?) / post(path, body?, opts?) / patch(path, body?, opts?) / del(path, opts?)
 *       Shortcuts for api().
 *   class ApiError extends Error
 *       .status  HTTP status (0 = network failure)      .code  e.g. "validation_failed", "not_found"
 *       .message the API's message                      .details the raw details (list or null)
 *       .fields  {fieldName: message} built from details[].field ("args.0" also sets "args"), in
 *                plain words (friendly()); .message lists them as "Field: message" lines
 *       .fieldError(name) -> message for that field (or one of its sub-fields) or ""
 *   follow(url, {onEvent, after=0, terminal=["run.finished"], types=[], signal, onState})
 *       -> {close(), lastSeq(), listen(type)}
 *       Server-sent events with exactly-once delivery to onEvent(type, data, seq, raw):
 *       events are deduplicated by seq (the SSE id), a dropped connection reconnects (the
 *       browser's EventSource resends Last-Event-ID; if it gives up we reopen with ?after=<last
 *       seq>), and the stream is closed after a terminal event (the server closes it then too).
 *       `after` starts the replay after that seq (0 = from the beginning). onState(state) gets
 *       "connecting" | "live" | "reconnecting" | "closed". The run event types (output, message,
 *       tool, error, run.*) are always listened to; name other SSE event types in `types` (or
 *       call listen(type) later), e.g. for orchestration streams. Pass the page's `signal` so leaving
 *       the page closes the stream.
 *   qs(object) -> "?a=b&c=d" ("" when empty)
 *
 * Page modules get an AbortSignal in params.signal (see app.js): pass it to api()/follow()
 * and everything a page started is cancelled when the user navigates away.
 */

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message || code || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details ?? null;
    this.fields = {};
    if (Array.isArray(details)) {
      for (const d of details) {
        if (!d || typeof d.field !== "string") continue;
        // A detail without its own words: the error's message says what is wrong (never "Invalid").
        const msg = friendly(d.message || message || "invalid");
        const parts = d.field.split(".");
        for (let i = parts.length; i >= 1; i--) {
          const key = parts.slice(0, i).join(".");
          if (!(key in this.fields)) this.fields[key] = msg;
        }
      }
    }
  }

  fieldError(name) {
    return this.fields[name] || "";
  }
}

/** Pydantic's wording ("String should match pattern '^[A-Za-z0-9]…'") in words a person uses. */
export function friendly(message) {
  const text = String(message || "");
  let m;
  if (/should match pattern/i.test(text)) {
    const pattern = /'(.*)'/.exec(text)?.[1] || "";
    if (pattern.includes("A-Za-z0-9") || pattern.includes("\\w")) {
      const bare = pattern.replace(/\w-\w/g, "");
      const extra = [...new Set(bare.match(/[._-]/g) || [])].map((c) => `'${c}'`);
      return `Use only letters, digits${extra.length ? ` and ${extra.join(" ")}` : ""} — no spaces.`;
    }
    return "This value is not in the expected format.";
  }
  if (/^field required$/i.test(text)) return "Required.";
  if ((m = /should have at least (\d+) (character|item)/i.exec(text))) {
    return m[1] === "1" ? "Required." : `At least ${m[1]} ${m[2]}s.`;
  }
  if ((m = /should have at most (\d+) (character|item)/i.exec(text))) return `At most ${m[1]} ${m[2]}s.`;
  if ((m = /should be greater than or equal to (\S+)/i.exec(text))) return `Must be ${m[1]} or more.`;
  if ((m = /should be greater than (\S+)/i.exec(text))) return `Must be more than ${m[1]}.`;
  if ((m = /should be less than or equal to (\S+)/i.exec(text))) return `Must be ${m[1]} or less.`;
  if ((m = /should be less than (\S+)/i.exec(text))) return `Must be less than ${m[1]}.`;
  if (/should be a valid integer/i.test(text)) return "Must be a whole number.";
  if (/should be a valid number/i.test(text)) return "Must be a number.";
  if (/should be a valid boolean/i.test(text)) return "Must be yes or no.";
  if ((m = /^Input should be (.+)$/i.exec(text))) return `Must be ${m[1]}.`;
  if (/^Value error, /.test(text)) return capital(text.replace(/^Value error, /, ""));
  return capital(text);
}

function capital(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}

export function qs(query) {
  if (!query) return "";
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value === undefined || value === null || value === "") continue;
    params.set(key, String(value));
  }
  const text = params.toString();
  return text ? `?${text}` : "";
}

export async function api(path, { method = "GET", body, query, signal } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", signal };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path + qs(query), init);
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError(0, "network", "The service cannot be reached. Is it running?", null);
  }
  if (response.status === 204) return null;
  let payload = null;
  const text = await response.text();
  if (text) {
    try {
      payload = JSON.parse(text);
    } catch {
      payload = null;
    }
  }
  if (!response.ok) {
    const error = payload && payload.error ? payload.error : {};
    let message = error.message || `${response.status} ${response.statusText}`;
    if (error.code === "validation_failed" && Array.isArray(error.details) && error.details.length) {
      // "name: String should match…" → "Name: Use letters…" (one line per field)
      message = error.details.filter((d) => d && d.field).map((d) => `${label(d.field)}: ${friendly(d.message)}`)
        .join("\n") || message;
    }
    throw new ApiError(response.status, error.code || "http_error", message, error.details);
  }
  return payload;
}

function label(fieldName) {
  const last = String(fieldName).split(".").filter((p) => !/^\d+$/.test(p)).pop() || fieldName;
  return capital(last.replace(/_/g, " "));
}

export const get = (path, query, opts = {}) => api(path, { ...opts, query });
export const post = (path, body, opts = {}) => api(path, { ...opts, method: "POST", body });
export const patch = (path, body, opts = {}) => api(path, { ...opts, method: "PATCH", body });
export const del = (path, opts = {}) => api(path, { ...opts, method: "DELETE" });

export function follow(url, { onEvent, after = 0, terminal = ["run.finished"], types: extra = [], signal,
  onState } = {}) {
  let last = after;
  let source = null;
  let closed = false;
  let retryTimer = null;
  let retries = 0;
  const state = (s) => onState && onState(s);

  const types = new Set(["message", "output", "tool", "error", "run.queued", "run.started", "run.finished",
    "run.stalled", "run.resumed", ...terminal, ...extra]);

  function handle(ev) {
    // EventSource fires its own "error" (a dropped connection) as a plain Event; a run's SSE event
    // named "error" arrives as a MessageEvent with data. Only the latter is an event of the run.
    if (!(ev instanceof MessageEvent)) return;
    const seq = Number.parseInt(ev.lastEventId, 10);
    if (Number.isFinite(seq)) {
      if (seq <= last) return; // already delivered (replay after a reconnect)
      last = seq;
    }
    retries = 0;
    let data = {};
    try {
      data = ev.data ? JSON.parse(ev.data) : {};
    } catch {
      data = { text: ev.data };
    }
    try {
      onEvent && onEvent(ev.type, data, last, ev);
    } finally {
      if (terminal.includes(ev.type)) close();
    }
  }

  function open() {
    if (closed) return;
    const sep = url.includes("?") ? "&" : "?";
    const target = last > 0 ? `${url}${sep}after=${last}` : url;
    state(retries ? "reconnecting" : "connecting");
    source = new EventSource(target, { withCredentials: true });
    source.onopen = () => state("live");
    // A named event only reaches listeners registered for its name; register every known type
    // and let "message" (also the default SSE type) go through onmessage.
    for (const type of types) {
      if (type !== "message") source.addEventListener(type, handle);
    }
    source.onmessage = handle;
    source.onerror = (ev) => {
      // onerror also receives the run's own SSE event named "error" (a MessageEvent, handled by
      // handle() above): that is data, not a broken connection — do not reconnect for it.
      if (closed || ev instanceof MessageEvent) return;
      if (source.readyState === EventSource.CONNECTING) {
        state("reconnecting"); // the browser retries by itself, sending Last-Event-ID
        return;
      }
      // The browser gave up (HTTP error or a stream that ended early): reopen from the last seq.
      source.close();
      retries += 1;
      state("reconnecting");
      const delay = Math.min(10000, 500 * 2 ** Math.min(retries, 5));
      retryTimer = setTimeout(open, delay);
    };
  }

  function close() {
    if (closed) return;
    closed = true;
    clearTimeout(retryTimer);
    if (source) source.close();
    state("closed");
  }

  /** Listen to an extra event type (e.g. orchestration events) besides the run ones. */
  function listen(type) {
    if (types.has(type)) return;
    types.add(type);
    if (source && type !== "message") source.addEventListener(type, handle);
  }

  if (signal) {
    if (signal.aborted) closed = true;
    else signal.addEventListener("abort", close, { once: true });
  }
  open();
  return { close, lastSeq: () => last, listen };
}
