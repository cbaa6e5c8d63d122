/**
 * The guarded statements that move a run through its state machine (domain/status.ts). Each
 * statement's guard is the set of statuses the transition table lets reach the target
 * (`runSourcesOf`), narrowed where a transition has one meaning only (resume moves a `paused` run,
 * not a `queued` one); a narrowing outside the table fails when this module loads. Each answers
 * what it moved, so the caller turns "nothing moved" into a typed refusal (`illegal_transition`).
 * The caller holds the run lock (`lockRun`), which also orders the run's events.
 *
 * The attempts of a run (its `step_runs` rows) move through db/transitions.ts.
 */
import { narrowSources, type RunStatus, runSourcesOf } from "../domain/status.ts";
import { type RunRow, runColumns, type Sql } from "./repositories/runs.ts";

type Json = Parameters<Sql["json"]>[0];

/** The statuses a run may reach `to` from: the table's, or those of `from` once checked against it. */
const guardOf = (to: RunStatus, from?: readonly RunStatus[]): RunStatus[] =>
  from === undefined ? runSourcesOf(to) : narrowSources(to, runSourcesOf(to), from);

const START_FROM = guardOf("running", ["queued"]);
const RESUME_FROM = guardOf("running", ["paused"]);
const PAUSE_FROM = guardOf("paused");
const ROLLING_BACK_FROM = guardOf("rolling_back");
const ROLLBACK_ENDS_FROM = {
  rolled_back: guardOf("rolled_back"),
  failed: guardOf("failed", ["rolling_back"]),
};

/**
 * queued → running for an admitted run, recording the asset locks it holds (lock key → fencing
 * token). Writes `started_at` by the statement clock (an unrestricted run is created started).
 * Guard: status in runSourcesOf('running') ∩ {queued}. Returns the moved row.
 */
export async function markRunStarted(
  sql: Sql,
  runId: string,
  locksHeld: Readonly<Record<string, number>>,
): Promise<RunRow | undefined> {
  const [row] = await sql<RunRow[]>`
    update runs set status = 'running', started_at = coalesce(started_at, clock_timestamp()), updated_at = now(),
      revision = revision + 1, locks_held = ${sql.json(locksHeld as Json)}
    where id = ${runId} and status = any(${sql.array(START_FROM)}::run_status[])
    returning ${runColumns(sql)}`;
  return row;
}

/** running → paused. Guard: status in runSourcesOf('paused'). Returns the moved row. */
export async function markRunPaused(sql: Sql, runId: string): Promise<RunRow | undefined> {
  const [row] = await sql<RunRow[]>`
    update runs set status = 'paused', updated_at = now(), revision = revision + 1
    where id = ${runId} and status = any(${sql.array(PAUSE_FROM)}::run_status[])
    returning ${runColumns(sql)}`;
  return row;
}

/** paused → running. Guard: status in runSourcesOf('running') ∩ {paused}. Returns the moved row. */
export async function markRunResumed(sql: Sql, runId: string): Promise<RunRow | undefined> {
  const [row] = await sql<RunRow[]>`
    update runs set status = 'running', updated_at = now(), revision = revision + 1
    where id = ${runId} and status = any(${sql.array(RESUME_FROM)}::run_status[])
    returning ${runColumns(sql)}`;
  return row;
}

/**
 * → rolling_back: counts the rollback, clears `finished_at` and `pending_steps` (compensations are
 * counted by their own rows); `releaseLocks` empties `locks_held` (a run that had ended freed its
 * locks then); `error`, when given, replaces the run's error (null clears it).
 * Guard: status in runSourcesOf('rolling_back'). Returns the moved row.
 */
export async function markRunRollingBack(
  sql: Sql,
  runId: string,
  change: { releaseLocks: boolean; error?: unknown },
): Promise<RunRow | undefined> {
  const { releaseLocks, error } = change;
  const [row] = await sql<RunRow[]>`
    update runs set status = 'rolling_back', pending_steps = 0, finished_at = null, updated_at = now(),
      revision = revision + 1, rollbacks = rollbacks + 1
      ${releaseLocks ? sql`, locks_held = '{}'::jsonb` : sql``}
      ${error === undefined ? sql`` : sql`, error = ${error === null ? null : sql.json(error as Json)}`}
    where id = ${runId} and status = any(${sql.array(ROLLING_BACK_FROM)}::run_status[])
    returning ${runColumns(sql)}`;
  return row;
}

