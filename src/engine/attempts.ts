/**
 * The worker-facing half of the engine: start an attempt (drawing a fresh lease token), keep its
 * lease alive, and finish it. Every finishing write is fenced on (attempt, lease token, running):
 * a late result from a worker that lost its lease changes nothing.
 */
import { randomUUID } from "node:crypto";
import {
  appendEvents,
  type NewEvent,
  type RunRow,
  type Sql,
  type StepRow,
  stepOutputs,
} from "../db/repositories/runs.ts";
import { type StepJob, stepJobId } from "../domain/ports.ts";
import { backoffDelayMs } from "../domain/retry.ts";
import { resolveStep } from "../domain/workflow/resolve.ts";
import type { Executor } from "../domain/workflow/spec.ts";
import { collectTemplateRefs } from "../domain/workflow/templates.ts";
import { type Activity, activityEvents } from "./activity.ts";
import { assetLockKey } from "./admission.ts";
import { advanceRun } from "./advance.ts";
import { type AfterCommit, type EngineDeps, inRunTransaction } from "./deps.ts";
import type { LoadedSpec } from "./specs.ts";

export interface AttemptRef {
  runId: string;
  stepId: string;
  attempt: number;
}

export interface StartedAttempt extends AttemptRef {
  tenantId: string;
  token: string;
  executor: Executor;
  timeoutSeconds: number;
  params: Record<string, unknown>;
  /** Outputs of the upstream steps the executor's templates read. */
  upstream: Record<string, { output: unknown }>;
}

export type StartResult = { accepted: true; attempt: StartedAttempt } | { accepted: false; reason: string };

export async function startAttempt(
  deps: EngineDeps,
  job: AttemptRef & { jobId?: string },
  worker: { id: string; leaseSeconds: number },
): Promise<StartResult> {
  return inRunTransaction(deps, job.runId, async (sql, run, after): Promise<StartResult> => {
    if (!run) return { accepted: false, reason: "run not found" };
    if (run.status !== "running") return { accepted: false, reason: `run is ${run.status}` };
    const [step] = await sql<StepRow[]>`
      select * from step_runs where run_id = ${job.runId} and step_id = ${job.stepId}`;
    if (!step) return { accepted: false, reason: "step not found" };
    if (step.attempt !== job.attempt)
      return { accepted: false, reason: `attempt ${job.attempt} is not current` };
    // Only the job the engine recorded may start the attempt: a stray duplicate (a job the
    // reconciler replaced, say) must not take over an attempt that is running elsewhere.
    if (job.jobId && step.job_id && job.jobId !== step.job_id)
      return { accepted: false, reason: `job ${job.jobId} was superseded by ${step.job_id}` };
    const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
    const events: NewEvent[] = [];
    const attempt = job.attempt;
    if (step.status === "running") {
      // BullMQ redelivered the job: its previous holder lost the job lock (killed or frozen).
      const outcome = await abandonAttempt(deps, sql, run, loaded, step, "no heartbeat", after);
      return { accepted: false, reason: `worker lost during attempt ${attempt}; ${outcome}` };
    } else if (step.status !== "queued" && step.status !== "retrying") {
      return { accepted: false, reason: `step is ${step.status}` };
    }
    const token = randomUUID();
    await sql`
      update step_runs set status = 'running', attempt = ${attempt}, lease_token = ${token},
        worker_id = ${worker.id}, started_at = now(), finished_at = null, error = null, progress = null,
        lease_expires_at = now() + make_interval(secs => ${worker.leaseSeconds}), updated_at = now()
      where run_id = ${job.runId} and step_id = ${job.stepId}`;
    await sql`
      insert into step_attempts (run_id, step_id, attempt, status, worker_id, started_at)
      values (${job.runId}, ${job.stepId}, ${attempt}, 'running', ${worker.id}, now())
      on conflict (run_id, step_id, attempt) do update set status = 'running', worker_id = excluded.worker_id,
        started_at = excluded.started_at, finished_at = null, error = null`;
    events.push({
      type: "step.started",
      stepId: job.stepId,
      attempt,
      data: { attempt, workerId: worker.id },
    });
    await appendEvents(sql, run.tenant_id, run.id, events);
    after.runs.add(run.id);

    const spec = loaded.steps.get(job.stepId)!;
    const resolved = resolveStep(loaded.spec, spec, deps.config.tags, run.priority);
    const referenced = new Set<string>();
    for (const found of collectTemplateRefs(spec.run))
      if (found.ref?.kind === "step") referenced.add(found.ref.stepId);
    const outputs = await stepOutputs(sql, run.id, [...referenced]);
    const upstream: Record<string, { output: unknown }> = {};
    for (const [id, output] of outputs) upstream[id] = { output };
    return {
      accepted: true,
      attempt: {
        runId: run.id,
        stepId: job.stepId,
        attempt,
        tenantId: run.tenant_id,
        token,
        executor: spec.run,
        timeoutSeconds: resolved.timeoutSeconds,
        params: run.params,
        upstream,
      },
    };
  });
}

