/** The dashboard: a hash router over the pages, and the login that turns an API key into a session. */
import { api, badge, canWrite, duration, errorBox, h, json, planTable, session, table, time } from "./lib.js";
import { runPage } from "./run.js";

const main = document.getElementById("main");
/** Work a page started (timers, streams), undone when another page is shown. */
const cleanups = [];

function show(...nodes) {
  main.replaceChildren(...nodes);
}

function onLeave(fn) {
  cleanups.push(fn);
}

function every(ms, fn) {
  const timer = setInterval(fn, ms);
  onLeave(() => clearInterval(timer));
}

async function loadSession() {
  try {
    Object.assign(session, await api("GET", "/v1/session"));
    return true;
  } catch {
    return false;
  }
}

function loginPage(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  const input = h("input", {
    id: "key",
    type: "password",
    autocomplete: "off",
    placeholder: "flk_…",
    "aria-label": "API key",
  });
  const status = h("div");
  const form = h(
    "form",
    {
      class: "card login",
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          Object.assign(session, await api("POST", "/v1/session", { key: input.value.trim() }));
          input.value = "";
          route();
        } catch (error) {
          status.replaceChildren(errorBox(error));
        }
      },
    },
    h("h1", {}, "Log in"),
    h("p", { class: "muted" }, "Paste an API key. It is exchanged for a session cookie and not stored here."),
    input,
    h("button", { class: "primary", type: "submit" }, "Log in"),
    status,
  );
  show(message ? errorBox(message) : "", form);
  input.focus();
}

// ------------------------------------------------------------------------------------------------
// Runs

/** The values `GET /v1/runs` filters on, as the API describes them (one list, on the server). */
let runFilters;
async function runFilterValues() {
  runFilters ??= fetch("/openapi.json")
    .then((res) => res.json())
    .then((spec) => {
      const params = spec.paths["/v1/runs"].get.parameters;
      const values = (name) => params.find((p) => p.name === name)?.schema?.enum ?? [];
      return { status: values("status"), kind: values("kind") };
    });
  return runFilters;
}

function select(name, values, current) {
  return h(
    "select",
    { name, "aria-label": name },
    h("option", { value: "" }, `any ${name}`),
    values.map((v) => h("option", { value: v, selected: v === current }, v)),
  );
}

async function runsPage(query) {
  const { status: RUN_STATUSES, kind: RUN_KINDS } = await runFilterValues();
  const filters = {
    workflow: query.get("workflow") ?? "",
    status: query.get("status") ?? "",
    kind: query.get("kind") ?? "",
  };
  const workflowInput = h("input", { name: "workflow", placeholder: "workflow", value: filters.workflow });
  const statusSelect = select("status", RUN_STATUSES, filters.status);
  const kindSelect = select("kind", RUN_KINDS, filters.kind);
  const form = h(
    "form",
    {
      class: "row card",
      onsubmit: (e) => {
        e.preventDefault();
        const q = new URLSearchParams();
        if (workflowInput.value.trim()) q.set("workflow", workflowInput.value.trim());
        if (statusSelect.value) q.set("status", statusSelect.value);
        if (kindSelect.value) q.set("kind", kindSelect.value);
        location.hash = `#/runs?${q}`;
      },
    },
    workflowInput,
    statusSelect,
    kindSelect,
    h("button", { type: "submit" }, "Filter"),
  );
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const more = h("button", { type: "button", hidden: true }, "Load more");
  show(h("h1", {}, "Runs"), form, body, more);

  /** Pages loaded so far; the first is refreshed for live status, later ones as they were. */
  let items = [];
  let cursor = null;
  const params = (extra = {}) => {
    const q = new URLSearchParams({ limit: "25", ...extra });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    return q;
  };
  const render = () => {
    body.replaceChildren(
      items.length === 0
        ? h("p", { class: "muted" }, "No runs match.")
        : table(
            [
              ["run", (r) => h("a", { href: `#/runs/${r.id}` }, r.id.slice(0, 8))],
              ["workflow", (r) => `${r.workflow.name} v${r.workflow.version}`],
              ["status", (r) => badge(r.status)],
              ["kind", (r) => r.kind],
              ["trigger", (r) => r.trigger],
              ["created", (r) => time(r.createdAt)],
              ["duration", (r) => duration(r.startedAt, r.finishedAt)],
            ],
            items,
            (r) => ({ "data-run": r.id }),
          ),
    );
    more.hidden = !cursor;
  };
  const refresh = async () => {
    try {
      const page = await api("GET", `/v1/runs?${params()}`);
      const known = new Set(page.items.map((r) => r.id));
      const older = items.slice(page.items.length).filter((r) => !known.has(r.id));
      items = [...page.items, ...older];
      if (older.length === 0) cursor = page.nextCursor;
      render();
    } catch (error) {
      body.replaceChildren(errorBox(error));
    }
  };
  more.addEventListener("click", async () => {
    const page = await api("GET", `/v1/runs?${params({ cursor })}`);
    items = [...items, ...page.items];
    cursor = page.nextCursor;
    render();
  });
  void refresh();
  every(3000, refresh);
}

