/**
 * Rollback end to end: compensations run by a real worker process as http calls to a local
 * server that records them, so their order is observed where it happens. No timing is asserted:
 * order comes from the sequence of calls, parallelism from a barrier that only opens when two
 * compensations are in flight at the same time.
 */
import { once } from "node:events";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { completeAttempt, failAttempt, startAttempt } from "../../src/engine/attempts.ts";
import { reconcile } from "../../src/engine/reconcile.ts";
import { submitRun } from "../../src/engine/runs.ts";
import type { BullStepDispatcher } from "../../src/queue/step-queue.ts";
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
import { eventFrames, readSse } from "../helpers/sse.ts";

/** What the target does with the n-th call to a path: answer with a status, or never answer. */
type Rule = (n: number) => Promise<number | "hang"> | number | "hang";

/** A local http target that records every call (start and end, in order) per path. */
class Recorder {
  readonly calls: Array<{ kind: "start" | "end" | "aborted"; path: string; body: any }> = [];
  readonly rules = new Map<string, Rule>();
  private readonly counts = new Map<string, number>();
  readonly server: Server = createServer((req, res) => {
    void (async () => {
      const body = JSON.parse((await readBody(req)) || "null");
      const path = req.url!;
      const n = (this.counts.get(path) ?? 0) + 1;
      this.counts.set(path, n);
      this.calls.push({ kind: "start", path, body });
      const status = (await this.rules.get(path)?.(n)) ?? 200;
      if (status === "hang") {
        // The caller gave up (its attempt was aborted, or its process died).
        res.on("close", () => this.calls.push({ kind: "aborted", path, body }));
        return;
      }
      // Recorded before answering: whatever the answer unblocks comes after it in `calls`.
      this.calls.push({ kind: "end", path, body });
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify({ path, n }));
    })();
  });
  url = "";

  async start(): Promise<void> {
    this.server.listen(0, "127.0.0.1");
    await once(this.server, "listening");
    this.url = `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
  }

  /** Paths of one prefix, in the order of `kind` events. */
  order(prefix: string, kind: "start" | "end" | "aborted" = "start"): string[] {
    return this.calls.filter((c) => c.kind === kind && c.path.startsWith(prefix)).map((c) => c.path);
  }

  index(kind: "start" | "end", path: string): number {
    return this.calls.findIndex((c) => c.kind === kind && c.path === path);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    this.server.close();
  }
}

async function readBody(req: IncomingMessage): Promise<string> {
  let text = "";
  for await (const chunk of req) text += chunk;
  return text;
}

/** Resolves every caller once `count` callers are waiting. */
function barrier(count: number): () => Promise<void> {
  let arrived = 0;
  let open!: () => void;
  const all = new Promise<void>((r) => {
    open = r;
  });
  return async () => {
    if (++arrived >= count) open();
    await all;
  };
}

let ctx: TestContext;
let worker: Spawned;
let target: Recorder;
let base: string;

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...engineSettings(c),
    queues: { default: {}, nowhere: { min: 0 } },
  }));
  base = await ctx.app.listen({ host: "127.0.0.1", port: 0 });
  target = new Recorder();
  await target.start();
  worker = spawnWorker(ctx);
  await worker.waitFor(/worker started/);
});
afterAll(async () => {
  if (worker) await stopProcess(worker);
  await target?.close();
  await ctx?.close();
});

/** A compensation that POSTs the step id (and whatever else) to the recorder under `prefix`. */
const undo = (prefix: string, stepId: string, extra: Record<string, unknown> = {}) => ({
  type: "http",
  method: "POST",
  url: `${target.url}/${prefix}/${stepId}`,
  body: { step: stepId, ...extra },
});
const fail = { type: "handler", name: "test.fail", input: {} };

/** Polls until `check` holds (no deadline of its own: the test's timeout bounds it). */
async function until(check: () => boolean | Promise<boolean>): Promise<void> {
  while (!(await check())) await new Promise((r) => setTimeout(r, 50));
}
const stepOf = (run: any, id: string) => run.steps.find((s: { id: string }) => s.id === id);
const compensationsOf = (run: any) =>
  Object.fromEntries(run.steps.map((s: any) => [s.id, s.compensation?.status ?? null]));

describe("rollback on failure", () => {
  it("a → b → c(fails, onFailure: rollback) compensates b, then a; the rest is cancelled", async () => {
    await putWorkflow(ctx, "chain", {
      params: { date: "2026-01-01" },
      steps: [
        {
          id: "a",
          run: { type: "noop", output: { id: "a-1" } },
          compensate: undo("chain", "a", { made: "{{steps.a.output.id}}", date: "{{params.date}}" }),
        },
        {
          id: "b",
          needs: ["a"],
          run: { type: "noop", output: { id: "b-1" } },
          compensate: undo("chain", "b", { made: "{{steps.b.output.id}}", from: "{{steps.a.output.id}}" }),
        },
        { id: "c", needs: ["b"], onFailure: "rollback", run: fail },
        { id: "after-c", needs: ["c"], run: { type: "noop" }, compensate: undo("chain", "after-c") },
        // Starts with a and is still running when c fails: aborted, never compensated.
        {
          id: "slow",
          run: { type: "handler", name: "test.sleepy", input: { ms: 20_000 } },
          compensate: undo("chain", "slow"),
        },
      ],
    });
    const run = await startRun(ctx, "chain", { params: { date: "2026-02-02" } });
    const done = await waitForRun(ctx, run.id);

    expect(done.status).toBe("rolled_back");
    expect(done.error).toMatchObject({ stepId: "c", message: 'step "c" failed' });
    expect(target.order("/chain/")).toEqual(["/chain/b", "/chain/a"]);
    expect(target.index("start", "/chain/a")).toBeGreaterThan(target.index("end", "/chain/b"));
    // Templates in compensate see params and the outputs of the step and its upstream.
    expect(target.calls.find((c) => c.path === "/chain/a")!.body).toEqual({
      step: "a",
      made: "a-1",
      date: "2026-02-02",
    });
    expect(target.calls.find((c) => c.path === "/chain/b")!.body).toEqual({
      step: "b",
      made: "b-1",
      from: "a-1",
    });
    expect(Object.fromEntries(done.steps.map((s: any) => [s.id, s.status]))).toEqual({
      a: "succeeded",
      b: "succeeded",
      c: "failed",
      "after-c": "cancelled",
      slow: "cancelled",
    });
    expect(compensationsOf(done)).toEqual({
      a: "succeeded",
      b: "succeeded",
      c: null,
      "after-c": null,
      slow: null,
    });
    expect(stepOf(done, "a").compensation).toMatchObject({ attempt: 1, error: null });
    // The step's own attempt and output are left as they were.
    expect(stepOf(done, "a")).toMatchObject({ attempt: 1, output: { id: "a-1" } });

    const events = await eventsOf(ctx, run.id);
    const types = events.map((e) => e.type);
    expect(types.filter((t) => t.startsWith("run."))).toEqual([
      "run.queued",
      "run.started",
      "run.rolling_back",
      "run.rolled_back",
    ]);
    const rollingBack = events.find((e) => e.type === "run.rolling_back")!;
    expect(rollingBack.data).toMatchObject({ reason: 'step "c" failed', compensations: ["a", "b"] });
    // A compensation's events carry phase "compensate"; the steps' own succeeded once each.
    const own = events.filter((e) => e.type === "step.succeeded" && !e.data.phase).map((e) => e.stepId);
    expect(own.sort()).toEqual(["a", "b"]);
    const compensated = events
      .filter((e) => e.type === "step.succeeded" && e.data.phase === "compensate")
      .map((e) => e.stepId);
    expect(compensated).toEqual(["b", "a"]);
    expect(events.filter((e) => e.data.phase === "compensate" && e.stepId === "slow")).toEqual([]);
    // Every compensation event comes after the rollback started.
    const startedAt = rollingBack.id;
    for (const e of events.filter((x) => x.data.phase === "compensate"))
      expect(e.id).toBeGreaterThan(startedAt);
  });

  it("in a diamond, independent compensations overlap and each waits for its dependants", async () => {
    // b and c answer only once both are in flight: they must run in parallel to pass at all.
    const both = barrier(2);
    target.rules.set("/diamond/b", (n) => (n === 1 ? both().then(() => 200) : 200));
    target.rules.set("/diamond/c", (n) => (n === 1 ? both().then(() => 200) : 200));
    await putWorkflow(ctx, "diamond", {
      steps: [
        { id: "a", run: { type: "noop" }, compensate: undo("diamond", "a") },
        { id: "b", needs: ["a"], run: { type: "noop" }, compensate: undo("diamond", "b") },
        { id: "c", needs: ["a"], run: { type: "noop" }, compensate: undo("diamond", "c") },
        // No compensation of its own: a still waits for e's through it.
        { id: "d", needs: ["b", "c"], run: { type: "noop" } },
        { id: "e", needs: ["d"], run: { type: "noop" }, compensate: undo("diamond", "e") },
        { id: "f", needs: ["e"], onFailure: "rollback", run: fail },
      ],
    });
    const done = await waitForRun(ctx, (await startRun(ctx, "diamond")).id);
    expect(done.status).toBe("rolled_back");
    expect(compensationsOf(done)).toMatchObject({
      a: "succeeded",
      b: "succeeded",
      c: "succeeded",
      e: "succeeded",
    });
    const starts = target.order("/diamond/");
    expect(starts[0]).toBe("/diamond/e");
    expect(starts.slice(1, 3).sort()).toEqual(["/diamond/b", "/diamond/c"]);
    expect(starts[3]).toBe("/diamond/a");
    for (const dependant of ["b", "c"]) {
      expect(target.index("start", `/diamond/${dependant}`)).toBeGreaterThan(
        target.index("end", "/diamond/e"),
      );
      expect(target.index("start", "/diamond/a")).toBeGreaterThan(
        target.index("end", `/diamond/${dependant}`),
      );
    }
  });

  it("a compensation failing for good fails the run, naming it, and starts no other", async () => {
    let healthy = false;
    target.rules.set("/broken/c", () => (healthy ? 200 : 500));
    await putWorkflow(ctx, "broken", {
      steps: [
        { id: "a", run: { type: "noop" }, compensate: undo("broken", "a") },
        { id: "b", needs: ["a"], run: { type: "noop" }, compensate: undo("broken", "b") },
        {
          id: "c",
          needs: ["b"],
          run: { type: "noop" },
          // The step's own retry policy applies to its compensation.
          retry: { maxAttempts: 2, backoff: "fixed", delaySeconds: 0.1 },
          compensate: undo("broken", "c"),
        },
        { id: "d", needs: ["c"], onFailure: "rollback", run: fail },
      ],
    });
    const run = await startRun(ctx, "broken");
    const failed = await waitForRun(ctx, run.id);
    expect(failed.status).toBe("failed");
    expect(failed.error).toMatchObject({ stepId: "c", phase: "compensate" });
    expect(failed.error.message).toBe('compensation of step "c" failed: unexpected HTTP status 500');
    expect(target.order("/broken/")).toEqual(["/broken/c", "/broken/c"]);
    expect(stepOf(failed, "c").compensation).toMatchObject({
      status: "failed",
      attempt: 2,
      error: { code: "http_status", status: 500 },
    });
    expect(compensationsOf(failed)).toMatchObject({ a: "cancelled", b: "cancelled", d: null });
    const events = await eventsOf(ctx, run.id);
    expect(events.filter((e) => e.type.startsWith("run.")).map((e) => e.type)).toEqual([
      "run.queued",
      "run.started",
      "run.rolling_back",
      "run.failed",
    ]);
    const retry = events.find((e) => e.type === "step.retrying" && e.data.phase === "compensate");
    expect(retry).toMatchObject({ stepId: "c", attempt: 2, data: { delayMs: 100 } });

    // A retry reuses none of the steps the rollback touched: their effects are (being) undone.
    const retried = await call(ctx.app, "POST", `/v1/runs/${run.id}/retry`, {
      key: ctx.rootKey,
      body: { dryRun: true },
    });
    expect(retried.json().plan.steps.map((s: any) => `${s.stepId}:${s.action}`)).toEqual([
      "a:run",
      "b:run",
      "c:run",
      "d:run",
    ]);

    // Once the target is repaired, the failed run may be rolled back again: c, then b, then a.
    healthy = true;
    const again = await call(ctx.app, "POST", `/v1/runs/${run.id}/rollback`, { key: ctx.rootKey });
    expect(again.statusCode).toBe(202);
    const done = await waitForRun(ctx, run.id);
    expect(done.status).toBe("rolled_back");
    expect(target.order("/broken/")).toEqual([
      "/broken/c",
      "/broken/c",
      "/broken/c",
      "/broken/b",
      "/broken/a",
    ]);
    expect(stepOf(done, "c").compensation).toMatchObject({ status: "succeeded", attempt: 1, error: null });
    // The error is again the one that started the rollback, not the compensation's.
    expect(failed.error.rollbackCause).toMatchObject({ stepId: "d" });
    expect(done.error).toMatchObject({ stepId: "d", message: 'step "d" failed' });
  });
});

describe("POST /v1/runs/{id}/rollback", () => {
  it("rolls back a succeeded run, idempotently, and its event stream follows to rolled_back", async () => {
    await putWorkflow(ctx, "explicit", {
      steps: [
        { id: "a", run: { type: "noop" }, compensate: undo("explicit", "a") },
        { id: "b", needs: ["a"], run: { type: "noop" }, compensate: undo("explicit", "b") },
        { id: "plain", needs: ["a"], run: { type: "noop" } },
      ],
    });
    const run = await startRun(ctx, "explicit");
    expect((await waitForRun(ctx, run.id)).status).toBe("succeeded");
    expect(target.order("/explicit/")).toEqual([]);

    const started = await call(ctx.app, "POST", `/v1/runs/${run.id}/rollback`, { key: ctx.rootKey });
    expect(started.statusCode).toBe(202);
    expect(started.json()).toMatchObject({ id: run.id, status: "rolling_back", finishedAt: null });
    const done = await waitForRun(ctx, run.id);
    expect(done.status).toBe("rolled_back");
    expect(done.finishedAt).not.toBeNull();
    expect(target.order("/explicit/")).toEqual(["/explicit/b", "/explicit/a"]);
    expect(compensationsOf(done)).toEqual({ a: "succeeded", b: "succeeded", plain: null });

    const repeated = await call(ctx.app, "POST", `/v1/runs/${run.id}/rollback`, { key: ctx.rootKey });
    expect(repeated.statusCode).toBe(200);
    expect(repeated.json().status).toBe("rolled_back");
    expect(target.order("/explicit/")).toHaveLength(2);

    // A replay does not stop at run.succeeded: the rollback that followed is part of the run.
    const { frames } = await readSse(`${base}/v1/runs/${run.id}/events`, { key: ctx.rootKey });
    const types = eventFrames(frames).map((f) => f.event);
    expect(types.filter((t) => t!.startsWith("run."))).toEqual([
      "run.queued",
      "run.started",
      "run.succeeded",
      "run.rolling_back",
      "run.rolled_back",
    ]);
    expect(frames.at(-1)!.event).toBe("end");
  });

  it("a rollback on request needs a slot of its workflow's concurrency limit", async () => {
    await putWorkflow(ctx, "one-at-a-time", {
      concurrency: { limit: 1 },
      steps: [{ id: "a", queue: "nowhere", run: { type: "noop" }, compensate: { type: "noop" } }],
    });
    const engine = ctx.app.flowline.engine;
    const { run: first } = await submitRun(engine, { tenantId: "default", workflow: "one-at-a-time" });
    const a = await startAttempt(
      engine,
      { runId: first.id, stepId: "a", attempt: 1 },
      { id: "w", leaseSeconds: 30 },
    );
    if (!a.accepted) throw new Error(a.reason);
    await completeAttempt(engine, a.attempt, null);
    expect((await waitForRun(ctx, first.id)).status).toBe("succeeded");
    const { run: second } = await submitRun(engine, { tenantId: "default", workflow: "one-at-a-time" });
    expect(second.status).toBe("running");

    const refused = expectProblem(
      await call(ctx.app, "POST", `/v1/runs/${first.id}/rollback`, { key: ctx.rootKey }),
      409,
    );
    expect(refused.detail).toMatch(/concurrency limit of 1/);
    expect((await waitForRun(ctx, first.id, () => true)).status).toBe("succeeded");

    await call(ctx.app, "POST", `/v1/runs/${second.id}/cancel`, { key: ctx.rootKey });
    const started = await call(ctx.app, "POST", `/v1/runs/${first.id}/rollback`, { key: ctx.rootKey });
    expect(started.statusCode).toBe(202);
  });

  it("a run with nothing to compensate is rolled back at once", async () => {
    await putWorkflow(ctx, "nothing", { steps: [{ id: "n", run: { type: "noop" } }] });
    const run = await startRun(ctx, "nothing");
    await waitForRun(ctx, run.id);
    const res = await call(ctx.app, "POST", `/v1/runs/${run.id}/rollback`, { key: ctx.rootKey });
    expect(res.statusCode).toBe(202);
    expect(res.json().status).toBe("rolled_back");
  });

  it("refuses illegal transitions and bad input with problem+json", async () => {
    await putWorkflow(ctx, "long", {
      steps: [{ id: "s", run: { type: "sleep", seconds: 30 }, compensate: undo("long", "s") }],
    });
    const run = await startRun(ctx, "long");
    await waitForRun(ctx, run.id, (r) => r.steps[0].status === "running");
    const rollback = (id: string, key = ctx.rootKey) =>
      call(ctx.app, "POST", `/v1/runs/${id}/rollback`, { key });

    const running = expectProblem(await rollback(run.id), 409);
    expect(running.code).toBe("illegal_transition");
    expect(running.detail).toMatch(/Run is running/);
    await call(ctx.app, "POST", `/v1/runs/${run.id}/cancel`, { key: ctx.rootKey });
    expect(expectProblem(await rollback(run.id), 409).detail).toMatch(/Run is cancelled/);

    expectProblem(await rollback("not-a-uuid"), 400);
    expectProblem(await rollback("00000000-0000-4000-8000-000000000000"), 404);
    const foreign = (
      await call(ctx.app, "POST", "/v1/keys", {
        key: ctx.rootKey,
        body: { tenant: "elsewhere", scopes: ["read", "write"] },
      })
    ).json().key;
    expectProblem(await rollback(run.id, foreign), 404);
    const readOnly = (
      await call(ctx.app, "POST", "/v1/keys", {
        key: ctx.rootKey,
        body: { tenant: "default", scopes: ["read"] },
      })
    ).json().key;
    expectProblem(await rollback(run.id, readOnly), 403);
    expect((await waitForRun(ctx, run.id)).status).toBe("cancelled");
    expect(target.order("/long/")).toEqual([]);
  });
});

describe("cancelling a rollback", () => {
  it("aborts the running compensation and starts no other; the run ends cancelled", async () => {
    target.rules.set("/stuck/b", () => "hang");
    await putWorkflow(ctx, "stuck", {
      steps: [
        { id: "a", run: { type: "noop" }, compensate: undo("stuck", "a") },
        { id: "b", needs: ["a"], run: { type: "noop" }, compensate: undo("stuck", "b") },
        { id: "c", needs: ["b"], onFailure: "rollback", run: fail },
      ],
    });
    const run = await startRun(ctx, "stuck");
    await waitForRun(ctx, run.id, (r) => stepOf(r, "b").compensation?.status === "running");
    const cancelled = await call(ctx.app, "POST", `/v1/runs/${run.id}/cancel`, { key: ctx.rootKey });
    expect(cancelled.json().status).toBe("cancelled");
    const done = await waitForRun(ctx, run.id);
    expect(done.status).toBe("cancelled");
    expect(compensationsOf(done)).toMatchObject({ a: "cancelled", b: "cancelled" });
    // The worker aborted the compensation's request (the control message, as for steps).
    await until(() => target.order("/stuck/", "aborted").length > 0);
    expect(target.order("/stuck/")).toEqual(["/stuck/b"]);
    const events = await eventsOf(ctx, run.id);
    expect(events.at(-1)!.type).toBe("run.cancelled");
    expect(
      events.filter((e) => e.type === "step.cancelled" && e.data.phase === "compensate").map((e) => e.stepId),
    ).toEqual(expect.arrayContaining(["a", "b"]));
  });
});

describe("compensation attempts", () => {
  it("are fenced: a redelivered job abandons the attempt, a stale result is refused", async () => {
    // A queue no worker serves: this test plays the worker itself.
    await putWorkflow(ctx, "fenced", {
      steps: [
        {
          id: "a",
          queue: "nowhere",
          retry: { maxAttempts: 3 },
          run: { type: "noop" },
          compensate: { type: "noop" },
        },
        { id: "b", needs: ["a"], queue: "nowhere", onFailure: "rollback", run: { type: "noop" } },
      ],
    });
    const engine = ctx.app.flowline.engine;
    const as = (id: string) => ({ id, leaseSeconds: 30 });
    const { run } = await submitRun(engine, { tenantId: "default", workflow: "fenced" });
    const a = await startAttempt(engine, { runId: run.id, stepId: "a", attempt: 1 }, as("w"));
    if (!a.accepted) throw new Error(a.reason);
    await completeAttempt(engine, { runId: run.id, stepId: "a", attempt: 1, token: a.attempt.token }, null);
    const b = await startAttempt(engine, { runId: run.id, stepId: "b", attempt: 1 }, as("w"));
    if (!b.accepted) throw new Error(b.reason);
    await failAttempt(
      engine,
      { runId: run.id, stepId: "b", attempt: 1, token: b.attempt.token },
      { message: "boom" },
      { retryable: false },
    );
    expect(
      (await waitForRun(ctx, run.id, (r) => r.status === "rolling_back")).steps[0].compensation,
    ).toMatchObject({
      status: "queued",
      attempt: 1,
    });
    // The step's own job cannot run again while its run rolls back.
    expect((await startAttempt(engine, { runId: run.id, stepId: "a", attempt: 1 }, as("x"))).accepted).toBe(
      false,
    );

    const ref = { runId: run.id, stepId: "a", attempt: 1, phase: "compensate" as const };
    const first = await startAttempt(engine, ref, as("worker-a"));
    if (!first.accepted) throw new Error(first.reason);
    // Redelivered while its lease is valid: the live attempt keeps it (SPEC §8.5).
    expect(await startAttempt(engine, ref, as("worker-b"))).toMatchObject({
      accepted: false,
      refusal: "lease_valid",
    });
    // Its holder froze past the lease: the redelivery takes over with the next attempt.
    await ctx.db.sql`update step_runs set lease_expires_at = now() - interval '1 second'
      where run_id = ${run.id} and step_id = 'a' and phase = 'compensate'`;
    const redelivered = await startAttempt(engine, ref, as("worker-b"));
    expect(redelivered).toEqual({
      accepted: false,
      refusal: "lease_lost",
      reason: "worker lost during attempt 1; attempt 2 queued",
    });
    const second = await startAttempt(engine, { ...ref, attempt: 2 }, as("worker-b"));
    if (!second.accepted) throw new Error(second.reason);
    expect(second.attempt.token).not.toBe(first.attempt.token);

    const stale = { ...ref, token: first.attempt.token };
    const refused = { accepted: false, refusal: "lease_lost" };
    expect(await completeAttempt(engine, stale, { late: true })).toMatchObject(refused);
    expect(await failAttempt(engine, stale, { message: "late" })).toMatchObject(refused);
    expect(await completeAttempt(engine, { ...stale, attempt: 2 }, null)).toMatchObject(refused);
    const current = { ...ref, attempt: 2, token: second.attempt.token };
    expect(await completeAttempt(engine, current, null)).toEqual({ accepted: true });
    expect(await completeAttempt(engine, current, null)).toMatchObject({ accepted: false });

    const done = await waitForRun(ctx, run.id);
    expect(done.status).toBe("rolled_back");
    expect(done.steps[0].compensation).toMatchObject({ status: "succeeded", attempt: 2 });
    const events = await eventsOf(ctx, run.id);
    expect(events.filter((e) => e.type === "step.succeeded" && e.data.phase === "compensate")).toHaveLength(
      1,
    );
  });

  it("are recovered by the reconciler: an expired lease, a lost job", async () => {
    await putWorkflow(ctx, "reconciled", {
      steps: [
        {
          id: "a",
          queue: "nowhere",
          retry: { maxAttempts: 2 },
          run: { type: "noop" },
          compensate: { type: "noop" },
        },
        { id: "b", needs: ["a"], queue: "nowhere", onFailure: "rollback", run: { type: "noop" } },
      ],
    });
    const engine = ctx.app.flowline.engine;
    const { run } = await submitRun(engine, { tenantId: "default", workflow: "reconciled" });
    const as = { id: "w", leaseSeconds: 30 };
    const a = await startAttempt(engine, { runId: run.id, stepId: "a", attempt: 1 }, as);
    if (!a.accepted) throw new Error(a.reason);
    await completeAttempt(engine, { runId: run.id, stepId: "a", attempt: 1, token: a.attempt.token }, null);
    const b = await startAttempt(engine, { runId: run.id, stepId: "b", attempt: 1 }, as);
    if (!b.accepted) throw new Error(b.reason);
    await failAttempt(
      engine,
      { runId: run.id, stepId: "b", attempt: 1, token: b.attempt.token },
      { message: "x" },
    );

    // A worker takes the compensation with a short lease and vanishes.
    const ref = { runId: run.id, stepId: "a", attempt: 1, phase: "compensate" as const };
    const lost = await startAttempt(engine, ref, { id: "vanished", leaseSeconds: 0.2 });
    if (!lost.accepted) throw new Error(lost.reason);
    const repairNow = { minAgeSeconds: 0, leaseGraceSeconds: 0 };
    await until(async () => (await reconcile(engine, repairNow)).abandoned > 0);
    const [requeued] = await ctx.db.sql<{ status: string; attempt: number; job_id: string }[]>`
      select status, attempt, job_id from step_runs
      where run_id = ${run.id} and step_id = 'a' and phase = 'compensate'`;
    expect(requeued).toMatchObject({ status: "queued", attempt: 2 });
    expect(requeued!.job_id).toBe(`${run.id}.a.c2`);

    // Its job is lost too (Redis flushed): the reconciler enqueues a new one and records it.
    await (engine.dispatcher as BullStepDispatcher).queue("nowhere").remove(requeued!.job_id);
    expect((await reconcile(engine, repairNow)).requeued).toBe(1);
    const [fresh] = await ctx.db.sql<{ job_id: string }[]>`
      select job_id from step_runs where run_id = ${run.id} and step_id = 'a' and phase = 'compensate'`;
    expect(fresh!.job_id).toMatch(new RegExp(`^${run.id}\\.a\\.c2\\.r\\d+$`));
    // Only the recorded job may start the attempt.
    const stray = await startAttempt(engine, { ...ref, attempt: 2, jobId: requeued!.job_id }, as);
    expect(stray.accepted).toBe(false);
    const second = await startAttempt(engine, { ...ref, attempt: 2, jobId: fresh!.job_id }, as);
    if (!second.accepted) throw new Error(second.reason);
    expect(await completeAttempt(engine, { ...ref, attempt: 2, token: second.attempt.token }, null)).toEqual({
      accepted: true,
    });
    expect((await waitForRun(ctx, run.id)).status).toBe("rolled_back");
  });

  it("survive kill -9 of the worker running one: another attempt on another worker", async () => {
    target.rules.set("/killed/a", (n) => (n === 1 ? "hang" : 200));
    await putWorkflow(ctx, "killed", {
      steps: [
        {
          id: "a",
          retry: { maxAttempts: 2, delaySeconds: 0.1 },
          run: { type: "noop" },
          compensate: undo("killed", "a"),
        },
        { id: "b", needs: ["a"], onFailure: "rollback", run: fail },
      ],
    });
    const run = await startRun(ctx, "killed");
    await waitForRun(ctx, run.id, (r) => r.steps[0].compensation?.status === "running");
    const [holder] = await ctx.db.sql<{ worker_id: string }[]>`
      select worker_id from step_runs where run_id = ${run.id} and step_id = 'a' and phase = 'compensate'`;
    expect(Number(holder!.worker_id.split(":")[1])).toBe(worker.child.pid);
    worker.child.kill("SIGKILL");
    await worker.exited;
    worker = spawnWorker(ctx);

    const done = await waitForRun(ctx, run.id, undefined, 60_000);
    expect(done.status).toBe("rolled_back");
    expect(done.steps[0].compensation).toMatchObject({ status: "succeeded", attempt: 2 });
    expect(target.order("/killed/")).toEqual(["/killed/a", "/killed/a"]);
    const retry = (await eventsOf(ctx, run.id)).find((e) => e.type === "step.retrying" && e.data.phase);
    expect(retry?.data.reason).toMatch(/worker lost/);
  });
});