/** Extends the lease; false when the attempt is no longer this holder's (cancelled, taken over). */
export async function renewLease(
  deps: EngineDeps,
  ref: AttemptRef & { token: string },
  leaseSeconds: number,
) {
  const rows = await deps.db.sql`
    update step_runs set lease_expires_at = now() + make_interval(secs => ${leaseSeconds})
    where run_id = ${ref.runId} and step_id = ${ref.stepId} and attempt = ${ref.attempt}
      and lease_token = ${ref.token} and status = 'running'
    returning 1`;
  return rows.length > 0;
}

/**
 * Gives up on a running attempt whose worker is gone (its job lock or its lease expired): the
 * attempt is recorded as failed and the next one is queued as a job of its own, or, with no
 * attempts left, the step fails and the run advances. The caller holds the run lock.
 */
export async function abandonAttempt(
  deps: EngineDeps,
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  step: StepRow,
  why: string,
  after: AfterCommit,
): Promise<string> {
  const attempt = step.attempt;
  const events: NewEvent[] = [];
  await sql`
    update step_attempts set status = 'failed', finished_at = now(),
      error = ${sql.json({ message: `worker lost (${why}); attempt abandoned` })}
    where run_id = ${run.id} and step_id = ${step.step_id} and attempt = ${attempt}`;
  deps.log.warn(
    { runId: run.id, stepId: step.step_id, attempt, workerId: step.worker_id, why },
    "worker lost",
  );
  if (attempt >= step.max_attempts) {
    const error = { message: `worker lost during attempt ${attempt} (${why}); no attempts left` };
    await sql`
      update step_runs set status = 'failed', error = ${sql.json(error)}, finished_at = now(),
        lease_token = null, updated_at = now()
      where run_id = ${run.id} and step_id = ${step.step_id}`;
    events.push({ type: "step.failed", stepId: step.step_id, attempt, data: { attempt, error } });
    await advanceRun(
      deps,
      sql,
      run,
      loaded,
      { stepId: step.step_id, status: "failed", error },
      after,
      events,
    );
    return "attempts exhausted";
  }
  // The next attempt gets a job of its own (run.step.N+1), so that if this worker dies too,
  // that job's redelivery finds its attempt current and the step moves on again.
  const next = attempt + 1;
  const job = jobFor(run, step, next);
  await sql`
    update step_runs set status = 'queued', attempt = ${next}, lease_token = null, worker_id = null,
      job_id = ${stepJobId(job)}, queued_at = now(), updated_at = now()
    where run_id = ${run.id} and step_id = ${step.step_id}`;
  events.push({
    type: "step.retrying",
    stepId: step.step_id,
    attempt: next,
    data: { attempt: next, delayMs: 0, reason: `worker lost (${why})` },
  });
  await appendEvents(sql, run.tenant_id, run.id, events);
  after.runs.add(run.id);
  after.jobs.push(job);
  return `attempt ${next} queued`;
}

