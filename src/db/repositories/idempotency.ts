/**
 * Idempotency keys of submissions (SPEC §4): a key names one request body (by hash) and, once its
 * transaction commits, the run it created. Concurrent duplicates collapse on the primary key: the
 * second insert waits for the first's commit.
 */
import type { Sql } from "./runs.ts";

/**
 * Takes the key for this request: true when it is new or its previous use expired (then it is
 * this request's until it binds a run). Guard: an unexpired key is never taken over.
 */
export async function claimIdempotencyKey(
  sql: Sql,
  tenantId: string,
  key: string,
  requestHash: string,
  ttlHours: number,
): Promise<boolean> {
  const claimed = await sql`
    insert into idempotency_keys (tenant_id, key, request_hash, expires_at)
    values (${tenantId}, ${key}, ${requestHash}, now() + make_interval(hours => ${ttlHours}))
    on conflict (tenant_id, key) do update set request_hash = excluded.request_hash, run_id = null,
      created_at = now(), expires_at = excluded.expires_at
      where idempotency_keys.expires_at < now()
    returning 1`;
  return claimed.length > 0;
}

/** What an existing key was used for: the request's hash and the run it created (if any). */
export async function idempotentRequest(
  sql: Sql,
  tenantId: string,
  key: string,
): Promise<{ request_hash: string; run_id: string | null } | undefined> {
  const [row] = await sql<{ request_hash: string; run_id: string | null }[]>`
    select request_hash, run_id from idempotency_keys where tenant_id = ${tenantId} and key = ${key}`;
  return row;
}

/** Binds a claimed key to the run its request created (same transaction as the run). */
export async function bindIdempotencyKey(
  sql: Sql,
  tenantId: string,
  key: string,
  runId: string,
): Promise<void> {
  await sql`update idempotency_keys set run_id = ${runId} where tenant_id = ${tenantId} and key = ${key}`;
}
