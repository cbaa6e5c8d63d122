/**
 * Per-file isolation on the shared services: a database cloned from the migrated template and a
 * random Redis key prefix. `close()` drops both, leaving nothing behind.
 */
import { randomBytes } from "node:crypto";
import type { FastifyBaseLogger, FastifyInstance } from "fastify";
import type { Redis } from "ioredis";
import postgres from "postgres";
import { inject } from "vitest";
import { buildApp } from "../../src/api/app.ts";
import { type Config, parseConfig } from "../../src/config/index.ts";
import { createDb, type DbHandle } from "../../src/db/client.ts";
import { keysRepository } from "../../src/db/repositories/keys.ts";
import { createRedis, deleteByPattern } from "../../src/redis/connection.ts";
import { redisKeys } from "../../src/redis/keys.ts";
import { openStores, type Stores } from "../../src/stores/index.ts";
import { databaseUrl, TEST_PG_URL, TEST_REDIS_URL, TEST_STORES } from "./services.ts";

export interface TestDatabase {
  name: string;
  url: string;
  drop(): Promise<void>;
}

export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `flowline_t_${inject("runId")}_${randomBytes(4).toString("hex")}`;
  const admin = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} });
  try {
    for (let attempt = 1; ; attempt++) {
      try {
        await admin.unsafe(`create database "${name}" template "${inject("templateDatabase")}"`);
        break;
      } catch (error) {
        // 55006: the template is briefly busy with another clone; try again.
        if ((error as { code?: string }).code !== "55006" || attempt >= 20) throw error;
        await new Promise((r) => setTimeout(r, 100 * attempt));
      }
    }
  } finally {
    await admin.end();
  }
  return {
    name,
    url: databaseUrl(name),
    drop: async () => {
      const sql = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} });
      try {
        await sql.unsafe(`drop database if exists "${name}" with (force)`);
      } finally {
        await sql.end();
      }
    },
  };
}

export const ROOT_KEY = "flk_test_root_key_0123456789abcdefghijklmnop";

export interface TestContext {
  config: Config;
  db: DbHandle;
  /** The stores the app runs on (see TEST_STORES). */
  stores: Stores;
  /** A Redis connection on the test's prefix; throws when the suite runs on Postgres stores. */
  redis: Redis;
  app: FastifyInstance;
  rootKey: string;
  database: TestDatabase;
  close(): Promise<void>;
}

type ConfigInput = Record<string, unknown>;

/** Builds the whole API on an isolated database and key prefix. */
export async function createTestContext(
  overrides: (base: ConfigInput) => ConfigInput = (c) => c,
  options: { sseHeartbeatMs?: number; logger?: FastifyBaseLogger } = {},
): Promise<TestContext> {
  const database = await createTestDatabase();
  const prefix = `fltest:${randomBytes(4).toString("hex")}`;
  const config = parseConfig(
    overrides({
      database: { url: database.url, poolMax: 5 },
      redis: TEST_STORES === "redis" ? { url: TEST_REDIS_URL, prefix } : { prefix },
      auth: { bootstrapKey: ROOT_KEY },
      log: { level: process.env.FLOWLINE_TEST_LOG_LEVEL ?? "silent" },
    }),
  );
  const db = createDb({ ...config.database, applicationName: "flowline-test" });
  const redis = config.redis.url ? createRedis(config.redis.url, "request", { name: "flowline-test" }) : null;
  await redis?.connect();
  const stores = await openStores(config, {
    name: "flowline-test",
    flavour: "request",
    subscribe: true,
    sql: db.sql,
  });
  // The request flavour connects in the background: tests start once the store answers.
  for (let n = 0; ; n++) {
    try {
      await stores.ping();
      break;
    } catch (error) {
      if (n >= 100) throw error;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  await keysRepository(db.db).ensureRootKey(ROOT_KEY);
  const app = await buildApp({ config, db, stores, ...options });
  await app.ready();
  return {
    config,
    db,
    stores,
    get redis(): Redis {
      if (!redis) throw new Error("this test needs Redis, but the suite runs on Postgres stores");
      return redis;
    },
    app,
    rootKey: ROOT_KEY,
    database,
    close: async () => {
      await app.close();
      await stores.close();
      if (redis) {
        await deleteByPattern(redis, redisKeys(prefix).all());
        await redis.quit();
      }
      await db.close();
      await database.drop();
    },
  };
}
