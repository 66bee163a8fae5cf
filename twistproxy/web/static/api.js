// The web UI's calls to its API. The token travels in a cookie (HttpOnly,
// SameSite=Strict) that opening the URL with ?token= set.

export class ApiError extends Error {
  constructor(status, body) {
    super(body.error || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export async function call(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const type = response.headers.get("Content-Type") || "";
  const data = type.startsWith("application/json") ? await response.json() : { error: await response.text() };
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== "" && value !== undefined && value !== null) search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export const flowsPage = (filter, offset, limit, sort = "seq", order = "asc") =>
  call("GET", `/api/flows${query({ filter, offset, limit, sort: sort === "seq" ? "" : sort, order: order === "asc" ? "" : order })}`);
export const flowDetail = (id) => call("GET", `/api/flows/${encodeURIComponent(id)}`);
export const changeFlow = (id, change) => call("PUT", `/api/flows/${encodeURIComponent(id)}`, change);
export const deleteFlow = (id) => call("DELETE", `/api/flows/${encodeURIComponent(id)}`);
export const act = (id, action) => call("POST", `/api/flows/${encodeURIComponent(id)}/${action}`);
export const duplicateFlow = (id) => call("POST", `/api/flows/${encodeURIComponent(id)}/duplicate`);
export const replayFlows = (ids) => call("POST", "/api/replay", { ids });
export const replayMatching = (filter) => call("POST", `/api/replay${query({ filter })}`, { matching: true });
export const setIntercept = (filter) => call("PUT", "/api/intercept", { filter });
export const getIntercept = () => call("GET", "/api/intercept");
export const exportCommand = (id, format) => call("GET", `/api/flows/${encodeURIComponent(id)}/export/${format}`);
export const highlight = (id, side) => call("GET", `/api/flows/${encodeURIComponent(id)}/${side}/highlight`);
export const contentUrl = (id, side) => `/api/flows/${encodeURIComponent(id)}/${side}/content`;

export async function content(id, side) {
  const response = await fetch(contentUrl(id, side));
  if (!response.ok) throw new ApiError(response.status, { error: await response.text() });
  const bytes = new Uint8Array(await response.arrayBuffer());
  // "no": a Content-Encoding that did not undo (invalid, or decoding to too much).
  bytes.decoded = response.headers.get("X-Decoded") !== "no";
  return bytes;
}

// Load a flow file or HAR file (a File from an <input type=file>) into the store.
export async function importFile(file) {
  const response = await fetch(`/api/import${query({ name: file.name })}`, {
    method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file,
  });
  const data = await response.json();
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}