/** The job carrying `attempt` of a step. */
export function jobFor(
  run: Pick<RunRow, "id" | "tenant_id">,
  step: Pick<StepRow, "step_id" | "queue" | "priority">,
  attempt: number,
  extra: { delayMs?: number; jobSuffix?: string } = {},
): StepJob {
  return {
    tenantId: run.tenant_id,
    runId: run.id,
    stepId: step.step_id,
    attempt,
    queue: step.queue,
    priority: step.priority,
    ...extra,
  };
}

/**
 * Checks and advances the fencing token of each asset lock the step writes: a token older than
 * the newest that has written is refused. Returns what was refused (nothing is written then:
 * the caller's transaction fails the step).
 */
async function claimAssetWrites(sql: Sql, run: RunRow, assets: readonly string[]): Promise<string[]> {
  const refused: string[] = [];
  for (const asset of assets) {
    const lockKey = assetLockKey(asset, run.partition_key);
    const fence = run.locks_held?.[lockKey];
    if (fence === undefined) {
      refused.push(`the run holds no lock for ${lockKey}`);
      continue;
    }
    const [row] = await sql<{ fencing_token: string }[]>`
      insert into asset_fences (tenant_id, lock_key, fencing_token) values (${run.tenant_id}, ${lockKey}, ${fence})
      on conflict (tenant_id, lock_key) do update set fencing_token = excluded.fencing_token, updated_at = now()
        where asset_fences.fencing_token <= excluded.fencing_token
      returning fencing_token`;
    if (!row) {
      const [newest] = await sql<{ fencing_token: string }[]>`
        select fencing_token from asset_fences where tenant_id = ${run.tenant_id} and lock_key = ${lockKey}`;
      refused.push(`${lockKey} fencing token ${fence} < ${newest?.fencing_token ?? "?"}`);
    }
  }
  return refused;
}

/** One materialization per asset the step provides, with the run's fencing token. */
async function recordMaterializations(
  sql: Sql,
  run: RunRow,
  stepId: string,
  assets: readonly string[],
  output: unknown,
): Promise<NewEvent[]> {
  const events: NewEvent[] = [];
  for (const asset of assets) {
    const fence = run.locks_held[assetLockKey(asset, run.partition_key)]!;
    await sql`
      insert into assets (tenant_id, key, fencing_token, last_materialized_at)
      values (${run.tenant_id}, ${asset}, ${fence}, now())
      on conflict (tenant_id, key) do update set last_materialized_at = now(),
        fencing_token = greatest(assets.fencing_token, excluded.fencing_token)`;
    const [m] = await sql<{ id: string }[]>`
      insert into materializations (tenant_id, asset_key, run_id, step_id, partition_key, fencing_token, metadata)
      values (${run.tenant_id}, ${asset}, ${run.id}, ${stepId}, ${run.partition_key}, ${fence},
        ${sql.json((output ?? null) as never)})
      returning id`;
    events.push({
      type: "asset.materialized",
      stepId,
      data: { asset, partition: run.partition_key, fencingToken: fence, materializationId: Number(m!.id) },
    });
  }
  return events;
}

export type FinishResult =
  | { accepted: true; retry?: { attempt: number; delayMs: number } }
  | { accepted: false };

