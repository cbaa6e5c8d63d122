/**
 * Applies the consequences of a step reaching a terminal state, inside the caller's transaction
 * (which holds the run-row lock): queue ready children, skip or cancel what the failure policy
 * says, and end the run when nothing is left — or, for `onFailure: rollback`, start its rollback.
 */
import {
  appendEvents,
  decrementPending,
  type NewEvent,
  type RunRow,
  type Sql,
  stepStatuses,
} from "../db/repositories/runs.ts";
import { markRunEnded } from "../db/run-transitions.ts";
import { markStepsStopped, queuePendingSteps, releaseNeeds } from "../db/transitions.ts";
import { illegalRunTransition } from "../domain/errors.ts";
import { outcomeOf, type Progress, progressAfter } from "../domain/progress.ts";
import type { StepStatus } from "../domain/status.ts";
import { resolveStep } from "../domain/workflow/resolve.ts";
import type { AfterCommit, EngineDeps } from "./deps.ts";
import { beginRollback } from "./rollback.ts";
import type { LoadedSpec } from "./specs.ts";

/** A step routed to a queue no configured pool serves waits until one does: say so, loudly. */
export function unservedWarning(deps: EngineDeps, queue: string): { warning?: string } {
  if (Object.hasOwn(deps.config.queues, queue)) return {};
  deps.log.warn({ queue }, "step queued on a queue that no configured pool serves");
  return {
    warning: `queue "${queue}" has no configured worker pool; the step waits until a worker serves it (see GET /v1/queues)`,
  };
}

/** Queues steps (status, attempt 1, event) and schedules their jobs after commit. */
export async function queueSteps(
  deps: EngineDeps,
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  stepIds: readonly string[],
  after: AfterCommit,
  events: NewEvent[],
): Promise<void> {
  // A paused run dispatches nothing new: ready steps stay `pending` (with no unmet needs) until
  // the run is resumed, which queues them then.
  if (stepIds.length === 0 || run.status === "paused") return;
  await queuePendingSteps(sql, run.id, stepIds);
  announceQueued(deps, run, loaded, stepIds, after, events);
}

/**
 * What follows steps becoming `queued` (attempt 1): their `step.queued` events, and their jobs
 * scheduled for after the commit. For rows written queued (a new run's roots) and rows moved.
 */
export function announceQueued(
  deps: EngineDeps,
  run: RunRow,
  loaded: LoadedSpec,
  stepIds: readonly string[],
  after: AfterCommit,
  events: NewEvent[],
): void {
  for (const stepId of stepIds) {
    const resolved = resolveStep(loaded.spec, loaded.steps.get(stepId)!, deps.config.tags, run.priority);
    events.push({
      type: "step.queued",
      stepId,
      attempt: 1,
      data: { queue: resolved.queue, attempt: 1, ...unservedWarning(deps, resolved.queue) },
    });
    after.jobs.push({
      tenantId: run.tenant_id,
      runId: run.id,
      stepId,
      attempt: 1,
      queue: resolved.queue,
      priority: resolved.priority,
      ...(run.trace_context ? { traceparent: run.trace_context } : {}),
    });
  }
}

/**
 * Called after `stepId` became `status` (terminal). `events` already holds that step's own event;
 * this appends the rest and writes them all.
 */
