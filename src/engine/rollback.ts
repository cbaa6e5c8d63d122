/**
 * Rollback (SPEC §3): a run that failed at a step with `onFailure: rollback`, or a finished run
 * whose rollback is requested, goes `rolling_back`; the `compensate` action of every step that
 * succeeded in it then runs, in reverse topological order, and the run ends `rolled_back` — or
 * `failed` when a compensation fails for good, leaving the compensations not yet started alone.
 *
 * A compensation is executed like a step attempt: one job per attempt on the step's queue
 * (`phase: "compensate"`, job id `run.step.cN`), the step's retry policy and timeout, a fresh
 * lease token per attempt that every finishing write is fenced on, a lease the worker renews and
 * the reconciler recovers when it expires. Its state lives in the `compensation_*` columns of the
 * step's row, so the step's own status, attempts and output stay what they were.
 *
 * Events reuse the step types of SPEC §5 with `data.phase: "compensate"` (step.queued, started,
 * retrying, succeeded, failed, cancelled, log, progress): no new event type, and a reader that
 * ignores the phase sees a step event it already knows. Readers that decide what a step did must
 * skip events with a phase: a compensation's `step.succeeded` is not the step succeeding.
 *
 * Asset locks: a run keeps its locks while `rolling_back` (admission counts the status as active)
 * and frees them when the rollback ends, like any run that ends.
 */
import { randomUUID } from "node:crypto";
import {
  appendEvents,
  lockRun,
  type NewEvent,
  type RunRow,
  runColumns,
  type Sql,
  type StepRow,
  stepOutputs,
} from "../db/repositories/runs.ts";
import { FlowlineError, notFound } from "../domain/errors.ts";
import { type StepJob, stepJobId } from "../domain/ports.ts";
import { type CompensationStatus, compensationsReady, rollbackOutcome } from "../domain/progress.ts";
import { backoffDelayMs } from "../domain/retry.ts";
import { canTransitionRun, isTerminalRun } from "../domain/status.ts";
import { resolveStep } from "../domain/workflow/resolve.ts";
import type { Executor } from "../domain/workflow/spec.ts";
import { collectTemplateRefs } from "../domain/workflow/templates.ts";
import { type Activity, activityEvents } from "./activity.ts";
import { AfterCommit, type EngineDeps, inRunTransaction } from "./deps.ts";
import type { LoadedSpec } from "./specs.ts";

/** Marks a compensation's events apart from the step's own. */
const PHASE = "compensate" as const;

/** Attempt `attempt` of a step's compensation (the same shape as a step attempt's reference). */
export interface CompensationRef {
  runId: string;
  stepId: string;
  attempt: number;
}

export interface StartedCompensation extends CompensationRef {
  tenantId: string;
  token: string;
  executor: Executor;
  timeoutSeconds: number;
  params: Record<string, unknown>;
  /** Outputs of the steps the compensation's templates read (its own step's included). */
  upstream: Record<string, { output: unknown }>;
}

export type CompensationStart =
  | { accepted: true; attempt: StartedCompensation }
  | { accepted: false; reason: string };

export type CompensationResult =
  | { accepted: true; retry?: { attempt: number; delayMs: number } }
  | { accepted: false };

export interface CompensationError {
  message: string;
  code?: string;
  [key: string]: unknown;
}

type RunWithName = RunRow & { workflow_name: string };

/**
 * The job id suffix of a rollback's compensations: none for the first, `rb<N>` for the N-th, so
 * that a rollback requested again does not collide with the jobs (kept a while once finished) of
 * the one that failed before it.
 */
const roundSuffix = (run: Pick<RunRow, "rollbacks">): string | undefined =>
  run.rollbacks > 1 ? `rb${run.rollbacks}` : undefined;

