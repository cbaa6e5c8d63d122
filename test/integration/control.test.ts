/**
 * Run control and fairness with real worker processes: pause/resume, concurrency limits under a
 * worker crash, priorities, routing by tag to a pool, per-queue rate limits, and the warning for
 * a queue nothing serves.
 */
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.ts";
import { parseConfig } from "../../src/config/index.ts";
import { startSupervisor } from "../../src/jobs/supervisor/index.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import {
  engineSettings,
  eventsOf,
  putWorkflow,
  spawnWorker,
  startRun,
  stopProcess,
  waitForRun,
} from "../helpers/engine.ts";
import { call, expectProblem } from "../helpers/http.ts";
import type { Spawned } from "../helpers/processes.ts";

let ctx: TestContext;
const processes: Spawned[] = [];
let supervisor: Awaited<ReturnType<typeof startSupervisor>> | undefined;

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...engineSettings(c),
    queues: {
      default: {},
      heavy: { concurrency: 2 },
      serial: { concurrency: 1 },
      limited: { concurrency: 4, rateLimit: { max: 2, durationMs: 1000 } },
      crashy: { concurrency: 4 },
    },
    tags: { heavy: "heavy" },
    supervisor: { reconcileIntervalSeconds: 1 },
  }));
  supervisor = await startSupervisor({ config: ctx.config, log: pino({ level: "silent" }) });
});
afterAll(async () => {
  await supervisor?.close();
  for (const p of processes) await stopProcess(p);
  await ctx?.close();
});

const post = (url: string, key = ctx.rootKey) => call(ctx.app, "POST", url, { key, body: {} });
const stepOf = (run: any, id: string) => run.steps.find((s: any) => s.id === id);
const startedAt = (run: any, id: string) => Date.parse(stepOf(run, id).startedAt);
const pidOf = (workerId: string) => Number(workerId.split(":").at(-2));

describe("pause and resume", () => {
  it("a paused run starts no new step; resume completes it; illegal transitions are 409", async () => {
    processes.push(spawnWorker(ctx));
    await putWorkflow(ctx, "two-steps", {
      steps: [
        { id: "first", run: { type: "handler", name: "test.sleepy", input: { ms: 800 } } },
        { id: "second", needs: ["first"], run: { type: "noop" } },
      ],
    });
    const run = await startRun(ctx, "two-steps");
    await waitForRun(ctx, run.id, (r) => stepOf(r, "first").status === "running");
    const paused = await post(`/v1/runs/${run.id}/pause`);
    expect(paused.statusCode).toBe(200);
    expect(paused.json().status).toBe("paused");
    expect((await post(`/v1/runs/${run.id}/pause`)).json().status).toBe("paused"); // idempotent

    // The running step finishes; the next one does not start while paused.
    const during = await waitForRun(ctx, run.id, (r) => stepOf(r, "first").status === "succeeded");
    expect(during.status).toBe("paused");
    await new Promise((r) => setTimeout(r, 1000));
    const still = await waitForRun(ctx, run.id, () => true);
    expect(stepOf(still, "second").status).toBe("pending");
    expect(still.status).toBe("paused");

    expect((await post(`/v1/runs/${run.id}/resume`)).json().status).toBe("running");
    const done = await waitForRun(ctx, run.id);
    expect(done.status).toBe("succeeded");
    const types = (await eventsOf(ctx, run.id)).map((e) => e.type);
    expect(types.indexOf("run.paused")).toBeLessThan(types.indexOf("run.resumed"));
    expect(types.filter((t) => t === "run.paused")).toHaveLength(1);

    // Finished runs can be neither paused nor resumed; a running run resumes as is.
    const pauseDone = expectProblem(await post(`/v1/runs/${run.id}/pause`), 409);
    expect(pauseDone.detail).toMatch(/succeeded/);
    expectProblem(await post(`/v1/runs/${run.id}/resume`), 409);
    expectProblem(await post("/v1/runs/not-a-uuid/pause"), 400);
    expectProblem(await post("/v1/runs/00000000-0000-4000-8000-000000000000/resume"), 404);
    const reader = (
      await call(ctx.app, "POST", "/v1/keys", {
        key: ctx.rootKey,
        body: { tenant: "other", scopes: ["write"] },
      })
    ).json().key;
    expectProblem(await post(`/v1/runs/${run.id}/pause`, reader), 404);
  });

  it("a run paused while its last step runs ends with that step", async () => {
    processes.push(spawnWorker(ctx));
    await putWorkflow(ctx, "one-sleepy-step", {
      steps: [{ id: "only", run: { type: "handler", name: "test.sleepy", input: { ms: 800 } } }],
    });
    const run = await startRun(ctx, "one-sleepy-step");
    await waitForRun(ctx, run.id, (r) => stepOf(r, "only").status === "running");
    expect((await post(`/v1/runs/${run.id}/pause`)).json().status).toBe("paused");
    // Nothing is left to dispatch: the step's end ends the run, paused or not.
    const done = await waitForRun(ctx, run.id);
    expect(done.status).toBe("succeeded");
    expect(stepOf(done, "only").status).toBe("succeeded");
    const types = (await eventsOf(ctx, run.id)).map((e) => e.type);
    expect(types.indexOf("run.paused")).toBeLessThan(types.indexOf("run.succeeded"));
    expect(types.filter((t) => t === "run.succeeded")).toHaveLength(1);
  });
});

