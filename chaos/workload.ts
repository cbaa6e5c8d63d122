/**
 * The workload: a few workflows whose every step and compensation is an `http` step to the
 * recording target, and a driver that keeps submitting, cancelling, pausing, resuming and rolling
 * back runs over HTTP, spread over both APIs, until told to stop.
 *
 * Every submission carries a fresh `tag` param (and its own Idempotency-Key where the route takes
 * one), so the target can tell runs apart. A request that fails for an infrastructure reason (a
 * connection reset, a 5xx while a store is down) is retried with the same key.
 */
import { randomUUID } from "node:crypto";
import type { Rng } from "./rng.ts";
import { ROOT_KEY } from "./system.ts";

export interface Api {
  apis: string[];
  /**
   * Retries infrastructure failures for up to a minute; answers the last response. `body` may be
   * a function of the try (0, 1, …): a route without Idempotency-Key gets a fresh tag per try, so
   * a retry that creates a second run never shares a tag with the first.
   */
  call(
    method: string,
    path: string,
    body?: unknown | ((attempt: number) => unknown),
    headers?: Record<string, string>,
  ): Promise<{ status: number; json: any }>;
}

export function apiClient(apis: string[], rng: Rng, isStopping: () => boolean): Api {
  return {
    apis,
    call: async (method, path, body, headers = {}) => {
      const deadline = Date.now() + 60_000;
      let last = "";
      for (let i = 0; Date.now() < deadline; i++) {
        const base = apis[(rng.int(apis.length) + i) % apis.length]!;
        const payload = typeof body === "function" ? body(i) : body;
        try {
          const res = await fetch(`${base}/v1${path}`, {
            method,
            headers: {
              authorization: `Bearer ${ROOT_KEY}`,
              ...(payload === undefined ? {} : { "content-type": "application/json" }),
              ...headers,
            },
            ...(payload === undefined ? {} : { body: JSON.stringify(payload) }),
            signal: AbortSignal.timeout(15_000),
          });
          const text = await res.text();
          if (res.status < 500) return { status: res.status, json: text ? JSON.parse(text) : null };
          last = `${res.status} ${text.slice(0, 200)}`;
        } catch (error) {
          last = String(error);
        }
        if (isStopping() && i > 3) break;
        await new Promise((r) => setTimeout(r, 300 + 200 * Math.min(i, 10)));
      }
      throw new Error(`${method} ${path}: ${last}`);
    },
  };
}

type Phase = "execute" | "compensate";

interface EffectOptions {
  ms: number;
  failTimes?: number;
  asset?: string;
  phase?: Phase;
  timeoutSeconds?: number;
}

/** An `http` step that POSTs one effect to the recording target. */
export function effectStep(targetUrl: string, workflow: string, step: string, o: EffectOptions) {
  return {
    type: "http",
    method: "POST",
    url: targetUrl,
    body: {
      tag: "{{params.tag}}",
      partition: "{{params.partition}}",
      workflow,
      step,
      phase: o.phase ?? "execute",
      asset: o.asset ?? null,
      ms: o.ms,
      failTimes: o.failTimes ?? 0,
    },
    timeoutSeconds: o.timeoutSeconds ?? 20,
  };
}

const PARAMS = { tag: "none", partition: "-" };
const RETRY = { maxAttempts: 4, backoff: "fixed", delaySeconds: 1 };

