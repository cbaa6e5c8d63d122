/**
 * Failed authentication per client address (SPEC §12): after `max` failures within `windowSeconds`
 * an address is refused before its key is even looked up, so guessing keys costs no database
 * query. One counter per address that expires with its window. Redis errors fail open: an outage
 * of Redis must not lock every client out (readiness reports it).
 */
import type { Redis } from "ioredis";
import type { FailureLimiter } from "../domain/ports.ts";
import { type RedisKeys, redisKeys } from "./keys.ts";

export class AuthFailureLimiter implements FailureLimiter {
  private readonly keys: RedisKeys;

  constructor(
    private readonly redis: Redis,
    prefix: string,
    private readonly max: number,
    private readonly windowSeconds: number,
  ) {
    this.keys = redisKeys(prefix);
  }

  /** Seconds until the address may try again, or null when it may try now. */
  async blockedFor(address: string): Promise<number | null> {
    try {
      const key = this.keys.authFailures(address);
      const [[, count], [, ttl]] = (await this.redis.multi().get(key).pttl(key).exec()) as [
        [unknown, string | null],
        [unknown, number],
      ];
      if (Number(count ?? 0) < this.max) return null;
      return Math.max(1, Math.ceil(ttl / 1000));
    } catch {
      return null;
    }
  }

  async recordFailure(address: string): Promise<void> {
    try {
      const key = this.keys.authFailures(address);
      await this.redis.multi().set(key, 0, "EX", this.windowSeconds, "NX").incr(key).exec();
    } catch {
      // Fail open, as above.
    }
  }
}
