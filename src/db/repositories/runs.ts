/**
 * SQL for runs, steps and events. Every function that changes a run takes a transaction in which
 * the caller has already locked the run row (`lockRun`), which is what orders a run's events.
 */
import type postgres from "postgres";
import type { Phase } from "../../domain/attempt.ts";
import type { EventType, RunKind, RunStatus, StepStatus } from "../../domain/status.ts";
import { eventsWritten } from "../../observability/hooks.ts";

export type Sql = postgres.Sql | postgres.TransactionSql;
type Json = postgres.JSONValue;

export interface RunRow {
  id: string;
  tenant_id: string;
  workflow_id: string;
  workflow_version: number;
  kind: RunKind;
  status: RunStatus;
  trigger: string;
  params: Record<string, unknown>;
  priority: number;
  parent_run_id: string | null;
  backfill_id: string | null;
  partition_key: string | null;
  concurrency_key: string | null;
  request: unknown;
  /** Asset lock keys the run needs to start. */
  locks_wanted: string[];
  /** Asset lock key → fencing token, once started. */
  locks_held: Record<string, number>;
  pending_steps: number;
  /** Rollbacks started; see engine/rollback.ts. */
  rollbacks: number;
  error: unknown;
  created_at: Date;
  updated_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
  /** W3C `traceparent` of the run's span, when the run was traced. */
  trace_context: string | null;
}

export interface StepRow {
  run_id: string;
  step_id: string;
  /** `execute` for the step, `compensate` for its compensation (see domain/attempt.ts). */
  phase: Phase;
  status: StepStatus;
  attempt: number;
  max_attempts: number;
  queue: string;
  priority: number;
  output: unknown;
  error: unknown;
  progress: number | null;
  progress_message: string | null;
  worker_id: string | null;
  lease_token: string | null;
  timeout_seconds: number | null;
  lease_expires_at: Date | null;
  next_attempt_at: Date | null;
  job_id: string | null;
  plan_reason: string | null;
  reused_from_run_id: string | null;
  queued_at: Date | null;
  started_at: Date | null;
  finished_at: Date | null;
  updated_at: Date;
}

export interface NewEvent {
  type: EventType;
  stepId?: string | null;
  attempt?: number | null;
  data?: Record<string, unknown>;
}

export interface EventRow {
  id: number;
  run_id: string;
  step_id: string | null;
  type: string;
  attempt: number | null;
  data: Record<string, unknown>;
  created_at: Date;
}

/**
 * The columns of a run row every reader needs: all but `plan`, which can be large (one entry per
 * step) and is written for audit only, so hot paths do not fetch and parse it on every lock.
 */
const RUN_FIELDS = [
  "id",
  "tenant_id",
  "workflow_id",
  "workflow_version",
  "kind",
  "status",
  "trigger",
  "params",
  "priority",
  "parent_run_id",
  "backfill_id",
  "partition_key",
  "concurrency_key",
  "request",
  "locks_wanted",
  "locks_held",
  "pending_steps",
  "rollbacks",
  "error",
  "revision",
  "created_at",
  "updated_at",
  "started_at",
  "finished_at",
  "trace_context",
] as const;

/** `RunRow` columns for a select list or a `returning` clause, optionally qualified by an alias. */
export function runColumns(sql: Sql, alias?: string) {
  return sql.unsafe(RUN_FIELDS.map((f) => (alias ? `${alias}.${f}` : f)).join(", "));
}

export async function lockRun(sql: Sql, runId: string, tenantId?: string): Promise<RunRow | undefined> {
  const rows = await sql<RunRow[]>`
    select ${runColumns(sql)} from runs where id = ${runId} ${tenantId === undefined ? sql`` : sql`and tenant_id = ${tenantId}`}
    for update`;
  return rows[0];
}

/**
 * Appends events (the run row must be locked by this transaction); returns the last id. Run-level
 * events also go to the notification outbox (webhooks), in the same statement: only the types in
 * `notifyOn` when the caller knows what the run's workflow notifies on, else every run-level one.
 */
