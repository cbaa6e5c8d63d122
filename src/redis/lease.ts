/**
 * Leases (locks with a time limit) on a single Redis: `SET key token NX PX ttl` to take one, and
 * renew / release only through Lua scripts that compare the token, so a holder can never extend
 * or free a lease someone else took over.
 *
 * Every grant also increments a per-key counter, the **fencing token**. A lease alone cannot stop a
 * holder that was paused (GC, SIGSTOP) past its expiry from acting afterwards; the store that
 * receives its write must compare the fencing token it carries with the newest one it has seen.
 */
import type { Redis } from "ioredis";
import type { Lease } from "../domain/ports.ts";

const ACQUIRE = `
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('incr', KEYS[2])
end
return 0`;

const RENEW = `
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0`;

const RELEASE = `
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0`;

const RAISE = `
if tonumber(redis.call('get', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('set', KEYS[1], ARGV[1])
end
return 1`;

export interface Grant {
  token: string;
  /** Increases with every grant of this key, whoever gets it. */
  fence: number;
}

export class RedisLeases {
  constructor(private readonly redis: Redis) {}

  /** Takes the lease if nobody holds it. `fenceKey` persists across grants (no expiry). */
  async acquire(key: string, fenceKey: string, token: string, ttlMs: number): Promise<Grant | null> {
    const fence = Number(await this.redis.eval(ACQUIRE, 2, key, fenceKey, token, String(ttlMs)));
    return fence > 0 ? { token, fence } : null;
  }

  /** Extends the lease; false if it expired or belongs to someone else now. */
  async renew(key: string, token: string, ttlMs: number): Promise<boolean> {
    return Number(await this.redis.eval(RENEW, 1, key, token, String(ttlMs))) === 1;
  }

  /** Frees the lease if it is still this token's; false otherwise. */
  async release(key: string, token: string): Promise<boolean> {
    return Number(await this.redis.eval(RELEASE, 1, key, token)) === 1;
  }

  /**
   * Makes the next grant's fencing token larger than `atLeast`: after Redis lost its data the
   * counter restarts, while the stores that check tokens still remember the old ones.
   */
  async raiseFence(fenceKey: string, atLeast: number): Promise<void> {
    await this.redis.eval(RAISE, 1, fenceKey, String(atLeast));
  }

  /** The current holder's token, or null. */
  holder(key: string): Promise<string | null> {
    return this.redis.get(key);
  }
}

/** One named lease (the supervisor's) and its fencing counter, as the `Lease` port. */
export class RedisLease implements Lease {
  private readonly leases: RedisLeases;

  constructor(
    redis: Redis,
    private readonly key: string,
    private readonly fenceKey: string,
  ) {
    this.leases = new RedisLeases(redis);
  }

  acquire(token: string, ttlMs: number): Promise<Grant | null> {
    return this.leases.acquire(this.key, this.fenceKey, token, ttlMs);
  }
  renew(token: string, ttlMs: number): Promise<boolean> {
    return this.leases.renew(this.key, token, ttlMs);
  }
  release(token: string): Promise<boolean> {
    return this.leases.release(this.key, token);
  }
  raiseFence(atLeast: number): Promise<void> {
    return this.leases.raiseFence(this.fenceKey, atLeast);
  }
  holder(): Promise<string | null> {
    return this.leases.holder(this.key);
  }
}