function compensationJob(
  run: Pick<RunRow, "id" | "tenant_id" | "rollbacks">,
  step: Pick<StepRow, "step_id" | "queue" | "priority">,
  attempt: number,
  extra: { delayMs?: number; jobSuffix?: string } = {},
): StepJob {
  const jobSuffix = extra.jobSuffix ?? roundSuffix(run);
  return {
    tenantId: run.tenant_id,
    runId: run.id,
    stepId: step.step_id,
    attempt,
    queue: step.queue,
    priority: step.priority,
    phase: PHASE,
    ...(extra.delayMs ? { delayMs: extra.delayMs } : {}),
    ...(jobSuffix ? { jobSuffix } : {}),
  };
}

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
    const [wf] = await sql<{ name: string }[]>`select name from workflows where id = ${run.workflow_id}`;
    const named = (r: RunRow): RunWithName => ({ ...r, workflow_name: wf!.name });
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
  const marked =
    compensable.length === 0
      ? []
      : await sql<{ step_id: string }[]>`
          update step_runs set compensation_status = 'pending', compensation_attempt = 0,
            compensation_error = null, compensation_job_id = null, compensation_lease_token = null,
            compensation_lease_expires_at = null, compensation_worker_id = null, compensation_due_at = null,
            compensation_started_at = null, compensation_finished_at = null, updated_at = now()
          where run_id = ${run.id} and step_id in ${sql(compensable)} and status = 'succeeded'
            and compensation_status is distinct from 'succeeded'
          returning step_id`;
  // A run that had ended freed its asset locks then and does not take them again (a compensation
  // materializes nothing); its run.started event keeps the fencing tokens it wrote with.
  const lockless = isTerminalRun(run.status);
  const error = cause.error !== undefined ? cause.error : errorBeforeRollback(run);
  const [updated] = await sql<RunRow[]>`
    update runs set status = 'rolling_back', pending_steps = 0, finished_at = null, updated_at = now(),
      revision = revision + 1, rollbacks = rollbacks + 1
      ${lockless ? sql`, locks_held = '{}'::jsonb` : sql``}
      ${error === undefined ? sql`` : sql`, error = ${error === null ? null : sql.json(error as never)}`}
    where id = ${run.id} returning ${runColumns(sql)}`;
  events.push({
    type: "run.rolling_back",
    data: {
      reason: cause.reason,
      ...(cause.error === undefined ? {} : { error: cause.error }),
      compensations: marked.map((m) => m.step_id),
    },
  });
  await advanceRollback(sql, updated!, loaded, after, events);
  // With nothing to compensate the rollback has ended already: answer the run as it is now.
  const [now] = await sql<RunRow[]>`select ${runColumns(sql)} from runs where id = ${run.id}`;
  return now!;
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
  const rows = await sql<
    Pick<StepRow, "step_id" | "compensation_status" | "compensation_error" | "queue" | "priority">[]
  >`
    select step_id, compensation_status, compensation_error, queue, priority from step_runs
    where run_id = ${run.id} and compensation_status is not null`;
  const statusOf = new Map(rows.map((r) => [r.step_id, r.compensation_status!]));
  const outcome = rollbackOutcome(statusOf.values());
  if (outcome === "rolled_back") {
    await endRollback(sql, run, "rolled_back", undefined, after, events);
    return true;
  }
  if (outcome === "failed") {
    // Normally decided by the failing compensation itself; kept for a repair pass.
    const failed = rows.find((r) => r.compensation_status === "failed")!;
    await endRollback(
      sql,
      run,
      "failed",
      compensationFailure(run, failed.step_id, failed.compensation_error),
      after,
      events,
    );
    return true;
  }
  const ready = compensationsReady(loaded.graph, (id) => statusOf.get(id) ?? null);
  if (ready.length === 0) return false;
  const byId = new Map(rows.map((r) => [r.step_id, r]));
  const jobs = new Map(ready.map((id) => [id, compensationJob(run, byId.get(id)!, 1)]));
  const queued = await sql<{ step_id: string }[]>`
    update step_runs s set compensation_status = 'queued', compensation_attempt = 1,
      compensation_due_at = now(), compensation_job_id = j.job_id, updated_at = now()
    from jsonb_to_recordset(${sql.json([...jobs].map(([id, job]) => ({ step_id: id, job_id: stepJobId(job) })))})
      as j(step_id text, job_id text)
    where s.run_id = ${run.id} and s.step_id = j.step_id and s.compensation_status = 'pending'
    returning s.step_id`;
  for (const { step_id } of queued) {
    const step = byId.get(step_id)!;
    events.push({
      type: "step.queued",
      stepId: step_id,
      attempt: 1,
      data: { phase: PHASE, attempt: 1, queue: step.queue },
    });
    after.jobs.push(jobs.get(step_id)!);
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
  await sql`
    update runs set status = ${outcome}, finished_at = now(), updated_at = now(), revision = revision + 1
      ${error === undefined ? sql`` : sql`, error = ${sql.json(error as never)}`}
    where id = ${run.id}`;
  events.push(
    outcome === "rolled_back"
      ? { type: "run.rolled_back", data: {} }
      : { type: "run.failed", data: { error } },
  );
  after.ended.push(run);
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
  const stopped = await sql<{ step_id: string; status: CompensationStatus; attempt: number }[]>`
    update step_runs s set compensation_status = 'cancelled', compensation_lease_token = null,
      compensation_finished_at = now(), updated_at = now()
    from (select step_id, compensation_status from step_runs where run_id = ${runId}
          and compensation_status in ('pending', 'queued', 'running', 'retrying') for update) old
    where s.run_id = ${runId} and s.step_id = old.step_id
    returning s.step_id, old.compensation_status as status, s.compensation_attempt as attempt`;
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
 * Starts an attempt of a compensation (the worker's side, like `startAttempt`): only the job the
 * engine recorded, for the current attempt, of a run still rolling back. A job redelivered while
 * its attempt is `running` means the previous holder was lost: that attempt is abandoned.
 */
export async function startCompensation(
  deps: EngineDeps,
  job: CompensationRef & { jobId?: string },
  worker: { id: string; leaseSeconds: number },
): Promise<CompensationStart> {
  const after = new AfterCommit();
  const result = await deps.db.sql.begin(async (sql): Promise<CompensationStart> => {
    const run = await lockRun(sql, job.runId);
    if (!run) return { accepted: false, reason: "run not found" };
    if (run.status !== "rolling_back") return { accepted: false, reason: `run is ${run.status}` };
    const [step] = await sql<StepRow[]>`
      select * from step_runs where run_id = ${job.runId} and step_id = ${job.stepId}`;
    if (!step?.compensation_status) return { accepted: false, reason: "step has no compensation to run" };
    if (step.compensation_attempt !== job.attempt)
      return { accepted: false, reason: `compensation attempt ${job.attempt} is not current` };
    if (job.jobId && step.compensation_job_id && job.jobId !== step.compensation_job_id)
      return { accepted: false, reason: `job ${job.jobId} was superseded by ${step.compensation_job_id}` };
    const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
    if (step.compensation_status === "running") {
      const outcome = await abandonCompensation(deps, sql, run, loaded, step, "no heartbeat", after);
      return {
        accepted: false,
        reason: `worker lost during compensation attempt ${job.attempt}; ${outcome}`,
      };
    }
    if (step.compensation_status !== "queued" && step.compensation_status !== "retrying")
      return { accepted: false, reason: `compensation is ${step.compensation_status}` };
    const spec = loaded.steps.get(job.stepId);
    if (!spec?.compensate) return { accepted: false, reason: "step defines no compensate action" };

    const token = randomUUID();
    await sql`
      update step_runs set compensation_status = 'running', compensation_lease_token = ${token},
        compensation_worker_id = ${worker.id}, compensation_started_at = now(), compensation_finished_at = null,
        compensation_lease_expires_at = now() + make_interval(secs => ${worker.leaseSeconds}), updated_at = now()
      where run_id = ${job.runId} and step_id = ${job.stepId}`;
    await appendEvents(sql, run.tenant_id, run.id, [
      {
        type: "step.started",
        stepId: job.stepId,
        attempt: job.attempt,
        data: { phase: PHASE, attempt: job.attempt, workerId: worker.id },
      },
    ]);
    after.runs.add(run.id);

    const resolved = resolveStep(loaded.spec, spec, deps.config.tags, run.priority);
    const referenced = new Set<string>();
    for (const found of collectTemplateRefs(spec.compensate))
      if (found.ref?.kind === "step") referenced.add(found.ref.stepId);
    const upstream: Record<string, { output: unknown }> = {};
    for (const [id, output] of await stepOutputs(sql, run.id, [...referenced])) upstream[id] = { output };
    return {
      accepted: true,
      attempt: {
        runId: run.id,
        stepId: job.stepId,
        attempt: job.attempt,
        tenantId: run.tenant_id,
        token,
        executor: spec.compensate,
        timeoutSeconds: resolved.timeoutSeconds,
        params: run.params,
        upstream,
      },
    };
  });
  await after.flush(deps);
  return result;
}

/** Extends a running compensation's lease; false when the attempt is no longer this holder's. */
export async function renewCompensationLease(
  deps: EngineDeps,
  ref: CompensationRef & { token: string },
  leaseSeconds: number,
): Promise<boolean> {
  const rows = await deps.db.sql`
    update step_runs set compensation_lease_expires_at = now() + make_interval(secs => ${leaseSeconds})
    where run_id = ${ref.runId} and step_id = ${ref.stepId} and compensation_attempt = ${ref.attempt}
      and compensation_lease_token = ${ref.token} and compensation_status = 'running'
    returning 1`;
  return rows.length > 0;
}

/** Fenced select of the compensation attempt `ref` holds; undefined when it is not current. */
async function heldCompensation(sql: Sql, ref: CompensationRef & { token: string }) {
  const [step] = await sql<StepRow[]>`
    select * from step_runs where run_id = ${ref.runId} and step_id = ${ref.stepId}
      and compensation_attempt = ${ref.attempt} and compensation_lease_token = ${ref.token}
      and compensation_status = 'running'`;
  return step;
}

/** Records a compensation that succeeded and starts what it unblocked. Refused when stale. */
export async function completeCompensation(
  deps: EngineDeps,
  ref: CompensationRef & { token: string },
  output: unknown,
): Promise<CompensationResult> {
  const after = new AfterCommit();
  const result = await deps.db.sql.begin(async (sql): Promise<CompensationResult> => {
    const run = await lockRun(sql, ref.runId);
    if (run?.status !== "rolling_back") return { accepted: false };
    const rows = await sql`
      update step_runs set compensation_status = 'succeeded', compensation_finished_at = now(),
        compensation_lease_token = null, compensation_error = null, updated_at = now()
      where run_id = ${ref.runId} and step_id = ${ref.stepId} and compensation_attempt = ${ref.attempt}
        and compensation_lease_token = ${ref.token} and compensation_status = 'running'
      returning 1`;
    if (rows.length === 0) return { accepted: false };
    const events: NewEvent[] = [
      {
        type: "step.succeeded",
        stepId: ref.stepId,
        attempt: ref.attempt,
        data: { phase: PHASE, attempt: ref.attempt, output },
      },
    ];
    const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
    await advanceRollback(sql, run, loaded, after, events);
    await appendEvents(sql, run.tenant_id, run.id, events);
    after.runs.add(run.id);
    return { accepted: true };
  });
  if (!result.accepted) deps.log.warn({ ...ref, token: undefined }, "stale compensation result refused");
  await after.flush(deps);
  return result;
}

/**
 * Records a failed compensation attempt: with attempts left under the step's retry policy (and a
 * retryable error) it waits in `retrying` for its backoff; otherwise the rollback stops and the
 * run fails, naming the step and the error.
 */
export async function failCompensation(
  deps: EngineDeps,
  ref: CompensationRef & { token: string },
  error: CompensationError,
  options: { retryable: boolean } = { retryable: true },
): Promise<CompensationResult> {
  const result = await inRunTransaction(
    deps,
    ref.runId,
    async (sql, run, after): Promise<CompensationResult> => {
      if (run?.status !== "rolling_back") return { accepted: false };
      const step = await heldCompensation(sql, ref);
      if (!step) return { accepted: false };
      const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
      return failCompensationLocked(
        deps,
        sql,
        run,
        loaded,
        step,
        error,
        { retryable: options.retryable },
        after,
      );
    },
  );
  if (!result.accepted) deps.log.warn({ ...ref, token: undefined }, "stale compensation failure refused");
  return result;
}

/** `failCompensation` for a step row already checked to be running, under the run lock. */
async function failCompensationLocked(
  deps: EngineDeps,
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  step: StepRow,
  error: CompensationError,
  options: { retryable: boolean; immediate?: boolean; reason?: string },
  after: AfterCommit,
): Promise<CompensationResult> {
  const attempt = step.compensation_attempt;
  const resolved = resolveStep(loaded.spec, loaded.steps.get(step.step_id)!, deps.config.tags, run.priority);
  const events: NewEvent[] = [];
  if (options.retryable && attempt < resolved.retry.maxAttempts) {
    const next = attempt + 1;
    const delayMs = options.immediate ? 0 : backoffDelayMs(resolved.retry, next);
    const job = compensationJob(run, step, next, delayMs > 0 ? { delayMs } : {});
    await sql`
      update step_runs set compensation_status = ${delayMs > 0 ? "retrying" : "queued"},
        compensation_attempt = ${next}, compensation_error = ${sql.json(error as never)},
        compensation_lease_token = null, compensation_worker_id = null, compensation_job_id = ${stepJobId(job)},
        compensation_due_at = now() + make_interval(secs => ${delayMs / 1000}), updated_at = now()
      where run_id = ${run.id} and step_id = ${step.step_id}`;
    events.push({
      type: "step.retrying",
      stepId: step.step_id,
      attempt: next,
      data: {
        phase: PHASE,
        attempt: next,
        delayMs,
        error,
        ...(options.reason ? { reason: options.reason } : {}),
      },
    });
    await appendEvents(sql, run.tenant_id, run.id, events);
    after.runs.add(run.id);
    after.jobs.push(job);
    return { accepted: true, retry: { attempt: next, delayMs } };
  }
  await sql`
    update step_runs set compensation_status = 'failed', compensation_error = ${sql.json(error as never)},
      compensation_finished_at = now(), compensation_lease_token = null, updated_at = now()
    where run_id = ${run.id} and step_id = ${step.step_id}`;
  events.push({
    type: "step.failed",
    stepId: step.step_id,
    attempt,
    data: { phase: PHASE, attempt, error },
  });
  const stopped = await stopCompensations(sql, run.id, `compensation of step "${step.step_id}" failed`);
  events.push(...stopped.events);
  if (stopped.running.length > 0) after.cancels.push({ runId: run.id, stepIds: stopped.running });
  await endRollback(sql, run, "failed", compensationFailure(run, step.step_id, error), after, events);
  await appendEvents(sql, run.tenant_id, run.id, events);
  after.runs.add(run.id);
  deps.log.warn(
    { runId: run.id, stepId: step.step_id, err: error.message },
    "compensation failed; rollback stopped",
  );
  return { accepted: true };
}

/**
 * Gives up on a running compensation whose worker is gone (job redelivered, or lease expired):
 * the attempt counts as failed and the next one is queued at once, or the rollback fails when no
 * attempts are left. The caller holds the run lock.
 */
async function abandonCompensation(
  deps: EngineDeps,
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  step: StepRow,
  why: string,
  after: AfterCommit,
): Promise<string> {
  deps.log.warn(
    {
      runId: run.id,
      stepId: step.step_id,
      attempt: step.compensation_attempt,
      workerId: step.compensation_worker_id,
      why,
    },
    "worker lost during a compensation",
  );
  const result = await failCompensationLocked(
    deps,
    sql,
    run,
    loaded,
    step,
    {
      message: `worker lost during compensation attempt ${step.compensation_attempt} (${why})`,
      code: "worker_lost",
    },
    { retryable: true, immediate: true, reason: `worker lost (${why})` },
    after,
  );
  return result.accepted && result.retry ? `attempt ${result.retry.attempt} queued` : "no attempts left";
}

/** step.log / step.progress events from a running compensation; dropped when it is not current. */
export async function recordCompensationActivity(
  deps: EngineDeps,
  ref: CompensationRef & { token: string },
  activity: Activity,
): Promise<boolean> {
  return inRunTransaction(deps, ref.runId, async (sql, run, after) => {
    if (!run || !(await heldCompensation(sql, ref))) return false;
    await appendEvents(sql, run.tenant_id, run.id, activityEvents(ref, activity, { phase: PHASE }));
    after.runs.add(run.id);
    return true;
  });
}

/**
 * A stopping worker gives a running compensation back: queued again under the same attempt number
 * (interrupted, not failed), with a fresh job.
 */
export async function handBackCompensation(
  deps: EngineDeps,
  ref: CompensationRef & { token: string },
): Promise<boolean> {
  const suffix = `h${Date.now()}`;
  return inRunTransaction(deps, ref.runId, async (sql, run, after) => {
    if (run?.status !== "rolling_back") return false;
    const step = await heldCompensation(sql, ref);
    if (!step) return false;
    const job = compensationJob(run, step, ref.attempt, { jobSuffix: suffix });
    await sql`
      update step_runs set compensation_status = 'queued', compensation_lease_token = null,
        compensation_worker_id = null, compensation_due_at = now(), compensation_job_id = ${stepJobId(job)},
        updated_at = now()
      where run_id = ${ref.runId} and step_id = ${ref.stepId}`;
    await appendEvents(sql, run.tenant_id, run.id, [
      {
        type: "step.queued",
        stepId: ref.stepId,
        attempt: ref.attempt,
        data: { phase: PHASE, attempt: ref.attempt, reason: "handed back" },
      },
    ]);
    after.runs.add(run.id);
    after.jobs.push(job);
    return true;
  });
}

/**
 * The reconciler's share of rollbacks (see reconcile.ts), each repair under the run lock after
 * re-checking what it saw:
 * 1. compensations `queued`/`retrying` past their due time whose job is gone: enqueued again;
 * 2. compensations `running` whose lease expired: abandoned (next attempt, or the rollback fails);
 * 3. runs `rolling_back` with no compensation in flight: advanced (queue what is ready, or end).
 * Returns the number of repairs.
 */
export async function reconcileCompensations(
  deps: EngineDeps,
  options: { minAgeSeconds: number; leaseGraceSeconds: number },
  batch: number,
): Promise<number> {
  let repaired = 0;
  const sql = deps.db.sql;

  const waiting = await sql<
    Pick<
      StepRow,
      "run_id" | "step_id" | "compensation_attempt" | "compensation_status" | "queue" | "compensation_job_id"
    >[]
  >`
    select s.run_id, s.step_id, s.compensation_attempt, s.compensation_status, s.queue, s.compensation_job_id
    from step_runs s join runs r on r.id = s.run_id
    where r.status = 'rolling_back' and s.compensation_status in ('queued', 'retrying')
      and s.compensation_due_at < now() - make_interval(secs => ${options.minAgeSeconds})
    limit ${batch}`;
  const withIds = waiting.map((w) => ({
    ...w,
    // Every queued compensation has its job id recorded; the fallback only keeps the type honest.
    jobId:
      w.compensation_job_id ??
      stepJobId({ runId: w.run_id, stepId: w.step_id, attempt: w.compensation_attempt, phase: PHASE }),
  }));
  const live =
    withIds.length === 0
      ? new Set<string>()
      : await deps.dispatcher.liveJobs(withIds.map((w) => ({ queue: w.queue, jobId: w.jobId })));
  for (const lost of withIds.filter((w) => !live.has(w.jobId))) {
    const after = new AfterCommit();
    const done = await sql.begin(async (tx) => {
      const run = await lockRun(tx, lost.run_id);
      if (run?.status !== "rolling_back") return false;
      const [step] = await tx<StepRow[]>`
        select * from step_runs where run_id = ${lost.run_id} and step_id = ${lost.step_id}
          and compensation_attempt = ${lost.compensation_attempt} and compensation_status = ${lost.compensation_status}
          and compensation_job_id is not distinct from ${lost.compensation_job_id}`;
      if (!step) return false;
      const job = compensationJob(run, step, step.compensation_attempt, { jobSuffix: `r${Date.now()}` });
      await tx`update step_runs set compensation_job_id = ${stepJobId(job)}, updated_at = now()
        where run_id = ${run.id} and step_id = ${step.step_id}`;
      after.jobs.push(job);
      deps.log.warn(
        { runId: run.id, stepId: step.step_id, attempt: step.compensation_attempt, lostJob: lost.jobId },
        "compensation had no job; enqueued again",
      );
      return true;
    });
    await after.flush(deps);
    if (done) repaired++;
  }

  const expired = await sql<Pick<StepRow, "run_id" | "step_id" | "compensation_attempt">[]>`
    select run_id, step_id, compensation_attempt from step_runs
    where compensation_status = 'running'
      and compensation_lease_expires_at < now() - make_interval(secs => ${options.leaseGraceSeconds})
    limit ${batch}`;
  for (const lost of expired) {
    const after = new AfterCommit();
    const done = await sql.begin(async (tx) => {
      const run = await lockRun(tx, lost.run_id);
      if (!run) return false;
      const [step] = await tx<StepRow[]>`
        select * from step_runs where run_id = ${lost.run_id} and step_id = ${lost.step_id}
          and compensation_attempt = ${lost.compensation_attempt} and compensation_status = 'running'
          and compensation_lease_expires_at < now() - make_interval(secs => ${options.leaseGraceSeconds})`;
      if (!step) return false;
      if (run.status !== "rolling_back") {
        // The rollback ended (cancelled, failed) while this compensation ran: nothing to retry.
        await tx`update step_runs set compensation_status = 'cancelled', compensation_lease_token = null,
            compensation_finished_at = now(), updated_at = now()
          where run_id = ${run.id} and step_id = ${step.step_id}`;
        return true;
      }
      const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
      await abandonCompensation(deps, tx, run, loaded, step, "lease expired", after);
      return true;
    });
    await after.flush(deps);
    if (done) repaired++;
  }

  const idle = await sql<Pick<RunRow, "id">[]>`
    select r.id from runs r
    where r.status = 'rolling_back' and r.updated_at < now() - make_interval(secs => ${options.minAgeSeconds})
      and not exists (select 1 from step_runs s where s.run_id = r.id
        and s.compensation_status in ('queued', 'running', 'retrying'))
    limit ${batch}`;
  for (const { id } of idle) {
    const after = new AfterCommit();
    const done = await sql.begin(async (tx) => {
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