export async function appendEvents(
  sql: Sql,
  tenantId: string,
  runId: string,
  events: readonly NewEvent[],
  notifyOn?: ReadonlySet<string>,
) {
  if (events.length === 0) return 0;
  eventsWritten(events);
  const rows = events.map((e) => ({
    step_id: e.stepId ?? null,
    type: e.type,
    attempt: e.attempt ?? null,
    data: e.data ?? {},
  }));
  // One parameter for the whole batch; ordinality keeps ids in the order the events were given.
  const notifyTypes = notifyOn ? sql.array([...notifyOn]) : null;
  const [row] = await sql<{ id: string }[]>`
    with ins as (
      insert into events (tenant_id, run_id, step_id, type, attempt, data)
      select ${tenantId}, ${runId}, e.value->>'step_id', e.value->>'type', (e.value->>'attempt')::int,
        coalesce(e.value->'data', '{}'::jsonb)
      from jsonb_array_elements(${sql.json(rows as Json)}) with ordinality as e(value, n)
      order by e.n
      returning id, type
    ), outbox as (
      insert into notification_outbox (event_id, tenant_id, run_id, type)
      select id, ${tenantId}, ${runId}, type from ins
      where type like 'run.%' and (${notifyTypes}::text[] is null or type = any(${notifyTypes}::text[]))
    )
    select max(id) as id from ins`;
  return Number(row!.id);
}

export async function readEvents(
  sql: Sql,
  runId: string,
  afterId: number,
  limit: number,
): Promise<EventRow[]> {
  const rows = await sql<EventRow[]>`
    select id, run_id, step_id, type, attempt, data, created_at from events
    where run_id = ${runId} and id > ${afterId} order by id limit ${limit}`;
  return rows.map((r) => ({ ...r, id: Number(r.id) }));
}

export async function stepStatuses(sql: Sql, runId: string, stepIds?: readonly string[]) {
  const rows = await sql<{ step_id: string; status: StepStatus }[]>`
    select step_id, status from step_runs where run_id = ${runId} and phase = 'execute'
    ${stepIds ? sql`and step_id in ${sql(stepIds as string[])}` : sql``}`;
  return new Map(rows.map((r) => [r.step_id, r.status]));
}

export interface StepCompensation {
  status: StepStatus;
  attempt: number;
  error: unknown;
  started_at: Date | null;
  finished_at: Date | null;
}

/** A run's steps (phase `execute`), each with its compensation's row, if a rollback made one. */
export async function readStepsWithCompensation(
  sql: Sql,
  runId: string,
): Promise<Array<StepRow & { compensation: StepCompensation | null }>> {
  type Joined = StepRow & {
    c_status: StepStatus | null;
    c_attempt: number;
    c_error: unknown;
    c_started_at: Date | null;
    c_finished_at: Date | null;
  };
  const rows = await sql<Joined[]>`
    select s.*, c.status as c_status, c.attempt as c_attempt, c.error as c_error,
      c.started_at as c_started_at, c.finished_at as c_finished_at
    from step_runs s left join step_runs c on c.run_id = s.run_id and c.step_id = s.step_id and c.phase = 'compensate'
    where s.run_id = ${runId} and s.phase = 'execute'`;
  return rows.map(({ c_status, c_attempt, c_error, c_started_at, c_finished_at, ...step }) => ({
    ...step,
    compensation: c_status
      ? {
          status: c_status,
          attempt: c_attempt,
          error: c_error,
          started_at: c_started_at,
          finished_at: c_finished_at,
        }
      : null,
  }));
}

export async function stepOutputs(sql: Sql, runId: string, stepIds: readonly string[]) {
  if (stepIds.length === 0) return new Map<string, unknown>();
  const rows = await sql<{ step_id: string; output: unknown }[]>`
    select step_id, output from step_runs where run_id = ${runId} and phase = 'execute'
      and step_id in ${sql(stepIds as string[])}`;
  return new Map(rows.map((r) => [r.step_id, r.output]));
}

/** Moves steps to a status, counting how many left the non-terminal set. */
export async function setStepStatuses(
  sql: Sql,
  runId: string,
  stepIds: readonly string[],
  to: StepStatus,
  extra: { queued?: boolean; finished?: boolean } = {},
): Promise<string[]> {
  if (stepIds.length === 0) return [];
  const rows = await sql<{ step_id: string }[]>`
    update step_runs set status = ${to}, updated_at = now(),
      queued_at = ${extra.queued ? sql`now()` : sql`queued_at`},
      finished_at = ${extra.finished ? sql`now()` : sql`finished_at`},
      lease_token = ${extra.finished ? null : sql`lease_token`}
    where run_id = ${runId} and phase = 'execute' and step_id in ${sql(stepIds as string[])}
    returning step_id`;
  return rows.map((r) => r.step_id);
}

