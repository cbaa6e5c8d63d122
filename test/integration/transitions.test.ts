/**
 * The guarded statements of the db layer move only what the transition tables of domain/status.ts
 * allow, and answer what they moved: a refused transition moves nothing and says so. No worker
 * runs here, so the rows stay where the statements put them.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { lockRun } from "../../src/db/repositories/runs.ts";
import {
  markRollbackEnded,
  markRunEnded,
  markRunPaused,
  markRunResumed,
  markRunRollingBack,
  markRunStarted,
} from "../../src/db/run-transitions.ts";
import {
  markStepsStopped,
  queueCompensations,
  queuePendingSteps,
  releaseNeeds,
} from "../../src/db/transitions.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { engineSettings, putWorkflow, startRun } from "../helpers/engine.ts";

let ctx: TestContext;

beforeAll(async () => {
  ctx = await createTestContext((c) => engineSettings(c));
  await putWorkflow(ctx, "chain", {
    steps: [
      { id: "a", run: { type: "noop" } },
      { id: "b", needs: ["a"], run: { type: "noop" } },
      { id: "c", needs: ["b"], run: { type: "noop" } },
    ],
  });
});
afterAll(async () => {
  await ctx?.close();
});

const statusOf = async (runId: string, stepId: string, phase = "execute") => {
  const [row] = await ctx.db.sql<{ status: string }[]>`
    select status from step_runs where run_id = ${runId} and step_id = ${stepId} and phase = ${phase}`;
  return row?.status;
};

/** Runs `fn` in a transaction holding the run lock, as every caller of these statements does. */
const locked = <T>(runId: string, fn: (sql: Parameters<typeof lockRun>[0]) => Promise<T>) =>
  ctx.db.sql.begin(async (sql) => {
    await lockRun(sql, runId);
    return fn(sql);
  });

describe("run transitions", () => {
  it("move a run only along the table, answering what moved", async () => {
    const run = await startRun(ctx, "chain");
    expect(run.status).toBe("running");

    // running → running is no start: only a queued run is admitted.
    expect(await locked(run.id, (sql) => markRunStarted(sql, run.id, {}))).toBeUndefined();
    expect(await locked(run.id, (sql) => markRunResumed(sql, run.id))).toBeUndefined();
    expect(await locked(run.id, (sql) => markRollbackEnded(sql, run.id, "rolled_back", undefined))).toBe(
      false,
    );

    const paused = await locked(run.id, (sql) => markRunPaused(sql, run.id));
    expect(paused?.status).toBe("paused");
    expect(await locked(run.id, (sql) => markRunPaused(sql, run.id))).toBeUndefined();
    // The last running step of a paused run may finish it.
    expect(await locked(run.id, (sql) => markRunEnded(sql, run.id, "succeeded"))).toBe(true);

    // A finished run does not finish again, and does not pause or resume.
    expect(
      await locked(run.id, (sql) => markRunEnded(sql, run.id, "failed", { error: { message: "x" } })),
    ).toBe(false);
    expect(await locked(run.id, (sql) => markRunPaused(sql, run.id))).toBeUndefined();
    const [row] = await ctx.db.sql<{ status: string; error: unknown }[]>`
      select status, error from runs where id = ${run.id}`;
    expect(row).toMatchObject({ status: "succeeded", error: null });

    // succeeded → rolling_back → rolled_back; then nothing moves it again.
    const rolling = await locked(run.id, (sql) => markRunRollingBack(sql, run.id, { releaseLocks: true }));
    expect(rolling).toMatchObject({ status: "rolling_back", rollbacks: 1, locks_held: {} });
    expect(await locked(run.id, (sql) => markRunEnded(sql, run.id, "succeeded"))).toBe(false);
    expect(await locked(run.id, (sql) => markRollbackEnded(sql, run.id, "rolled_back", undefined))).toBe(
      true,
    );
    expect(
      await locked(run.id, (sql) => markRunRollingBack(sql, run.id, { releaseLocks: true })),
    ).toBeUndefined();
  });
});

describe("step transitions", () => {
  it("queue and stop only the steps whose status the table lets move", async () => {
    const run = await startRun(ctx, "chain");
    expect(await statusOf(run.id, "a")).toBe("queued");
    expect(await statusOf(run.id, "b")).toBe("pending");

    // Only a pending step is queued; a queued one is left as it is (its job is not replaced).
    expect(await locked(run.id, (sql) => queuePendingSteps(sql, run.id, ["a"]))).toEqual([]);

    // A step's needs drop by its parents that succeeded; the status is read back, not changed.
    const needs = await locked(run.id, (sql) => releaseNeeds(sql, run.id, new Map([["b", 1]])));
    expect(needs).toEqual([{ step_id: "b", unmet_needs: 0, status: "pending" }]);

    // skipped comes only from pending: `a` (queued) stays, `b` and `c` are skipped.
    const skipped = await locked(run.id, (sql) => markStepsStopped(sql, run.id, ["a", "b", "c"], "skipped"));
    expect(skipped.sort()).toEqual(["b", "c"]);
    expect(await statusOf(run.id, "a")).toBe("queued");

    // cancelled comes from any unfinished status, never from a finished one.
    const cancelled = await locked(run.id, (sql) => markStepsStopped(sql, run.id, ["a", "b"], "cancelled"));
    expect(cancelled).toEqual(["a"]);
    expect(await statusOf(run.id, "b")).toBe("skipped");

    // A compensation that does not exist, or is not pending, is not queued.
    expect(
      await locked(run.id, (sql) =>
        queueCompensations(sql, run.id, [{ stepId: "a", jobId: `${run.id}.a.c1` }]),
      ),
    ).toEqual([]);
  });
});
