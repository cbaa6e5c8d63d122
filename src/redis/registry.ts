/**
 * Who is online: each worker process announces itself (queues, concurrency, the steps it runs)
 * every few seconds with an expiry, and the autoscaler publishes its latest decision per queue.
 * Read by `GET /v1/queues` and the metrics; nothing depends on it for correctness.
 */
import type { Redis } from "ioredis";
import type { WorkerDirectory, WorkerInfo, WorkerStep } from "../domain/ports.ts";
import type { QueueTarget } from "../domain/scaling.ts";
import { redisKeys } from "./keys.ts";
import { thisRelease } from "./processes.ts";

export type { WorkerInfo, WorkerStep };
export type ScalerTarget = QueueTarget;

export class WorkerRegistry implements WorkerDirectory {
  private readonly keys;

  constructor(
    private readonly redis: Redis,
    prefix: string,
  ) {
    this.keys = redisKeys(prefix);
  }

  async announce(info: WorkerInfo, ttlMs: number): Promise<void> {
    await this.redis
      .multi()
      .set(this.keys.worker(info.id), JSON.stringify({ ...info, release: thisRelease() }), "PX", ttlMs)
      .zadd(this.keys.workers(), Date.now() + ttlMs, info.id)
      .exec();
  }

  async remove(id: string): Promise<void> {
    await this.redis.multi().del(this.keys.worker(id)).zrem(this.keys.workers(), id).exec();
  }

  /** Workers whose last announcement has not expired. */
  async online(): Promise<WorkerInfo[]> {
    const now = Date.now();
    await this.redis.zremrangebyscore(this.keys.workers(), "-inf", now);
    const ids = await this.redis.zrangebyscore(this.keys.workers(), now, "+inf");
    if (ids.length === 0) return [];
    const values = await this.redis.mget(ids.map((id) => this.keys.worker(id)));
    return values.flatMap((v) => (v ? [JSON.parse(v) as WorkerInfo] : []));
  }

  async publishTargets(targets: Record<string, ScalerTarget>, ttlMs: number): Promise<void> {
    const entries = Object.entries(targets);
    if (entries.length === 0) return;
    await this.redis
      .multi()
      .hset(this.keys.scalerTargets(), Object.fromEntries(entries.map(([q, t]) => [q, JSON.stringify(t)])))
      .pexpire(this.keys.scalerTargets(), ttlMs)
      .exec();
  }

  async targets(): Promise<Record<string, ScalerTarget>> {
    const raw = await this.redis.hgetall(this.keys.scalerTargets());
    return Object.fromEntries(Object.entries(raw).map(([q, v]) => [q, JSON.parse(v) as ScalerTarget]));
  }
}
