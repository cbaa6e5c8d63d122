/**
 * Exact per-tenant quotas (SPEC §13): concurrent submissions of one tenant are counted one after
 * the other inside their transactions, so a burst at a quota of M accepts exactly M, whatever the
 * kind of run; a schedule's slot over quota is recorded as skipped, without a run. No worker runs:
 * every accepted run stays active.
 */
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createEngineDeps } from "../../src/engine/create.ts";
import type { EngineDeps } from "../../src/engine/deps.ts";
import { autoMaterialize } from "../../src/engine/requests.ts";
import { fireDueSchedules } from "../../src/jobs/supervisor/schedules.ts";
import { BullStepDispatcher, fairShareOf } from "../../src/queue/step-queue.ts";
import { RedisAssetLocks } from "../../src/redis/asset-locks.ts";
import { RedisEventBus } from "../../src/redis/event-bus.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { call } from "../helpers/http.ts";

let ctx: TestContext;
let engine: EngineDeps;
let dispatcher: BullStepDispatcher;

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...c,
    rateLimit: { enabled: false },
    quotas: {
      tenants: {
        burst: { activeRuns: 3 },
        steps: { queuedSteps: 7 },
        mixed: { activeRuns: 4 },
        bulk: { activeRuns: 4 },
        cron: { activeRuns: 1 },
        auto: { activeRuns: 1 },
      },
    },
  }));
  const bus = new RedisEventBus(ctx.redis, null, ctx.config.redis.prefix);
  dispatcher = new BullStepDispatcher(
    {
      kind: "redis",
      redis: ctx.redis,
      newConnection: () => ctx.redis.duplicate(),
      prefix: ctx.config.redis.prefix,
    },
    fairShareOf(ctx.config.queues),
  );
  engine = createEngineDeps({
    db: ctx.db,
    config: ctx.config,
    dispatcher,
    notifier: bus,
    control: bus,
    locks: new RedisAssetLocks(ctx.redis, ctx.config.redis.prefix),
    log: pino({ level: "silent" }),
  });
});
afterAll(async () => {
  await dispatcher?.close();
  await ctx?.close();
});

const threeSteps = {
  steps: [
    { id: "a", provides: ["t"], run: { type: "noop" } },
    { id: "b", needs: ["a"], run: { type: "noop" } },
    { id: "c", needs: ["b"], run: { type: "noop" } },
  ],
};

async function tenantKey(tenant: string): Promise<string> {
  const res = await call(ctx.app, "POST", "/v1/keys", {
    key: ctx.rootKey,
    body: { tenant, scopes: ["admin"] },
  });
  return res.json().key;
}

async function put(key: string, name: string, definition: unknown) {
  const res = await call(ctx.app, "PUT", `/v1/workflows/${name}`, { key, body: definition });
  expect(res.statusCode).toBeLessThan(300);
}

/** Fires the requests all at once; answers the status codes. */
async function burst(key: string, requests: Array<[string, unknown]>): Promise<number[]> {
  const responses = await Promise.all(
    requests.map(([url, body]) => call(ctx.app, "POST", url, { key, body })),
  );
  for (const res of responses) if (res.statusCode === 429) expect(res.json().code).toBe("quota_exceeded");
  return responses.map((r) => r.statusCode);
}

const count = (codes: number[], code: number) => codes.filter((c) => c === code).length;

async function activeRuns(tenant: string): Promise<number> {
  const [row] = await ctx.db.sql<{ n: number }[]>`
    select count(*)::int as n from runs
    where tenant_id = ${tenant} and status in ('queued', 'running', 'paused', 'rolling_back')`;
  return row!.n;
}