export function workflows(targetUrl: string): Record<string, unknown> {
  const e = (wf: string, step: string, o: EffectOptions) => effectStep(targetUrl, wf, step, o);
  return {
    "chaos-chain": {
      params: PARAMS,
      defaults: { retry: RETRY },
      steps: ["a", "b", "c", "d"].map((id, i) => ({
        id,
        needs: i === 0 ? [] : [["a", "b", "c", "d"][i - 1]],
        run: e("chaos-chain", id, { ms: 150 + 100 * i }),
      })),
    },
    "chaos-slow": {
      params: PARAMS,
      defaults: { retry: RETRY },
      steps: ["s1", "s2", "s3", "s4", "s5"].map((id, i) => ({
        id,
        needs: i === 0 ? [] : [`s${i}`],
        run: e("chaos-slow", id, { ms: 900 }),
      })),
    },
    "chaos-fan": {
      params: PARAMS,
      defaults: { retry: RETRY },
      steps: [
        { id: "root", run: e("chaos-fan", "root", { ms: 100 }) },
        ...[1, 2, 3, 4, 5, 6].map((n) => ({
          id: `leaf${n}`,
          needs: ["root"],
          run: e("chaos-fan", `leaf${n}`, { ms: 200 + 50 * n }),
        })),
        {
          id: "join",
          needs: [1, 2, 3, 4, 5, 6].map((n) => `leaf${n}`),
          run: e("chaos-fan", "join", { ms: 150 }),
        },
      ],
    },
    "chaos-flaky": {
      params: PARAMS,
      steps: [
        { id: "f1", retry: RETRY, run: e("chaos-flaky", "f1", { ms: 100, failTimes: 2 }) },
        { id: "f2", needs: ["f1"], retry: RETRY, run: e("chaos-flaky", "f2", { ms: 100, failTimes: 1 }) },
        // Fails for good: the run fails, with its sibling left to finish.
        {
          id: "f3",
          needs: ["f1"],
          onFailure: "continue",
          retry: { maxAttempts: 2, backoff: "fixed", delaySeconds: 1 },
          run: e("chaos-flaky", "f3", { ms: 100, failTimes: 99 }),
        },
      ],
    },
    "chaos-timeout": {
      params: PARAMS,
      steps: [
        {
          id: "slowpoke",
          timeoutSeconds: 1,
          retry: { maxAttempts: 2, backoff: "fixed", delaySeconds: 1 },
          onFailure: "continue",
          run: e("chaos-timeout", "slowpoke", { ms: 3000 }),
        },
        { id: "quick", retry: RETRY, run: e("chaos-timeout", "quick", { ms: 200 }) },
      ],
    },
    "chaos-rollback": {
      params: { ...PARAMS, breaks: "yes" },
      defaults: { retry: RETRY },
      steps: [
        {
          id: "r1",
          run: e("chaos-rollback", "r1", { ms: 200 }),
          compensate: e("chaos-rollback", "r1", { ms: 200, phase: "compensate" }),
        },
        {
          id: "r2",
          needs: ["r1"],
          run: e("chaos-rollback", "r2", { ms: 200 }),
          compensate: e("chaos-rollback", "r2", { ms: 200, phase: "compensate" }),
        },
        {
          id: "r3",
          needs: ["r2"],
          onFailure: "rollback",
          retry: { maxAttempts: 1 },
          run: e("chaos-rollback", "r3", { ms: 200, failTimes: 99 }),
        },
      ],
    },
    // Succeeds; some of its runs are rolled back on request afterwards.
    "chaos-undo": {
      params: PARAMS,
      defaults: { retry: RETRY },
      steps: ["u1", "u2"].map((id, i) => ({
        id,
        needs: i === 0 ? [] : ["u1"],
        run: e("chaos-undo", id, { ms: 200 }),
        compensate: e("chaos-undo", id, { ms: 200, phase: "compensate" }),
      })),
    },
    "chaos-assets": {
      params: PARAMS,
      defaults: { retry: RETRY },
      assets: { shared_a: {}, shared_b: {} },
      steps: [
        {
          id: "load",
          provides: ["shared_a"],
          run: e("chaos-assets", "load", { ms: 700, asset: "shared_a" }),
        },
        {
          id: "build",
          requires: ["shared_a"],
          provides: ["shared_b"],
          run: e("chaos-assets", "build", { ms: 500, asset: "shared_b" }),
        },
      ],
    },
    "chaos-cron": {
      params: PARAMS,
      concurrency: { limit: 1 },
      schedules: [{ cron: "*/5 * * * * *", timezone: "UTC", params: { tag: "cron" } }],
      defaults: { retry: RETRY },
      steps: [{ id: "tick", run: e("chaos-cron", "tick", { ms: 200 }) }],
    },
  };
}

export interface Submitted {
  runId: string;
  workflow: string;
  how: string;
  tag: string;
}

export interface DriverState {
  /** Every run an API accepted (answered with its id). */
  runs: Map<string, Submitted>;
  /** Idempotency-Key → run ids answered for it (more than one is a duplicate). */
  idempotency: Map<string, Set<string>>;
  cancelled: Map<string, number>;
  actions: Record<string, number>;
  errors: string[];
}

export interface Driver {
  state: DriverState;
  stop(): Promise<void>;
}

export async function installWorkflows(api: Api, targetUrl: string): Promise<void> {
  for (const [name, def] of Object.entries(workflows(targetUrl))) {
    const res = await api.call("PUT", `/workflows/${name}`, def);
    if (res.status >= 300) throw new Error(`PUT ${name}: ${res.status} ${JSON.stringify(res.json)}`);
  }
}

/**
 * Drives the workload until `stop()`; `onRun` sees every accepted run (to follow its stream).
 * `busy()` true holds new work back: the workload stays within what the machine can run, so a
 * backlog never passes for a recovery problem.
 */
