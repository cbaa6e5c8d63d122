/** Asset locks on Redis: `LockService` over the generic leases of `lease.ts`. */
import type { Redis } from "ioredis";
import type { LockGrant, LockService } from "../domain/ports.ts";
import { redisKeys } from "./keys.ts";
import { RedisLeases } from "./lease.ts";

export class RedisAssetLocks implements LockService {
  private readonly leases: RedisLeases;
  private readonly keys;

  constructor(redis: Redis, prefix: string) {
    this.leases = new RedisLeases(redis);
    this.keys = redisKeys(prefix);
  }

  acquire(tenantId: string, lockKey: string, token: string, ttlMs: number): Promise<LockGrant | null> {
    return this.leases.acquire(
      this.keys.assetLock(tenantId, lockKey),
      this.keys.assetFence(tenantId, lockKey),
      token,
      ttlMs,
    );
  }

  renew(tenantId: string, lockKey: string, token: string, ttlMs: number): Promise<boolean> {
    return this.leases.renew(this.keys.assetLock(tenantId, lockKey), token, ttlMs);
  }

  release(tenantId: string, lockKey: string, token: string): Promise<boolean> {
    return this.leases.release(this.keys.assetLock(tenantId, lockKey), token);
  }

  holder(tenantId: string, lockKey: string): Promise<string | null> {
    return this.leases.holder(this.keys.assetLock(tenantId, lockKey));
  }

  raiseFence(tenantId: string, lockKey: string, atLeast: number): Promise<void> {
    return this.leases.raiseFence(this.keys.assetFence(tenantId, lockKey), atLeast);
  }
}
