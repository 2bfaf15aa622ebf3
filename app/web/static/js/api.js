// The only data source of the dashboard: the service's own JSON endpoints and event stream.
// URLs are relative to the page, so the dashboard also works behind a proxy path prefix.

const KEY_STORAGE = "regula.api_key";
const BASE = new URL(".", document.baseURI);

/** An HTTP error with FastAPI's body: detail is a list of {loc, msg, type} or a string. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(describe(status, detail));
    this.status = status;
    this.detail = detail;
  }

  /** The detail as a list of {loc, msg, type}. */
  get errors() {
    if (Array.isArray(this.detail)) return this.detail;
    return [{ loc: [], msg: this.message, type: "http_" + this.status }];
  }
}

function describe(status, detail) {
  if (Array.isArray(detail)) return detail.map((e) => e.msg).join(" ");
  if (typeof detail === "string") return detail;
  return `The server answered ${status}.`;
}

export function getKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function setKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    // Private mode without storage: the key lasts until the page is closed.
  }
  memoryKey = key;
}

let memoryKey = getKey();

/** An absolute URL for an API path such as "jobs/abc/history" and optional query parameters. */
export function url(path, query = {}) {
  const u = new URL(path.replace(/^\//, ""), BASE);
  for (const [k, v] of Object.entries(query)) {
    if (v !== null && v !== undefined && v !== "") u.searchParams.set(k, v);
  }
  return u.toString();
}

function headers(extra = {}) {
  const out = { Accept: "application/json", ...extra };
  const key = memoryKey || getKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

/**
 * Call the API. json: a body sent as JSON; body: FormData etc. as is.
 * Returns the parsed JSON (null for 204); throws ApiError for any non-2xx answer.
 * A 401 also opens the API-key field.
 */
export async function request(path, { method = "GET", json, body, query, signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  let res;
  try {
    res = await fetch(url(path, query), init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "The server cannot be reached.");
  }
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json().catch(() => null) : await res.text();
  if (!res.ok) {
    const detail = data && typeof data === "object" && "detail" in data ? data.detail : data;
    const error = new ApiError(res.status, detail || res.statusText);
    if (res.status === 401) askForKey(error.message);
    throw error;
  }
  return data;
}

export const get = (path, query, signal) => request(path, { query, signal });
export const post = (path, json) => request(path, { method: "POST", json });

/**
 * Download a file from the API (export): fetch with the key, then save the blob,
 * since a plain link cannot send the Authorization header.
 */
export async function download(path, query, fallbackName) {
  const res = await fetch(url(path, query), { headers: headers({ Accept: "*/*" }) });
  if (!res.ok) {
    const data = await res.json().catch(() => null);
    const error = new ApiError(res.status, data && data.detail);
    if (res.status === 401) askForKey(error.message);
    throw error;
  }
  const disposition = res.headers.get("content-disposition") || "";
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  const name = match ? decodeURIComponent(match[1]) : fallbackName;
  const blob = await res.blob();
  const href = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = href;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10000);
}

/**
 * Follow a job live. Uses EventSource on jobs/{id}/events (events: status, epoch, end; the key
 * goes in ?api_key= because EventSource cannot send headers); where EventSource is missing or
 * fails, polls jobs/{id} and jobs/{id}/history?since=N every 2 s instead.
 * handlers: {status(job), epoch(record), end({status, model_id}), mode(name)}.
 * lastEpoch: the highest epoch already shown. Returns a function that stops following.
 */
export function followJob(jobId, lastEpoch, handlers, { preferStream = true, pollMs = 2000 } = {}) {
  let stopped = false;
  let source = null;
  let timer = null;
  let since = lastEpoch;
  const path = `jobs/${encodeURIComponent(jobId)}`;

  const onEpoch = (record) => {
    if (record && typeof record.epoch === "number") since = Math.max(since ?? -Infinity, record.epoch);
    handlers.epoch(record);
  };

  async function pollOnce() {
    if (stopped) return;
    try {
      const query = since === null || since === undefined ? {} : { since };
      const [job, history] = await Promise.all([get(path), get(`${path}/history`, query)]);
      if (stopped) return;
      for (const record of history.epochs || []) onEpoch(record);
      handlers.status(job);
      if (["succeeded", "failed", "cancelled"].includes(job.status)) {
        handlers.end({ status: job.status, model_id: job.model_id });
        stop();
        return;
      }
    } catch (err) {
      if (handlers.error) handlers.error(err);
    }
    if (!stopped) timer = setTimeout(pollOnce, pollMs);
  }

  function startPolling() {
    if (stopped || timer) return;
    handlers.mode && handlers.mode("polling");
    timer = setTimeout(pollOnce, 0);
  }

  function stop() {
    stopped = true;
    if (source) source.close();
    if (timer) clearTimeout(timer);
    source = null;
    timer = null;
  }

  if (preferStream && typeof window.EventSource === "function") {
    const key = getKey();
    source = new EventSource(url(`${path}/events`, key ? { api_key: key } : {}));
    handlers.mode && handlers.mode("stream");
    const parse = (ev) => {
      try {
        return JSON.parse(ev.data);
      } catch {
        return null;
      }
    };
    source.addEventListener("status", (ev) => {
      const job = parse(ev);
      if (job) handlers.status(job);
    });
    source.addEventListener("epoch", (ev) => {
      const record = parse(ev);
      if (record) onEpoch(record);
    });
    source.addEventListener("point", (ev) => {
      const point = parse(ev);
      if (point && handlers.point) handlers.point(point);
    });
    source.addEventListener("end", (ev) => {
      const end = parse(ev) || {};
      source.close();
      source = null;
      handlers.end(end);
      stop();
    });
    source.onerror = () => {
      // EventSource would retry by itself; a dashboard is better served by a plain poll.
      if (stopped || !source) return;
      source.close();
      source = null;
      startPolling();
    };
  } else {
    startPolling();
  }
  return stop;
}

// --- the API-key panel ---------------------------------------------------------------------

function askForKey(message) {
  const panel = document.getElementById("auth-panel");
  if (!panel) return;
  panel.hidden = false;
  const error = document.getElementById("auth-error");
  if (error) error.textContent = getKey() ? message : "";
  const input = document.getElementById("api-key-input");
  if (input && document.activeElement !== input) input.focus();
}

/** Wire the key form: saving stores the key and fires "regula:auth" so the page reloads its data. */
export function initAuthPanel() {
  const panel = document.getElementById("auth-panel");
  const form = document.getElementById("auth-form");
  const input = document.getElementById("api-key-input");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    setKey(input.value.trim());
    input.value = "";
    panel.hidden = true;
    window.dispatchEvent(new CustomEvent("regula:auth"));
  });
  document.getElementById("api-key-clear").addEventListener("click", () => {
    setKey("");
    input.value = "";
    window.dispatchEvent(new CustomEvent("regula:auth"));
  });
}
