/**
 * The per-tenant lock that makes quotas exact (SPEC §13): every transaction that creates runs takes
 * it before counting what the tenant holds, so two submissions of one tenant count one after the
 * other and cannot both pass at the last free place. Held to the end of the transaction.
 */
import type { Sql } from "./repositories/runs.ts";

export async function lockTenantQuotas(sql: Sql, tenantId: string): Promise<void> {
  await sql`select pg_advisory_xact_lock(hashtextextended(${`quota:${tenantId}`}, 0))`;
}