/** Records a successful attempt and advances the run. Refused (accepted: false) when stale. */
export async function completeAttempt(
  deps: EngineDeps,
  ref: AttemptRef & { token: string },
  output: unknown,
): Promise<FinishResult> {
  const result = await inRunTransaction(deps, ref.runId, async (sql, run, after): Promise<FinishResult> => {
    if (!run) return { accepted: false };
    const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
    const provides = loaded.steps.get(ref.stepId)?.provides ?? [];
    if (provides.length > 0) {
      const [current] = await sql`
        select 1 from step_runs where run_id = ${ref.runId} and step_id = ${ref.stepId}
          and attempt = ${ref.attempt} and lease_token = ${ref.token} and status = 'running'`;
      if (!current) return { accepted: false };
      const refused = await claimAssetWrites(sql, run, provides);
      if (refused.length > 0) {
        const message = `asset lock lost: ${refused.join("; ")}; this run's materialization is refused`;
        deps.log.warn(
          { runId: run.id, stepId: ref.stepId, refused },
          "materialization refused (stale fencing token)",
        );
        await failAttemptLocked(
          deps,
          sql,
          run,
          loaded,
          ref,
          { message, code: "lock_lost" },
          { retryable: false },
          after,
        );
        return { accepted: false };
      }
    }
    const rows = await sql`
      update step_runs set status = 'succeeded', output = ${sql.json((output ?? null) as never)},
        finished_at = now(), progress = 1, lease_token = null, updated_at = now()
      where run_id = ${ref.runId} and step_id = ${ref.stepId} and attempt = ${ref.attempt}
        and lease_token = ${ref.token} and status = 'running'
      returning 1`;
    if (rows.length === 0) return { accepted: false };
    await sql`
      update step_attempts set status = 'succeeded', finished_at = now()
      where run_id = ${ref.runId} and step_id = ${ref.stepId} and attempt = ${ref.attempt}`;
    const events: NewEvent[] = [
      {
        type: "step.succeeded",
        stepId: ref.stepId,
        attempt: ref.attempt,
        data: { attempt: ref.attempt, output },
      },
    ];
    if (provides.length > 0)
      events.push(...(await recordMaterializations(sql, run, ref.stepId, provides, output)));
    await advanceRun(deps, sql, run, loaded, { stepId: ref.stepId, status: "succeeded" }, after, events);
    return { accepted: true };
  });
  if (!result.accepted) deps.log.warn({ ...ref, token: undefined }, "stale completion refused");
  return result;
}

export interface AttemptError {
  message: string;
  code?: string;
  [key: string]: unknown;
}

/**
 * Records a failed attempt: with attempts left (and a retryable error) the step waits in
 * `retrying` for its backoff and a delayed job; otherwise it fails and the run advances.
 */
export async function failAttempt(
  deps: EngineDeps,
  ref: AttemptRef & { token: string },
  error: AttemptError,
  options: { retryable: boolean } = { retryable: true },
): Promise<FinishResult> {
  const result = await inRunTransaction(deps, ref.runId, async (sql, run, after): Promise<FinishResult> => {
    if (!run) return { accepted: false };
    const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
    return failAttemptLocked(deps, sql, run, loaded, ref, error, options, after);
  });
  if (!result.accepted)
    deps.log.warn({ runId: ref.runId, stepId: ref.stepId, attempt: ref.attempt }, "stale failure refused");
  return result;
}

