/**
 * Rollback (SPEC §3): a run that failed at a step with `onFailure: rollback`, or a finished run
 * whose rollback is requested, goes `rolling_back`; the `compensate` action of every step that
 * succeeded in it then runs, in reverse topological order, and the run ends `rolled_back` — or
 * `failed` when a compensation fails for good, leaving the compensations not yet started alone.
 *
 * A compensation is the `compensate` phase of the step's attempt lifecycle (engine/attempts.ts):
 * a `step_runs` row of its own (phase `compensate`), one job per attempt on the step's queue (job
 * id `run.step.cN`), the step's retry policy and timeout, a fresh lease token per attempt that
 * every finishing write is fenced on, recovered by the reconciler like any attempt. This module
 * only decides the rollback around them: which compensations may start, and how the run ends.
 *
 * Events reuse the step types of SPEC §5 with `data.phase: "compensate"` (step.queued, started,
 * retrying, succeeded, failed, cancelled, log, progress): no new event type, and a reader that
 * ignores the phase sees a step event it already knows. Readers that decide what a step did must
 * skip events with a phase: a compensation's `step.succeeded` is not the step succeeding.
 *
 * Asset locks: a run keeps its locks while `rolling_back` (admission counts the status as active)
 * and frees them when the rollback ends, like any run that ends.
 */
import {
  appendEvents,
  concurrencySlotUse,
  lockRun,
  type NewEvent,
  type RunRow,
  readCompensations,
  readRun,
  type Sql,
} from "../db/repositories/runs.ts";
import { workflowName } from "../db/repositories/workflows.ts";
import { findIdleRollbacks, markRollbackEnded, markRunRollingBack } from "../db/run-transitions.ts";
import { cancelUnfinished, openCompensations, queueCompensations } from "../db/transitions.ts";
import type { AttemptError } from "../domain/attempt.ts";
import { FlowlineError, illegalRunTransition, notFound } from "../domain/errors.ts";
import { stepJobId } from "../domain/ports.ts";
import { type CompensationStatus, compensationsReady, rollbackOutcome } from "../domain/progress.ts";
import { canTransitionRun, isTerminalRun } from "../domain/status.ts";
import { AfterCommit, type EngineDeps } from "./deps.ts";
import { jobFor } from "./jobs.ts";
import type { LoadedSpec } from "./specs.ts";

/** Marks a compensation's events apart from the step's own. */
const PHASE = "compensate" as const;

type RunWithName = RunRow & { workflow_name: string };

/**
 * Requests the rollback of a finished run (`POST /v1/runs/{id}/rollback`). Only a run that ended
 * `succeeded` or `failed` may be rolled back on request: a run still going rolls back by itself
 * when a step with `onFailure: rollback` fails, and a cancelled run stays as it is. Idempotent: a
 * run already `rolling_back` or `rolled_back` is answered as is. A `failed` run whose rollback
 * failed may be rolled back again; compensations that succeeded then are not repeated.
 */
export async function rollbackRun(
  deps: EngineDeps,
  tenantId: string,
  runId: string,
): Promise<{ run: RunWithName; started: boolean }> {
  const after = new AfterCommit();
  const result = await deps.db.sql.begin(async (sql) => {
    const run = await lockRun(sql, runId, tenantId);
    if (!run) throw notFound("Run");
    const name = (await workflowName(sql, run.workflow_id))!;
    const named = (r: RunRow): RunWithName => ({ ...r, workflow_name: name });
    if (run.status === "rolling_back" || run.status === "rolled_back")
      return { run: named(run), started: false };
    if (!isTerminalRun(run.status) || !canTransitionRun(run.status, "rolling_back")) {
      throw new FlowlineError(
        "illegal_transition",
        `Run is ${run.status}: only a succeeded or failed run can be rolled back` +
          (isTerminalRun(run.status)
            ? ""
            : " (a running run rolls back by itself when a step with onFailure: rollback fails)"),
      );
    }
    const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
    // A rollback makes the run active again: it needs a slot of its workflow's concurrency limit.
    const limit = loaded.spec.concurrency?.limit;
    if (limit !== undefined && (await concurrencySlotUse(sql, run)).active >= limit) {
      throw new FlowlineError(
        "conflict",
        `the workflow's concurrency limit of ${limit} active run(s) is reached; request the rollback again when a run has ended`,
        { retryAfterSeconds: 5 },
      );
    }
    const events: NewEvent[] = [];
    const updated = await beginRollback(sql, run, loaded, { reason: "requested" }, after, events);
    await appendEvents(sql, run.tenant_id, run.id, events);
    after.runs.add(run.id);
    return { run: named(updated), started: true };
  });
  await after.flush(deps);
  if (result.started) deps.log.info({ runId }, "run rolling back");
  return result;
}