describe("concurrency limits", () => {
  it("10 runs with limit 2 and a worker killed midway: never more than 2 active, all succeed, slots freed", async () => {
    await putWorkflow(ctx, "limited-runs", {
      concurrency: { limit: 2 },
      defaults: { queue: "crashy", retry: { maxAttempts: 3, backoff: "fixed", delaySeconds: 1 } },
      steps: [{ id: "work", run: { type: "handler", name: "test.sleepy", input: { ms: 400 } } }],
    });
    const victim = spawnWorker(ctx, ["--queues", "crashy"]);
    processes.push(victim);
    const runs = [];
    for (let i = 0; i < 10; i++) runs.push(await startRun(ctx, "limited-runs"));
    expect(runs.map((r) => r.status)).toEqual(["running", "running", ...Array(8).fill("queued")]);
    await waitForRun(ctx, runs[0].id, (r) => stepOf(r, "work").status === "running");
    victim.child.kill("SIGKILL");
    processes.push(spawnWorker(ctx, ["--queues", "crashy"]));

    let peak = 0;
    const watch = setInterval(async () => {
      const [row] = await ctx.db.sql<{ n: string }[]>`
        select count(*) as n from runs r join workflows w on w.id = r.workflow_id
        where w.name = 'limited-runs' and r.status in ('running', 'paused', 'rolling_back')`;
      peak = Math.max(peak, Number(row!.n));
    }, 50);
    const done = await Promise.all(runs.map((r) => waitForRun(ctx, r.id, undefined, 90_000)));
    clearInterval(watch);
    expect(done.map((r) => r.status)).toEqual(Array(10).fill("succeeded"));
    expect(peak).toBeLessThanOrEqual(2);
    // Started in submission order, and by construction never more than two overlapping.
    const starts = done.map((r) => Date.parse(r.startedAt));
    expect([...starts].sort((a, b) => a - b)).toEqual(starts);
    const edges = done.flatMap((r) => [
      { t: Date.parse(r.startedAt), d: 1 },
      { t: Date.parse(r.finishedAt), d: -1 },
    ]);
    edges.sort((x, y) => x.t - y.t || x.d - y.d);
    let active = 0;
    let overlap = 0;
    for (const e of edges) {
      active += e.d;
      overlap = Math.max(overlap, active);
    }
    expect(overlap).toBe(2);
    const [left] = await ctx.db.sql<{ n: string }[]>`
      select count(*) as n from runs r join workflows w on w.id = r.workflow_id
      where w.name = 'limited-runs' and r.status not in ('succeeded', 'failed', 'cancelled')`;
    expect(Number(left!.n)).toBe(0);
  }, 120_000);
});

