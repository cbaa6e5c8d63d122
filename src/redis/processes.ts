/**
 * Which releases are running: API and supervisor processes announce themselves (role, version,
 * the newest migration they know, the formats they read) every few seconds with an expiry, as
 * workers do in their registry (registry.ts, which stamps the same release). Read by
 * `flowline migrate --check`; nothing depends on it for correctness.
 */
import type { Redis } from "ioredis";
import { release } from "../config/release.ts";
import { FORMATS } from "../domain/versions.ts";
import { redisKeys } from "./keys.ts";

export interface ProcessRelease {
  version: string;
  imageTag: string | null;
  /** The newest migration this process carries. */
  schema: number;
  formats: { job: number; event: number; lease: number };
}

/** This process's release, as announced. */
export const thisRelease = (): ProcessRelease => ({
  version: release.version,
  imageTag: release.imageTag,
  schema: release.schema,
  formats: { ...FORMATS },
});

export interface ProcessInfo {
  id: string;
  role: "api" | "supervisor";
  pid: number;
  host: string;
  startedAt: string;
  release: ProcessRelease;
}

/** Announcements are refreshed this often and live three times as long. */
export const PROCESS_ANNOUNCE_MS = 5000;

export class ProcessRegistry {
  private readonly keys;

  constructor(
    private readonly redis: Redis,
    prefix: string,
  ) {
    this.keys = redisKeys(prefix);
  }

  async announce(info: ProcessInfo, ttlMs: number = PROCESS_ANNOUNCE_MS * 3): Promise<void> {
    await this.redis
      .multi()
      .set(this.keys.process(info.id), JSON.stringify(info), "PX", ttlMs)
      .zadd(this.keys.processes(), Date.now() + ttlMs, info.id)
      .exec();
  }

  async remove(id: string): Promise<void> {
    await this.redis.multi().del(this.keys.process(id)).zrem(this.keys.processes(), id).exec();
  }

  async online(): Promise<ProcessInfo[]> {
    const now = Date.now();
    await this.redis.zremrangebyscore(this.keys.processes(), "-inf", now);
    const ids = await this.redis.zrangebyscore(this.keys.processes(), now, "+inf");
    if (ids.length === 0) return [];
    const values = await this.redis.mget(ids.map((id) => this.keys.process(id)));
    return values.flatMap((v) => (v ? [JSON.parse(v) as ProcessInfo] : []));
  }

  /**
   * Announces `info` now and every PROCESS_ANNOUNCE_MS until the returned function is called
   * (which removes the announcement). Failures are reported to `onError` and retried next beat.
   */
  keepAnnounced(info: ProcessInfo, onError: (error: Error) => void): () => Promise<void> {
    const beat = () => this.announce(info).catch(onError);
    void beat();
    const timer = setInterval(beat, PROCESS_ANNOUNCE_MS);
    timer.unref();
    return async () => {
      clearInterval(timer);
      await this.remove(info.id).catch(() => {});
    };
  }
}