describe("exact quotas under concurrent submissions", () => {
  it("accepts exactly quotas.activeRuns of a burst of runs", async () => {
    const key = await tenantKey("burst");
    await put(key, "three", threeSteps);
    const codes = await burst(
      key,
      Array.from({ length: 12 }, () => ["/v1/workflows/three/runs", {}] as [string, unknown]),
    );
    expect(count(codes, 202)).toBe(3);
    expect(count(codes, 429)).toBe(9);
    expect(await activeRuns("burst")).toBe(3);
  });

  it("accepts exactly as many runs as fit in quotas.queuedSteps", async () => {
    const key = await tenantKey("steps");
    await put(key, "three", threeSteps);
    const codes = await burst(
      key,
      Array.from({ length: 8 }, () => ["/v1/workflows/three/runs", {}] as [string, unknown]),
    );
    // 7 steps hold two runs of three, not a third.
    expect(count(codes, 202)).toBe(2);
    expect(count(codes, 429)).toBe(6);
  });

  it("counts materializations and subgraphs with workflow runs, exactly", async () => {
    const key = await tenantKey("mixed");
    await put(key, "three", threeSteps);
    const requests: Array<[string, unknown]> = [];
    for (let i = 0; i < 4; i++)
      requests.push(
        ["/v1/workflows/three/runs", {}],
        ["/v1/materializations", { assets: ["t"], force: true }],
        ["/v1/subgraphs", { workflow: "three", steps: ["a"] }],
      );
    const codes = await burst(key, requests);
    expect(count(codes, 429)).toBe(requests.length - 4);
    expect(codes.filter((c) => c < 300)).toHaveLength(4);
    expect(await activeRuns("mixed")).toBe(4);
  });
});

describe("quotas on backfills and retries", () => {
  it("refuses a whole backfill that does not fit, and a retry past the quota", async () => {
    const key = await tenantKey("bulk");
    await put(key, "daily", { steps: [{ id: "day", provides: ["table"], run: { type: "noop" } }] });
    const backfill = (to: string) =>
      call(ctx.app, "POST", "/v1/materializations", {
        key,
        body: { assets: ["table"], partitions: { from: "2026-01-01", to, step: "day" } },
      });
    const tooMany = await backfill("2026-01-05");
    expect(tooMany.statusCode).toBe(429);
    expect(tooMany.json().detail).toMatch(/quotas.activeRuns/);
    expect(await activeRuns("bulk")).toBe(0);
    expect((await backfill("2026-01-03")).statusCode).toBeLessThan(300);
    expect(await activeRuns("bulk")).toBe(3);
    // A cancelled run frees its place; retrying it takes one, and past the quota is refused.
    const [first] = await ctx.db.sql<{ id: string }[]>`select id from runs where tenant_id = 'bulk' limit 1`;
    expect((await call(ctx.app, "POST", `/v1/runs/${first!.id}/cancel`, { key })).statusCode).toBe(200);
    expect((await backfill("2026-01-02")).statusCode).toBeLessThan(300);
    expect(await activeRuns("bulk")).toBe(4);
    const retry = await call(ctx.app, "POST", `/v1/runs/${first!.id}/retry`, { key, body: {} });
    expect(retry.statusCode).toBe(429);
    expect(retry.json().code).toBe("quota_exceeded");
    expect(await activeRuns("bulk")).toBe(4);
  });
});

describe("quotas on runs nobody requested over the API", () => {
  it("records a schedule's slot over quota as skipped, without a run", async () => {
    const key = await tenantKey("cron");
    await put(key, "ticking", { ...threeSteps, schedules: [{ cron: "* * * * *", timezone: "UTC" }] });
    await put(key, "three", threeSteps);
    expect(count(await burst(key, [["/v1/workflows/three/runs", {}]]), 202)).toBe(1);
    const fires = await fireDueSchedules(
      engine,
      { stillActive: () => true },
      new Date(Date.now() + 5 * 60_000),
    );
    expect(fires).toEqual([]);
    const rows = await ctx.db.sql<{ run_id: string | null }[]>`
      select f.run_id from schedule_fires f join workflows w on w.id = f.workflow_id
      where w.tenant_id = 'cron' and w.name = 'ticking'`;
    expect(rows).toEqual([{ run_id: null }]);
    expect(await activeRuns("cron")).toBe(1);
  });

  it("starts no auto-materialization over quota, and starts it once there is room", async () => {
    const key = await tenantKey("auto");
    await put(key, "fresh", {
      assets: { kept: { autoMaterialize: true } },
      steps: [{ id: "make", provides: ["kept"], run: { type: "noop" } }],
    });
    await put(key, "three", threeSteps);
    const blocker = (await call(ctx.app, "POST", "/v1/workflows/three/runs", { key, body: {} })).json().id;
    expect(await autoMaterialize(engine)).toBe(0);
    expect(await activeRuns("auto")).toBe(1);
    await call(ctx.app, "POST", `/v1/runs/${blocker}/cancel`, { key });
    expect(await autoMaterialize(engine)).toBe(1);
    expect(await activeRuns("auto")).toBe(1);
  });
});