/**
 * Moves a run whose steps are all terminal to `rolling_back`, marks the compensations to run and
 * queues those that may start (or ends the run at once when there is nothing to compensate). The
 * caller holds the run lock and appends `events`.
 */
export async function beginRollback(
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  cause: { reason: string; error?: unknown },
  after: AfterCommit,
  events: NewEvent[],
): Promise<RunRow> {
  const compensable = loaded.spec.steps.filter((s) => s.compensate !== undefined).map((s) => s.id);
  // Only steps that succeeded in this run: a reused step's effects belong to its parent run.
  // Compensations that succeeded in an earlier rollback of the same run are not repeated.
  const marked = await openCompensations(sql, run.id, compensable);
  // A run that had ended freed its asset locks then and does not take them again (a compensation
  // materializes nothing); its run.started event keeps the fencing tokens it wrote with.
  const lockless = isTerminalRun(run.status);
  const error = cause.error !== undefined ? cause.error : errorBeforeRollback(run);
  const updated = await markRunRollingBack(sql, run.id, {
    releaseLocks: lockless,
    ...(error === undefined ? {} : { error }),
  });
  if (!updated) throw illegalRunTransition(run, "rolling_back");
  events.push({
    type: "run.rolling_back",
    data: {
      reason: cause.reason,
      ...(cause.error === undefined ? {} : { error: cause.error }),
      compensations: marked,
    },
  });
  await advanceRollback(sql, updated, loaded, after, events);
  // With nothing to compensate the rollback has ended already: answer the run as it is now.
  return (await readRun(sql, run.id))!;
}

/**
 * Queues the compensations that may start now (every compensating descendant done), or ends the
 * run when none is left to run. Idempotent; the caller holds the run lock and appends `events`.
 * Returns whether it changed anything.
 */
export async function advanceRollback(
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  after: AfterCommit,
  events: NewEvent[],
): Promise<boolean> {
  const rows = await readCompensations(sql, run.id);
  const statusOf = new Map(rows.map((r) => [r.step_id, r.status as CompensationStatus]));
  const outcome = rollbackOutcome(statusOf.values());
  if (outcome === "rolled_back") {
    await endRollback(sql, run, "rolled_back", undefined, after, events);
    return true;
  }
  if (outcome === "failed") {
    // Normally decided by the failing compensation itself; kept for a repair pass.
    const failed = rows.find((r) => r.status === "failed")!;
    await endRollback(
      sql,
      run,
      "failed",
      compensationFailure(run, failed.step_id, failed.error),
      after,
      events,
    );
    return true;
  }
  const ready = compensationsReady(loaded.graph, (id) => statusOf.get(id) ?? null);
  if (ready.length === 0) return false;
  const byId = new Map(rows.map((r) => [r.step_id, r]));
  const jobs = ready.map((id) => jobFor(run, { ...byId.get(id)!, phase: PHASE }, 1));
  const queued = await queueCompensations(
    sql,
    run.id,
    jobs.map((j) => ({ stepId: j.stepId, jobId: stepJobId(j) })),
  );
  const jobById = new Map(jobs.map((j) => [j.stepId, j]));
  for (const step_id of queued) {
    events.push({
      type: "step.queued",
      stepId: step_id,
      attempt: 1,
      data: { phase: PHASE, attempt: 1, queue: byId.get(step_id)!.queue },
    });
    after.jobs.push(jobById.get(step_id)!);
  }
  return queued.length > 0;
}

/**
 * The error of a run whose rollback failed. `rollbackCause` keeps the run's error from before
 * (why it rolled back, null when on request), which a rollback requested again restores.
 */
