/**
 * `flowline workers` with real processes end to end: a burst of steps scales a pool from min to
 * max and back after the cool-down with no step lost or run twice, and a worker killed with
 * `kill -9` mid-step is replaced while its step is retried and the run succeeds.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import {
  configFileFor,
  engineSettings,
  eventsOf,
  putWorkflow,
  startRun,
  stopProcess,
  waitForRun,
} from "../helpers/engine.ts";
import { call } from "../helpers/http.ts";
import { cleanEnv, isAlive, type Spawned, spawnFlowline } from "../helpers/processes.ts";

let ctx: TestContext;
const processes: Spawned[] = [];

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...engineSettings(c),
    queues: { default: { concurrency: 2, min: 1, max: 3 } },
    autoscaler: { intervalSeconds: 1, cooldownSeconds: 3, maxRestartDelaySeconds: 2 },
  }));
});
afterAll(async () => {
  for (const p of processes) await stopProcess(p);
  await ctx?.close();
});

async function defaultQueue() {
  const res = await call(ctx.app, "GET", "/v1/queues", { key: ctx.rootKey });
  return res.json().items.find((q: any) => q.name === "default");
}

async function until<T>(
  what: string,
  probe: () => Promise<T | undefined | false>,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe("autoscaled worker pools", () => {
  it("a burst of 200 steps scales from min to max and back after the cool-down; none lost, none twice", async () => {
    const pool = spawnFlowline(["workers"], cleanEnv({ FLOWLINE_CONFIG: configFileFor(ctx) }));
    processes.push(pool);
    await until("one worker online", async () => (await defaultQueue()).workers.length === 1);

    await putWorkflow(ctx, "burst", {
      steps: Array.from({ length: 200 }, (_, i) => ({ id: `s${i}`, run: { type: "sleep", seconds: 0.2 } })),
    });
    const run = await startRun(ctx, "burst");
    let peak = 0;
    let target = 0;
    const pids = new Set<number>();
    const watch = setInterval(async () => {
      const q = await defaultQueue().catch(() => undefined);
      if (!q) return;
      for (const w of q.workers) pids.add(w.pid);
      peak = Math.max(peak, q.workers.length);
      target = Math.max(target, q.scaler?.target ?? 0);
    }, 200);
    const done = await waitForRun(ctx, run.id, undefined, 120_000);
    clearInterval(watch);
    expect(done.status).toBe("succeeded");
    expect(target).toBe(3);
    expect(peak).toBe(3);

    // Back to min once the cool-down has passed.
    await until(
      "the pool to shrink back to one worker",
      async () => (await defaultQueue()).workers.length === 1,
    );
    const events = await eventsOf(ctx, run.id);
    const started = events.filter((e) => e.type === "step.started").map((e) => e.stepId);
    const succeeded = events.filter((e) => e.type === "step.succeeded").map((e) => e.stepId);
    expect(new Set(succeeded).size).toBe(200);
    expect(succeeded).toHaveLength(200);
    expect(started).toHaveLength(200);
    await stopProcess(pool);
    // Its workers went with it: no orphans.
    expect(pids.size).toBeGreaterThanOrEqual(3);
    expect([...pids].filter(isAlive)).toEqual([]);
  }, 180_000);

  it("replaces a worker killed with kill -9 mid-step; the step is retried and the run succeeds", async () => {
    const pool = spawnFlowline(["workers"], cleanEnv({ FLOWLINE_CONFIG: configFileFor(ctx) }));
    processes.push(pool);
    await until("one worker online", async () => (await defaultQueue()).workers.length >= 1);
    await putWorkflow(ctx, "long-step", {
      steps: [
        {
          id: "slow",
          retry: { maxAttempts: 3, backoff: "fixed", delaySeconds: 1 },
          run: { type: "handler", name: "test.sleepy", input: { ms: 3000 } },
        },
        { id: "after", needs: ["slow"], run: { type: "noop" } },
      ],
    });
    const run = await startRun(ctx, "long-step");
    const victim = await until("a worker running the step", async () => {
      const q = await defaultQueue();
      return q.workers.find((w: any) => w.steps.some((s: any) => s.runId === run.id && s.stepId === "slow"));
    });
    process.kill(victim.pid, "SIGKILL");
    await until("the killed worker to be gone", async () => !isAlive(victim.pid));

    const done = await waitForRun(ctx, run.id, undefined, 60_000);
    expect(done.status).toBe("succeeded");
    const slow = done.steps.find((s: any) => s.id === "slow");
    expect(slow.attempt).toBe(2);
    expect(slow.workerId).not.toBe(victim.id);
    // The pool replaced the killed process.
    const q = await until("a replacement worker", async () => {
      const current = await defaultQueue();
      return (
        current.workers.length >= 1 && current.workers.every((w: any) => w.pid !== victim.pid) && current
      );
    });
    expect(q.workers.some((w: any) => w.pid === victim.pid)).toBe(false);
    expect(pool.stdout() + pool.stderr()).toMatch(/restart/i);
  }, 120_000);
});
