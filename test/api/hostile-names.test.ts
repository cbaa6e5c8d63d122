/**
 * No input ends in a 5xx (SPEC §13): definitions and requests whose user-given names are
 * `constructor`, `__proto__`, `toString`, empty, unicode or 10 KB long, wherever a name meets an
 * object (tags, queues, handlers, commands, params, assets, templates, step ids, URLs), answer
 * 2xx or 4xx, against the real API on real Postgres and Redis.
 */
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { call } from "../helpers/http.ts";

let ctx: TestContext;
beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...c,
    rateLimit: { enabled: false },
    queues: { default: {}, heavy: {} },
    tags: { heavy: "heavy" },
    commands: { echo: { argv: ["echo"] } },
  }));
});
afterAll(() => ctx?.close());

const hostile = fc.constantFrom(
  "constructor",
  "__proto__",
  "toString",
  "hasOwnProperty",
  "valueOf",
  "prototype",
  "__defineGetter__",
  "",
  "é",
  "名前",
  "a\u0000b",
  "x".repeat(10_240),
  "heavy",
  "default",
  "a",
);
/** Inherited property names that pass the name patterns, so requests get past validation. */
const plausible = fc.constantFrom("constructor", "valueof", "prototype", "tostring", "toString", "a");
const name = fc.oneof(
  { weight: 6, arbitrary: plausible },
  { weight: 2, arbitrary: hostile },
  { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
);
const maybe = <T>(arbitrary: fc.Arbitrary<T>) => fc.option(arbitrary, { nil: undefined, freq: 2 });

const executor = fc.oneof(
  fc.record({ type: fc.constant("handler"), name }),
  fc.record({ type: fc.constant("command"), command: name, args: fc.array(name, { maxLength: 2 }) }),
  fc.record({ type: fc.constant("noop"), output: fc.dictionary(name, name, { maxKeys: 2 }) }),
  name.map((n) => ({ type: "noop", output: { v: `{{params.${n}}}` } })),
  name.map((n) => ({ type: "noop", output: `{{steps.${n}.output.${n}}}` })),
  name.map((n) => ({ type: n })),
);

const step = fc
  .record({
    id: name,
    run: fc.oneof(
      { weight: 3, arbitrary: fc.constant({ type: "noop" }) },
      { weight: 2, arbitrary: executor },
    ),
    needs: maybe(fc.array(name, { maxLength: 1 })),
    tags: maybe(fc.array(name, { maxLength: 2 })),
    queue: maybe(name),
    provides: maybe(fc.array(name, { maxLength: 1 })),
    requires: maybe(fc.array(name, { maxLength: 1 })),
    priority: maybe(fc.integer({ min: 0, max: 11 })),
  })
  .map((s) => Object.fromEntries(Object.entries(s).filter(([, v]) => v !== undefined)) as Step);
type Step = { id: string } & Record<string, unknown>;

const definition = fc
  .record({
    steps: fc.uniqueArray(step, { minLength: 1, maxLength: 3, selector: (s) => s.id }),
    params: maybe(fc.dictionary(name, name, { maxKeys: 3 })),
    assets: maybe(
      fc.dictionary(name, fc.record({ maxAgeSeconds: fc.integer({ min: 1, max: 10 }) }), { maxKeys: 1 }),
    ),
    defaults: maybe(fc.record({ queue: name }, { requiredKeys: [] })),
  })
  .map((d) => Object.fromEntries(Object.entries(d).filter(([, v]) => v !== undefined)) as { steps: Step[] });

const workflowName = fc.oneof(
  fc.constant("wf"),
  hostile.map((n) => encodeURIComponent(n)),
);

describe("hostile names", () => {
  it("never answer a 5xx, for definitions or for the requests that use them", async () => {
    const seen: string[] = [];
    const check = (what: string, res: { statusCode: number; body: string }) => {
      seen.push(`${what} ${res.statusCode}`);
      if (res.statusCode >= 500)
        throw new Error(`${what} answered ${res.statusCode}: ${res.body.slice(0, 300)}`);
    };
    // Most generated definitions are refused (hostile queue names are not configured): a valid one
    // stored first makes sure the paths that use a definition are reached whatever is generated.
    check(
      "PUT baseline",
      await call(ctx.app, "PUT", "/v1/workflows/wf", {
        key: ctx.rootKey,
        body: { steps: [{ id: "constructor", run: { type: "noop" } }] },
      }),
    );
    await fc.assert(
      fc.asyncProperty(
        workflowName,
        definition,
        fc.dictionary(name, name, { maxKeys: 3 }),
        name,
        async (wf, def, params, other) => {
          const key = ctx.rootKey;
          const put = await call(ctx.app, "PUT", `/v1/workflows/${wf}`, { key, body: def });
          check("PUT definition", put);
          const run = await call(ctx.app, "POST", `/v1/workflows/${wf}/runs`, { key, body: { params } });
          check("POST run", run);
          check(
            "dry run",
            await call(ctx.app, "POST", `/v1/workflows/${wf}/runs`, { key, body: { params, dryRun: true } }),
          );
          if (run.statusCode === 202)
            check("GET run", await call(ctx.app, "GET", `/v1/runs/${run.json().id}`, { key }));
          check(
            "materialize",
            await call(ctx.app, "POST", "/v1/materializations", { key, body: { assets: [other], params } }),
          );
          check(
            "subgraph",
            await call(ctx.app, "POST", "/v1/subgraphs", {
              key,
              body: { workflow: wf, steps: [...new Set([other, def.steps[0]!.id])], upstream: false },
            }),
          );
          check("asset", await call(ctx.app, "GET", `/v1/assets/${encodeURIComponent(other)}`, { key }));
          check(
            "runs by workflow",
            await call(ctx.app, "GET", `/v1/runs?workflow=${encodeURIComponent(other)}`, { key }),
          );
          check("queues", await call(ctx.app, "GET", "/v1/queues", { key }));
        },
      ),
      // A fixed seed: CI runs the same 150 cases every time (a failure is reproducible).
      { numRuns: 150, seed: 20261204 },
    );
    // The property reached the interesting paths, not only 400s on the definition.
    expect(seen.filter((s) => s === "POST run 202").length).toBeGreaterThan(0);
  });

  it("routes a step tagged with an inherited property name to the default queue", async () => {
    const key = ctx.rootKey;
    for (const tag of ["constructor", "toString", "hasOwnProperty"]) {
      const put = await call(ctx.app, "PUT", "/v1/workflows/tagged", {
        key,
        body: { steps: [{ id: "a", tags: [tag], run: { type: "noop" } }] },
      });
      expect(put.statusCode).toBeLessThan(300);
      const plan = await call(ctx.app, "POST", "/v1/workflows/tagged/runs", { key, body: { dryRun: true } });
      expect(plan.json().steps[0].queue).toBe("default");
      expect((await call(ctx.app, "POST", "/v1/workflows/tagged/runs", { key, body: {} })).statusCode).toBe(
        202,
      );
    }
  });
});
