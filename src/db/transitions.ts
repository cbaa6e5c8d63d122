/**
 * The guarded statements that move an attempt (a `step_runs` row of either phase) through its
 * lifecycle (see domain/attempt.ts). Each statement's guard is derived from the transition table
 * in domain/status.ts (`stepSourcesOf`) plus its fence, and each answers which rows it moved, so
 * the caller turns a missing row into a typed refusal. Lists go in as arrays (`unnest`), so a
 * batch of one and of 500 take the same prepared statement. The caller holds the run lock.
 */
import type { AttemptError, Phase } from "../domain/attempt.ts";
import { narrowSources, type StepStatus, stepSourcesOf } from "../domain/status.ts";
import { FORMATS } from "../domain/versions.ts";
import type { Sql, StepRow } from "./repositories/runs.ts";

export interface AttemptKey {
  stepId: string;
  phase: Phase;
}

export type AttemptRow = StepRow & { lease_left_ms: number | null };

const RUNNING_FROM = stepSourcesOf("running");
const RETRY_FROM = stepSourcesOf("retrying");
const FAILED_FROM = stepSourcesOf("failed");

/** The rows of these attempts, with the time their lease has left by the database clock. */
export async function readAttempts(
  sql: Sql,
  runId: string,
  keys: readonly AttemptKey[],
): Promise<Map<string, AttemptRow>> {
  const rows = await sql<AttemptRow[]>`
    select s.*, (extract(epoch from (s.lease_expires_at - now())) * 1000)::float8 as lease_left_ms
    from step_runs s
    join unnest(${sql.array(keys.map((k) => k.stepId))}::text[], ${sql.array(keys.map((k) => k.phase))}::text[])
      as k(step_id, phase) on s.step_id = k.step_id and s.phase = k.phase
    where s.run_id = ${runId}`;
  return new Map(rows.map((r) => [attemptKey(r.step_id, r.phase as Phase), r]));
}

export const attemptKey = (stepId: string, phase: Phase): string => `${phase}\u0000${stepId}`;

/**
 * queued|retrying → running for attempts still current, each with its fresh lease token. Returns
 * the keys that moved. The attempt's history row is written once, when the attempt ends
 * (`closeHistory`): a running attempt is the step row itself.
 * Guard: status in stepSourcesOf('running') and attempt = the requested attempt.
 */
export async function markRunning(
  sql: Sql,
  runId: string,
  items: ReadonlyArray<AttemptKey & { attempt: number; token: string }>,
  worker: { id: string; leaseSeconds: number },
): Promise<Set<string>> {
  if (items.length === 0) return new Set();
  const rows = await sql<{ step_id: string; phase: Phase }[]>`
    update step_runs s set status = 'running', lease_token = x.token, worker_id = ${worker.id},
        -- clock_timestamp(): a child started in its parent's completing transaction (continue in
        -- the worker) must not appear to start when that transaction began.
        started_at = clock_timestamp(), finished_at = null, error = null, progress = null,
        lease_expires_at = now() + make_interval(secs => ${worker.leaseSeconds}), updated_at = now(),
        lease_format = ${FORMATS.lease}
      from unnest(${sql.array(items.map((i) => i.stepId))}::text[], ${sql.array(items.map((i) => i.phase))}::text[],
        ${sql.array(items.map((i) => i.attempt))}::int[], ${sql.array(items.map((i) => i.token))}::text[])
        as x(step_id, phase, attempt, token)
      where s.run_id = ${runId} and s.step_id = x.step_id and s.phase = x.phase and s.attempt = x.attempt
        and s.status = any(${sql.array(RUNNING_FROM)}::step_status[])
    returning s.step_id, s.phase`;
  return new Set(rows.map((r) => attemptKey(r.step_id, r.phase)));
}

/** Extends a lease. Guard: the holder's token, still running. False: the lease is lost. */
export async function extendLease(
  sql: Sql,
  ref: AttemptKey & { runId: string; attempt: number; token: string },
  leaseSeconds: number,
): Promise<boolean> {
  const rows = await sql`
    update step_runs set lease_expires_at = now() + make_interval(secs => ${leaseSeconds})
    where run_id = ${ref.runId} and step_id = ${ref.stepId} and phase = ${ref.phase}
      and attempt = ${ref.attempt} and lease_token = ${ref.token} and status = 'running'
    returning 1`;
  return rows.length > 0;
}

