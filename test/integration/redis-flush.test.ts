/**
 * Postgres is the source of truth: Redis losing everything (FLUSHALL) in the middle of runs —
 * queued jobs, delayed retries, job locks, the supervisor lease — costs time, not runs. The
 * reconciler re-creates what Postgres says should exist and every run still succeeds.
 * Runs on a private Redis server: the shared one is never flushed.
 */
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { admitQueuedRuns, renewAssetLocks } from "../../src/engine/admission.ts";
import { completeAttempt, startAttempt } from "../../src/engine/attempts.ts";
import { startSupervisor } from "../../src/jobs/supervisor/index.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import {
  engineSettings,
  putWorkflow,
  spawnWorker,
  startRun,
  stopProcess,
  waitForRun,
} from "../helpers/engine.ts";
import { call } from "../helpers/http.ts";
import type { Spawned } from "../helpers/processes.ts";
import { type PrivateRedis, startPrivateRedis } from "../helpers/redis-server.ts";

let redis: PrivateRedis;
let ctx: TestContext;
const processes: Spawned[] = [];
let supervisor: Awaited<ReturnType<typeof startSupervisor>> | undefined;

beforeAll(async () => {
  redis = await startPrivateRedis();
  ctx = await createTestContext((c) => ({
    ...engineSettings(c),
    redis: { ...(c.redis as object), url: redis.url },
    // `nowhere`: a queue no worker of this file serves, where the test plays the worker.
    queues: { default: {}, nowhere: {} },
    supervisor: { leaseSeconds: 2, reconcileIntervalSeconds: 1, scheduleIntervalSeconds: 1 },
  }));
});
afterAll(async () => {
  await supervisor?.close();
  for (const p of processes) await stopProcess(p);
  await ctx?.close();
  await redis?.stop();
});

describe("Redis FLUSHALL mid-run", () => {
  it("every run still reaches succeeded", async () => {
    await putWorkflow(ctx, "resilient", {
      steps: [
        { id: "a", run: { type: "sleep", seconds: 0.5 } },
        { id: "b", needs: ["a"], run: { type: "sleep", seconds: 1 } },
        { id: "c", needs: ["a"], run: { type: "handler", name: "test.flaky", input: { succeedOn: 2 } } },
        {
          id: "d",
          needs: ["b", "c"],
          retry: { maxAttempts: 3, backoff: "fixed", delaySeconds: 3 },
          run: { type: "handler", name: "test.flaky", input: { succeedOn: 2 } },
        },
        { id: "e", needs: ["d"], run: { type: "noop" } },
      ],
      defaults: { retry: { maxAttempts: 3, backoff: "fixed", delaySeconds: 1 } },
    });
    processes.push(spawnWorker(ctx, ["--concurrency", "4"]));
    supervisor = await startSupervisor({ config: ctx.config, log: pino({ level: "silent" }) });
    const runs = [];
    for (let i = 0; i < 6; i++) runs.push(await startRun(ctx, "resilient"));
    // Flush while steps are running, queued and waiting for a retry's delay.
    await waitForRun(ctx, runs[0].id, (r) => r.steps.some((s: any) => s.status === "running"));
    await redis.client().flushall();
    await new Promise((r) => setTimeout(r, 1500));
    await redis.client().flushall(); // and again, when other steps are in flight
    for (const run of runs) {
      const done = await waitForRun(ctx, run.id, undefined, 90_000);
      expect(done.status, JSON.stringify(done.steps)).toBe("succeeded");
      expect(done.steps.map((s: any) => s.status)).toEqual(Array(5).fill("succeeded"));
    }
    // Each step ran to success exactly once per run.
    const [row] = await ctx.db.sql<{ count: string }[]>`
      select count(*) from events where type = 'step.succeeded'`;
    expect(Number(row!.count)).toBe(runs.length * 5);
  }, 120_000);
});

describe("Redis losing an asset lock held by a running materialization", () => {
  it("grants it to no other run; the renewer takes it back for its holder (SPEC §8.6)", async () => {
    await putWorkflow(ctx, "locked-asset", {
      // A queue no worker serves: the test plays the worker, so the holder runs as long as needed.
      steps: [{ id: "make", queue: "nowhere", provides: ["guarded"], run: { type: "noop" } }],
    });
    const engine = ctx.app.flowline.engine;
    const materialize = async () => {
      const res = await call(ctx.app, "POST", "/v1/materializations", {
        key: ctx.rootKey,
        body: { assets: ["guarded"], force: true },
      });
      expect(res.statusCode).toBe(202);
      return res.json().runs[0];
    };
    const a = await materialize();
    const b = await materialize();
    expect([a.status, b.status]).toEqual(["running", "queued"]);
    const started = await startAttempt(
      engine,
      { runId: a.id, stepId: "make", attempt: 1 },
      { id: "w", leaseSeconds: 60 },
    );
    if (!started.accepted) throw new Error(started.reason);

    await redis.client().flushall();
    // The next admission pass must not hand the asset to b while a materializes it.
    await admitQueuedRuns(engine);
    expect((await waitForRun(ctx, b.id, () => true)).status).toBe("queued");
    // The lock is a's again in the store, not only in Postgres.
    await renewAssetLocks(engine);
    expect(await engine.locks.holder("default", "guarded")).toBe(a.id);
    await admitQueuedRuns(engine);
    expect((await waitForRun(ctx, b.id, () => true)).status).toBe("queued");

    expect(await completeAttempt(engine, started.attempt, { rows: 1 })).toEqual({ accepted: true });
    expect((await waitForRun(ctx, a.id)).status).toBe("succeeded");
    // a's end frees the lock and admits b.
    await waitForRun(ctx, b.id, (r) => r.status === "running");
  });
});