/** `failAttempt` inside a transaction that holds the run lock. */
async function failAttemptLocked(
  deps: EngineDeps,
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  ref: AttemptRef & { token: string },
  error: AttemptError,
  options: { retryable: boolean },
  after: AfterCommit,
): Promise<FinishResult> {
  {
    const [step] = await sql<StepRow[]>`
      select * from step_runs where run_id = ${ref.runId} and step_id = ${ref.stepId}
        and attempt = ${ref.attempt} and lease_token = ${ref.token} and status = 'running'`;
    if (!step) return { accepted: false };
    await sql`
      update step_attempts set status = 'failed', finished_at = now(), error = ${sql.json(error as never)}
      where run_id = ${ref.runId} and step_id = ${ref.stepId} and attempt = ${ref.attempt}`;
    const resolved = resolveStep(loaded.spec, loaded.steps.get(ref.stepId)!, deps.config.tags, run.priority);
    if (options.retryable && ref.attempt < step.max_attempts) {
      const next = ref.attempt + 1;
      const delayMs = backoffDelayMs(resolved.retry, next);
      const job = jobFor(run, step, next, { delayMs });
      await sql`
        update step_runs set status = 'retrying', attempt = ${next}, error = ${sql.json(error as never)},
          lease_token = null, job_id = ${stepJobId(job)}, next_attempt_at = now() + make_interval(secs => ${delayMs / 1000}), updated_at = now()
        where run_id = ${ref.runId} and step_id = ${ref.stepId}`;
      await appendEvents(sql, run.tenant_id, run.id, [
        { type: "step.retrying", stepId: ref.stepId, attempt: next, data: { attempt: next, delayMs, error } },
      ]);
      after.runs.add(run.id);
      after.jobs.push(job);
      return { accepted: true, retry: { attempt: next, delayMs } };
    }
    await sql`
      update step_runs set status = 'failed', error = ${sql.json(error as never)}, finished_at = now(),
        lease_token = null, updated_at = now()
      where run_id = ${ref.runId} and step_id = ${ref.stepId}`;
    const events: NewEvent[] = [
      {
        type: "step.failed",
        stepId: ref.stepId,
        attempt: ref.attempt,
        data: { attempt: ref.attempt, error },
      },
    ];
    await advanceRun(deps, sql, run, loaded, { stepId: ref.stepId, status: "failed", error }, after, events);
    return { accepted: true };
  }
}

/** step.log / step.progress events from a running attempt; dropped if the attempt is no longer current. */
export async function recordActivity(
  deps: EngineDeps,
  ref: AttemptRef & { token: string },
  activity: Activity,
): Promise<boolean> {
  return inRunTransaction(deps, ref.runId, async (sql, run, after) => {
    if (!run) return false;
    const rows = await sql`
      update step_runs set updated_at = now()
        ${activity.progress ? sql`, progress = ${activity.progress.pct}, progress_message = ${activity.progress.message ?? null}` : sql``}
      where run_id = ${ref.runId} and step_id = ${ref.stepId} and attempt = ${ref.attempt}
        and lease_token = ${ref.token} and status = 'running'
      returning 1`;
    if (rows.length === 0) return false;
    await appendEvents(sql, run.tenant_id, run.id, activityEvents(ref, activity));
    after.runs.add(run.id);
    return true;
  });
}

/**
 * A stopping worker gives a running attempt back: the step is queued again under the same attempt
 * number (its work was interrupted, not failed) and a fresh job is enqueued.
 */
export async function handBackAttempt(
  deps: EngineDeps,
  ref: AttemptRef & { token: string },
): Promise<boolean> {
  const suffix = `h${Date.now()}`;
  return inRunTransaction(deps, ref.runId, async (sql, run, after) => {
    if (!run) return false;
    const [step] = await sql<StepRow[]>`
      update step_runs set status = 'queued', lease_token = null, worker_id = null, queued_at = now(),
        job_id = run_id || '.' || step_id || '.' || attempt || '.' || ${suffix}, updated_at = now()
      where run_id = ${ref.runId} and step_id = ${ref.stepId} and attempt = ${ref.attempt}
        and lease_token = ${ref.token} and status = 'running'
      returning *`;
    if (!step) return false;
    await sql`
      update step_attempts set status = 'cancelled', finished_at = now(), error = ${sql.json({ message: "handed back by a stopping worker" })}
      where run_id = ${ref.runId} and step_id = ${ref.stepId} and attempt = ${ref.attempt}`;
    await appendEvents(sql, run.tenant_id, run.id, [
      {
        type: "step.queued",
        stepId: ref.stepId,
        attempt: ref.attempt,
        data: { attempt: ref.attempt, reason: "handed back" },
      },
    ]);
    after.runs.add(run.id);
    after.jobs.push(jobFor(run, step, ref.attempt, { jobSuffix: suffix }));
    return true;
  });
}