describe("priorities", () => {
  it("a high-priority run's step starts before lower-priority steps queued earlier", async () => {
    processes.push(spawnWorker(ctx, ["--queues", "serial", "--concurrency", "1"]));
    await putWorkflow(ctx, "backlog", {
      defaults: { queue: "serial" },
      steps: Array.from({ length: 6 }, (_, i) => ({
        id: `low${i}`,
        run: { type: "handler", name: "test.sleepy", input: { ms: 250 } },
      })),
    });
    await putWorkflow(ctx, "urgent", {
      defaults: { queue: "serial" },
      steps: [{ id: "now", run: { type: "noop" } }],
    });
    const low = await startRun(ctx, "backlog", { priority: 1 });
    await waitForRun(ctx, low.id, (r) => r.steps.some((s: any) => s.status === "running"));
    const high = await startRun(ctx, "urgent", { priority: 10 });
    const [lowDone, highDone] = await Promise.all([waitForRun(ctx, low.id), waitForRun(ctx, high.id)]);
    const highStart = startedAt(highDone, "now");
    const lowBefore = lowDone.steps.filter((s: any) => Date.parse(s.startedAt) < highStart);
    // Only what was already running (and at most one job the worker had fetched) went first.
    expect(lowBefore.length).toBeLessThanOrEqual(2);
    expect(lowDone.steps.length - lowBefore.length).toBeGreaterThanOrEqual(4);
  });
});

describe("routing and rate limits", () => {
  it("steps tagged heavy run only on the heavy pool's workers", async () => {
    const heavy = spawnWorker(ctx, ["--queues", "heavy"]);
    processes.push(heavy);
    await putWorkflow(ctx, "mixed", {
      steps: [
        { id: "light1", run: { type: "noop" } },
        { id: "big1", tags: ["heavy"], run: { type: "noop" } },
        { id: "big2", tags: ["heavy"], needs: ["light1"], run: { type: "noop" } },
        { id: "light2", needs: ["big1"], run: { type: "noop" } },
      ],
    });
    const done = await waitForRun(ctx, (await startRun(ctx, "mixed")).id);
    expect(done.status).toBe("succeeded");
    for (const id of ["big1", "big2"]) {
      expect(stepOf(done, id).queue).toBe("heavy");
      expect(pidOf(stepOf(done, id).workerId)).toBe(heavy.child.pid);
    }
    for (const id of ["light1", "light2"]) expect(pidOf(stepOf(done, id).workerId)).not.toBe(heavy.child.pid);
  });

  it("a queue's rate limit (2 per second) spaces its steps", async () => {
    processes.push(spawnWorker(ctx, ["--queues", "limited", "--concurrency", "4"]));
    await putWorkflow(ctx, "quota", {
      defaults: { queue: "limited" },
      steps: Array.from({ length: 6 }, (_, i) => ({ id: `call${i}`, run: { type: "noop" } })),
    });
    const done = await waitForRun(ctx, (await startRun(ctx, "quota")).id, undefined, 60_000);
    expect(done.status).toBe("succeeded");
    const starts = done.steps.map((s: any) => Date.parse(s.startedAt)).sort((a: number, b: number) => a - b);
    // Recorded start times trail BullMQ handing the job out by a variable amount (and starts of one
    // run are recorded in batches), so the bounds leave room for that: without the limiter all six
    // start within a few milliseconds; with it they spread over at least two more windows.
    for (let i = 2; i < starts.length; i++) expect(starts[i] - starts[i - 2]).toBeGreaterThanOrEqual(500);
    expect(starts[5] - starts[0]).toBeGreaterThanOrEqual(1500);
  });

  it("a step routed to a queue no pool serves is reported, not silently stuck", async () => {
    // Definitions may name only configured queues; a queue leaves the configuration under a stored
    // definition. An API with the configuration of before stores it; the run starts now.
    const before = await buildApp({
      config: parseConfig({ ...ctx.config, queues: { ...ctx.config.queues, nobody: { min: 0 } } }),
      db: ctx.db,
      stores: ctx.stores,
    });
    const definition = { steps: [{ id: "lost", queue: "nobody", run: { type: "noop" } }] };
    expect(
      (await call(before, "PUT", "/v1/workflows/orphan", { key: ctx.rootKey, body: definition })).statusCode,
    ).toBe(201);
    await before.close();
    const run = await startRun(ctx, "orphan");
    const queued = (await eventsOf(ctx, run.id)).find((e) => e.type === "step.queued");
    expect(queued.data.warning).toMatch(/no configured worker pool/);
    const queues = (await call(ctx.app, "GET", "/v1/queues", { key: ctx.rootKey })).json().items;
    expect(queues.find((q: any) => q.name === "nobody").warning).toMatch(/not configured/);
    expect((await post(`/v1/runs/${run.id}/cancel`)).statusCode).toBe(200);
  });
});
