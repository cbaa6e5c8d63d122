/**
 * Run notifications across Redis outages: every (re)subscription wakes every listener once Redis
 * has confirmed it, so a stream re-reads Postgres after the last moment a notification could have
 * been lost. Runs on a private Redis server that is killed and started again.
 */
import { randomBytes } from "node:crypto";
import type { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { coalesceReads } from "../../src/api/routes/runs/sse.ts";
import { createRedis } from "../../src/redis/connection.ts";
import { RedisEventBus } from "../../src/redis/event-bus.ts";
import { type PrivateRedis, startPrivateRedis } from "../helpers/redis-server.ts";

let redis: PrivateRedis;
const connections: Redis[] = [];

beforeAll(async () => {
  redis = await startPrivateRedis();
});
afterEach(async () => {
  for (const c of connections.splice(0)) c.disconnect();
});
afterAll(async () => {
  await redis?.stop();
});

/** A bus on the private server; its connections wait for Redis like the API's do. */
function newBus(): RedisEventBus {
  const publisher = createRedis(redis.url, "consumer");
  const subscriber = createRedis(redis.url, "consumer");
  connections.push(publisher, subscriber);
  void publisher.connect().catch(() => {});
  void subscriber.connect().catch(() => {});
  return new RedisEventBus(publisher, subscriber, `fltest:${randomBytes(4).toString("hex")}`);
}

/** Resolves on the listener's next call. */
function nextWake(bus: RedisEventBus, runId: string): Promise<void> {
  return new Promise((resolve) => {
    const off = bus.onRun(runId, () => {
      off();
      resolve();
    });
  });
}

const within = <T>(promise: Promise<T>, what: string, ms = 10_000) =>
  Promise.race([
    promise,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms)),
  ]);

describe("run notifications across Redis outages", () => {
  it("wakes streams that began before the first subscription, once it is confirmed", async () => {
    await redis.down();
    const bus = newBus();
    void bus.start().catch(() => {});
    // A stream served while Redis is unreachable: it read Postgres, and news since then is lost.
    const woken = nextWake(bus, "r1");
    await redis.up();
    await within(woken, "wake after the first subscription");
    // Woken only once subscribed: news published right after the wake is delivered.
    const next = nextWake(bus, "r2");
    await bus.notify(["r2"]);
    await within(next, "notification after the wake");
  });

  it("wakes every stream again after Redis restarts, once resubscribed", async () => {
    const bus = newBus();
    await bus.start();
    const woken = nextWake(bus, "r1");
    await redis.down();
    await redis.up();
    // Listening for r2 as r1 wakes, then publishing: delivered only if the subscription is back.
    const next = woken.then(() => {
      const wake = nextWake(bus, "r2");
      void bus.notify(["r2"]);
      return wake;
    });
    await within(woken, "wake after the restart");
    await within(next, "notification after the wake");
  });

  it("never lets a stream that arrives later share a read begun before news it was not told of", async () => {
    const bus = newBus();
    await bus.start();
    const reads: Array<() => void> = [];
    const readPage = coalesceReads(
      (runId) => bus.generation(runId),
      () => new Promise<string>((resolve) => reads.push(() => resolve("page"))),
    );
    // Stream A reads, news arrives (A would read again), A leaves before its read completes.
    const news = nextWake(bus, "r");
    const leaveA = bus.onRun("r", () => {});
    const first = readPage("r", 0, 500);
    await bus.notify(["r"]);
    await within(news, "notification");
    leaveA();
    // Stream B arrives: its read must start after the news was committed, not join A's.
    const leaveB = bus.onRun("r", () => {});
    const second = readPage("r", 0, 500);
    expect(reads).toHaveLength(2);
    for (const resolve of reads) resolve();
    await Promise.all([first, second]);
    leaveB();
  });
});