/**
 * rolling_back → rolled_back | failed: the rollback ends; `error`, when given, replaces the run's.
 * Guard: status in runSourcesOf(outcome) ∩ {rolling_back}. Returns whether the run moved.
 */
export async function markRollbackEnded(
  sql: Sql,
  runId: string,
  outcome: "rolled_back" | "failed",
  error: unknown,
): Promise<boolean> {
  const rows = await sql`
    update runs set status = ${outcome}, finished_at = now(), updated_at = now(), revision = revision + 1
      ${error === undefined ? sql`` : sql`, error = ${sql.json(error as Json)}`}
    where id = ${runId} and status = any(${sql.array(ROLLBACK_ENDS_FROM[outcome])}::run_status[])
    returning 1`;
  return rows.length > 0;
}

/**
 * → succeeded | failed: the run ends with the outcome of its steps (or fails at a step), writing
 * `finished_at` and, when given, the error; `resetPending` also zeroes `pending_steps` (the
 * reconciler closing a run whose counter disagrees with its steps).
 * Guard: status in runSourcesOf(outcome). Returns whether the run moved.
 */
export async function markRunEnded(
  sql: Sql,
  runId: string,
  outcome: "succeeded" | "failed",
  options: { error?: unknown; resetPending?: boolean } = {},
): Promise<boolean> {
  const { error, resetPending } = options;
  const rows = await sql`
    update runs set status = ${outcome}, updated_at = now(), revision = revision + 1, finished_at = now()
      ${resetPending ? sql`, pending_steps = 0` : sql``}
      ${error === undefined ? sql`` : sql`, error = ${sql.json(error as Json)}`}
    where id = ${runId} and status = any(${sql.array(guardOf(outcome))}::run_status[])
    returning 1`;
  return rows.length > 0;
}

// --- what the reconciler looks for (each repair re-checks under the run lock) -------------------

const CANCELLED_FROM = guardOf("cancelled");

/**
 * Ends the run as cancelled with nothing left pending. Guard: status in runSourcesOf('cancelled')
 * (not already terminal); answers the row, or undefined when it could not move. The caller holds
 * the run lock and has cancelled its unfinished steps.
 */
export async function markRunCancelled(sql: Sql, runId: string): Promise<RunRow | undefined> {
  const [updated] = await sql<RunRow[]>`
    update runs set status = 'cancelled', pending_steps = 0, finished_at = now(), updated_at = now(), revision = revision + 1
    where id = ${runId} and status = any(${sql.array(CANCELLED_FROM)}::run_status[])
    returning ${runColumns(sql)}`;
  return updated;
}

/**
 * Reads runs still `running`, untouched for `minAgeSeconds`, whose steps are all terminal (a crash
 * between a step's end and the run's).
 */
export async function findFinishedRunningRuns(
  sql: Sql,
  minAgeSeconds: number,
  limit: number,
): Promise<string[]> {
  const rows = await sql<{ id: string }[]>`
    select r.id from runs r
    where r.status = 'running' and r.updated_at < now() - make_interval(secs => ${minAgeSeconds})
      and not exists (select 1 from step_runs s where s.run_id = r.id and s.phase = 'execute'
        and s.status not in ('succeeded', 'failed', 'skipped', 'cancelled', 'reused'))
    limit ${limit}`;
  return rows.map((r) => r.id);
}

/** Reads runs `rolling_back`, untouched for `minAgeSeconds`, with no compensation in flight. */
export async function findIdleRollbacks(sql: Sql, minAgeSeconds: number, limit: number): Promise<string[]> {
  const rows = await sql<{ id: string }[]>`
    select r.id from runs r
    where r.status = 'rolling_back' and r.updated_at < now() - make_interval(secs => ${minAgeSeconds})
      and not exists (select 1 from step_runs s where s.run_id = r.id and s.phase = 'compensate'
        and s.status in ('queued', 'running', 'retrying'))
    limit ${limit}`;
  return rows.map((r) => r.id);
}
