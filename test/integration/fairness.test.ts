/**
 * Tenant fairness on a shared queue (SPEC §13), through a real worker process with one slot:
 * tenant A queues a wide run, tenant B a small one right after it, both before the worker starts.
 * On a fair queue B's steps are handed out interleaved with A's backlog; on a queue with
 * `fairShare: false` they wait behind all of it (the previous behaviour, kept as the contrast).
 * The rule itself (priorities, the clock) is tested on Redis alone in fair-queue.test.ts.
 * Order is read from the steps' start times: with one slot, start order is hand-out order.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { engineSettings, spawnWorker, stopProcess, waitForRun } from "../helpers/engine.ts";
import { call } from "../helpers/http.ts";

const WIDE = 120;
const SMALL = 4;

let ctx: TestContext;
let keyB: string;

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...engineSettings(c),
    queues: { default: {}, shared: {}, plain: { fairShare: false } },
  }));
  const res = await call(ctx.app, "POST", "/v1/keys", {
    key: ctx.rootKey,
    body: { tenant: "tenant-b", scopes: ["admin"] },
  });
  keyB = res.json().key;
});
afterAll(async () => {
  await ctx?.close();
});

async function put(key: string, name: string, queue: string, steps: number) {
  const res = await call(ctx.app, "PUT", `/v1/workflows/${name}`, {
    key,
    body: {
      defaults: { queue },
      steps: Array.from({ length: steps }, (_, i) => ({ id: `s${i}`, run: { type: "noop" } })),
    },
  });
  expect(res.statusCode).toBeLessThan(300);
}

async function submit(key: string, name: string): Promise<string> {
  const res = await call(ctx.app, "POST", `/v1/workflows/${name}/runs`, { key, body: {} });
  expect(res.statusCode).toBe(202);
  return res.json().id;
}

/** Runs A's wide run and B's small one on `queue`; answers the start ranks (0-based) of B's steps. */
async function ranksOfB(queue: string): Promise<number[]> {
  await put(ctx.rootKey, `wide-${queue}`, queue, WIDE);
  await put(keyB, `small-${queue}`, queue, SMALL);
  const runA = await submit(ctx.rootKey, `wide-${queue}`);
  const runB = await submit(keyB, `small-${queue}`);
  const worker = spawnWorker(ctx, ["--queues", queue, "--concurrency", "1"]);
  try {
    await worker.waitFor(/worker started/);
    expect((await waitForRun(ctx, runA)).status).toBe("succeeded");
    expect((await waitForRun(ctx, runB, undefined, 30_000, keyB)).status).toBe("succeeded");
  } finally {
    await stopProcess(worker);
  }
  const rows = await ctx.db.sql<{ run_id: string }[]>`
    select run_id from step_runs where run_id in (${runA}, ${runB}) and phase = 'execute'
    order by started_at, step_id`;
  expect(rows).toHaveLength(WIDE + SMALL);
  return rows.flatMap((r, rank) => (r.run_id === runB ? [rank] : []));
}

describe("tenant fairness on a shared queue", () => {
  it("hands a second tenant's steps out between the first tenant's backlog", async () => {
    const ranks = await ranksOfB("shared");
    // Interleaved one for one with A's backlog: B's i-th step is at about 2i.
    expect(Math.max(...ranks)).toBeLessThan(2 * SMALL + 2);
  }, 60_000);

  it("without fairShare, the second tenant waits behind the whole backlog", async () => {
    const ranks = await ranksOfB("plain");
    expect(Math.min(...ranks)).toBeGreaterThanOrEqual(WIDE - 1);
  }, 60_000);
});
