/** What every page shares: DOM building, the API client with the session's CSRF token, formatting. */

/** Builds an element; strings become text nodes (never HTML), so no value can inject markup. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export const session = { csrfToken: null, scopes: [], tenant: null };

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail ?? `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** Calls the API with the session cookie; unsafe methods carry the CSRF token. */
export async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && session.csrfToken) headers["x-csrf-token"] = session.csrfToken;
  const res = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) {
    if (res.status === 401 && path !== "/v1/session") window.dispatchEvent(new Event("flowline:logged-out"));
    throw new ApiError(res.status, data);
  }
  return data;
}

export const canWrite = () => session.scopes.some((s) => s === "write" || s === "admin");

export function badge(status, label = status.replace("_", " ")) {
  return h("span", { class: `badge s-${status}`, "data-status": status }, label);
}

export function time(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function duration(fromIso, toIso) {
  if (!fromIso) return "—";
  const ms = (toIso ? Date.parse(toIso) : Date.now()) - Date.parse(fromIso);
  if (ms < 1000) return `${Math.max(0, ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function json(value) {
  return h("pre", {}, JSON.stringify(value, null, 2));
}

export function errorBox(error) {
  return h("p", { class: "error", role: "alert" }, error instanceof Error ? error.message : String(error));
}

/** A table from rows; `columns` are [header, (row) => cell]. */
export function table(columns, rows, rowAttrs = () => ({})) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          columns.map(([title]) => h("th", {}, title)),
        ),
      ),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h(
            "tr",
            rowAttrs(row),
            columns.map(([, cell]) => h("td", {}, cell(row))),
          ),
        ),
      ),
    ),
  );
}

/** Renders a dry-run plan (SPEC §4): what would run, be reused or skipped, and why. */
export function planTable(plan) {
  return h(
    "div",
    { class: "plan", "data-testid": "plan" },
    h(
      "p",
      {},
      `${plan.steps.filter((s) => s.action === "run").length} of ${plan.steps.length} steps would run`,
    ),
    table(
      [
        ["step", (s) => s.stepId],
        ["action", (s) => badge({ run: "queued", reuse: "reused" }[s.action] ?? "skipped", s.action)],
        ["reason", (s) => s.reason],
        ["queue", (s) => s.queue],
      ],
      plan.steps,
    ),
  );
}
