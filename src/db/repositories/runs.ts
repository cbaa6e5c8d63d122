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

/** Reads a run (no lock): e.g. the row a transaction has just changed, as it is now. */
export async function readRun(sql: Sql, runId: string): Promise<RunRow | undefined> {
  const [row] = await sql<RunRow[]>`select ${runColumns(sql)} from runs where id = ${runId}`;
  return row;
}

/** Reads a tenant's run with its workflow's name (no lock); undefined when the tenant has no such run. */
export async function readRunWithName(
  sql: Sql,
  tenantId: string,
  runId: string,
): Promise<(RunRow & { workflow_name: string }) | undefined> {
  const [row] = await sql<(RunRow & { workflow_name: string })[]>`
    select ${runColumns(sql, "r")}, w.name as workflow_name from runs r join workflows w on w.id = r.workflow_id
    where r.id = ${runId} and r.tenant_id = ${tenantId}`;
  return row;
}

/**
 * Locks several runs' rows in one statement, in id order (the one order every multi-run
 * transaction uses, so two of them cannot deadlock on each other). Missing runs are absent.
 */
export async function lockRuns(sql: Sql, runIds: readonly string[]): Promise<Map<string, RunRow>> {
  const rows = await sql<RunRow[]>`
    select ${runColumns(sql)} from runs where id = any(${sql.array([...runIds])}::uuid[])
    order by id for update`;
  return new Map(rows.map((r) => [r.id, r]));
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
    ${stepIds ? sql`and step_id = any(${sql.array(stepIds as string[])}::text[])` : sql``}`;
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
      and step_id = any(${sql.array(stepIds as string[])}::text[])`;
  return new Map(rows.map((r) => [r.step_id, r.output]));
}

/** Reads the steps of a run that are `pending` with every need met: ready to be queued. */
export async function readySteps(sql: Sql, runId: string): Promise<string[]> {
  const rows = await sql<{ step_id: string }[]>`
    select step_id from step_runs where run_id = ${runId} and phase = 'execute' and status = 'pending'
      and unmet_needs = 0`;
  return rows.map((r) => r.step_id);
}

/**
 * Reads the steps of a run waiting for a job (`queued` or `retrying`), each with the time its
 * retry is still due in by the database clock (which set `next_attempt_at`; this process's clock
 * may be off).
 */
export async function waitingSteps(
  sql: Sql,
  runId: string,
): Promise<Array<StepRow & { due_in_ms: number | null }>> {
  return sql<Array<StepRow & { due_in_ms: number | null }>>`
    select *, (extract(epoch from (next_attempt_at - now())) * 1000)::float8 as due_in_ms
    from step_runs where run_id = ${runId} and phase = 'execute' and status in ('queued', 'retrying')`;
}

/** Reads the compensations (phase `compensate`) of a run: status, last error, queue and priority. */
export async function readCompensations(
  sql: Sql,
  runId: string,
): Promise<Array<Pick<StepRow, "step_id" | "status" | "error" | "queue" | "priority">>> {
  return sql<Array<Pick<StepRow, "step_id" | "status" | "error" | "queue" | "priority">>>`
    select step_id, status, error, queue, priority from step_runs where run_id = ${runId} and phase = 'compensate'`;
}