/** The attempt `ref` holds, or undefined when its lease is no longer this holder's. */
export async function heldAttempt(
  sql: Sql,
  ref: AttemptKey & { runId: string; attempt: number; token: string },
): Promise<StepRow | undefined> {
  const [row] = await sql<StepRow[]>`
    select * from step_runs where run_id = ${ref.runId} and step_id = ${ref.stepId} and phase = ${ref.phase}
      and attempt = ${ref.attempt} and lease_token = ${ref.token} and status = 'running'`;
  return row;
}

/**
 * running → succeeded, output written once. Guard: the holder's token and attempt, still running.
 * Returns the keys that moved (a duplicate in `items` moves once).
 */
export async function markSucceeded(
  sql: Sql,
  runId: string,
  items: ReadonlyArray<AttemptKey & { attempt: number; token: string; output: unknown }>,
): Promise<Set<string>> {
  if (items.length === 0) return new Set();
  const rows = await sql<{ step_id: string; phase: Phase }[]>`
    with done as (
      update step_runs s set status = 'succeeded', output = x.output, finished_at = now(), progress = 1,
        lease_token = null, error = null, updated_at = now()
      from (select * from jsonb_to_recordset(${sql.json(
        items.map((i) => ({
          step_id: i.stepId,
          phase: i.phase,
          attempt: i.attempt,
          token: i.token,
          output: i.output ?? null,
        })) as never,
      )}) as r(step_id text, phase text, attempt int, token text, output jsonb)) x
      where s.run_id = ${runId} and s.step_id = x.step_id and s.phase = x.phase and s.attempt = x.attempt
        and s.lease_token = x.token and s.status = 'running'
      returning s.step_id, s.phase, s.attempt, s.worker_id, s.started_at
    ), history as (
      ${closeHistory(sql, runId, "done", "succeeded", null)}
    )
    select step_id, phase from done`;
  return new Set(rows.map((r) => attemptKey(r.step_id, r.phase)));
}

/**
 * Closes attempt `attempt` in the history (failed, lost or handed back) and moves the row on:
 * to `retrying`/`queued` with the next attempt and its job, or to `failed`. The caller has
 * checked the fence (`heldAttempt`) or the expired lease under the run lock.
 * Guard: the row is still at `attempt` in a status the table lets reach `to`.
 */
export async function markAttemptEnded(
  sql: Sql,
  runId: string,
  row: AttemptKey & { attempt: number },
  history: { status: StepStatus; error: AttemptError },
  to:
    | { status: "retrying" | "queued"; attempt: number; delayMs: number; jobId: string; error: AttemptError }
    | { status: "failed"; error: AttemptError },
): Promise<boolean> {
  // Before the row moves on (a retry clears its worker): who ran the attempt, and since when.
  await sql`
    with ended as (
      select step_id, phase, attempt, worker_id, started_at from step_runs
      where run_id = ${runId} and step_id = ${row.stepId} and phase = ${row.phase} and attempt = ${row.attempt}
        and status = 'running'
    )
    ${closeHistory(sql, runId, "ended", history.status, history.error)}`;
  const moved =
    to.status === "failed"
      ? await sql`
          update step_runs set status = 'failed', error = ${sql.json(to.error as never)}, finished_at = now(),
            lease_token = null, updated_at = now()
          where run_id = ${runId} and step_id = ${row.stepId} and phase = ${row.phase} and attempt = ${row.attempt}
            and status = any(${sql.array(FAILED_FROM)}::step_status[])
          returning 1`
      : await sql`
          update step_runs set status = ${to.status}, attempt = ${to.attempt}, error = ${sql.json(to.error as never)},
            lease_token = null, worker_id = null, job_id = ${to.jobId}, queued_at = now(),
            next_attempt_at = now() + make_interval(secs => ${to.delayMs / 1000}), updated_at = now()
          where run_id = ${runId} and step_id = ${row.stepId} and phase = ${row.phase} and attempt = ${row.attempt}
            and status = any(${sql.array(to.status === "retrying" ? RETRY_FROM : stepSourcesOf("queued"))}::step_status[])
          returning 1`;
  return moved.length > 0;
}

/**
 * running → queued under the same attempt (a stopping worker hands it back: interrupted, not
 * failed), with a fresh job id. Guard: the holder's token and attempt, still running.
 */
