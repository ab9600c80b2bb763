// Talking to the daemon: JSON requests with the optional bearer token, uniform errors, and SSE read with fetch
// streaming (EventSource cannot send an Authorization header; spec §10.2).

const TOKEN_KEY = "atlas.token";

/** An API failure: `status` 0 means the daemon could not be reached. */
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }

  get network() {
    return this.status === 0;
  }

  /** "message (HTTP 404)", or the network message; for showing to people. */
  describe() {
    return this.network ? this.message : `${this.message} (HTTP ${this.status})`;
  }
}

export const NETWORK_MESSAGE = "Could not reach the daemon";

// A `#token=…` fragment is read once, kept in this tab's sessionStorage and removed from the address bar.
(function readTokenFragment() {
  const match = /^#token=(.+)$/.exec(window.location.hash);
  if (!match) return;
  setToken(decodeURIComponent(match[1]));
  history.replaceState(history.state, "", window.location.pathname + window.location.search);
})();

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled: the token lives as long as the page */
  }
}

let unauthorizedHandler = () => {};

/** Called (once per burst) when the daemon answers 401: the app asks for the token. */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

function headersWith(extra) {
  const headers = new Headers(extra || {});
  headers.set("X-Atlas-Client", "ui"); // the daemon records runs started here as `trigger: ui` (issue #16)
  const token = getToken();
  if (token) headers.set("Authorization", `Bearer ${token}`);
  return headers;
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON */
  }
  const err = body && typeof body === "object" && body.error && typeof body.error === "object" ? body.error : {};
  const message = typeof err.message === "string" && err.message ? err.message : response.statusText || "Request failed";
  const error = new ApiError(response.status, typeof err.code === "string" ? err.code : "http_error", message,
    err.details);
  if (response.status === 401) unauthorizedHandler();
  return error;
}

/**
 * fetch() that throws ApiError for network failures and non-2xx answers, and returns the Response otherwise.
 * Aborts (AbortController) propagate as the usual DOMException so callers can ignore them.
 */
export async function request(path, { method = "GET", body, headers, signal, cache } = {}) {
  const init = { method, headers: headersWith(headers), signal, cache, credentials: "same-origin" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers.set("Content-Type", "application/json");
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    if (exc && exc.name === "AbortError") throw exc;
    throw new ApiError(0, "network", NETWORK_MESSAGE);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

/** GET (or another method) and parse the JSON answer. */
export async function api(path, options = {}) {
  const response = await request(path, options);
  if (response.status === 204) return null;
  return response.json();
}

/** Query string from an object, skipping empty values. */
export function qs(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export const isAbort = (exc) => exc && exc.name === "AbortError";

/**
 * Read a server-sent event stream with fetch (a GET, or `method` with a JSON `body`). `onFrame({event, id, data})`
 * gets every dispatched frame (`event` is "message" when the frame had no `event:` line). Resolves when the server
 * closes the stream; throws ApiError when it cannot be opened (status, JSON error code) or is not an event stream
 * (`not_a_stream`).
 */
export async function readEventStream(path, { lastEventId, signal, onOpen, onFrame, method = "GET", body }) {
  const headers = { Accept: "text/event-stream" };
  if (lastEventId) headers["Last-Event-ID"] = String(lastEventId);
  // `method`/`body`: a stream answering a POST (a chat turn; EventSource can only GET).
  const response = await request(path, { method, body, headers, signal, cache: "no-store" });
  const type = response.headers.get("Content-Type") || "";
  if (!type.includes("text/event-stream") || !response.body) {
    response.body?.cancel().catch(() => {});
    throw new ApiError(response.status, "not_a_stream", "The daemon did not answer with an event stream");
  }
  if (onOpen) onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let frame = { event: "", id: null, data: [] };
  const dispatch = () => {
    if (frame.data.length) onFrame({ event: frame.event || "message", id: frame.id, data: frame.data.join("\n") });
    frame = { event: "", id: null, data: [] };
  };
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (exc) {
        if (isAbort(exc)) throw exc;
        throw new ApiError(0, "network", "The event stream was interrupted");
      }
      if (chunk.done) break;
      buffer += chunk.value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          dispatch();
          continue;
        }
        if (line.startsWith(":")) continue; // comment, e.g. keep-alive
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") frame.data.push(value);
        else if (field === "event") frame.event = value;
        else if (field === "id") frame.id = value;
      }
    }
  } finally {
    reader.releaseLock();
  }
}