export async function decrementPending(sql: Sql, runId: string, by: number): Promise<number> {
  const [row] = await sql<{ pending_steps: number }[]>`
    update runs set pending_steps = pending_steps - ${by}, updated_at = now() where id = ${runId}
    returning pending_steps`;
  return row!.pending_steps;
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
    where r.tenant_id = ${tenantId} and r.status = any(${sql.array([...LOCK_HOLDING_STATUSES])}::run_status[])
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
      and r.status = any(${sql.array([...LOCK_HOLDING_STATUSES])}::run_status[])`;
  return new Set(rows.map((r) => `${r.tenant_id}\u0000${r.lock_key}\u0000${r.id}`));
}

/** The advisory lock name that serialises admission for one workflow and concurrency key. */
export const concurrencySlot = (workflowId: string, key: string | null): string =>
  `flowline:concurrency:${workflowId}:${key ?? ""}`;

/**
 * Takes the advisory locks of these concurrency slots, held to the end of the transaction, in the
 * order given (callers taking several sort them, so two transactions cannot deadlock on them).
 * One statement per slot: the order in which one statement would take them is not defined.
 */
export async function lockConcurrencySlots(sql: Sql, slots: readonly string[]): Promise<void> {
  for (const slot of slots) await sql`select pg_advisory_xact_lock(hashtextextended(${slot}, 0))`;
}

/**
 * How many other runs of `run`'s workflow and concurrency key are active, and how many wait ahead
 * of it; serialised per slot by an advisory lock held to the end of the transaction.
 */
export async function concurrencySlotUse(
  sql: Sql,
  run: Pick<RunRow, "id" | "workflow_id" | "concurrency_key" | "created_at">,
): Promise<{ active: number; earlier: number }> {
  await lockConcurrencySlots(sql, [concurrencySlot(run.workflow_id, run.concurrency_key)]);
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

/** A run's id and status, when it belongs to the tenant (the cheap check before reading its events). */
export async function runStatusOf(
  sql: Sql,
  tenantId: string,
  runId: string,
): Promise<Pick<RunRow, "id" | "status"> | undefined> {
  const [run] = await sql<Pick<RunRow, "id" | "status">[]>`
    select id, status from runs where id = ${runId} and tenant_id = ${tenantId}`;
  return run;
}

export interface RunListQuery {
  workflow?: string;
  status?: RunStatus;
  kind?: RunKind;
  limit: number;
  /** Runs strictly before this position: creation time (µs since the epoch) and id. */
  before?: { atMicros: string; id: string };
}

/**
 * A page of the tenant's runs, newest first, with `position_us` (the creation time in µs) for the
 * next cursor. Reads `limit + 1` rows so the caller knows whether more follow.
 */
export async function listRunRows(sql: Sql, tenantId: string, query: RunListQuery) {
  return sql<(RunRow & { workflow_name: string; position_us: string })[]>`
    select ${runColumns(sql, "r")}, w.name as workflow_name,
      (extract(epoch from r.created_at) * 1000000)::bigint::text as position_us
    from runs r join workflows w on w.id = r.workflow_id
    where r.tenant_id = ${tenantId}
      ${query.workflow ? sql`and w.name = ${query.workflow}` : sql``}
      ${query.status ? sql`and r.status = ${query.status}` : sql``}
      ${query.kind ? sql`and r.kind = ${query.kind}` : sql``}
      ${
        // A position, not a row: the cursor holds even when retention deleted the run it names.
        // Compared in the database: created_at has microseconds, which a JSON timestamp would lose.
        query.before
          ? sql`and (r.created_at, r.id) < (timestamptz 'epoch' + ${query.before.atMicros}::bigint * interval '1 microsecond', ${query.before.id}::uuid)`
          : sql``
      }
    -- NULLS LAST matches runs_tenant_created_idx, so the page is read from the index, not sorted.
    order by r.created_at desc nulls last, r.id desc nulls last
    limit ${query.limit + 1}`;
}

export interface NewRunRow {
  tenantId: string;
  workflowId: string;
  workflowVersion: number;
  kind: RunKind;
  /** `running` (started as created: `started_at` is set) or `queued` (waits for admission). */
  status: "running" | "queued";
  trigger: string;
  params: Record<string, unknown>;
  priority: number;
  request: unknown;
  plan: unknown;
  parentRunId: string | null;
  backfillId: string | null;
  partitionKey: string | null;
  concurrencyKey: string | null;
  locksWanted: string[];
  pendingSteps: number;
  /** The W3C trace context of the run's span, when it is traced. */
  traceContext: string | null;
}

/** Inserts a new run; the caller then inserts its steps (`insertStepRows`) in the same transaction. */
export async function insertRunRow(sql: Sql, run: NewRunRow): Promise<RunRow> {
  const [inserted] = await sql<RunRow[]>`
    insert into runs (tenant_id, workflow_id, workflow_version, kind, status, trigger, params, priority,
      request, plan, parent_run_id, backfill_id, partition_key, concurrency_key, locks_wanted,
      pending_steps, created_at, started_at, trace_context)
    values (${run.tenantId}, ${run.workflowId}, ${run.workflowVersion}, ${run.kind}, ${run.status}, ${run.trigger},
      ${sql.json(run.params as never)}, ${run.priority}, ${sql.json((run.request ?? {}) as never)},
      ${sql.json(run.plan as never)}, ${run.parentRunId}, ${run.backfillId}, ${run.partitionKey},
      ${run.concurrencyKey}, ${sql.json(run.locksWanted)}, ${run.pendingSteps}, clock_timestamp(),
      ${run.status === "running" ? sql`clock_timestamp()` : null}, ${run.traceContext})
    returning ${runColumns(sql)}`;
  return inserted!;
}

export interface NewStepRow {
  step_id: string;
  /** `queued`: a root of a run that starts as it is created, queued at once (attempt 1). */
  status: "pending" | "queued" | "reused" | "skipped";
  /** The job of a `queued` row's attempt 1; null otherwise. */
  job_id: string | null;
  unmet_needs: number;
  max_attempts: number;
  queue: string;
  priority: number;
  timeout_seconds: number | null;
  plan_reason: string;
  output: unknown;
  reused_from: string | null;
  /** Reused and skipped steps are finished as they are created. */
  finished: boolean;
}

/**
 * Inserts a new run's step rows (phase `execute`), all in one statement. A `queued` row gets
 * attempt 1 and its job id, as `queuePendingSteps` would give it.
 */
export async function insertStepRows(sql: Sql, runId: string, rows: readonly NewStepRow[]): Promise<void> {
  await sql`
    insert into step_runs (run_id, step_id, status, unmet_needs, max_attempts, queue, priority, timeout_seconds,
      plan_reason, output, reused_from_run_id, finished_at, attempt, queued_at, job_id)
    select ${runId}, x.step_id, x.status::step_status, x.unmet_needs, x.max_attempts, x.queue, x.priority,
      x.timeout_seconds, x.plan_reason, x.output, x.reused_from, case when x.finished then now() end,
      case when x.status = 'queued' then 1 else 0 end, case when x.status = 'queued' then now() end, x.job_id
    from jsonb_to_recordset(${sql.json(rows as never)})
      as x(step_id text, status text, unmet_needs int, max_attempts int, queue text, priority smallint,
        timeout_seconds int, plan_reason text, output jsonb, reused_from uuid, finished boolean, job_id text)`;
}
