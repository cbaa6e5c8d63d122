/**
 * The store contracts, run against both implementations: leases with fencing tokens (asset locks
 * and the supervisor's lease), failure counters, the worker directory and the session secret on
 * Redis and on Postgres; and the Postgres event bus across a dropped LISTEN connection.
 */
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/index.ts";
import { createDb, type DbHandle } from "../../src/db/client.ts";
import { PgEventBus } from "../../src/db/stores/event-bus.ts";
import { createRedis, deleteByPattern } from "../../src/redis/connection.ts";
import { openStores, type Stores } from "../../src/stores/index.ts";
import { createTestDatabase, type TestDatabase } from "../helpers/context.ts";
import { TEST_REDIS_URL } from "../helpers/services.ts";

let database: TestDatabase;
let db: DbHandle;
const prefix = `fltest:${randomBytes(4).toString("hex")}`;
const opened: Stores[] = [];

beforeAll(async () => {
  database = await createTestDatabase();
  db = createDb({ url: database.url, poolMax: 5, connectTimeoutSeconds: 5, statementTimeoutMs: 10_000 });
});
afterAll(async () => {
  for (const s of opened) await s.close();
  const redis = createRedis(TEST_REDIS_URL, "consumer");
  await redis.connect();
  await deleteByPattern(redis, `${prefix}:*`);
  await redis.quit();
  await db?.close();
  await database?.drop();
});

