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
    quotas: { tenants: { acme: { maxPriority: 3 } } },
  }));
  acme = (
    await call(ctx.app, "POST", "/v1/keys", { key: ctx.rootKey, body: { tenant: "acme", scopes: ["write"] } })
  ).json().key;
});
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
