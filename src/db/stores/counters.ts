/**
 * Counters in a time window on Postgres (`store_counters`, unlogged): the API rate limit's store
 * and the failed-authentication limiter. One upsert per hit: a counter whose window ended starts
 * over at 1 with a new window. Expired rows are deleted now and then by whoever writes.
 */
import type { FailureLimiter } from "../../domain/ports.ts";
import type { Sql } from "../repositories/runs.ts";

const PRUNE_EVERY_MS = 60_000;

export class PgCounters {
  private prunedAt = 0;

  constructor(private readonly sql: Sql) {}

  /** Adds one; answers the count in the current window and the milliseconds it has left. */
  async increment(key: string, windowMs: number): Promise<{ current: number; ttlMs: number }> {
    this.prune();
    const [row] = await this.sql<{ count: number; ttl: string }[]>`
      insert into store_counters as c (key, count, expires_at)
      values (${key}, 1, clock_timestamp() + ${windowMs} * interval '1 millisecond')
      on conflict (key) do update set
        count = case when c.expires_at <= clock_timestamp() then 1 else c.count + 1 end,
        expires_at = case when c.expires_at <= clock_timestamp() then excluded.expires_at else c.expires_at end
      returning count, greatest(0, ceil(extract(epoch from expires_at - clock_timestamp()) * 1000)) as ttl`;
    return { current: row!.count, ttlMs: Number(row!.ttl) };
  }

  /** The count in the current window and the milliseconds it has left (0, 0 when none). */
  async read(key: string): Promise<{ current: number; ttlMs: number }> {
    const [row] = await this.sql<{ count: number; ttl: string }[]>`
      select count, ceil(extract(epoch from expires_at - clock_timestamp()) * 1000) as ttl
      from store_counters where key = ${key} and expires_at > clock_timestamp()`;
    return row ? { current: row.count, ttlMs: Number(row.ttl) } : { current: 0, ttlMs: 0 };
  }

  private prune(): void {
    const now = Date.now();
    if (now - this.prunedAt < PRUNE_EVERY_MS) return;
    this.prunedAt = now;
    void this
      .sql`delete from store_counters where expires_at < clock_timestamp() - interval '1 minute'`.catch(
      () => {},
    );
  }
}

/** See `FailureLimiter`: after `max` failures within the window an address waits for its end. */
export class PgAuthFailureLimiter implements FailureLimiter {
  private readonly counters: PgCounters;

  constructor(
    sql: Sql,
    private readonly prefix: string,
    private readonly max: number,
    private readonly windowSeconds: number,
  ) {
    this.counters = new PgCounters(sql);
  }

  async blockedFor(address: string): Promise<number | null> {
    try {
      const { current, ttlMs } = await this.counters.read(`${this.prefix}:authfail:${address}`);
      if (current < this.max) return null;
      return Math.max(1, Math.ceil(ttlMs / 1000));
    } catch {
      return null;
    }
  }

  async recordFailure(address: string): Promise<void> {
    try {
      await this.counters.increment(`${this.prefix}:authfail:${address}`, this.windowSeconds * 1000);
    } catch {
      // Fail open, as above.
    }
  }
}

/** The callback-style store `@fastify/rate-limit` asks for, on `PgCounters`. */
export interface RateLimitStore {
  incr(
    key: string,
    callback: (error: Error | null, result?: { current: number; ttl: number }) => void,
    timeWindow: number,
    max: number,
  ): void;
  /** Per-route counters; the plugin passes the route's merged options, `routeInfo` among them. */
  child(routeOptions: unknown): RateLimitStore;
}

/** A store class for `@fastify/rate-limit` (it constructs the store itself) keyed under `namespace`. */
export function pgRateLimitStore(sql: Sql, namespace: string): new () => RateLimitStore {
  const counters = new PgCounters(sql);
  const make = (keyPrefix: string): RateLimitStore => ({
    incr: (key, callback, timeWindow) => {
      counters.increment(keyPrefix + key, timeWindow).then(
        ({ current, ttlMs }) => callback(null, { current, ttl: ttlMs }),
        (error: Error) => callback(error),
      );
    },
    child: (routeOptions) => {
      const { routeInfo } = routeOptions as { routeInfo: { method: string; url: string } };
      return make(`${keyPrefix}${routeInfo.method}${routeInfo.url}-`);
    },
  });
  return class {
    constructor() {
      // biome-ignore lint/correctness/noConstructorReturn: the plugin constructs its store with `new`.
      return make(namespace);
    }
  } as unknown as new () => RateLimitStore;
}
