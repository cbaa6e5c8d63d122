/**
 * Open event streams per tenant on Postgres (no Redis): one `store_leases` row per open stream,
 * named `<prefix>:stream:<tenant>:<lease>`, expiring by the database clock. Acquiring counts and
 * inserts under a per-tenant advisory lock, so two API processes cannot both take the last place.
 */
import { randomBytes } from "node:crypto";
import type postgres from "postgres";
import type { StreamLeaseStore, StreamSlot } from "../../domain/ports.ts";

export class PgStreamLeases implements StreamLeaseStore {
  private readonly process = randomBytes(6).toString("hex");
  private sequence = 0;

  constructor(
    private readonly sql: postgres.Sql,
    private readonly prefix: string,
    readonly ttlMs: number,
  ) {}

  private names(tenantId: string): string {
    return `${this.prefix}:stream:${tenantId}:`;
  }

  async acquire(tenantId: string, max: number): Promise<StreamSlot> {
    const lease = `${this.process}:${++this.sequence}`;
    const names = this.names(tenantId);
    return (await this.sql.begin(async (tx) => {
      await tx`select pg_advisory_xact_lock(hashtextextended(${names}, 0))`;
      await tx`delete from store_leases where starts_with(name, ${names}) and expires_at < now()`;
      const [row] = await tx<{ open: number }[]>`
        select count(*)::int as open from store_leases where starts_with(name, ${names})`;
      if (row!.open >= max) return { ok: false, open: row!.open };
      await tx`insert into store_leases (name, expires_at)
        values (${names + lease}, now() + make_interval(secs => ${this.ttlMs / 1000}))`;
      return { ok: true, lease };
    })) as StreamSlot;
  }

  async renew(tenantId: string, lease: string): Promise<void> {
    await this.sql`update store_leases set expires_at = now() + make_interval(secs => ${this.ttlMs / 1000})
      where name = ${this.names(tenantId) + lease}`;
  }

  async release(tenantId: string, lease: string): Promise<void> {
    await this.sql`delete from store_leases where name = ${this.names(tenantId) + lease}`;
  }
}
