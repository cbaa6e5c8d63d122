/**
 * Each tenant's webhook signing secret (SPEC §12): created on first use (the first delivery or the
 * first read by an admin, whichever comes first; concurrent first uses agree on one), rotated on
 * request with the previous secret still valid for a day.
 */
import type postgres from "postgres";
import { generateWebhookSecret, WEBHOOK_SECRET_OVERLAP_SECONDS } from "../../domain/webhook-secrets.ts";
import type { Sql } from "./runs.ts";

export interface TenantWebhookSecrets {
  secret: string;
  createdAt: Date;
  /** The secret before the last rotation, while it still signs; null otherwise. */
  previous: { secret: string; expiresAt: Date } | null;
}

interface Row {
  secret: string;
  created_at: Date;
  previous_secret: string | null;
  previous_expires_at: Date | null;
  now: Date;
}

function fromRow(row: Row): TenantWebhookSecrets {
  const live =
    row.previous_secret !== null && row.previous_expires_at !== null && row.previous_expires_at > row.now;
  return {
    secret: row.secret,
    createdAt: row.created_at,
    previous: live ? { secret: row.previous_secret!, expiresAt: row.previous_expires_at! } : null,
  };
}

/** The tenant's secrets, creating the first one if it has none. */
export async function webhookSecretsOf(sql: Sql, tenantId: string): Promise<TenantWebhookSecrets> {
  // A concurrent first use may insert after this statement's snapshot was taken: the insert then
  // does nothing and the read sees nothing, and the next statement sees the other's row.
  for (let attempt = 1; ; attempt++) {
    const row = await readOrCreate(sql, tenantId);
    if (row) return fromRow(row);
    if (attempt >= 3) throw new Error(`tenant "${tenantId}" does not exist`);
  }
}

async function readOrCreate(sql: Sql, tenantId: string): Promise<Row | undefined> {
  const [row] = await sql<Row[]>`
    with created as (
      insert into tenant_webhook_secrets (tenant_id, secret)
      select ${tenantId}, ${generateWebhookSecret()}
      where exists (select 1 from tenants where id = ${tenantId})
      on conflict (tenant_id) do nothing
      returning secret, created_at, previous_secret, previous_expires_at
    )
    select *, now() as now from created
    union all
    select secret, created_at, previous_secret, previous_expires_at, now() from tenant_webhook_secrets
    where tenant_id = ${tenantId}
    limit 1`;
  return row;
}

/**
 * Replaces the tenant's secret with a new one; the replaced one keeps signing for a day. A second
 * rotation within that day drops the oldest secret. A transaction, so the request's audit entry
 * commits with the rotation.
 */
export async function rotateWebhookSecret(
  sql: postgres.Sql,
  tenantId: string,
): Promise<TenantWebhookSecrets> {
  const fresh = generateWebhookSecret();
  const [row] = await sql.begin(
    (tx) => tx<Row[]>`
    insert into tenant_webhook_secrets as t (tenant_id, secret)
    values (${tenantId}, ${fresh})
    on conflict (tenant_id) do update set
      previous_secret = t.secret,
      previous_expires_at = now() + make_interval(secs => ${WEBHOOK_SECRET_OVERLAP_SECONDS}),
      secret = excluded.secret,
      created_at = now()
    returning secret, created_at, previous_secret, previous_expires_at, now() as now`,
  );
  return fromRow(row!);
}
