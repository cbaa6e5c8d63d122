/**
 * A run, live: its DAG laid out with dagre, step states following the run's event stream. Large
 * runs (more than GRAPH_LIMIT steps) show their layers as status strips and a virtualised step
 * list instead of the drawing, so a 5,000-step run stays responsive. The stream is authenticated by
 * the session cookie; every event id is applied once, and a reconnect resumes after the last one.
 */
import { api, badge, canWrite, duration, errorBox, h, json, planTable, time } from "./lib.js";

/** Above this many steps the graph is shown collapsed by layer (a layout takes seconds past it). */
export const GRAPH_LIMIT = 300;
const NODE_W = 150;
const NODE_H = 44;
const ROW = 28;
const SVG = "http://www.w3.org/2000/svg";
const STEP_STATUS = {
  "step.queued": "queued",
  "step.started": "running",
  "step.retrying": "retrying",
  "step.succeeded": "succeeded",
  "step.failed": "failed",
  "step.skipped": "skipped",
  "step.cancelled": "cancelled",
  "step.reused": "reused",
};
const RUN_STATUS = {
  "run.queued": "queued",
  "run.started": "running",
  "run.paused": "paused",
  "run.resumed": "running",
  "run.succeeded": "succeeded",
  "run.failed": "failed",
  "run.cancelled": "cancelled",
  "run.rolling_back": "rolling_back",
  "run.rolled_back": "rolled_back",
};
const DONE = new Set(["succeeded", "failed", "skipped", "cancelled", "reused"]);
const MAX_LOG_LINES = 2000;
const MAX_EVENTS_SHOWN = 300;

/** What a test (or a curious person in the console) can read about the stream. */
const stats = { received: 0, duplicates: 0, connects: 0, drops: 0, lastEventId: 0 };
window.flowlineStream = stats;

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

