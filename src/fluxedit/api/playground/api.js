// The public API, called with the key the person pasted. Nothing else talks to the server.

/** An error answer from the API: `code` is stable, `message` is for people. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail.message);
    this.name = "ApiError";
    this.status = status;
    this.code = detail.code;
    this.field = detail.field ?? null;
    this.index = detail.index ?? null;
  }
}

/** Model ids are paths ("blackforestlabs/flux-2/dev/edit"): encode each segment, keep the slashes. */
export function modelPath(modelId) {
  return "v1/models/" + modelId.split("/").map(encodeURIComponent).join("/");
}

function detailFrom(status, statusText, data) {
  if (data && typeof data.error === "object" && data.error?.message) return data.error;
  return { code: `http_${status}`, message: `The server answered ${status} ${statusText || ""}`.trim() + "." };
}

/** One server-sent event block ("event: ...", "data: ...", ": comment" lines) -> {kind, data}. */
function parseEvent(block) {
  const event = { kind: "message", data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // a keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event.kind = value;
    else if (field === "data") event.data += (event.data ? "\n" : "") + value;
  }
  return event;
}

export class Api {
  /**
   * @param {URL} baseUrl the server's base URL, ending in "/"
   * @param {() => string} getKey the current API key ("" when none)
   */
  constructor(baseUrl, getKey) {
    this.baseUrl = baseUrl;
    this.getKey = getKey;
  }

  /** The base URL as people write it: no trailing slash. */
  get base() {
    return this.baseUrl.href.replace(/\/$/, "");
  }

  async request(method, path, { json, form } = {}) {
    const headers = { Accept: "application/json" };
    const key = this.getKey();
    // The key goes in the header only, never in a URL.
    if (key) headers.Authorization = `Bearer ${key}`;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    let response;
    try {
      response = await fetch(new URL(path, this.baseUrl), { method, headers, body, cache: "no-store" });
    } catch {
      throw new ApiError(0, {
        code: "network_error",
        message: `Could not reach the server at ${this.base}. Is \`fluxedit serve\` running?`,
      });
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) throw new ApiError(response.status, detailFrom(response.status, response.statusText, data));
    return data;
  }

  /** The OpenAPI schema: the one source of the input's rules (sizes, limits). */
  openapi() {
    return this.request("GET", "openapi.json");
  }

  /** Liveness and the server's auth mode ("key" | "none"): asked first, so a page never starts with a 401. */
  health() {
    return this.request("GET", "healthz");
  }

  models() {
    return this.request("GET", "v1/models");
  }

  submit(modelId, input) {
    return this.request("POST", modelPath(modelId), { json: input });
  }

  status(requestId) {
    return this.request("GET", `v1/requests/${encodeURIComponent(requestId)}/status`);
  }

  /**
   * Follow the request's server-sent events: `onEvent(kind, body)` for each "status" and the last "result".
   * Resolves when the server closes the stream; throws ApiError when it cannot be opened.
   */
  async stream(requestId, onEvent) {
    const headers = { Accept: "text/event-stream" };
    const key = this.getKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    const url = new URL(`v1/requests/${encodeURIComponent(requestId)}/stream`, this.baseUrl);
    const response = await fetch(url, { headers, cache: "no-store" });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      throw new ApiError(response.status, detailFrom(response.status, response.statusText, data));
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event.data && (event.kind === "status" || event.kind === "result")) onEvent(event.kind, JSON.parse(event.data));
      }
    }
  }

  result(requestId) {
    return this.request("GET", `v1/requests/${encodeURIComponent(requestId)}/result`);
  }

  cancel(requestId) {
    return this.request("POST", `v1/requests/${encodeURIComponent(requestId)}/cancel`);
  }

  requests(limit = 20, cursor = null) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (cursor) query.set("cursor", cursor);
    return this.request("GET", `v1/requests?${query}`);
  }

  upload(file) {
    const form = new FormData();
    form.append("file", file, file.name || "image");
    return this.request("POST", "v1/files", { form });
  }
}