export async function advanceRun(
  deps: EngineDeps,
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  finished: { stepId: string; status: StepStatus; error?: unknown },
  after: AfterCommit,
  events: NewEvent[],
): Promise<void> {
  const step = loaded.steps.get(finished.stepId)!;
  const graph = loaded.graph;
  let progress: Progress;
  let statuses = new Map<string, StepStatus>();
  if (finished.status === "succeeded" || finished.status === "reused") {
    // Each child counts its unmet needs, so a completion costs O(children), not O(parents of
    // children): a 1,000-way join does not re-read 1,000 parents 1,000 times.
    const children = graph.children(finished.stepId);
    const ready = readyAmong(await releaseNeeds(sql, run.id, new Map(children.map((c) => [c, 1]))));
    progress = { ready, transitions: [] };
  } else {
    statuses = await stepStatuses(sql, run.id);
    statuses.set(finished.stepId, finished.status);
    progress = progressAfter(
      graph,
      { stepId: finished.stepId, status: finished.status, onFailure: step.onFailure },
      (id) => statuses.get(id) ?? "pending",
    );
  }

  let terminalCount = 1; // the finished step itself
  const cancelledRunning: string[] = [];
  for (const to of ["skipped", "cancelled"] as const) {
    const ids = progress.transitions.filter((t) => t.to === to).map((t) => t.stepId);
    if (ids.length === 0) continue;
    for (const id of ids) if (statuses.get(id) === "running") cancelledRunning.push(id);
    const changed = await markStepsStopped(sql, run.id, ids, to);
    terminalCount += changed.length;
    for (const id of changed) {
      events.push({
        type: to === "skipped" ? "step.skipped" : "step.cancelled",
        stepId: id,
        data: { reason: to === "skipped" ? `upstream step "${finished.stepId}" failed` : "run failed" },
      });
    }
  }
  if (cancelledRunning.length > 0) after.cancels.push({ runId: run.id, stepIds: cancelledRunning });

  const pending = await decrementPending(sql, run.id, terminalCount);
  if (progress.runOutcome === "failed" || progress.runOutcome === "rolling_back") {
    const error = {
      stepId: finished.stepId,
      message: `step "${finished.stepId}" failed`,
      cause: finished.error ?? null,
    };
    if (progress.runOutcome === "rolling_back") {
      // The run keeps its asset locks until the rollback ends (beginRollback's run is not `ended`).
      await beginRollback(sql, run, loaded, { reason: error.message, error }, after, events);
    } else {
      await endRunAs(sql, run, "failed", error);
      events.push({ type: "run.failed", data: { error } });
      after.ended.push(run);
    }
  } else {
    await queueSteps(deps, sql, run, loaded, progress.ready, after, events);
    if (pending <= 0 && progress.ready.length === 0) await endRun(sql, run, after, events);
  }
  await appendEvents(sql, run.tenant_id, run.id, events, loaded.notifyOn);
  after.runs.add(run.id);
}

/** Ends a run whose steps are all terminal, with the outcome they add up to. */
async function endRun(sql: Sql, run: RunRow, after: AfterCommit, events: NewEvent[]): Promise<void> {
  const all = await stepStatuses(sql, run.id);
  const outcome = outcomeOf(all.values());
  const error =
    outcome === "failed"
      ? {
          message: `steps failed: ${[...all]
            .filter(([, s]) => s === "failed")
            .map(([id]) => id)
            .join(", ")}`,
        }
      : undefined;
  await endRunAs(sql, run, outcome, error);
  after.ended.push(run);
  events.push({
    type: outcome === "succeeded" ? "run.succeeded" : "run.failed",
    data: error ? { error } : {},
  });
}

/**
 * The success path of `advanceRun` for several steps of one run at once (they just succeeded;
 * `events` holds their own events): children's unmet needs drop by the number of their parents
 * among them, in one statement; ready ones are queued; the run ends when nothing is left.
 */
export async function advanceAfterSuccesses(
  deps: EngineDeps,
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  stepIds: readonly string[],
  after: AfterCommit,
  events: NewEvent[],
): Promise<void> {
  if (stepIds.length === 0) return;
  const counts = new Map<string, number>();
  for (const id of stepIds)
    for (const child of loaded.graph.children(id)) counts.set(child, (counts.get(child) ?? 0) + 1);
  // Independent writes, sent together: postgres.js pipelines what a transaction sends without
  // waiting, and Postgres runs them in this order. The successes' own events go first; what they
  // cause (children queued, the run's end) is written after, in order.
  const [released, pending] = await Promise.all([
    releaseNeeds(sql, run.id, counts),
    decrementPending(sql, run.id, stepIds.length),
    appendEvents(sql, run.tenant_id, run.id, events, loaded.notifyOn),
  ]);
  const ready = readyAmong(released);
  const caused: NewEvent[] = [];
  await queueSteps(deps, sql, run, loaded, ready, after, caused);
  if (pending <= 0 && ready.length === 0) await endRun(sql, run, after, caused);
  await appendEvents(sql, run.tenant_id, run.id, caused, loaded.notifyOn);
  after.runs.add(run.id);
}

/** Steps whose needs are now all met and that have not started: ready to be queued. */
function readyAmong(
  rows: ReadonlyArray<{ step_id: string; unmet_needs: number; status: StepStatus }>,
): string[] {
  return rows.filter((r) => r.unmet_needs === 0 && r.status === "pending").map((r) => r.step_id);
}

/** Ends the run; a run whose status the transition table does not let end is an illegal transition. */
async function endRunAs(
  sql: Sql,
  run: RunRow,
  outcome: "succeeded" | "failed",
  error: unknown,
): Promise<void> {
  if (!(await markRunEnded(sql, run.id, outcome, error === undefined ? {} : { error })))
    throw illegalRunTransition(run, outcome);
}
