/**
 * SQL of admission (engine/admission.ts): which queued runs wait, which runs want or hold which
 * asset locks, and the fencing tokens Postgres knows for each lock. The concurrency slots and the
 * active holder of a lock are read in repositories/runs.ts (`concurrencySlotUse`,
 * `activeLockHolder`, `heldLocksOf`), next to the run statuses they count.
 */
import type { RunRow, Sql } from "./runs.ts";

/**
 * Reads a queued run of the tenant, submitted before `run`, that waits for one of `lockKeys`
 * (first in, first out: `run` must not overtake it). Undefined when there is none.
 */
export async function earlierRunWantingLocks(
  sql: Sql,
  run: Pick<RunRow, "id" | "tenant_id" | "created_at">,
  lockKeys: readonly string[],
): Promise<{ id: string } | undefined> {
  const [earlier] = await sql<{ id: string }[]>`
    select id from runs
    where tenant_id = ${run.tenant_id} and status = 'queued' and id <> ${run.id}
      and (created_at, id) < (${run.created_at}, ${run.id}::uuid)
      and locks_wanted ?| ${lockKeys as string[]}
    limit 1`;
  return earlier;
}

/** Reads the newest fencing token Postgres has seen for each of `lockKeys` (absent: none yet). */
export async function assetFenceTokens(
  sql: Sql,
  tenantId: string,
  lockKeys: readonly string[],
): Promise<Map<string, number>> {
  const rows = await sql<{ lock_key: string; fencing_token: string }[]>`
    select lock_key, fencing_token from asset_fences
    where tenant_id = ${tenantId} and lock_key = any(${sql.array(lockKeys as string[])}::text[])`;
  return new Map(rows.map((r) => [r.lock_key, Number(r.fencing_token)]));
}

/**
 * Writes the tokens of new lock grants to `asset_fences`, so a run that lost a lock can no longer
 * record a materialization even if it finishes first. Guard: a token only ever rises
 * (`greatest`); a lower one leaves the row as it is. The caller holds the locks it records.
 */
export async function raiseAssetFences(
  sql: Sql,
  tenantId: string,
  held: Readonly<Record<string, number>>,
): Promise<void> {
  const entries = Object.entries(held);
  await sql`
    insert into asset_fences (tenant_id, lock_key, fencing_token)
    select ${tenantId}, x.lock_key, x.fence
    from unnest(${sql.array(entries.map(([lockKey]) => lockKey))}::text[],
      ${sql.array(entries.map(([, fence]) => String(fence)))}::bigint[]) as x(lock_key, fence)
    on conflict (tenant_id, lock_key) do update
      set fencing_token = greatest(asset_fences.fencing_token, excluded.fencing_token), updated_at = now()`;
}

/**
 * Reads the ids of runs waiting in `queued`, oldest first: the `limit` oldest, plus the head of
 * every (workflow, concurrency key) queue, so a long queue of one workflow cannot hide another's
 * first run. No lock: each is locked and re-checked when admitted.
 */
export async function waitingRunIds(sql: Sql, limit: number): Promise<string[]> {
  const rows = await sql<{ id: string }[]>`
    select id from (
      (select id, created_at from runs where status = 'queued' order by created_at, id limit ${limit})
      union
      (select distinct on (workflow_id, coalesce(concurrency_key, '')) id, created_at from runs
        where status = 'queued' order by workflow_id, coalesce(concurrency_key, ''), created_at, id limit ${limit * 2})
    ) q order by created_at, id`;
  return rows.map((r) => r.id);
}

/**
 * Reads the active runs (the statuses of `LOCK_HOLDING_STATUSES`, written out so the partial index
 * of active runs applies) that hold asset locks, with the locks and their fencing tokens.
 */
export async function runsHoldingLocks(
  sql: Sql,
): Promise<Array<Pick<RunRow, "id" | "tenant_id" | "locks_held">>> {
  return sql<Pick<RunRow, "id" | "tenant_id" | "locks_held">[]>`
    select id, tenant_id, locks_held from runs
    where status in ('running', 'paused', 'rolling_back') and locks_held <> '{}'::jsonb`;
}

/** Reads every lock a run not yet ended wants (queued) or holds, as `tenant/lockKey`. */
export async function wantedLocksOfUnfinishedRuns(sql: Sql): Promise<Set<string>> {
  const rows = await sql<{ tenant_id: string; lock: string }[]>`
    select tenant_id, jsonb_array_elements_text(locks_wanted) as lock from runs
    where status in ('queued', 'running', 'paused', 'rolling_back') and locks_wanted <> '[]'::jsonb`;
  return new Set(rows.map((r) => `${r.tenant_id}/${r.lock}`));
}