async function storesOn(kind: "redis" | "postgres"): Promise<Stores> {
  const config = parseConfig({
    database: { url: database.url },
    redis: kind === "redis" ? { url: TEST_REDIS_URL, prefix } : { prefix },
  });
  const stores = await openStores(config, {
    name: "flowline-test",
    flavour: "consumer",
    subscribe: false,
    sql: db.sql,
  });
  opened.push(stores);
  return stores;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.each(["redis", "postgres"] as const)("stores on %s", (kind) => {
  let stores: Stores;
  beforeAll(async () => {
    stores = await storesOn(kind);
  });

  it("grants an asset lock to one holder at a time, each grant with a larger fence", async () => {
    const lock = `asset-${kind}`;
    const a = await stores.locks.acquire("t1", lock, "a", 10_000);
    expect(a).toMatchObject({ token: "a" });
    expect(await stores.locks.acquire("t1", lock, "b", 10_000)).toBeNull();
    // Another tenant's lock of the same name is another lock.
    expect(await stores.locks.acquire("t2", lock, "b", 10_000)).not.toBeNull();
    expect(await stores.locks.holder("t1", lock)).toBe("a");
    expect(await stores.locks.renew("t1", lock, "b", 10_000)).toBe(false);
    expect(await stores.locks.release("t1", lock, "b")).toBe(false);
    expect(await stores.locks.renew("t1", lock, "a", 10_000)).toBe(true);
    expect(await stores.locks.release("t1", lock, "a")).toBe(true);
    expect(await stores.locks.holder("t1", lock)).toBeNull();
    const b = await stores.locks.acquire("t1", lock, "b", 10_000);
    expect(b!.fence).toBeGreaterThan(a!.fence);
    // After the store lost its counters, a raised fence puts the next grant past what was seen.
    await stores.locks.release("t1", lock, "b");
    await stores.locks.raiseFence("t1", lock, b!.fence + 100);
    const c = await stores.locks.acquire("t1", lock, "c", 10_000);
    expect(c!.fence).toBeGreaterThan(b!.fence + 100);
  });

  it("lets a lease run out: renewing it fails, and the next holder gets a larger fence", async () => {
    const lease = stores.supervisorLease;
    const first = await lease.acquire("s1", 300);
    expect(first).not.toBeNull();
    expect(await lease.acquire("s2", 300)).toBeNull();
    await sleep(450);
    expect(await lease.renew("s1", 300)).toBe(false);
    const second = await lease.acquire("s2", 5000);
    expect(second!.fence).toBeGreaterThan(first!.fence);
    expect(await lease.release("s1")).toBe(false);
    expect(await lease.release("s2")).toBe(true);
  });

  it("counts failed authentications per address within the window", async () => {
    const limiter = stores.failureLimiter(3, 60);
    const address = `10.0.0.${kind === "redis" ? 1 : 2}`;
    for (let i = 0; i < 2; i++) await limiter.recordFailure(address);
    expect(await limiter.blockedFor(address)).toBeNull();
    await limiter.recordFailure(address);
    const wait = await limiter.blockedFor(address);
    expect(wait).toBeGreaterThan(0);
    expect(wait).toBeLessThanOrEqual(60);
    expect(await limiter.blockedFor("10.9.9.9")).toBeNull();
  });

  it("lists workers until their announcement expires, and the autoscaler's targets", async () => {
    const info = {
      id: `w-${kind}`,
      pid: 1,
      host: "h",
      queues: ["default"],
      concurrency: 2,
      startedAt: new Date().toISOString(),
      steps: [],
    };
    await stores.registry.announce(info, 300);
    expect((await stores.registry.online()).map((w) => w.id)).toContain(info.id);
    await sleep(450);
    expect((await stores.registry.online()).map((w) => w.id)).not.toContain(info.id);
    await stores.registry.announce(info, 10_000);
    await stores.registry.remove(info.id);
    expect((await stores.registry.online()).map((w) => w.id)).not.toContain(info.id);
    const target = {
      target: 2,
      processes: 1,
      backlog: 5,
      active: 1,
      reason: "backlog",
      updatedAt: new Date().toISOString(),
    };
    await stores.registry.publishTargets({ default: target }, 10_000);
    expect((await stores.registry.targets()).default).toMatchObject(target);
  });

  it("generates one session secret that every process reads", async () => {
    const other = await storesOn(kind);
    const [a, b] = await Promise.all([stores.sessionSecret(), other.sessionSecret()]);
    expect(a).toBe(b);
    expect(a.length).toBeGreaterThanOrEqual(32);
  });
});

describe("the Postgres event bus", () => {
  it("delivers run news and control messages across processes' connections", async () => {
    const listener = createDb({
      url: database.url,
      poolMax: 2,
      connectTimeoutSeconds: 5,
      statementTimeoutMs: 0,
    });
    const bus = new PgEventBus(listener.sql, prefix);
    const sender = new PgEventBus(db.sql, prefix);
    try {
      await bus.start();
      const woken = new Promise<void>((resolve) => {
        const off = bus.onRun("r1", () => {
          off();
          resolve();
        });
      });
      const control = new Promise((resolve) => bus.onControl(resolve));
      await sender.notify(["r0", "r1"]);
      await sender.publish({ type: "cancel", runId: "r1" });
      await woken;
      expect(await control).toEqual({ type: "cancel", runId: "r1" });
      expect(bus.stats()).toMatchObject({ runs: 0, controlListeners: 1 });
    } finally {
      await bus.close();
      await listener.close();
    }
  });

  it("wakes every listener once LISTEN is back after its connection dropped", async () => {
    const listener = createDb({
      url: database.url,
      poolMax: 2,
      connectTimeoutSeconds: 5,
      statementTimeoutMs: 0,
      applicationName: "flowline-listen-test",
    });
    const bus = new PgEventBus(listener.sql, prefix);
    try {
      await bus.start();
      let wakes = 0;
      bus.onRun("r2", () => wakes++);
      const before = bus.generation("r2");
      // The connection carrying LISTEN goes away (a Postgres restart, a network cut): whatever was
      // notified meanwhile is lost, so the reconnect must wake the listener.
      const killed = await db.sql`
        select pg_terminate_backend(pid) from pg_stat_activity
        where application_name = 'flowline-listen-test' and query ilike 'listen%'`;
      expect(killed.length).toBeGreaterThan(0);
      const deadline = Date.now() + 10_000;
      while (wakes === 0 && Date.now() < deadline) await sleep(50);
      expect(wakes).toBeGreaterThan(0);
      expect(bus.generation("r2")).toBeGreaterThan(before);
    } finally {
      await bus.close();
      await listener.close();
    }
  });
});
