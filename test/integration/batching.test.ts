/**
 * Batches across runs: a worker's starts and finishes of many runs go in one transaction
 * (`commitAttempts`), and the API's submissions of many runs share one (`submitRun`'s committer).
 * A failure of one run's part fails that run's requests alone, never the others' in the batch.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FlowlineError } from "../../src/domain/errors.ts";
import { commitAttempts, type StartResult } from "../../src/engine/attempts.ts";
import { ItemFailure } from "../../src/engine/group-commit.ts";
import { submitRun } from "../../src/engine/runs.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { engineSettings, putWorkflow } from "../helpers/engine.ts";

let ctx: TestContext;

beforeAll(async () => {
  // `nowhere`: a queue no worker serves, where the test plays the worker.
  ctx = await createTestContext((c) => ({ ...engineSettings(c), queues: { default: {}, nowhere: {} } }));
  await putWorkflow(ctx, "one", { steps: [{ id: "only", queue: "nowhere", run: { type: "noop" } }] });
});
afterAll(async () => {
  await ctx?.close();
});

const runStatus = async (id: string) =>
  (await ctx.db.sql<{ status: string }[]>`select status from runs where id = ${id}`)[0]!.status;

describe("a worker's batch across runs", () => {
  it("starts and finishes several runs in one call; a run whose write fails fails alone", async () => {
    const engine = ctx.app.flowline.engine;
    const runs = await Promise.all(
      [1, 2, 3].map(() => submitRun(engine, { tenantId: "default", workflow: "one" })),
    );
    const continuation = { worker: { id: "w", leaseSeconds: 30 }, queues: new Set<string>() };
    const started = await commitAttempts(
      engine,
      runs.map(({ run }) => ({ start: { runId: run.id, stepId: "only", attempt: 1 } })),
      continuation,
    );
    expect(started.map((r) => (r as StartResult).accepted)).toEqual([true, true, true]);
    const held = started.map((r) => (r as Extract<StartResult, { accepted: true }>).attempt);

    // The second run's output cannot be stored (Postgres refuses a NUL in jsonb): its write
    // throws, which rolls back the shared transaction; each run is then tried alone.
    const outputs = [{ n: 1 }, { text: "a\u0000b" }, { n: 3 }];
    const finished = await commitAttempts(
      engine,
      held.map((a, i) => ({
        finish: { ref: { ...a, token: a.token }, end: { kind: "succeeded" as const, output: outputs[i] } },
      })),
      continuation,
    );
    expect(finished[0]).toMatchObject({ accepted: true });
    expect(finished[1]).toBeInstanceOf(ItemFailure);
    expect(finished[2]).toMatchObject({ accepted: true });
    expect(await runStatus(runs[0]!.run.id)).toBe("succeeded");
    expect(await runStatus(runs[1]!.run.id)).toBe("running");
    expect(await runStatus(runs[2]!.run.id)).toBe("succeeded");
  });
});

describe("the API's submissions", () => {
  it("collapse, conflict and create independently when many arrive at once", async () => {
    const engine = ctx.app.flowline.engine;
    const same = { key: "k-1", hash: "h-1" };
    const attempts = [
      ...Array.from({ length: 10 }, () => submitRun(engine, { tenantId: "default", workflow: "one" }, same)),
      submitRun(engine, { tenantId: "default", workflow: "one" }, { key: "k-1", hash: "other" }),
      ...Array.from({ length: 19 }, () => submitRun(engine, { tenantId: "default", workflow: "one" })),
    ];
    const settled = await Promise.allSettled(attempts);
    const keyed = settled.slice(0, 10).map((s) => (s.status === "fulfilled" ? s.value : undefined));
    expect(keyed.every(Boolean)).toBe(true);
    expect(new Set(keyed.map((k) => k!.run.id)).size).toBe(1);
    expect(keyed.filter((k) => k!.created)).toHaveLength(1);
    const conflict = settled[10]!;
    expect(conflict.status).toBe("rejected");
    expect((conflict as PromiseRejectedResult).reason).toBeInstanceOf(FlowlineError);
    expect(((conflict as PromiseRejectedResult).reason as FlowlineError).code).toBe("idempotency_conflict");
    const plain = settled.slice(11);
    expect(plain.every((s) => s.status === "fulfilled" && s.value.created)).toBe(true);
    const ids = new Set(
      plain.map((s) => (s as PromiseFulfilledResult<{ run: { id: string } }>).value.run.id),
    );
    expect(ids.size).toBe(19);
    const [counted] = await ctx.db.sql<{ count: number }[]>`
      select count(*)::int as count from runs where id = any(${ctx.db.sql.array([...ids, keyed[0]!.run.id])}::uuid[])
        and status = 'running'`;
    expect(counted!.count).toBe(20);
    const [queued] = await ctx.db.sql<{ steps: number }[]>`
      select count(*)::int as steps from step_runs where run_id = any(${ctx.db.sql.array([...ids])}::uuid[])
        and status = 'queued'`;
    expect(queued!.steps).toBe(19);
  });
});
