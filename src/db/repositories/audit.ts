/**
 * The audit log (SPEC §12): appended by the API for every state-changing request, read by admins.
 *
 * A request's entry is written in the transaction that makes its change: the API puts the
 * request's `AuditSlot` in an async context around its handler, and every transaction begun in that
 * context (`auditedBegin`, wired into both database clients by db/client.ts) writes the slot's
 * entry as its last statement, unless an earlier one already committed it. So a committed change
 * always has its entry and a rolled-back one leaves none. Code that commits several requests'
 * changes in one transaction (the submission committer) leaves the context and writes their
 * entries itself (`writeAuditSlots`). A request that changed nothing (refused, or nothing to do)
 * gets its entry appended after its answer is known.
 */
import { AsyncLocalStorage } from "node:async_hooks";
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

/**
 * One request's entry on its way to the log. `open` until a transaction claims it; `claimed` while
 * that transaction runs (its `id` set once written); `committed` after; `closed` once the request
 * has answered, so that nothing begun later in its context writes it.
 */
export class AuditSlot {
  state: "open" | "claimed" | "committed" | "closed" = "open";
  id: number | null = null;
  constructor(readonly entry: AuditEntry) {}

  /** What the change made, known only inside its transaction (a created run's id, say). */
  note(details: Record<string, unknown>): void {
    Object.assign(this.entry.details, details);
  }

  claim(): boolean {
    if (this.state !== "open") return false;
    this.state = "claimed";
    return true;
  }

  settle(committed: boolean): void {
    if (this.state !== "claimed") return;
    this.state = committed ? "committed" : "open";
    if (!committed) this.id = null;
  }
}

const currentSlot = new AsyncLocalStorage<AuditSlot | undefined>();

/** The entry of the request whose work is running, if any. */
export const currentAuditSlot = (): AuditSlot | undefined => currentSlot.getStore();

/** Runs `work` with `slot` as the current request's entry (none: outside any request's). */
export function withAuditSlot<T>(slot: AuditSlot | undefined, work: () => T): T {
  return currentSlot.run(slot, work);
}

type Begin = (...args: unknown[]) => Promise<unknown>;

/**
 * `sql.begin(...)` that writes the current request's entry as the transaction's last statement
 * when no earlier transaction of the request committed it.
 */
export function auditedBegin(begin: Begin, args: unknown[]): Promise<unknown> {
  const slot = currentSlot.getStore();
  const work = args.at(-1);
  if (!slot?.claim() || typeof work !== "function") return begin(...args);
  const audited = async (tx: Sql) => {
    const result = await (work as (tx: Sql) => unknown)(tx);
    await writeAuditSlots(tx, [slot]);
    return result;
  };
  return begin(...args.slice(0, -1), audited).then(
    (result) => {
      slot.settle(true);
      return result;
    },
    (error: unknown) => {
      slot.settle(false);
      throw error;
    },
  );
}

/** Writes the entries of claimed slots inside the caller's transaction: one statement. */
export async function writeAuditSlots(tx: Sql, slots: readonly AuditSlot[]): Promise<void> {
  if (slots.length === 0) return;
  const e = slots.map((s) => s.entry);
  // Details go as text, cast here: the two clients serialise JSON differently.
  const rows = await tx<{ id: string }[]>`
    insert into audit_log (tenant_id, key_id, key_prefix, action, target, outcome, request_id, details)
    select t, k, p, a, g, o, r, d::jsonb
    from unnest(${e.map((x) => x.tenantId)}::text[], ${e.map((x) => x.keyId)}::uuid[],
      ${e.map((x) => x.keyPrefix)}::text[], ${e.map((x) => x.action)}::text[], ${e.map((x) => x.target)}::text[],
      ${e.map((x) => x.outcome)}::text[], ${e.map((x) => x.requestId)}::text[],
      ${e.map((x) => JSON.stringify(x.details))}::text[]) as u(t, k, p, a, g, o, r, d)
    returning id`;
  rows.forEach((row, i) => {
    slots[i]!.id = Number(row.id);
  });
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

/**
 * Completes an entry written with its change from the request's answer: the outcome when the
 * request failed after the change committed, the target and details the change did not note.
 */
export async function settleAudit(
  sql: Sql,
  id: number,
  result: Pick<AuditEntry, "outcome" | "target" | "details">,
): Promise<void> {
  await sql`
    update audit_log set outcome = ${result.outcome}, target = coalesce(${result.target}, target),
      details = details || ${sql.json(result.details as postgres.JSONValue)}
    where id = ${id}`;
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
