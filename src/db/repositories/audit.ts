/** The audit log (SPEC §12): appended by the API for every state-changing request, read by admins. */
import type postgres from "postgres";
import type { Sql } from "./runs.ts";

export interface AuditEntry {
  tenantId: string;
  keyId: string | null;
  keyPrefix: string | null;
  action: string;
  target: string | null;
  /** `ok`, or the error code of a refused request. */
  outcome: string;
  requestId: string | null;
  details: Record<string, unknown>;
}

export interface AuditRecord extends AuditEntry {
  id: number;
  createdAt: Date;
}

/** Appends an entry; answers its id. */
export async function appendAudit(sql: Sql, entry: AuditEntry): Promise<number> {
  const [row] = await sql<{ id: string }[]>`
    insert into audit_log (tenant_id, key_id, key_prefix, action, target, outcome, request_id, details)
    values (${entry.tenantId}, ${entry.keyId}, ${entry.keyPrefix}, ${entry.action}, ${entry.target},
      ${entry.outcome}, ${entry.requestId}, ${sql.json(entry.details as postgres.JSONValue)})
    returning id`;
  return Number(row!.id);
}

/** Records the outcome of an entry appended as `pending` before the change was attempted. */
export async function settleAudit(
  sql: Sql,
  id: number,
  result: Pick<AuditEntry, "outcome" | "target" | "details">,
): Promise<void> {
  await sql`
    update audit_log set outcome = ${result.outcome}, target = coalesce(${result.target}, target),
      details = ${sql.json(result.details as postgres.JSONValue)}
    where id = ${id} and outcome = 'pending'`;
}

export interface AuditQuery {
  tenantId: string;
  action?: string;
  keyId?: string;
  target?: string;
  outcome?: string;
  since?: Date;
  /** Entries with a smaller id (the page before the cursor); newest first. */
  beforeId?: number;
  limit: number;
}

export async function listAudit(
  sql: Sql,
  q: AuditQuery,
): Promise<{ items: AuditRecord[]; hasMore: boolean }> {
  const rows = await sql<
    {
      id: string;
      tenant_id: string;
      key_id: string | null;
      key_prefix: string | null;
      action: string;
      target: string | null;
      outcome: string;
      request_id: string | null;
      details: Record<string, unknown>;
      created_at: Date;
    }[]
  >`
    select * from audit_log
    where tenant_id = ${q.tenantId}
      ${q.action === undefined ? sql`` : sql`and action = ${q.action}`}
      ${q.keyId === undefined ? sql`` : sql`and key_id = ${q.keyId}`}
      ${q.target === undefined ? sql`` : sql`and target = ${q.target}`}
      ${q.outcome === undefined ? sql`` : sql`and outcome = ${q.outcome}`}
      ${q.since === undefined ? sql`` : sql`and created_at >= ${q.since}`}
      ${q.beforeId === undefined ? sql`` : sql`and id < ${q.beforeId}`}
    order by id desc
    limit ${q.limit + 1}`;
  return {
    hasMore: rows.length > q.limit,
    items: rows.slice(0, q.limit).map((r) => ({
      id: Number(r.id),
      tenantId: r.tenant_id,
      keyId: r.key_id,
      keyPrefix: r.key_prefix,
      action: r.action,
      target: r.target,
      outcome: r.outcome,
      requestId: r.request_id,
      details: r.details,
      createdAt: r.created_at,
    })),
  };
}

/** Deletes entries older than `days`, in bounded batches; answers how many went. */
export async function pruneAudit(sql: Sql, days: number, batch = 5000): Promise<number> {
  const deleted = await sql`
    delete from audit_log where id in (
      select id from audit_log where created_at < now() - make_interval(days => ${days}) limit ${batch})`;
  return deleted.count;
}