// ------------------------------------------------------------------------------------------------
// Workflows

async function workflowsPage() {
  const page = await api("GET", "/v1/workflows?limit=100");
  show(
    h("h1", {}, "Workflows"),
    page.items.length === 0
      ? h("p", { class: "muted" }, "No workflows yet: PUT /v1/workflows/{name} registers one.")
      : table(
          [
            ["name", (w) => h("a", { href: `#/workflows/${encodeURIComponent(w.name)}` }, w.name)],
            ["version", (w) => w.latestVersion],
            ["steps", (w) => w.stepCount],
            ["updated", (w) => time(w.updatedAt)],
            ["description", (w) => w.description ?? ""],
          ],
          page.items,
        ),
  );
}

function nextFires(cron, timezone, count = 3) {
  const Cron = globalThis.Cron?.Cron ?? globalThis.Cron;
  if (!Cron) return [];
  try {
    return new Cron(cron, { timezone: timezone ?? "UTC", paused: true }).nextRuns(count);
  } catch {
    return [];
  }
}

async function workflowPage(name, query) {
  const version = query.get("version");
  const wf = await api(
    "GET",
    `/v1/workflows/${encodeURIComponent(name)}${version ? `?version=${encodeURIComponent(version)}` : ""}`,
  );
  const latest = (await api("GET", `/v1/workflows/${encodeURIComponent(name)}`)).version;
  const def = wf.definition;
  const schedules = def.schedules ?? [];
  const planBox = h("div");
  const versionSelect = h(
    "select",
    {
      "aria-label": "version",
      onchange: (e) => {
        location.hash = `#/workflows/${encodeURIComponent(name)}?version=${e.target.value}`;
      },
    },
    Array.from({ length: latest }, (_, i) => latest - i).map((v) =>
      h("option", { value: v, selected: v === wf.version }, `v${v}${v === latest ? " (current)" : ""}`),
    ),
  );
  const start = async (dryRun) => {
    try {
      const res = await api("POST", `/v1/workflows/${encodeURIComponent(name)}/runs`, { dryRun });
      if (dryRun) {
        planBox.replaceChildren(
          planTable(res),
          h("button", { class: "primary", type: "button", onclick: () => start(false) }, "Start run"),
        );
      } else location.hash = `#/runs/${res.id}`;
    } catch (error) {
      planBox.replaceChildren(errorBox(error));
    }
  };
  show(
    h("h1", {}, `Workflow ${wf.name}`),
    h(
      "div",
      { class: "row card" },
      versionSelect,
      canWrite() && wf.version === latest
        ? h("button", { type: "button", onclick: () => start(true) }, "Plan a run…")
        : "",
      h("a", { href: `#/runs?workflow=${encodeURIComponent(name)}` }, "Runs of this workflow"),
    ),
    planBox,
    h("h2", {}, "Schedules"),
    h(
      "div",
      { "data-testid": "schedules" },
      schedules.length === 0
        ? h("p", { class: "muted" }, "None.")
        : table(
            [
              ["cron", (s) => s.cron],
              ["time zone", (s) => s.timezone ?? "UTC"],
              ["enabled", (s) => (s.enabled === false ? "no" : "yes")],
              [
                "next fires",
                (s) =>
                  nextFires(s.cron, s.timezone)
                    .map((d) => d.toLocaleString())
                    .join(" · ") || "—",
              ],
            ],
            schedules,
          ),
    ),
    h("h2", {}, `Steps (${def.steps.length})`),
    table(
      [
        ["step", (s) => s.id],
        ["type", (s) => s.run?.type ?? ""],
        ["needs", (s) => (s.needs ?? []).join(", ")],
        ["queue", (s) => s.queue ?? ""],
        ["provides", (s) => (s.provides ?? []).join(", ")],
      ],
      def.steps,
    ),
    h("h2", {}, "Definition"),
    json(def),
  );
}

// ------------------------------------------------------------------------------------------------
// Assets

async function assetsPage() {
  const page = await api("GET", "/v1/assets?limit=100");
  show(
    h("h1", {}, "Assets"),
    page.items.length === 0
      ? h("p", { class: "muted" }, "No assets: steps declare the assets they provide.")
      : table(
          [
            ["asset", (a) => h("a", { href: `#/assets/${encodeURIComponent(a.key)}` }, a.key)],
            ["freshness", (a) => badge(a.freshness)],
            ["last materialized", (a) => time(a.lastMaterializedAt)],
            ["materializations", (a) => a.materializations],
            ["workflows", (a) => a.workflows.join(", ")],
          ],
          page.items,
        ),
  );
}

