import { Redis, type RedisOptions } from "ioredis";

/**
 * Connections come in two flavours (see FIELD-NOTES): request paths fail fast when Redis is down
 * (no offline queue, one retry) so the API can answer 503; long-lived consumers (BullMQ workers)
 * wait for Redis to come back (`maxRetriesPerRequest: null`).
 */
export function createRedis(
  url: string,
  flavour: "request" | "consumer",
  options: { name?: string; onError?: (error: Error) => void } = {},
): Redis {
  const common: RedisOptions = {
    connectionName: options.name ?? "flowline",
    lazyConnect: true,
    retryStrategy: (times) => Math.min(times * 200, 2000),
  };
  const redis = new Redis(
    url,
    flavour === "request"
      ? { ...common, enableOfflineQueue: false, maxRetriesPerRequest: 1, connectTimeout: 5000 }
      : { ...common, maxRetriesPerRequest: null },
  );
  // An unhandled 'error' event would crash the process; reconnects are handled by retryStrategy.
  redis.on("error", options.onError ?? (() => {}));
  return redis;
}

/** Deletes every key matching `pattern` with SCAN (never KEYS), in batches. */
export async function deleteByPattern(redis: Redis, pattern: string): Promise<number> {
  let cursor = "0";
  let deleted = 0;
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 500);
    cursor = next;
    if (keys.length > 0) deleted += await redis.unlink(...keys);
  } while (cursor !== "0");
  return deleted;
}
