/**
 * Open event streams per tenant, counted across every API process (`quotas.streams`): one sorted
 * set per tenant whose members are the open streams, each scored by the time its lease expires.
 * A stream renews its lease on its heartbeat and removes it when it ends; a process that dies
 * leaves leases that expire within `ttlMs` and are dropped by the next count. Time is Redis's own,
 * so the API processes' clocks do not matter.
 */
import { randomBytes } from "node:crypto";
import type { Redis } from "ioredis";
import type { StreamLeaseStore, StreamSlot } from "../domain/ports.ts";
import { redisKeys } from "./keys.ts";

const NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

// KEYS[1] the tenant's set; ARGV: lease id, quota, ttl ms. Returns 0 when granted, else the count.
const ACQUIRE = `${NOW}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local open = redis.call('ZCARD', KEYS[1])
if open >= tonumber(ARGV[2]) then return open end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 0`;

// KEYS[1] the tenant's set; ARGV: lease id, ttl ms. Only an existing lease is renewed.
const RENEW = `${NOW}
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1`;

export class StreamLeases implements StreamLeaseStore {
  private readonly process = randomBytes(6).toString("hex");
  private sequence = 0;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    /** A lease not renewed for this long no longer counts (a few heartbeats). */
    readonly ttlMs: number,
  ) {}

  private key(tenantId: string): string {
    return redisKeys(this.prefix).streamLeases(tenantId);
  }

  /** A lease for one more stream of the tenant, or how many are open when it is at `max`. */
  async acquire(tenantId: string, max: number): Promise<StreamSlot> {
    const lease = `${this.process}:${++this.sequence}`;
    const open = Number(
      await this.redis.eval(ACQUIRE, 1, this.key(tenantId), lease, String(max), String(this.ttlMs)),
    );
    return open === 0 ? { ok: true, lease } : { ok: false, open };
  }

  async renew(tenantId: string, lease: string): Promise<void> {
    await this.redis.eval(RENEW, 1, this.key(tenantId), lease, String(this.ttlMs));
  }

  async release(tenantId: string, lease: string): Promise<void> {
    await this.redis.zrem(this.key(tenantId), lease);
  }
}