export async function markHandedBack(
  sql: Sql,
  ref: AttemptKey & { runId: string; attempt: number; token: string },
  jobId: string,
): Promise<StepRow | undefined> {
  const [row] = await sql<StepRow[]>`
    with held as (
      select step_id, phase, attempt, worker_id, started_at from step_runs
      where run_id = ${ref.runId} and step_id = ${ref.stepId} and phase = ${ref.phase} and attempt = ${ref.attempt}
        and lease_token = ${ref.token} and status = 'running'
      for update
    ), history as (
      ${closeHistory(sql, ref.runId, "held", "cancelled", { message: "handed back by a stopping worker" })}
    )
    update step_runs s set status = 'queued', lease_token = null, worker_id = null, queued_at = now(),
      job_id = ${jobId}, updated_at = now()
    from held
    where s.run_id = ${ref.runId} and s.step_id = held.step_id and s.phase = held.phase
    returning s.*`;
  return row;
}

/** Progress of a running attempt. Guard: the holder's token, still running. */
export async function markActivity(
  sql: Sql,
  ref: AttemptKey & { runId: string; attempt: number; token: string },
  progress: { pct: number; message?: string } | undefined,
): Promise<boolean> {
  const rows = await sql`
    update step_runs set updated_at = now()
      ${progress ? sql`, progress = ${progress.pct}, progress_message = ${progress.message ?? null}` : sql``}
    where run_id = ${ref.runId} and step_id = ${ref.stepId} and phase = ${ref.phase} and attempt = ${ref.attempt}
      and lease_token = ${ref.token} and status = 'running'
    returning 1`;
  return rows.length > 0;
}

/** Records the job that carries a row's current attempt (a lost job replaced by the reconciler). */
export async function recordJob(sql: Sql, runId: string, key: AttemptKey, jobId: string): Promise<void> {
  await sql`update step_runs set job_id = ${jobId}, updated_at = now()
    where run_id = ${runId} and step_id = ${key.stepId} and phase = ${key.phase}`;
}

/**
 * Cancels every row of a run that has not finished, of one phase or of both: returns what moved
 * and from which status (running ones are aborted by a control message after commit).
 * Guard: status in stepSourcesOf('cancelled').
 */
export async function cancelUnfinished(
  sql: Sql,
  runId: string,
  phase?: Phase,
): Promise<Array<{ step_id: string; phase: Phase; status: StepStatus; attempt: number }>> {
  return sql<Array<{ step_id: string; phase: Phase; status: StepStatus; attempt: number }>>`
    with old as (
      select step_id, phase, status, attempt, worker_id, started_at from step_runs where run_id = ${runId}
        and status = any(${sql.array(stepSourcesOf("cancelled"))}::step_status[])
        ${phase ? sql`and phase = ${phase}` : sql``}
      order by step_id, phase for update
    ), running as (
      select * from old where status = 'running'
    ), history as (
      ${closeHistory(sql, runId, "running", "cancelled", { message: "cancelled" })}
    )
    update step_runs s set status = 'cancelled', finished_at = now(), lease_token = null, updated_at = now()
    from old
    where s.run_id = ${runId} and s.step_id = old.step_id and s.phase = old.phase
    returning s.step_id, s.phase, old.status, s.attempt`;
}

/**
 * The history row of attempts that ended, written once: from `source` (a CTE of step rows as they
 * were while running: step_id, phase, attempt, worker_id, started_at). An attempt opened by an
 * earlier version (which wrote the row at its start) is closed in place.
 */
function closeHistory(
  sql: Sql,
  runId: string,
  source: string,
  status: StepStatus,
  error: AttemptError | { message: string } | null,
) {
  return sql`
    insert into step_attempts (run_id, step_id, phase, attempt, status, worker_id, started_at, finished_at, error)
    select ${runId}, x.step_id, x.phase, x.attempt, ${status}::step_status,
      x.worker_id, x.started_at, now(), ${error === null ? null : sql.json(error as never)}
    from ${sql(source)} x
    on conflict (run_id, step_id, phase, attempt) do update set status = excluded.status,
      finished_at = excluded.finished_at, error = excluded.error,
      worker_id = coalesce(step_attempts.worker_id, excluded.worker_id),
      started_at = coalesce(step_attempts.started_at, excluded.started_at)`;
}

// --- what the reconciler looks for (each repair re-checks under the run lock) -------------------

export type RecoveryCandidate = Pick<
  StepRow,
  "run_id" | "step_id" | "phase" | "attempt" | "status" | "queue" | "job_id"