async function assetPage(key) {
  const a = await api("GET", `/v1/assets/${encodeURIComponent(key)}`);
  const planBox = h("div");
  const materialize = async (dryRun) => {
    try {
      const res = await api("POST", "/v1/materializations", { assets: [key], dryRun });
      const plan = res.plans[0];
      if (dryRun) {
        planBox.replaceChildren(
          plan ? planTable(plan) : h("p", {}, "Nothing to plan."),
          h("button", { class: "primary", type: "button", onclick: () => materialize(false) }, "Materialize"),
        );
      } else {
        const run = res.runs[0];
        if (run) location.hash = `#/runs/${run.id}`;
        else planBox.replaceChildren(h("p", {}, "Nothing to do: the asset is fresh."));
      }
    } catch (error) {
      planBox.replaceChildren(errorBox(error));
    }
  };
  show(
    h("h1", {}, `Asset ${a.key}`),
    h(
      "div",
      { class: "card" },
      h(
        "dl",
        { class: "kv" },
        h("dt", {}, "freshness"),
        h("dd", {}, badge(a.freshness)),
        h("dt", {}, "last materialized"),
        h("dd", {}, time(a.lastMaterializedAt)),
        h("dt", {}, "max age"),
        h("dd", {}, a.policy.maxAgeSeconds ? `${a.policy.maxAgeSeconds} s` : "—"),
        h("dt", {}, "workflows"),
        h("dd", {}, a.workflows.join(", ")),
        h("dt", {}, "partitions"),
        h("dd", {}, String(a.partitionCount)),
      ),
      canWrite()
        ? h("button", { type: "button", onclick: () => materialize(true) }, "Plan materialization…")
        : "",
      planBox,
    ),
    h("h2", {}, "History"),
    table(
      [
        ["when", (m) => time(m.createdAt)],
        ["run", (m) => h("a", { href: `#/runs/${m.runId}` }, m.runId.slice(0, 8))],
        ["step", (m) => m.stepId],
        ["partition", (m) => m.partitionKey ?? ""],
      ],
      a.history.items,
    ),
  );
}

// ------------------------------------------------------------------------------------------------
// Queues and workers

function queuesPage() {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  show(h("h1", {}, "Queues and workers"), body);
  const refresh = async () => {
    try {
      const { items } = await api("GET", "/v1/queues");
      const workers = items.flatMap((q) => q.workers.map((w) => ({ ...w, queue: q.name })));
      body.replaceChildren(
        table(
          [
            ["queue", (q) => q.name],
            ["backlog", (q) => q.backlog],
            ["running", (q) => q.running],
            ["retrying later", (q) => q.retryingLater],
            [
              "oldest waiting",
              (q) => (q.oldestWaitingSeconds === null ? "—" : `${q.oldestWaitingSeconds} s`),
            ],
            ["workers", (q) => q.workers.length],
            ["scaler target", (q) => (q.scaler ? `${q.scaler.target} (${q.scaler.reason})` : "—")],
            [
              "pool",
              (q) => (q.pool ? `${q.pool.min}–${q.pool.max} × ${q.pool.concurrency}` : "not configured"),
            ],
            ["", (q) => (q.warning ? h("span", { class: "error" }, q.warning) : "")],
          ],
          items,
          (q) => ({ "data-queue": q.name }),
        ),
        h("h2", {}, "Workers online"),
        workers.length === 0
          ? h("p", { class: "muted" }, "None.")
          : table(
              [
                ["worker", (w) => w.id],
                ["host / pid", (w) => `${w.host} / ${w.pid}`],
                ["queues", (w) => w.queues.join(", ")],
                ["busy", (w) => `${w.steps.length} of ${w.concurrency}`],
                ["since", (w) => time(w.startedAt)],
              ],
              [...new Map(workers.map((w) => [w.id, w])).values()],
            ),
      );
    } catch (error) {
      body.replaceChildren(errorBox(error));
    }
  };
  void refresh();
  every(3000, refresh);
}

// ------------------------------------------------------------------------------------------------

async function route() {
  for (const fn of cleanups.splice(0)) fn();
  if (!session.csrfToken && !(await loadSession())) return loginPage();
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent = `${session.tenant} · ${session.scopes.join(", ")}`;
  const [path, search] = (location.hash.slice(1) || "/runs").split("?");
  const query = new URLSearchParams(search ?? "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll("nav a"))
    a.classList.toggle("active", a.getAttribute("href") === `#/${parts[0]}`);
  try {
    if (parts[0] === "runs" && parts[1]) runPage(main, parts[1], onLeave);
    else if (parts[0] === "workflows" && parts[1]) await workflowPage(parts[1], query);
    else if (parts[0] === "workflows") await workflowsPage();
    else if (parts[0] === "assets" && parts[1]) await assetPage(parts[1]);
    else if (parts[0] === "assets") await assetsPage();
    else if (parts[0] === "queues") queuesPage();
    else await runsPage(query);
  } catch (error) {
    show(errorBox(error));
  }
}

document.getElementById("logout").addEventListener("click", async () => {
  await api("DELETE", "/v1/session").catch(() => {});
  Object.assign(session, { csrfToken: null, scopes: [], tenant: null });
  loginPage();
});
window.addEventListener("flowline:logged-out", () => {
  for (const fn of cleanups.splice(0)) fn();
  session.csrfToken = null;
  loginPage("The session has ended; log in again.");
});
window.addEventListener("hashchange", route);
void route();
