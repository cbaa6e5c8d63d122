/** Fencing tokens of lease holders, kept where their writes land (see `supervisor_fences`). */
import type { Sql } from "./runs.ts";

export class StaleFenceError extends Error {
  constructor(
    readonly mine: number,
    readonly newest: number,
  ) {
    super(`fencing token ${mine} is stale: token ${newest} has acted since`);
  }
}

/** Records `fence` as the newest; otherwise answers the newer one that has acted already. */
export async function claimFence(
  sql: Sql,
  name: string,
  fence: number,
  holder: string,
): Promise<{ ok: true } | { ok: false; newest: number }> {
  const [row] = await sql<{ fence: string }[]>`
    insert into supervisor_fences (name, fence, holder) values (${name}, ${fence}, ${holder})
    on conflict (name) do update set fence = excluded.fence, holder = excluded.holder, updated_at = now()
      where supervisor_fences.fence <= excluded.fence
    returning fence`;
  if (row) return { ok: true };
  const [current] = await sql<{ fence: string }[]>`select fence from supervisor_fences where name = ${name}`;
  return { ok: false, newest: Number(current?.fence ?? 0) };
}

/**
 * Inside a transaction: proceeds only if `fence` is still the newest. The shared row lock makes a
 * newer holder's claim wait for this transaction, so the check stays true until it commits.
 */
export async function assertFence(sql: Sql, name: string, fence: number): Promise<void> {
  const [row] = await sql<{ fence: string }[]>`
    select fence from supervisor_fences where name = ${name} for share`;
  const newest = row ? Number(row.fence) : 0;
  if (newest !== fence) throw new StaleFenceError(fence, newest);
}

/**
 * Records `fence` as the newest token that has written to the asset lock `lockKey`; when a newer
 * one has written already, answers that one instead (and nothing is written). Guard: the token
 * only grows. The caller holds the run lock of the run that holds the asset lock.
 */
export async function claimAssetFence(
  sql: Sql,
  tenantId: string,
  lockKey: string,
  fence: string,
): Promise<{ ok: true } | { ok: false; newest: string | null }> {
  const [row] = await sql<{ fencing_token: string }[]>`
    insert into asset_fences (tenant_id, lock_key, fencing_token) values (${tenantId}, ${lockKey}, ${fence})
    on conflict (tenant_id, lock_key) do update set fencing_token = excluded.fencing_token, updated_at = now()
      where asset_fences.fencing_token <= excluded.fencing_token
    returning fencing_token`;
  if (row) return { ok: true };
  const [newest] = await sql<{ fencing_token: string }[]>`
    select fencing_token from asset_fences where tenant_id = ${tenantId} and lock_key = ${lockKey}`;
  return { ok: false, newest: newest?.fencing_token ?? null };
}
