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
 *       .fields  {fieldName: message} built from details[].field ("args.0" also sets "args")
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
        const msg = d.message || "invalid";
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
    throw new ApiError(response.status, error.code || "http_error",
      error.message || `${response.status} ${response.statusText}`, error.details);
  }
  return payload;
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
    source.onerror = () => {
      if (closed) return;
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