export function startDriver(
  api: Api,
  rng: Rng,
  onRun: (run: Submitted) => void,
  busy: () => boolean,
): Driver {
  const state: DriverState = {
    runs: new Map(),
    idempotency: new Map(),
    cancelled: new Map(),
    actions: {},
    errors: [],
  };
  let stopping = false;
  let tags = 0;
  const nextTag = () => `t${++tags}`;
  const accepted = (runId: string, workflow: string, how: string, tag: string) => {
    if (state.runs.has(runId)) return;
    const run = { runId, workflow, how, tag };
    state.runs.set(runId, run);
    onRun(run);
  };
  const byWorkflow = (workflow: string) => [...state.runs.values()].filter((r) => r.workflow === workflow);

  const submit = async (workflow: string, extra: Record<string, unknown> = {}) => {
    const tag = nextTag();
    const key = `chaos-${randomUUID()}`;
    const body = { params: { tag, ...extra } };
    const ids = new Set<string>();
    state.idempotency.set(key, ids);
    // Sometimes the same request twice at once, one per API: both must answer the same run.
    const copies = rng.chance(0.25) ? 2 : 1;
    await Promise.all(
      Array.from({ length: copies }, async () => {
        const res = await api.call("POST", `/workflows/${workflow}/runs`, body, { "idempotency-key": key });
        if (res.status !== 200 && res.status !== 202) throw new Error(`submit ${workflow}: ${res.status}`);
        ids.add(res.json.id);
        accepted(res.json.id, workflow, "submit", tag);
      }),
    );
    return [...ids][0]!;
  };

  const activeOf = async (workflow: string, statuses: string[]) => {
    const candidates = byWorkflow(workflow).slice(-8);
    for (const c of rng.shuffle(candidates)) {
      const res = await api.call("GET", `/runs/${c.runId}`);
      if (statuses.includes(res.json?.status)) return c.runId;
    }
    return undefined;
  };

  const actions: Array<[number, string, () => Promise<void>]> = [
    [4, "chain", async () => void (await submit("chaos-chain"))],
    [3, "fan-out/join", async () => void (await submit("chaos-fan"))],
    [2, "retries", async () => void (await submit("chaos-flaky"))],
    [1, "timeout", async () => void (await submit("chaos-timeout"))],
    [2, "rollback (failure policy)", async () => void (await submit("chaos-rollback"))],
    [1, "undo run", async () => void (await submit("chaos-undo"))],
    [
      2,
      "cancel",
      async () => {
        const runId = await submit("chaos-slow");
        await new Promise((r) => setTimeout(r, rng.int(3000)));
        const res = await api.call("POST", `/runs/${runId}/cancel`);
        if (res.status === 200 && res.json?.status === "cancelled" && !state.cancelled.has(runId))
          state.cancelled.set(runId, Date.now());
      },
    ],
    [
      2,
      "pause/resume",
      async () => {
        const runId = await submit("chaos-slow");
        await new Promise((r) => setTimeout(r, 500 + rng.int(1500)));
        await api.call("POST", `/runs/${runId}/pause`);
        await new Promise((r) => setTimeout(r, 500 + rng.int(2500)));
        // Resumed whatever happens meanwhile: a paused run left behind would never end.
        for (let i = 0; i < 10; i++) {
          const res = await api.call("POST", `/runs/${runId}/resume`);
          if (res.status < 300 || res.status === 409) break;
        }
      },
    ],
    [
      1,
      "rollback (request)",
      async () => {
        const runId = await activeOf("chaos-undo", ["succeeded"]);
        if (runId) await api.call("POST", `/runs/${runId}/rollback`);
      },
    ],
    [
      2,
      "materialize shared asset",
      async () => {
        const tag = nextTag();
        const assets = [rng.chance(0.5) ? "shared_b" : "shared_a"];
        const res = await api.call("POST", "/materializations", (i: number) => ({
          assets,
          force: true,
          params: { tag: `${tag}.${i}` },
        }));
        for (const r of res.json?.runs ?? []) accepted(r.id, "chaos-assets", "materialize", tag);
      },
    ],
    [
      1,
      "backfill",
      async () => {
        const tag = nextTag();
        const res = await api.call("POST", "/materializations", (i: number) => ({
          assets: ["shared_a"],
          force: true,
          partitions: ["p1", "p2", "p3"],
          params: { tag: `${tag}.${i}` },
        }));
        for (const r of res.json?.runs ?? []) accepted(r.id, "chaos-assets", "backfill", tag);
      },
    ],
    [
      1,
      "subgraph",
      async () => {
        const parent = await activeOf("chaos-chain", ["succeeded"]);
        const tag = nextTag();
        const res = await api.call("POST", "/subgraphs", (i: number) => ({
          workflow: "chaos-chain",
          steps: ["c"],
          downstream: true,
          params: { tag: `${tag}.${i}` },
          ...(parent ? { parentRunId: parent } : {}),
        }));
        if (res.json?.run) accepted(res.json.run.id, "chaos-chain", "subgraph", tag);
      },
    ],
  ];
  const total = actions.reduce((s, [w]) => s + w, 0);
  const pick = () => {
    let x = rng.int(total);
    for (const a of actions) {
      x -= a[0];
      if (x < 0) return a;
    }
    return actions[0]!;
  };

  const inFlight = new Set<Promise<void>>();
  const loop = (async () => {
    while (!stopping) {
      const [, name, act] = pick();
      state.actions[name] = (state.actions[name] ?? 0) + 1;
      const p = act().catch((error) => {
        state.errors.push(`${name}: ${(error as Error).message}`);
      });
      inFlight.add(p);
      p.finally(() => inFlight.delete(p));
      // Bounded in-flight work: a store outage must not pile up thousands of pending requests.
      while (inFlight.size >= 12 && !stopping) await Promise.race(inFlight);
      while (busy() && !stopping) await new Promise((r) => setTimeout(r, 250));
      await new Promise((r) => setTimeout(r, 150 + rng.int(250)));
    }
  })();
  return {
    state,
    stop: async () => {
      stopping = true;
      await loop;
      await Promise.all(inFlight);
    },
  };
}