>;

/**
 * Attempts of either phase waiting for a job (`queued`, or `retrying` past their delay) for longer
 * than `minAgeSeconds`, in a run whose status lets that phase run.
 */
export async function findWaitingAttempts(
  sql: Sql,
  minAgeSeconds: number,
  limit: number,
): Promise<RecoveryCandidate[]> {
  return sql<RecoveryCandidate[]>`
    select s.run_id, s.step_id, s.phase, s.attempt, s.status, s.queue, s.job_id
    from step_runs s join runs r on r.id = s.run_id
    where ((s.phase = 'execute' and r.status = 'running') or (s.phase = 'compensate' and r.status = 'rolling_back'))
      and ((s.status = 'queued' and s.queued_at < now() - make_interval(secs => ${minAgeSeconds}))
        or (s.status = 'retrying' and s.next_attempt_at < now() - make_interval(secs => ${minAgeSeconds})))
    limit ${limit}`;
}

/** The row of a waiting attempt if it is still exactly as the reconciler saw it. */
export async function recheckWaiting(sql: Sql, seen: RecoveryCandidate): Promise<StepRow | undefined> {
  const [row] = await sql<StepRow[]>`
    select * from step_runs where run_id = ${seen.run_id} and step_id = ${seen.step_id} and phase = ${seen.phase}
      and attempt = ${seen.attempt} and status = ${seen.status} and job_id is not distinct from ${seen.job_id}`;
  return row;
}

/** Running attempts of either phase whose lease expired more than `graceSeconds` ago. */
export async function findExpiredLeases(
  sql: Sql,
  graceSeconds: number,
  limit: number,
): Promise<RecoveryCandidate[]> {
  return sql<RecoveryCandidate[]>`
    select run_id, step_id, phase, attempt, status, queue, job_id from step_runs
    where status = 'running' and lease_expires_at < now() - make_interval(secs => ${graceSeconds})
      and lease_format <= ${FORMATS.lease} -- a lease of a newer release is that release's to judge
    limit ${limit}`;
}

/** The row of a running attempt if its lease is still expired by more than `graceSeconds`. */
export async function recheckExpired(
  sql: Sql,
  seen: RecoveryCandidate,
  graceSeconds: number,
): Promise<StepRow | undefined> {
  const [row] = await sql<StepRow[]>`
    select * from step_runs where run_id = ${seen.run_id} and step_id = ${seen.step_id} and phase = ${seen.phase}
      and attempt = ${seen.attempt} and status = 'running'
      and lease_expires_at < now() - make_interval(secs => ${graceSeconds})`;
  return row;
}

/** running → cancelled for an attempt whose run stopped taking its work while it ran. */
export async function markCancelled(sql: Sql, runId: string, key: AttemptKey): Promise<void> {
  await sql`update step_runs set status = 'cancelled', lease_token = null, finished_at = now(), updated_at = now()
    where run_id = ${runId} and step_id = ${key.stepId} and phase = ${key.phase}
      and status = any(${sql.array(stepSourcesOf("cancelled"))}::step_status[])`;
}

// --- steps before and after their attempts: queueing, needs, the failure policy, compensations ---

const QUEUE_FROM = narrowSources("queued", stepSourcesOf("queued"), ["pending"]);
const STOPPED_FROM = { skipped: stepSourcesOf("skipped"), cancelled: stepSourcesOf("cancelled") };

/**
 * pending → queued for steps (phase `execute`) whose needs are met: attempt 1, carried by the job
 * `runId.stepId.1`. Guard: status in stepSourcesOf('queued') ∩ {pending}. Returns the ids that moved.
 */
export async function queuePendingSteps(
  sql: Sql,
  runId: string,
  stepIds: readonly string[],
): Promise<string[]> {
  if (stepIds.length === 0) return [];
  const rows = await sql<{ step_id: string }[]>`
    update step_runs set status = 'queued', attempt = 1, queued_at = now(), updated_at = now(),
      job_id = ${`${runId}.`} || step_id || '.1'
    where run_id = ${runId} and phase = 'execute' and step_id = any(${sql.array(stepIds as string[])}::text[])
      and status = any(${sql.array(QUEUE_FROM)}::step_status[])
    returning step_id`;
  return rows.map((r) => r.step_id);
}