function compensationFailure(run: Pick<RunRow, "error">, stepId: string, error: unknown) {
  const message = (error as { message?: unknown } | null)?.message;
  return {
    stepId,
    phase: PHASE,
    message: `compensation of step "${stepId}" failed${typeof message === "string" ? `: ${message}` : ""}`,
    cause: error ?? null,
    rollbackCause: run.error ?? null,
  };
}

/** The error to show while rolling back a finished run again: the one before a failed rollback. */
function errorBeforeRollback(run: Pick<RunRow, "error">): unknown {
  const error = run.error as { phase?: unknown; rollbackCause?: unknown } | null;
  return error?.phase === PHASE ? (error.rollbackCause ?? null) : undefined;
}

async function endRollback(
  sql: Sql,
  run: RunRow,
  outcome: "rolled_back" | "failed",
  error: unknown,
  after: AfterCommit,
  events: NewEvent[],
): Promise<void> {
  if (!(await markRollbackEnded(sql, run.id, outcome, error))) throw illegalRunTransition(run, outcome);
  events.push(
    outcome === "rolled_back"
      ? { type: "run.rolled_back", data: {} }
      : { type: "run.failed", data: { error } },
  );
  after.ended.push(run);
}

/**
 * A compensation failed for good: the rollback stops. Every other compensation not finished is
 * cancelled (running ones aborted by the control message after commit) and the run ends `failed`,
 * naming the step and the error. The caller holds the run lock; `events` holds the failure's own.
 */
export async function failRollback(
  deps: EngineDeps,
  sql: Sql,
  run: RunRow,
  stepId: string,
  error: AttemptError,
  after: AfterCommit,
  events: NewEvent[],
): Promise<void> {
  const stopped = await stopCompensations(sql, run.id, `compensation of step "${stepId}" failed`);
  events.push(...stopped.events);
  if (stopped.running.length > 0) after.cancels.push({ runId: run.id, stepIds: stopped.running });
  await endRollback(sql, run, "failed", compensationFailure(run, stepId, error), after, events);
  await appendEvents(sql, run.tenant_id, run.id, events);
  after.runs.add(run.id);
  deps.log.warn({ runId: run.id, stepId, err: error.message }, "compensation failed; rollback stopped");
}

/**
 * Stops every compensation of the run that has not finished (a compensation failed for good, or
 * the run is cancelled): pending ones will not start, queued ones are refused when their job
 * arrives, running ones are aborted by the control message the caller sends for `running`.
 */
export async function stopCompensations(
  sql: Sql,
  runId: string,
  reason: string,
): Promise<{ events: NewEvent[]; running: string[] }> {
  const stopped = await cancelUnfinished(sql, runId, PHASE);
  return {
    events: stopped.map((s) => ({
      type: "step.cancelled",
      stepId: s.step_id,
      ...(s.attempt > 0 ? { attempt: s.attempt } : {}),
      data: { phase: PHASE, reason },
    })),
    running: stopped.filter((s) => s.status === "running").map((s) => s.step_id),
  };
}

/**
 * The reconciler's share of rollbacks (lost jobs and expired leases of compensations are repaired
 * with every other attempt's, see reconcile.ts): runs `rolling_back` with no compensation in
 * flight are advanced (queue what is ready, or end). Returns the number of repairs.
 */
export async function reconcileRollbacks(
  deps: EngineDeps,
  options: { minAgeSeconds: number },
  batch: number,
): Promise<number> {
  let repaired = 0;
  const idle = await findIdleRollbacks(deps.db.sql, options.minAgeSeconds, batch);
  for (const id of idle) {
    const after = new AfterCommit();
    const done = await deps.db.sql.begin(async (tx) => {
      const run = await lockRun(tx, id);
      if (run?.status !== "rolling_back") return false;
      const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
      const events: NewEvent[] = [];
      if (!(await advanceRollback(tx, run, loaded, after, events))) return false;
      await appendEvents(tx, run.tenant_id, run.id, events);
      after.runs.add(run.id);
      deps.log.warn({ runId: id }, "rollback had nothing in flight; advanced");
      return true;
    });
    await after.flush(deps);
    if (done) repaired++;
  }
  return repaired;
}
