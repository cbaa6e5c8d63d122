/**
 * Leases on Postgres, the `store_leases` table: one row per name with its holder's token, an
 * expiry on the database's clock, and a fencing counter that only grows. A grant is one upsert
 * that succeeds only when nobody holds the lease (no token, or an expiry in the past) and bumps the
 * fence in the same statement; renew and release compare the token, like the Redis Lua scripts.
 * The clock is the database's (`clock_timestamp()`), so holders' clocks may disagree freely.
 */
import type { Lease, LockGrant, LockService } from "../../domain/ports.ts";
import type { Sql } from "../repositories/runs.ts";

export class PgLeases {
  constructor(private readonly sql: Sql) {}

  /** Takes the lease if nobody holds it; the fence is larger than every earlier grant's. */
  async acquire(name: string, token: string, ttlMs: number): Promise<LockGrant | null> {
    const [row] = await this.sql<{ fence: string }[]>`
      insert into store_leases as l (name, token, expires_at, fence)
      values (${name}, ${token}, clock_timestamp() + ${ttlMs} * interval '1 millisecond', 1)
      on conflict (name) do update
        set token = excluded.token, expires_at = excluded.expires_at, fence = l.fence + 1
        where l.token is null or l.expires_at <= clock_timestamp()
      returning fence`;
    return row ? { token, fence: Number(row.fence) } : null;
  }

  /** Extends the lease; false if it expired or belongs to someone else now. */
  async renew(name: string, token: string, ttlMs: number): Promise<boolean> {
    const rows = await this.sql`
      update store_leases set expires_at = clock_timestamp() + ${ttlMs} * interval '1 millisecond'
      where name = ${name} and token = ${token} and expires_at > clock_timestamp()
      returning 1`;
    return rows.length === 1;
  }

  /** Frees the lease if it is still this token's (an expired one counts: it is free anyway). */
  async release(name: string, token: string): Promise<boolean> {
    const rows = await this.sql`
      update store_leases set token = null, expires_at = null
      where name = ${name} and token = ${token} and expires_at > clock_timestamp()
      returning 1`;
    return rows.length === 1;
  }

  /** The current holder's token, or null. */
  async holder(name: string): Promise<string | null> {
    const [row] = await this.sql<{ token: string }[]>`
      select token from store_leases where name = ${name} and expires_at > clock_timestamp()`;
    return row?.token ?? null;
  }

  /** Makes the next grant's fence larger than `atLeast`. */
  async raiseFence(name: string, atLeast: number): Promise<void> {
    await this.sql`
      insert into store_leases as l (name, fence) values (${name}, ${atLeast})
      on conflict (name) do update set fence = greatest(l.fence, excluded.fence)`;
  }
}

/** Asset locks (per tenant and lock key) on `store_leases`. */
export class PgAssetLocks implements LockService {
  private readonly leases: PgLeases;

  constructor(
    sql: Sql,
    private readonly prefix: string,
  ) {
    this.leases = new PgLeases(sql);
  }

  private name(tenantId: string, lockKey: string): string {
    return `${this.prefix}:asset:${tenantId}:${lockKey}`;
  }

  acquire(tenantId: string, lockKey: string, token: string, ttlMs: number): Promise<LockGrant | null> {
    return this.leases.acquire(this.name(tenantId, lockKey), token, ttlMs);
  }
  renew(tenantId: string, lockKey: string, token: string, ttlMs: number): Promise<boolean> {
    return this.leases.renew(this.name(tenantId, lockKey), token, ttlMs);
  }
  release(tenantId: string, lockKey: string, token: string): Promise<boolean> {
    return this.leases.release(this.name(tenantId, lockKey), token);
  }
  holder(tenantId: string, lockKey: string): Promise<string | null> {
    return this.leases.holder(this.name(tenantId, lockKey));
  }
  raiseFence(tenantId: string, lockKey: string, atLeast: number): Promise<void> {
    return this.leases.raiseFence(this.name(tenantId, lockKey), atLeast);
  }
}

/** One named lease (the supervisor's) on `store_leases`. */
export class PgLease implements Lease {
  private readonly leases: PgLeases;

  constructor(
    private readonly sql: Sql,
    private readonly name: string,
  ) {
    this.leases = new PgLeases(sql);
  }

  acquire(token: string, ttlMs: number): Promise<LockGrant | null> {
    return this.leases.acquire(this.name, token, ttlMs);
  }
  renew(token: string, ttlMs: number): Promise<boolean> {
    return this.leases.renew(this.name, token, ttlMs);
  }
  release(token: string): Promise<boolean> {
    return this.leases.release(this.name, token);
  }
  raiseFence(atLeast: number): Promise<void> {
    return this.leases.raiseFence(this.name, atLeast);
  }
  async holder(): Promise<string | null> {
    const [row] = await this.sql<{ token: string | null }[]>`
      select token from store_leases where name = ${this.name} and expires_at > clock_timestamp()`;
    return row?.token ?? null;
  }
}
