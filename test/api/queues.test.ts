/**
 * `GET /v1/queues` and the queue gauges on /metrics: counts from BullMQ, backlog from Postgres,
 * workers from their announcements (their steps shown only to the owning tenant), unserved queues
 * flagged, and bad input refused.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.ts";
import { parseConfig } from "../../src/config/index.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { call, expectProblem } from "../helpers/http.ts";

let ctx: TestContext;
let tenantKey: string;

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...c,
    queues: { default: {}, heavy: { concurrency: 2, min: 0, max: 3 } },
  }));
  tenantKey = (
    await call(ctx.app, "POST", "/v1/keys", { key: ctx.rootKey, body: { tenant: "acme", scopes: ["read"] } })
  ).json().key;
});
afterAll(() => ctx?.close());

const queues = async (key: string) => {
  const res = await call(ctx.app, "GET", "/v1/queues", { key });
  expect(res.statusCode).toBe(200);
  return new Map<string, any>(res.json().items.map((q: any) => [q.name, q]));
};

describe("GET /v1/queues", () => {
  it("lists configured queues, and a queue steps name that nothing serves, with a warning", async () => {
    // A definition may only name configured queues; a queue stops being configured when the
    // configuration changes under stored definitions. An API with the older configuration
    // stores the definition and starts the run.
    const before = await buildApp({
      config: parseConfig({ ...ctx.config, queues: { ...ctx.config.queues, nowhere: { min: 0 } } }),
      db: ctx.db,
      stores: ctx.stores,
    });
    const put = await call(before, "PUT", "/v1/workflows/stray", {
      key: ctx.rootKey,
      body: { steps: [{ id: "s", queue: "nowhere", run: { type: "noop" } }] },
    });
    expect(put.statusCode).toBe(201);
    const run = (
      await call(before, "POST", "/v1/workflows/stray/runs", { key: ctx.rootKey, body: {} })
    ).json();
    await before.close();
    const refused = await call(ctx.app, "PUT", "/v1/workflows/stray2", {
      key: ctx.rootKey,
      body: { steps: [{ id: "s", queue: "nowhere", run: { type: "noop" } }] },
    });
    expect(refused.statusCode).toBe(400);
    expect(refused.json().errors).toEqual([
      {
        location: "body",
        path: "steps[0].queue",
        message: 'queue "nowhere" is not configured (configured queues: default, heavy)',
      },
    ]);
    const byName = await queues(ctx.rootKey);
    expect([...byName.keys()]).toEqual(["default", "heavy", "nowhere"]);
    expect(byName.get("heavy")).toMatchObject({
      configured: true,
      pool: { concurrency: 2, min: 0, max: 3 },
      backlog: 0,
      workers: [],
      warning: null,
    });
    const nowhere = byName.get("nowhere");
    expect(nowhere).toMatchObject({ configured: false, pool: null, backlog: 1, running: 0 });
    expect(nowhere.jobs.waiting).toBe(1);
    expect(nowhere.oldestWaitingSeconds).toBeGreaterThanOrEqual(0);
    expect(nowhere.warning).toMatch(/not configured and no worker serves it/);
    // The step itself says where it waits.
    const detail = (await call(ctx.app, "GET", `/v1/runs/${run.id}`, { key: ctx.rootKey })).json();
    expect(detail.steps[0]).toMatchObject({ status: "queued" });
  });

  it("shows workers online, with their steps visible only to the steps' own tenant", async () => {
    const registry = ctx.stores.registry;
    const step = (tenantId: string, stepId: string) => ({
      tenantId,
      runId: "00000000-0000-4000-8000-000000000001",
      stepId,
      attempt: 1,
      startedAt: new Date().toISOString(),
    });
    await registry.announce(
      {
        id: "host:1:abcd",
        pid: 1,
        host: "host",
        queues: ["default"],
        concurrency: 4,
        startedAt: new Date().toISOString(),
        steps: [step("default", "root-step"), step("acme", "acme-step")],
      },
      60_000,
    );
    const asRoot = (await queues(ctx.rootKey)).get("default");
    expect(asRoot.workers).toHaveLength(1);
    expect(asRoot.workers[0].steps.map((s: any) => s.stepId).sort()).toEqual(["acme-step", "root-step"]);
    expect(asRoot.workers[0].steps[0].tenantId).toBeUndefined();
    const asAcme = (await queues(tenantKey)).get("default");
    expect(asAcme.workers[0].steps.map((s: any) => s.stepId)).toEqual(["acme-step"]);
    await registry.remove("host:1:abcd");
    expect((await queues(ctx.rootKey)).get("default").workers).toEqual([]);
  });

  it("exports the backlog signals as Prometheus gauges", async () => {
    const metrics = (await call(ctx.app, "GET", "/metrics")).body;
    expect(metrics).toMatch(/^flowline_queue_backlog\{queue="nowhere"\} 1$/m);
    expect(metrics).toMatch(/^flowline_queue_backlog\{queue="heavy"\} 0$/m);
    expect(metrics).toMatch(/^flowline_queue_oldest_waiting_seconds\{queue="nowhere"\} [\d.]+$/m);
    expect(metrics).toMatch(/^flowline_workers_online\{queue="default"\} 0$/m);
  });

  it("refuses unknown query parameters and missing keys", async () => {
    const problem = expectProblem(
      await call(ctx.app, "GET", "/v1/queues?queue=default", { key: ctx.rootKey }),
      400,
    );
    expect(JSON.stringify(problem)).toMatch(/queue/);
    expectProblem(await call(ctx.app, "GET", "/v1/queues"), 401);
  });
});
