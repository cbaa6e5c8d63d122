/**
 * Every Redis key Flowline writes is named here, under one configurable prefix, so that a
 * deployment (or a test) can share a Redis server with others and clean up after itself.
 */
export interface RedisKeys {
  readonly prefix: string;
  /** Namespace handed to the rate limiter; it appends the caller's key id. */
  rateLimitNamespace(): string;
  /** Failed authentications from one client address in the current window. */
  authFailures(address: string): string;
  /** BullMQ's own prefix for its queues. */
  queuePrefix(): string;
  /** A queue's fair-share state: its virtual clock and each (priority, tenant) flow's last tag. */
  fairQueue(queue: string): string;
  /** Sorted set of a tenant's open event streams (all API processes), scored by lease expiry (ms). */
  streamLeases(tenantId: string): string;
  /** Pub/sub channel: "run R has new events" (comma-separated run ids). */
  eventsChannel(): string;
  /** Pub/sub channel: control messages for workers (cancel). */
  controlChannel(): string;
  /** The active supervisor's lease, and its fencing counter. */
  supervisorLease(): string;
  supervisorFence(): string;
  /** Sorted set of online worker ids, scored by the time (ms) their registration expires. */
  workers(): string;
  /** One worker's registration (JSON), refreshed by its heartbeat. */
  worker(id: string): string;
  /** Hash queue → JSON of the autoscaler's latest decision for that queue. */
  scalerTargets(): string;
  /** Sorted set of API and supervisor process ids, scored by the time (ms) their announcement expires. */
  processes(): string;
  /** One API or supervisor process's announcement (role, release), refreshed every few seconds. */
  process(id: string): string;
  /** An asset lock (`lockKey` is an asset key, or `asset@partition`), and its fencing counter. */
  assetLock(tenantId: string, lockKey: string): string;
  assetFence(tenantId: string, lockKey: string): string;
  /** The generated secret that signs browser sessions and stream tokens (when none is configured). */
  sessionSecret(): string;
  /** Pattern matching every key of this prefix (for cleanup in tests and tools). */
  all(): string;
}

export function redisKeys(prefix: string): RedisKeys {
  return {
    prefix,
    rateLimitNamespace: () => `${prefix}:rl:`,
    authFailures: (address) => `${prefix}:authfail:${address}`,
    queuePrefix: () => `${prefix}:q`,
    fairQueue: (queue) => `${prefix}:fair:${queue}`,
    streamLeases: (tenantId) => `${prefix}:streams:${tenantId}`,
    eventsChannel: () => `${prefix}:events`,
    controlChannel: () => `${prefix}:control`,
    supervisorLease: () => `${prefix}:supervisor:lease`,
    supervisorFence: () => `${prefix}:supervisor:fence`,
    workers: () => `${prefix}:workers`,
    worker: (id) => `${prefix}:worker:${id}`,
    scalerTargets: () => `${prefix}:scaler:targets`,
    processes: () => `${prefix}:processes`,
    process: (id) => `${prefix}:process:${id}`,
    assetLock: (tenantId, lockKey) => `${prefix}:lock:asset:${tenantId}:${lockKey}`,
    assetFence: (tenantId, lockKey) => `${prefix}:fence:asset:${tenantId}:${lockKey}`,
    sessionSecret: () => `${prefix}:auth:session-secret`,
    all: () => `${prefix}:*`,
  };
}