/**
 * Lowers the unmet needs of steps (phase `execute`) by the number of their parents that just
 * succeeded (`met`: step id → count). No status changes; returns each step's count and status
 * after the write, so the caller finds the ones now ready (0 and `pending`).
 */
export async function releaseNeeds(
  sql: Sql,
  runId: string,
  met: ReadonlyMap<string, number>,
): Promise<Array<{ step_id: string; unmet_needs: number; status: StepStatus }>> {
  if (met.size === 0) return [];
  return sql<{ step_id: string; unmet_needs: number; status: StepStatus }[]>`
    update step_runs s set unmet_needs = s.unmet_needs - c.n
    from unnest(${sql.array([...met.keys()])}::text[], ${sql.array([...met.values()])}::int[]) as c(step_id, n)
    where s.run_id = ${runId} and s.phase = 'execute' and s.step_id = c.step_id
    returning s.step_id, s.unmet_needs, s.status`;
}

/**
 * → skipped | cancelled for steps (phase `execute`) the failure policy stops, finishing them
 * (`finished_at`, lease token cleared; running ones are aborted by a control message after commit).
 * Guard: status in stepSourcesOf(to). Returns the ids that moved.
 */
export async function markStepsStopped(
  sql: Sql,
  runId: string,
  stepIds: readonly string[],
  to: "skipped" | "cancelled",
): Promise<string[]> {
  if (stepIds.length === 0) return [];
  const rows = await sql<{ step_id: string }[]>`
    update step_runs set status = ${to}, updated_at = now(), finished_at = now(), lease_token = null
    where run_id = ${runId} and phase = 'execute' and step_id = any(${sql.array(stepIds as string[])}::text[])
      and status = any(${sql.array(to === "skipped" ? STOPPED_FROM.skipped : STOPPED_FROM.cancelled)}::step_status[])
    returning step_id`;
  return rows.map((r) => r.step_id);
}

/**
 * Opens a rollback's compensations: a `compensate` row in `pending` (attempt 0, the step's retry
 * limit, queue, priority and timeout) for each of `stepIds` that succeeded in this run (phase
 * `execute` in `succeeded`: a reused step's effects belong to its parent run). This starts a new
 * lifecycle rather than moving one: a compensation row left by an earlier rollback of the run is
 * reset to `pending` unless it succeeded then (what was undone is not undone twice).
 * Guard: execute row `succeeded`; existing compensate row not `succeeded`. Returns the ids opened.
 */
export async function openCompensations(
  sql: Sql,
  runId: string,
  stepIds: readonly string[],
): Promise<string[]> {
  if (stepIds.length === 0) return [];
  const rows = await sql<{ step_id: string }[]>`
    insert into step_runs (run_id, step_id, phase, status, attempt, max_attempts, queue, priority, timeout_seconds)
    select run_id, step_id, 'compensate', 'pending', 0, max_attempts, queue, priority, timeout_seconds
    from step_runs where run_id = ${runId} and phase = 'execute' and status = 'succeeded'
      and step_id = any(${sql.array(stepIds as string[])}::text[])
    on conflict (run_id, step_id, phase) do update set status = 'pending', attempt = 0, error = null,
      job_id = null, lease_token = null, lease_expires_at = null, worker_id = null, next_attempt_at = null,
      queued_at = null, started_at = null, finished_at = null, updated_at = now()
      where step_runs.status <> 'succeeded'
    returning step_id`;
  return rows.map((r) => r.step_id);
}

/**
 * pending → queued for compensations that may start: attempt 1, each with its job id.
 * Guard: status in stepSourcesOf('queued') ∩ {pending}. Returns the ids that moved.
 */
export async function queueCompensations(
  sql: Sql,
  runId: string,
  items: ReadonlyArray<{ stepId: string; jobId: string }>,
): Promise<string[]> {
  if (items.length === 0) return [];
  const rows = await sql<{ step_id: string }[]>`
    update step_runs s set status = 'queued', attempt = 1, queued_at = now(), job_id = j.job_id, updated_at = now()
    from unnest(${sql.array(items.map((i) => i.stepId))}::text[], ${sql.array(items.map((i) => i.jobId))}::text[])
      as j(step_id, job_id)
    where s.run_id = ${runId} and s.step_id = j.step_id and s.phase = 'compensate'
      and s.status = any(${sql.array(QUEUE_FROM)}::step_status[])
    returning s.step_id`;
  return rows.map((r) => r.step_id);
}
