// The console's only way to the server: the manager's REST API under /api/ and the session endpoints under
// /console/. Adds the CSRF header to state-changing requests, turns RFC 7807 problems into ApiError (with the
// fields they name), and tracks whether the server is reachable (the banner; docs/console.md).
let csrfToken = "";
let onLoggedOut = () => {};
const connListeners = new Set();
export const connection = { online: true };

export function setSession(token, loggedOut) {
  csrfToken = token || "";
  if (loggedOut) onLoggedOut = loggedOut;
}

export function onConnection(listener) {
  connListeners.add(listener);
  return () => connListeners.delete(listener);
}

function setOnline(value) {
  if (connection.online === value) return;
  connection.online = value;
  for (const listener of connListeners) listener(value);
  if (!value) probeUntilOnline();
}

async function probeUntilOnline() {
  let delay = 1000;
  while (!connection.online) {
    await new Promise((r) => setTimeout(r, delay));
    try {
      const resp = await fetch("/console/session", { credentials: "same-origin" });
      if (resp.status < 500) setOnline(true);
    } catch (_) {
      delay = Math.min(delay * 2, 8000);
    }
  }
}

// "config.model: ..." or pydantic's data.errors: {field: reason}; fields keyed by their last two path parts
export function fieldErrors(problem) {
  const out = {};
  const items = problem && problem.data && Array.isArray(problem.data.errors) ? problem.data.errors : [];
  for (const item of items) {
    if (item && item.field) out[String(item.field)] = String(item.reason || "invalid");
  }
  const detail = problem && typeof problem.detail === "string" ? problem.detail : "";
  const m = /^([A-Za-z_][A-Za-z0-9_.]*): (.+)$/s.exec(detail);
  if (!items.length && m) out[m[1]] = m[2];
  return out;
}

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
    this.fields = fieldErrors(this.problem);
  }
}

// The CSRF header for requests made outside request() (the chat page's streaming fetch).
export function csrfHeaders() { return { "X-Moorage-CSRF": csrfToken }; }

// raw: send body (a Blob, ArrayBuffer or string) as it is, as application/octet-stream (uploads, file saves)
export async function request(method, path, body, raw) {
  const url = path.startsWith("/console/") ? path : "/api" + path;
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = raw ? "application/octet-stream" : "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-Moorage-CSRF"] = csrfToken;
  let resp;
  try {
    resp = await fetch(url, { method, headers, credentials: "same-origin",
                              body: body === undefined ? undefined : raw ? body : JSON.stringify(body) });
  } catch (_) {
    setOnline(false);
    throw new ApiError(0, { detail: "The console server cannot be reached; retrying. Nothing you typed is lost." });
  }
  setOnline(true);
  if (resp.status === 401 && !path.startsWith("/console/")) onLoggedOut();
  if (!resp.ok) {
    let problem = {};
    try { problem = await resp.json(); } catch (_) { problem = { detail: `HTTP ${resp.status}` }; }
    throw new ApiError(resp.status, problem);
  }
  if (resp.status === 204) return null;
  const type = resp.headers.get("Content-Type") || "";
  return type.includes("json") ? resp.json() : resp.text();
}

export const api = {
  get: (path) => request("GET", path),
  post: (path, body) => request("POST", path, body === undefined ? {} : body),
  patch: (path, body) => request("PATCH", path, body),
  del: (path) => request("DELETE", path),
  put: (path, body) => request("PUT", path, body),
  putRaw: (path, data) => request("PUT", path, data, true),
  gql: async (query, variables) => {
    const out = await request("POST", "/admin/gql", { query, variables });
    if (out && out.errors && out.errors.length) {
      const err = out.errors[0];
      const msg = String(err.message || "GraphQL error");
      throw new ApiError(400, { detail: msg });
    }
    return out.data;
  },
};
