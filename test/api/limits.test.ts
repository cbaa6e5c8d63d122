/**
 * Limits and quotas at the API (SPEC §13): definitions and requests over a limit answer 400 naming
 * the limit and the value; a tenant over a quota gets 429 `quota_exceeded` naming the quota.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { call, expectProblem } from "../helpers/http.ts";

let ctx: TestContext;
let acme: string;
beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...c,
    rateLimit: { enabled: false },
    queues: { default: {}, heavy: { min: 0 } },
    limits: { backfillRuns: 3, maxRunParamsBytes: 200 },
    quotas: {
      tenants: {
        acme: { maxPriority: 3 },
        busy: { activeRuns: 2 },
        wide: { queuedSteps: 5 },
        watcher: { streams: 1 },
      },
    },
  }));
  acme = await keyFor("acme");
});

const keyFor = async (tenant: string) =>
  (await call(ctx.app, "POST", "/v1/keys", { key: ctx.rootKey, body: { tenant, scopes: ["write"] } })).json()
    .key as string;
afterAll(() => ctx?.close());

const put = (key: string, name: string, definition: unknown) =>
  call(ctx.app, "PUT", `/v1/workflows/${name}`, { key, body: definition });

describe("ceilings", () => {
  it("holds a tenant's priorities under its configured ceiling, in definitions and requests", async () => {
    const high = await put(acme, "urgent", { steps: [{ id: "a", priority: 9, run: { type: "noop" } }] });
    expect(expectProblem(high, 400).errors[0]).toMatchObject({
      path: "steps[0].priority",
      message: expect.stringMatching(/ceiling of 3 \(quotas.maxPriority\)/),
    });
    expect(
      (await put(acme, "calm", { steps: [{ id: "a", provides: ["x"], run: { type: "noop" } }] })).statusCode,
    ).toBe(201);
    const run = await call(ctx.app, "POST", "/v1/workflows/calm/runs", { key: acme, body: { priority: 4 } });
    expect(expectProblem(run, 400).errors[0].path).toBe("priority");
    const materialize = await call(ctx.app, "POST", "/v1/materializations", {
      key: acme,
      body: { assets: ["x"], priority: 10 },
    });
    expectProblem(materialize, 400);
    const subgraph = await call(ctx.app, "POST", "/v1/subgraphs", {
      key: acme,
      body: { workflow: "calm", steps: ["a"], priority: 10 },
    });
    expectProblem(subgraph, 400);
    expect(
      (await call(ctx.app, "POST", "/v1/workflows/calm/runs", { key: acme, body: { priority: 3 } }))
        .statusCode,
    ).toBe(202);
    // Other tenants keep the default ceiling.
    expect(
      (await put(ctx.rootKey, "urgent", { steps: [{ id: "a", priority: 9, run: { type: "noop" } }] }))
        .statusCode,
    ).toBe(201);
  });

  it("refuses backfills over limits.backfillRuns, naming the limit", async () => {
    const res = await call(ctx.app, "POST", "/v1/materializations", {
      key: acme,
      body: { assets: ["x"], partitions: ["a", "b", "c", "d"], dryRun: true },
    });
    const problem = expectProblem(res, 400);
    expect(problem.detail).toMatch(/4 partitions requested; at most 3 .*limits.backfillRuns/);
  });

  it("refuses a step on a queue the configuration does not define", async () => {
    const res = await put(acme, "stray", { steps: [{ id: "a", queue: "gpu", run: { type: "noop" } }] });
    expect(expectProblem(res, 400).detail).toMatch(
      /queue "gpu" is not configured \(configured queues: default, heavy\)/,
    );
  });

  it("refuses request params over limits.maxRunParamsBytes, naming the limit and the size", async () => {
    for (const [url, body] of [
      ["/v1/workflows/calm/runs", {}],
      ["/v1/materializations", { assets: ["x"] }],
      ["/v1/subgraphs", { workflow: "calm", steps: ["a"] }],
    ] as const) {
      const res = await call(ctx.app, "POST", url, {
        key: acme,
        body: { ...body, params: { p: "x".repeat(300) } },
      });
      const problem = expectProblem(res, 400);
      expect(problem.detail).toMatch(
        /params are 3\d\d bytes as JSON; the limit is 200 \(limits.maxRunParamsBytes\)/,
      );
      expect(problem.errors[0].path).toBe("params");
    }
  });
});

describe("quotas", () => {
  const threeSteps = {
    steps: [
      { id: "a", provides: ["t"], run: { type: "noop" } },
      { id: "b", needs: ["a"], run: { type: "noop" } },
      { id: "c", needs: ["b"], run: { type: "noop" } },
    ],
  };
  const start = (key: string, name: string) =>
    call(ctx.app, "POST", `/v1/workflows/${name}/runs`, { key, body: {} });

  it("refuses a run past the tenant's active runs with 429 quota_exceeded naming the quota", async () => {
    const busy = await keyFor("busy");
    expect((await put(busy, "three", threeSteps)).statusCode).toBe(201);
    // No worker serves the queue: the runs stay active.
    expect((await start(busy, "three")).statusCode).toBe(202);
    expect((await start(busy, "three")).statusCode).toBe(202);
    const res = await start(busy, "three");
    const problem = expectProblem(res, 429);
    expect(problem.code).toBe("quota_exceeded");
    expect(problem.detail).toMatch(
      /has 2 active runs and asks for 1 more; the quota is 2 \(quotas.activeRuns\)/,
    );
    expect(Number(res.headers["retry-after"])).toBeGreaterThan(0);
    for (const [url, body] of [
      ["/v1/materializations", { assets: ["t"] }],
      ["/v1/subgraphs", { workflow: "three", steps: ["a"] }],
    ] as const) {
      expect(expectProblem(await call(ctx.app, "POST", url, { key: busy, body }), 429).code).toBe(
        "quota_exceeded",
      );
    }
    // A dry run holds nothing: it is still answered.
    const dry = await call(ctx.app, "POST", "/v1/workflows/three/runs", {
      key: busy,
      body: { dryRun: true },
    });
    expect(dry.statusCode).toBe(200);
    // Other tenants are not affected.
    expect((await put(ctx.rootKey, "three", threeSteps)).statusCode).toBeLessThan(300);
    expect((await start(ctx.rootKey, "three")).statusCode).toBe(202);
    // Cancelling a run frees its place.
    const runs = (await call(ctx.app, "GET", "/v1/runs?workflow=three", { key: busy })).json().items;
    await call(ctx.app, "POST", `/v1/runs/${runs[0].id}/cancel`, { key: busy });
    expect((await start(busy, "three")).statusCode).toBe(202);
  });

  it("refuses a run whose steps would take the tenant past its queued steps", async () => {
    const wide = await keyFor("wide");
    expect((await put(wide, "three", threeSteps)).statusCode).toBe(201);
    expect((await start(wide, "three")).statusCode).toBe(202);
    const problem = expectProblem(await start(wide, "three"), 429);
    expect(problem.detail).toMatch(
      /has 3 steps to run and asks for 3 more; the quota is 5 \(quotas.queuedSteps\)/,
    );
  });

  it("refuses a stream past the tenant's open streams, and admits one again once a stream closes", async () => {
    const watcher = await keyFor("watcher");
    expect((await put(watcher, "three", threeSteps)).statusCode).toBe(201);
    const run = (await start(watcher, "three")).json();
    const base = await ctx.app.listen({ host: "127.0.0.1", port: 0 });
    const open = (path = "events") =>
      fetch(`${base}/v1/runs/${run.id}/${path}`, {
        headers: { authorization: `Bearer ${watcher}`, accept: "text/event-stream" },
      });
    const first = await open();
    expect(first.status).toBe(200);
    const second = await open("logs?follow=true");
    expect(second.status).toBe(429);
    expect(second.headers.get("content-type")).toMatch(/^application\/problem\+json/);
    expect(((await second.json()) as { detail: string }).detail).toMatch(/quotas.streams/);
    await first.body!.cancel();
    let third = await open();
    for (let i = 0; third.status === 429 && i < 50; i++) {
      await third.body?.cancel();
      await new Promise((r) => setTimeout(r, 50));
      third = await open();
    }
    expect(third.status).toBe(200);
    await third.body!.cancel();
  });
});
