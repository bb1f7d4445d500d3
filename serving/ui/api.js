// Talking to the server, and saying in words what went wrong.
//
// Every request goes to the page's own origin: signflow's model server, or `signflow ui`,
// which forwards /v1 to TF Serving. A failure becomes an ApiError whose `message` is a
// sentence for a person; the server's own words, when it sent any, are in `detail`.

const TOKEN_KEY = "signflow.token";
const DETAIL_LIMIT = 300;

export class ApiError extends Error {
  constructor(message, { status = 0, detail = "", kind = "" } = {}) {
    super(message);
    this.status = status;
    this.detail = detail;
    this.kind = kind; // "unreachable", "token", "too-large", "not-ready", "refused", ...
    this.document = null; // the answer's JSON, when there was one
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  forget: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class Api {
  constructor(config) {
    this.config = config;
  }

  get serverName() {
    return this.config.mode === "tf-serving" ? `TF Serving at ${this.config.api}` : "The signflow server";
  }

  // One JSON request: {status, body, headers} for a 2xx answer, ApiError otherwise.
  async request(method, path, { body, bearer } = {}) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (bearer) headers["Authorization"] = `Bearer ${bearer}`;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (error) {
      throw new ApiError(`${this.serverName} is not answering. Check that it is running, then try again.`, {
        kind: "unreachable",
      });
    }
    let document = null;
    const text = await response.text();
    try {
      document = text ? JSON.parse(text) : null;
    } catch (error) {
      document = null;
    }
    if (response.ok) return { status: response.status, body: document, headers: response.headers };
    const error = this.explain(response.status, document);
    error.document = document;
    throw error;
  }

  explain(status, document) {
    const detail = document && typeof document.error === "string" ? document.error.slice(0, DETAIL_LIMIT) : "";
    const said = (text) => new ApiError(text, { status, detail });
    if (status === 502 && this.config.mode === "tf-serving") {
      return new ApiError(`${this.serverName} is not answering. Check that it is running, then try again.`,
        { status, detail, kind: "unreachable" });
    }
    if (status === 401) {
      return new ApiError("The token was not accepted. Check it and enter it again.", { status, detail, kind: "token" });
    }
    if (status === 403) return new ApiError(detail || "The server does not allow this.", { status, kind: "refused" });
    if (status === 413) {
      const limit = this.config.max_request_bytes;
      return new ApiError(
        `The image is too large to send${limit ? `: the server accepts requests up to ${megabytes(limit)}` : ""}.`
        + " Try a smaller image.", { status, detail, kind: "too-large" });
    }
    if (status === 404 && /Servable not found|Could not find any versions/.test(detail)) {
      return new ApiError("The model has no version ready yet.", { status, detail, kind: "not-ready" });
    }
    if (status === 404 && /Feedback is not enabled/.test(detail)) {
      return new ApiError("This server does not take corrections: it was started without --feedback_dir.",
        { status, detail });
    }
    if (status === 504) return said("The server took too long to answer. Try again in a moment.");
    if (status === 503) return new ApiError("The server is busy or the model is not ready. Try again in a moment.",
      { status, detail, kind: "not-ready" });
    if (status === 429) return said("The server is busy. Try again in a moment.");
    if (status >= 500) return said("The server failed while answering. Its log has the details.");
    if (status === 400 && /pixels/.test(detail)) {
      return new ApiError("The image has too many pixels for this server. Try a smaller image.",
        { status, detail, kind: "too-large" });
    }
    if (status === 400 && /(image|base64|decode|format)/i.test(detail)) {
      return said("The server could not read this image. Send a PNG, JPEG or GIF file.");
    }
    if (status === 400) return said("The server refused the request.");
    if (status === 404) return said("The server does not know this model or route.");
    return said(`The server answered with an unexpected status (${status}).`);
  }

  // -- TF Serving's API ------------------------------------------------------------------

  async modelStatus(model) {
    const answer = await this.request("GET", `/v1/models/${encodeURIComponent(model)}`);
    return (answer.body && answer.body.model_version_status) || [];
  }

  async metadata(model, version) {
    const answer = await this.request("GET",
      `/v1/models/${encodeURIComponent(model)}/versions/${version}/metadata`);
    return answer.body;
  }

  async predict(model, signature, instances) {
    const answer = await this.request("POST", `/v1/models/${encodeURIComponent(model)}:predict`,
      { body: { signature_name: signature, instances } });
    const header = answer.headers.get("X-Model-Version");
    return { predictions: answer.body.predictions, version: header ? Number(header) : null };
  }

  async classify(model, b64) {
    const answer = await this.request("POST", `/v1/models/${encodeURIComponent(model)}:classify`,
      { body: { signature_name: "classify", examples: [{ image: { b64 } }] } });
    return answer.body.results[0];
  }

  // -- signflow's routes -------------------------------------------------------------------

  async feedback(model, b64, label, bearer) {
    const answer = await this.request("POST", `/v1/models/${encodeURIComponent(model)}/feedback`,
      { body: { instances: [{ image_bytes: { b64 }, label }] }, bearer });
    return answer.body;
  }

  async versions(model) {
    return (await this.request("GET", `/signflow/models/${encodeURIComponent(model)}/versions`)).body;
  }

  async status() {
    return (await this.request("GET", "/signflow/status")).body;
  }

  async rollback(model, to, reason, bearer) {
    const body = { reason };
    if (to !== null && to !== undefined) body.to = to;
    return (await this.request("POST", `/signflow/models/${encodeURIComponent(model)}/rollback`,
      { body, bearer })).body;
  }
}

export function megabytes(bytes) {
  if (bytes < 1024 * 1024) return `${Math.max(1, Math.round(bytes / 1024))} KB`;
  const value = bytes / (1024 * 1024);
  return `${value >= 10 ? value.toFixed(0) : value.toFixed(1)} MB`;
}

// A failed feedback answer (400) also lists why each instance was refused.
export function rejectionText(document) {
  const first = document && Array.isArray(document.rejected) && document.rejected[0];
  return first ? `${first.reason}: ${first.error}` : "";
}
