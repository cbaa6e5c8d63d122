/**
 * Fencing and recovery: a stale attempt's late result is refused, and a worker killed with
 * `kill -9` mid-step has its step retried on another worker until the run succeeds.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { completeAttempt, failAttempt, startAttempt } from "../../src/engine/attempts.ts";
import { submitRun } from "../../src/engine/runs.ts";
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
import type { Spawned } from "../helpers/processes.ts";

let ctx: TestContext;
const workers: Spawned[] = [];

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...engineSettings(c),
    queues: { default: {}, nowhere: { min: 0 } },
  }));
});
afterAll(async () => {
  for (const w of workers) await stopProcess(w);
  await ctx?.close();
});

describe("fencing", () => {
  it("refuses the late result of an attempt that was taken over", async () => {
    // A queue no worker serves: this test plays the workers itself.
    await putWorkflow(ctx, "fenced", {
      steps: [{ id: "s", queue: "nowhere", retry: { maxAttempts: 3 }, run: { type: "noop" } }],
    });
    const engine = ctx.app.flowline.engine;
    const { run } = await submitRun(engine, { tenantId: "default", workflow: "fenced" });
    const first = await startAttempt(
      engine,
      { runId: run.id, stepId: "s", attempt: 1 },
      { id: "worker-a", leaseSeconds: 30 },
    );
    if (!first.accepted) throw new Error(first.reason);
    // The job is redelivered while its holder still holds a valid lease (the queue lost its own
    // lock, as a Redis failover can): the live attempt is not taken over (SPEC §8.5).
    expect(
      await startAttempt(
        engine,
        { runId: run.id, stepId: "s", attempt: 1 },
        { id: "worker-b", leaseSeconds: 30 },
      ),
    ).toMatchObject({ accepted: false, refusal: "lease_valid" });
    // Its holder froze past its lease: a redelivery now takes over with the next attempt.
    await ctx.db
      .sql`update step_runs set lease_expires_at = now() - interval '1 second' where run_id = ${run.id}`;
    const redelivered = await startAttempt(
      engine,
      { runId: run.id, stepId: "s", attempt: 1 },
      { id: "worker-b", leaseSeconds: 30 },
    );
    expect(redelivered).toEqual({
      accepted: false,
      refusal: "lease_lost",
      reason: "worker lost during attempt 1; attempt 2 queued",
    });
    // A second redelivery of the old job changes nothing more.
    const again = await startAttempt(
      engine,
      { runId: run.id, stepId: "s", attempt: 1 },
      { id: "worker-c", leaseSeconds: 30 },
    );
    expect(again.accepted).toBe(false);
    const second = await startAttempt(
      engine,
      { runId: run.id, stepId: "s", attempt: 2 },
      { id: "worker-b", leaseSeconds: 30 },
    );
    if (!second.accepted) throw new Error(second.reason);
    expect(second.attempt.attempt).toBe(2);
    expect(second.attempt.token).not.toBe(first.attempt.token);

    const stale = { runId: run.id, stepId: "s", attempt: 1, token: first.attempt.token };
    expect(await completeAttempt(engine, stale, { from: "a" })).toMatchObject({ accepted: false });
    expect(await failAttempt(engine, stale, { message: "late failure" })).toMatchObject({ accepted: false });
    // Even the right attempt number with the wrong token is refused.
    expect(await completeAttempt(engine, { ...stale, attempt: 2 }, { from: "a" })).toMatchObject({
      accepted: false,
    });

    const current = { runId: run.id, stepId: "s", attempt: 2, token: second.attempt.token };
    expect(await completeAttempt(engine, current, { from: "b" })).toEqual({ accepted: true });
    expect(await completeAttempt(engine, current, { from: "b-again" })).toMatchObject({ accepted: false });

    const done = await waitForRun(ctx, run.id);
    expect(done.status).toBe("succeeded");
    expect(done.steps[0]).toMatchObject({ output: { from: "b" }, attempt: 2, workerId: "worker-b" });
    const events = await eventsOf(ctx, run.id);
    expect(events.filter((e) => e.type === "step.succeeded")).toHaveLength(1);
    expect(events.find((e) => e.type === "step.retrying")?.data.reason).toBe("worker lost (no heartbeat)");
  });
});

describe("worker loss", () => {
  it("retries a step on another worker after kill -9 of the one running it", async () => {
    workers.push(spawnWorker(ctx), spawnWorker(ctx));
    await Promise.all(workers.map((w) => w.waitFor(/worker started/)));
    await putWorkflow(ctx, "survivor", {
      steps: [
        {
          id: "long",
          retry: { maxAttempts: 3, delaySeconds: 0.1 },
          run: { type: "handler", name: "test.sleepy", input: { ms: 3000 } },
        },
        { id: "after", needs: ["long"], run: { type: "noop", output: "{{steps.long.output.pid}}" } },
      ],
    });
    const run = await startRun(ctx, "survivor");
    const running = await waitForRun(
      ctx,
      run.id,
      (r) => r.steps[0].status === "running" && r.steps[0].workerId,
    );
    const pid = Number(running.steps[0].workerId.split(":")[1]);
    const victim = workers.find((w) => w.child.pid === pid);
    expect(victim, `worker ${running.steps[0].workerId} is one of ours`).toBeDefined();
    victim!.child.kill("SIGKILL");
    await victim!.exited;

    const done = await waitForRun(ctx, run.id, undefined, 60_000);
    expect(done.status).toBe("succeeded");
    expect(done.steps[0].attempt).toBe(2);
    expect(done.steps[0].output.pid).not.toBe(pid);
    expect(done.steps[1].output).toBe(done.steps[0].output.pid);
    const attempts = await ctx.db.sql`
      select attempt, status, error from step_attempts where run_id = ${run.id} and step_id = 'long' order by attempt`;
    expect(attempts.map((a) => a.status)).toEqual(["failed", "succeeded"]);
    expect(attempts[0]!.error.message).toMatch(/worker lost/);
  });

  it("hands a running step back on SIGTERM after the grace period; another worker finishes it", async () => {
    for (const w of workers.splice(0)) await stopProcess(w);
    const leaving = spawnWorker(ctx, [], { graceSeconds: 1 });
    await leaving.waitFor(/worker started/);
    await putWorkflow(ctx, "handover", {
      steps: [{ id: "long", run: { type: "handler", name: "test.sleepy", input: { ms: 4000 } } }],
    });
    const run = await startRun(ctx, "handover");
    await waitForRun(ctx, run.id, (r) => r.steps[0].status === "running");
    leaving.child.kill("SIGTERM");
    expect((await leaving.exited).code).toBe(0);
    expect(leaving.stdout()).toMatch(/attempt handed back/);
    const requeued = await waitForRun(ctx, run.id, (r) => r.steps[0].status === "queued");
    expect(requeued.steps[0].attempt).toBe(1);

    const staying = spawnWorker(ctx);
    workers.push(staying);
    const done = await waitForRun(ctx, run.id, undefined, 30_000);
    expect(done.status).toBe("succeeded");
    // Handing back is not a failure: the step kept its attempt number.
    expect(done.steps[0].attempt).toBe(1);
    expect(done.steps[0].output.pid).toBe(staying.child.pid);
  });
});