export async function decrementPending(sql: Sql, runId: string, by: number): Promise<number> {
  const [row] = await sql<{ pending_steps: number }[]>`
    update runs set pending_steps = pending_steps - ${by}, updated_at = now() where id = ${runId}
    returning pending_steps`;
  return row!.pending_steps;
}

export async function setRunStatus(
  sql: Sql,
  runId: string,
  status: RunStatus,
  extra: { started?: boolean; finished?: boolean; error?: unknown } = {},
): Promise<void> {
  await sql`
    update runs set status = ${status}, updated_at = now(), revision = revision + 1,
      started_at = ${extra.started ? sql`coalesce(started_at, now())` : sql`started_at`},
      finished_at = ${extra.finished ? sql`now()` : sql`finished_at`},
      error = ${extra.error === undefined ? sql`error` : sql`${sql.json(extra.error as Json)}`}
    where id = ${runId}`;
}

/** Statuses in which a run holds its asset locks (and counts against its concurrency limit). */
export const LOCK_HOLDING_STATUSES = ["running", "paused", "rolling_back"] as const;

/**
 * The active run, other than `exceptRunId`, whose recorded locks include one of `lockKeys`: the
 * lock is that run's whatever the lock store says (it may have lost it to a flush or failover).
 */
export async function activeLockHolder(
  sql: Sql,
  tenantId: string,
  lockKeys: readonly string[],
  exceptRunId: string,
): Promise<{ id: string; lock_key: string } | undefined> {
  const [row] = await sql<{ id: string; lock_key: string }[]>`
    select r.id, k.lock_key from runs r, jsonb_object_keys(r.locks_held) as k(lock_key)
    where r.tenant_id = ${tenantId} and r.status in ${sql(LOCK_HOLDING_STATUSES as unknown as string[])}
      and r.id <> ${exceptRunId} and r.locks_held ?| ${lockKeys as string[]}
      and k.lock_key = any(${sql.array(lockKeys as string[])}::text[])
    limit 1`;
  return row;
}

/** Of these runs, the locks each active one holds, as `tenant\0lockKey\0runId`. */
export async function heldLocksOf(sql: Sql, runIds: readonly string[]): Promise<Set<string>> {
  if (runIds.length === 0) return new Set();
  const rows = await sql<{ id: string; tenant_id: string; lock_key: string }[]>`
    select r.id, r.tenant_id, k.lock_key from runs r, jsonb_object_keys(r.locks_held) as k(lock_key)
    where r.id = any(${sql.array(runIds as string[])}::uuid[])
      and r.status in ${sql(LOCK_HOLDING_STATUSES as unknown as string[])}`;
  return new Set(rows.map((r) => `${r.tenant_id}\u0000${r.lock_key}\u0000${r.id}`));
}

/** The advisory lock name that serialises admission for one workflow and concurrency key. */
export const concurrencySlot = (workflowId: string, key: string | null): string =>
  `flowline:concurrency:${workflowId}:${key ?? ""}`;

/**
 * How many other runs of `run`'s workflow and concurrency key are active, and how many wait ahead
 * of it; serialised per slot by an advisory lock held to the end of the transaction.
 */
export async function concurrencySlotUse(
  sql: Sql,
  run: Pick<RunRow, "id" | "workflow_id" | "concurrency_key" | "created_at">,
): Promise<{ active: number; earlier: number }> {
  await sql`select pg_advisory_xact_lock(hashtextextended(${concurrencySlot(run.workflow_id, run.concurrency_key)}, 0))`;
  const [row] = await sql<{ active: string; earlier: string }[]>`
    select
      count(*) filter (where status in ('running', 'paused', 'rolling_back')) as active,
      count(*) filter (where status = 'queued' and (created_at, id) < (${run.created_at}, ${run.id}::uuid)) as earlier
    from runs
    where workflow_id = ${run.workflow_id} and concurrency_key is not distinct from ${run.concurrency_key}
      and id <> ${run.id}
      and status in ('running', 'paused', 'rolling_back', 'queued')`;
  return { active: Number(row!.active), earlier: Number(row!.earlier) };
}
