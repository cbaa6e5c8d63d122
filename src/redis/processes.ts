/**
 * Which releases are running: API and supervisor processes announce themselves (role, version,
 * the newest migration they know, the formats they read) every few seconds with an expiry, as
 * workers do in their registry (registry.ts, which stamps the same release). Read by
 * `flowline migrate --check`; nothing depends on it for correctness.
 */
import type { Redis } from "ioredis";
import { release } from "../config/release.ts";
import type { ProcessRelease } from "../domain/ports.ts";
import { FORMATS } from "../domain/versions.ts";
import { redisKeys } from "./keys.ts";

export type { ProcessRelease } from "../domain/ports.ts";

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

export class ProcessRegistry implements ProcessDirectory {
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

  keepAnnounced(info: ProcessInfo, onError: (error: Error) => void): () => Promise<void> {
    return keepAnnounced(this, info, onError);
  }
}

/** Where API and supervisor processes announce themselves (Redis, or Postgres without Redis). */
export interface ProcessDirectory {
  announce(info: ProcessInfo, ttlMs?: number): Promise<void>;
  remove(id: string): Promise<void>;
  online(): Promise<ProcessInfo[]>;
  keepAnnounced(info: ProcessInfo, onError: (error: Error) => void): () => Promise<void>;
}

/**
 * Announces `info` now and every PROCESS_ANNOUNCE_MS until the returned function is called
 * (which removes the announcement). Failures are reported to `onError` and retried next beat.
 */
export function keepAnnounced(
  directory: Pick<ProcessDirectory, "announce" | "remove">,
  info: ProcessInfo,
  onError: (error: Error) => void,
): () => Promise<void> {
  const beat = () => directory.announce(info).catch(onError);
  void beat();
  const timer = setInterval(beat, PROCESS_ANNOUNCE_MS);
  timer.unref();
  return async () => {
    clearInterval(timer);
    await directory.remove(info.id).catch(() => {});
  };
}