export function runPage(main, runId, onLeave) {
  let run = null;
  /** step id → step (from GET /v1/runs/{id}, then kept current by events). */
  const steps = new Map();
  let needs = new Map();
  let selected = null;
  /** Steps picked on the graph for a subgraph run (pick mode), or null outside pick mode. */
  let picked = null;
  let lastId = 0;
  let closed = false;
  let source = null;
  let retryTimer = null;
  const dirty = new Set();
  let frame = 0;
  const logs = new Map();

  const head = h("div", { class: "card" }, h("p", { class: "muted" }, "Loading…"));
  const actions = h("div", { class: "row" });
  const pickBox = h("div", { "data-testid": "subgraph" });
  const liveBadge = h("span", { class: "live", "data-testid": "live" }, "connecting");
  const graphBox = h("div", { class: "graph", "data-testid": "graph" });
  const listFilter = h("input", { placeholder: "filter steps", "aria-label": "filter steps" });
  const list = h("div", { class: "vlist", "data-testid": "steps" });
  const details = h(
    "div",
    { class: "card", "data-testid": "details" },
    h("p", { class: "muted" }, "Pick a step."),
  );
  const eventsList = h("ol", { class: "events", "data-testid": "events" });
  main.replaceChildren(
    h("h1", {}, `Run ${runId}`),
    head,
    h(
      "div",
      { class: "run-layout" },
      h("div", {}, graphBox, h("h2", {}, "Steps"), h("div", { class: "row" }, listFilter), list),
      h("div", {}, details, h("h2", {}, "Events ", liveBadge), eventsList),
    ),
  );

  // --- rendering -------------------------------------------------------------------------------

  const counts = () => {
    const c = {};
    for (const s of steps.values()) c[s.status] = (c[s.status] ?? 0) + 1;
    return c;
  };

  function renderHead() {
    if (!run) return;
    const c = counts();
    const done = [...steps.values()].filter((s) => DONE.has(s.status)).length;
    const pct = steps.size ? Math.round((100 * done) / steps.size) : 0;
    actions.replaceChildren(...actionButtons());
    head.replaceChildren(
      h(
        "div",
        { class: "row" },
        h("strong", {}, `${run.workflow.name} v${run.workflow.version}`),
        h("span", { "data-testid": "run-status" }, badge(run.status)),
        h("span", { class: "muted" }, `${run.kind} · ${run.trigger}`),
        run.parentRunId ? h("a", { href: `#/runs/${run.parentRunId}` }, "parent run") : "",
      ),
      h(
        "div",
        { class: "row" },
        h("span", {}, `${done} / ${steps.size} steps done`),
        h(
          "div",
          { class: "progress", role: "progressbar", "aria-valuenow": pct },
          h("div", { style: `width:${pct}%` }),
        ),
        h(
          "span",
          { class: "muted" },
          Object.entries(c)
            .map(([k, v]) => `${v} ${k}`)
            .join(" · "),
        ),
      ),
      h(
        "div",
        { class: "row muted" },
        `created ${time(run.createdAt)} · started ${time(run.startedAt)} · duration ${duration(run.startedAt, run.finishedAt)}`,
      ),
      run.error ? json(run.error) : "",
      actions,
      pickBox,
    );
  }

  function actionButtons() {
    if (!canWrite() || !run) return [];
    const s = run.status;
    const terminal = ["succeeded", "failed", "cancelled", "rolled_back"].includes(s);
    const act = (name, enabled) =>
      h(
        "button",
        {
          type: "button",
          disabled: !enabled,
          "data-action": name,
          onclick: async (e) => {
            e.target.disabled = true;
            try {
              const res = await api("POST", `/v1/runs/${runId}/${name}`, {});
              const next = res?.run?.id;
              if (next && next !== runId) location.hash = `#/runs/${next}`;
            } catch (error) {
              actions.append(errorBox(error));
            }
          },
        },
        name,
      );
    return [
      h(
        "button",
        { type: "button", "data-action": "pick", onclick: togglePick },
        picked ? "stop picking" : "pick steps…",
      ),
      act("cancel", !terminal && s !== "rolling_back"),
      act("pause", s === "running" || s === "queued"),
      act("resume", s === "paused"),
      act("retry", s === "failed" || s === "cancelled"),
      act("rollback", s === "succeeded" || s === "failed" || s === "cancelled"),
    ];
  }

  // The graph: laid out once (the structure never changes), node states updated in place.
  const nodes = new Map();
  function drawGraph() {
    if (steps.size > GRAPH_LIMIT || typeof Worker === "undefined") return drawLayers();
    graphBox.replaceChildren(h("p", { class: "muted", style: "padding:0.6rem" }, "Laying out the graph…"));
    const worker = new Worker("/ui/layout-worker.js");
    onLeave(() => worker.terminate());
    worker.onmessage = ({ data }) => {
      worker.terminate();
      renderGraph(data);
    };
    worker.onerror = () => drawLayers();
    const edges = [];
    for (const [id, deps] of needs) for (const d of deps) if (steps.has(d)) edges.push([d, id]);
    worker.postMessage({ ids: [...steps.keys()], edges, node: { width: NODE_W, height: NODE_H } });
  }

  function renderGraph({ width, height, nodes: placed, edges }) {
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
    for (const pts of edges) {
      const d = pts.map((p, i) => `${i ? "L" : "M"}${p.x},${p.y}`).join(" ");
      root.append(svg("path", { class: "edge", d }));
    }
    for (const { id, x, y } of placed) {
      const group = svg("g", {
        class: "node",
        "data-step": id,
        transform: `translate(${x - NODE_W / 2},${y - NODE_H / 2})`,
      });
      const label = svg("text", { x: 8, y: 18 });
      label.textContent = id.length > 20 ? `${id.slice(0, 19)}…` : id;
      const sub = svg("text", { x: 8, y: 34, class: "sub" });
      const bar = svg("rect", { class: "bar", x: 0, y: NODE_H - 3, height: 3, width: 0 });
      group.append(svg("rect", { width: NODE_W, height: NODE_H }), label, sub, bar);
      group.addEventListener("click", () => select(id));
      root.append(group);
      nodes.set(id, { group, sub, bar });
    }
    graphBox.replaceChildren(root);
    for (const id of steps.keys()) paintNode(id);
  }

  function paintNode(id) {
    const node = nodes.get(id);
    const s = steps.get(id);
    if (!node || !s) return;
    node.group.setAttribute("data-status", s.status);
    node.group.classList.toggle("selected", id === selected);
    node.group.classList.toggle("picked", picked?.has(id) ?? false);
    const extra =
      s.attempt > 1
        ? ` · try ${s.attempt}`
        : s.planReason && !["run", "selected"].includes(s.planReason)
          ? ` · ${s.planReason}`
          : "";
    node.sub.textContent = `${s.status}${extra}${s.status === "running" && s.progress != null ? ` · ${Math.round(s.progress * 100)}%` : ""}`;
    node.bar.setAttribute("width", s.status === "running" && s.progress != null ? NODE_W * s.progress : 0);
  }

  /** Large runs: one status strip per dependency layer instead of the drawing. */
  let layers = null;
  function drawLayers() {
    const depth = new Map();
    const visit = (id, seen = new Set()) => {
      if (depth.has(id)) return depth.get(id);
      if (seen.has(id)) return 0;
      seen.add(id);
      const d =
        Math.max(-1, ...(needs.get(id) ?? []).filter((x) => steps.has(x)).map((x) => visit(x, seen))) + 1;
      depth.set(id, d);
      return d;
    };
    layers = [];
    for (const id of steps.keys()) {
      const d = visit(id);
      if (!layers[d]) layers[d] = [];
      layers[d].push(id);
    }
    paintLayers();
  }
  function paintLayers() {
    if (!layers) return;
    const shown = layers.slice(0, 60);
    graphBox.replaceChildren(
      h(
        "div",
        { class: "layers", style: "padding:0.6rem" },
        h(
          "p",
          { class: "muted" },
          `${steps.size} steps in ${layers.length} layers: the graph is collapsed by layer.`,
        ),
        shown.map((ids, i) => {
          const c = {};
          for (const id of ids) c[steps.get(id).status] = (c[steps.get(id).status] ?? 0) + 1;
          return h(
            "div",
            { class: "layer" },
            h("span", { class: "name" }, `layer ${i + 1} (${ids.length})`),
            h(
              "div",
              { class: "strip" },
              Object.entries(c).map(([status, n]) =>
                h("div", {
                  class: `s-${status}`,
                  style: `width:${(100 * n) / ids.length}%`,
                  title: `${n} ${status}`,
                }),
              ),
            ),
          );
        }),
        layers.length > shown.length
          ? h("p", { class: "muted" }, `… ${layers.length - shown.length} more layers`)
          : "",
      ),
    );
  }

  // The step list is virtualised: only the rows in view exist.
  let filtered = [];
  const spacer = h("div", { style: "position:relative" });
  list.append(spacer);
  function refilter() {
    const q = listFilter.value.trim().toLowerCase();
    filtered = [...steps.keys()].filter(
      (id) => !q || id.toLowerCase().includes(q) || steps.get(id).status === q,
    );
    spacer.style.height = `${filtered.length * ROW}px`;
    list.style.height = `${Math.min(360, Math.max(1, filtered.length) * ROW + 2)}px`;
    paintList();
  }
  function paintList() {
    const first = Math.max(0, Math.floor(list.scrollTop / ROW) - 5);
    const last = Math.min(filtered.length, first + Math.ceil(list.clientHeight / ROW) + 10);
    const rows = [];
    for (let i = first; i < last; i++) {
      const s = steps.get(filtered[i]);
      rows.push(
        h(
          "div",
          {
            class: "vrow",
            style: `top:${i * ROW}px`,
            "data-row": s.id,
            tabindex: 0,
            onclick: () => select(s.id),
            onkeydown: (e) => e.key === "Enter" && select(s.id),
          },
          badge(s.status),
          h("span", {}, s.id),
          h("span", { class: "muted" }, `try ${s.attempt}/${s.maxAttempts}`),
          h("span", { class: "muted" }, duration(s.startedAt, s.finishedAt)),
        ),
      );
    }
    spacer.replaceChildren(...rows);
  }
  list.addEventListener("scroll", () => requestAnimationFrame(paintList));
  listFilter.addEventListener("input", refilter);

  function togglePick() {
    picked = picked ? null : new Set();
    for (const id of nodes.keys()) paintNode(id);
    renderPick();
    renderHead();
  }

  /** A subgraph of this run's workflow: the picked steps run, the rest is reused from this run. */
  function renderPick(plan) {
    if (!picked) return pickBox.replaceChildren();
    const request = (dryRun) => ({
      workflow: run.workflow.name,
      steps: [...picked],
      parentRunId: runId,
      dryRun,
    });
    const start = async () => {
      try {
        const res = await api("POST", "/v1/subgraphs", request(false));
        if (res.run) location.hash = `#/runs/${res.run.id}`;
      } catch (error) {
        pickBox.append(errorBox(error));
      }
    };
    const planIt = async () => {
      try {
        renderPick((await api("POST", "/v1/subgraphs", request(true))).plan);
      } catch (error) {
        pickBox.append(errorBox(error));
      }
    };
    pickBox.replaceChildren(
      h(
        "div",
        { class: "row" },
        h("span", {}, `${picked.size} picked (click steps on the graph or in the list)`),
        h("button", { type: "button", disabled: picked.size === 0, onclick: planIt }, "Plan subgraph…"),
        plan ? h("button", { type: "button", class: "primary", onclick: start }, "Start subgraph") : "",
      ),
      plan ? planTable(plan) : "",
    );
  }

  function select(id) {
    if (picked) {
      if (picked.has(id)) picked.delete(id);
      else picked.add(id);
      paintNode(id);
      renderPick();
      return;
    }
    const previous = selected;
    selected = id;
    if (previous) paintNode(previous);
    paintNode(id);
    renderDetails();
    if (!logs.has(id)) void loadLogs(id);
    if (steps.get(id)?.outputStale) void loadOutput(id);
  }

  /** A step's whole output (run details leave out large ones), once it is shown. */
  async function loadOutput(id) {
    const s = steps.get(id);
    if (!s) return;
    s.outputStale = false;
    try {
      s.output = (await api("GET", `/v1/runs/${runId}/steps/${encodeURIComponent(id)}/output`)).output;
    } catch {
      s.outputStale = true;
      return;
    }
    dirty.add(id);
    schedule();
  }

  function renderDetails() {
    const s = selected && steps.get(selected);
    if (!s) return;
    const lines = logs.get(s.id) ?? [];
    const parts = [
      h("h2", {}, `Step ${s.id}`),
      h(
        "dl",
        { class: "kv" },
        h("dt", {}, "status"),
        h("dd", { "data-testid": "step-status" }, badge(s.status)),
        h("dt", {}, "attempt"),
        h("dd", {}, `${s.attempt} of ${s.maxAttempts}`),
        h("dt", {}, "queue"),
        h("dd", {}, s.queue),
        h("dt", {}, "plan"),
        h("dd", {}, s.planReason ?? "—"),
        s.reusedFromRunId
          ? [
              h("dt", {}, "reused from"),
              h("dd", {}, h("a", { href: `#/runs/${s.reusedFromRunId}` }, s.reusedFromRunId.slice(0, 8))),
            ]
          : "",
        h("dt", {}, "worker"),
        h("dd", {}, s.workerId ?? "—"),
        h("dt", {}, "started"),
        h("dd", {}, time(s.startedAt)),
        h("dt", {}, "duration"),
        h("dd", {}, duration(s.startedAt, s.finishedAt)),
        h("dt", {}, "progress"),
        h("dd", {}, s.progress == null ? "—" : `${Math.round(s.progress * 100)}% ${s.progressMessage ?? ""}`),
      ),
      s.output != null ? [h("h2", {}, "Output"), json(s.output)] : "",
      s.error != null ? [h("h2", {}, "Error"), json(s.error)] : "",
      h("h2", {}, `Logs (${lines.length})`),
      h("pre", { class: "logs", "data-testid": "logs" }, lines.map((l) => l.line).join("\n") || "—"),
    ];
    details.replaceChildren(...parts.flat().filter(Boolean));
  }

  /** The step's lines so far, then the stream's: a line the stream brought meanwhile is kept once. */
  async function loadLogs(id) {
    logs.set(id, logs.get(id) ?? []);
    try {
      const page = await api(
        "GET",
        `/v1/runs/${runId}/logs?step=${encodeURIComponent(id)}&limit=${MAX_LOG_LINES}`,
      );
      const last = page.items.at(-1)?.id ?? 0;
      const streamed = logs.get(id).filter((l) => l.id > last);
      logs.set(
        id,
        [...page.items.map((l) => ({ id: l.id, line: l.line })), ...streamed].slice(-MAX_LOG_LINES),
      );
      if (selected === id) renderDetails();
    } catch {
      /* the stream keeps adding lines */
    }
  }

  function schedule() {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      for (const id of dirty) paintNode(id);
      if (layers) paintLayers();
      if (selected && dirty.has(selected)) renderDetails();
      dirty.clear();
      renderHead();
      paintList();
    });
  }

  // --- live events ---------------------------------------------------------------------------

  function apply(e) {
    const data = JSON.parse(e.data);
    const id = Number(e.lastEventId || data.id);
    stats.received++;
    if (id <= lastId) {
      stats.duplicates++;
      return;
    }
    lastId = id;
    stats.lastEventId = id;
    const type = e.type;
    const li = h("li", { "data-event-id": id }, `${id} ${type}${data.stepId ? ` ${data.stepId}` : ""}`);
    eventsList.prepend(li);
    if (eventsList.childElementCount > MAX_EVENTS_SHOWN) eventsList.lastElementChild.remove();
    if (RUN_STATUS[type] && run) {
      run.status = RUN_STATUS[type];
      if (type === "run.started") run.startedAt ??= data.at;
      if (["succeeded", "failed", "cancelled", "rolled_back"].includes(run.status)) run.finishedAt = data.at;
      if (data.error) run.error = data.error;
    }
    const s = data.stepId && steps.get(data.stepId);
    if (s) {
      if (STEP_STATUS[type]) s.status = STEP_STATUS[type];
      if (data.attempt) s.attempt = data.attempt;
      if (type === "step.started") {
        s.startedAt = data.at;
        s.finishedAt = null;
        s.workerId = data.workerId ?? s.workerId;
      }
      if (DONE.has(s.status) && STEP_STATUS[type]) s.finishedAt = data.at;
      // A step's output is kept on the step, not in its events: fetched when it is shown.
      if (type === "step.succeeded" && !data.phase) {
        s.outputStale = true;
        if (selected === s.id) void loadOutput(s.id);
      }
      if ("error" in data) s.error = data.error;
      if (type === "step.progress") {
        s.progress = data.progress ?? s.progress;
        s.progressMessage = data.message ?? s.progressMessage;
      }
      if (type === "step.log" && logs.has(s.id)) {
        const lines = logs.get(s.id);
        // The fetched page may already hold this line (it was read before the stream brought it).
        if ((lines.at(-1)?.id ?? 0) < id) lines.push({ id, line: String(data.line ?? "") });
        if (lines.length > MAX_LOG_LINES) lines.shift();
      }
      dirty.add(s.id);
    }
    schedule();
  }

  function connect() {
    if (closed) return;
    stats.connects++;
    // A new EventSource cannot send Last-Event-ID itself: resume with ?after= instead.
    source = new EventSource(`/v1/runs/${runId}/events${lastId ? `?after=${lastId}` : ""}`);
    source.onopen = () => {
      liveBadge.textContent = "live";
      liveBadge.className = "live on";
    };
    for (const type of [
      ...Object.keys(STEP_STATUS),
      ...Object.keys(RUN_STATUS),
      "step.progress",
      "step.log",
      "asset.materialized",
    ])
      source.addEventListener(type, apply);
    source.addEventListener("end", () => {
      source.close();
      liveBadge.textContent = "run finished";
      liveBadge.className = "live";
    });
    source.onerror = () => {
      stats.drops++;
      liveBadge.textContent = "reconnecting";
      liveBadge.className = "live off";
      // The browser reconnects by itself (with Last-Event-ID) after a network error; after an
      // HTTP error it gives up, so start a new stream from the last event applied.
      if (source.readyState === EventSource.CLOSED && !closed) {
        clearTimeout(retryTimer);
        retryTimer = setTimeout(async () => {
          // A lost session sends the page to the login form instead of retrying forever.
          try {
            await api("GET", "/v1/session");
            connect();
          } catch (error) {
            if (error.status !== 401) retryTimer = setTimeout(connect, 3000);
          }
        }, 2000);
      }
    };
  }

  onLeave(() => {
    closed = true;
    clearTimeout(retryTimer);
    source?.close();
    if (frame) cancelAnimationFrame(frame);
  });

  (async () => {
    try {
      const details = await api("GET", `/v1/runs/${runId}`);
      run = details;
      for (const s of details.steps) steps.set(s.id, s);
      try {
        const wf = await api(
          "GET",
          `/v1/workflows/${encodeURIComponent(run.workflow.name)}?version=${run.workflow.version}`,
        );
        needs = new Map(wf.definition.steps.map((s) => [s.id, s.needs ?? []]));
      } catch {
        needs = new Map();
      }
      renderHead();
      drawGraph();
      refilter();
      connect();
    } catch (error) {
      head.replaceChildren(errorBox(error));
    }
  })();
}
