/**
 * Completed jobs on BullMQ's Postgres backend: a completion applies only the age limit (BullMQ's
 * count limit would read every kept job on each completion there), and the count is kept by a
 * trim that leaves the newest jobs. On Redis both limits stay BullMQ's.
 */
import { randomBytes, randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createDb, type DbHandle } from "../../src/db/client.ts";
import { PgCompletedJobs } from "../../src/db/stores/queue-retention.ts";
import type { StepJob } from "../../src/domain/ports.ts";
import { BullStepDispatcher, stepJobId } from "../../src/queue/step-queue.ts";
import { createRedis, deleteByPattern } from "../../src/redis/connection.ts";
import { createTestDatabase, type TestDatabase } from "../helpers/context.ts";
import { TEST_REDIS_URL } from "../helpers/services.ts";

const prefix = `fltest:${randomBytes(4).toString("hex")}`;
let database: TestDatabase;
let db: DbHandle;
let redis: Redis;
let onPostgres: BullStepDispatcher;
let onRedis: BullStepDispatcher;

beforeAll(async () => {
  database = await createTestDatabase();
  db = createDb({ url: database.url, poolMax: 4, connectTimeoutSeconds: 5, statementTimeoutMs: 10_000 });
  redis = createRedis(TEST_REDIS_URL, "consumer");
  await redis.connect();
  onPostgres = new BullStepDispatcher({
    kind: "postgres",
    url: database.url,
    prefix,
    sql: db.sql,
    poolMax: 2,
    applicationName: "flowline-test",
  });
  onRedis = new BullStepDispatcher({ kind: "redis", redis, newConnection: () => redis.duplicate(), prefix });
});
afterAll(async () => {
  await onPostgres?.close();
  await onRedis?.close();
  await deleteByPattern(redis, `${prefix}:*`);
  await redis?.quit();
  await db?.close();
  await database?.drop();
});

function jobs(queue: string, n: number): StepJob[] {
  const runId = randomUUID();
  return Array.from({ length: n }, (_, i) => ({
    tenantId: "t1",
    runId,
    stepId: `s${i}`,
    attempt: 1,
    queue,
    priority: 5,
  }));
}

describe("completed jobs", () => {
  it("on Postgres, a completion applies the age limit only; on Redis, age and count", async () => {
    const [pgJob] = jobs("retention-opts", 1);
    const [redisJob] = jobs("retention-opts", 1);
    await onPostgres.dispatch([pgJob!]);
    await onRedis.dispatch([redisJob!]);
    const pg = await onPostgres.queue("retention-opts").getJob(stepJobId(pgJob!));
    const r = await onRedis.queue("retention-opts").getJob(stepJobId(redisJob!));
    expect(pg!.opts.removeOnComplete).toEqual({ age: 3600 });
    expect(r!.opts.removeOnComplete).toEqual({ age: 3600, count: 10_000 });
  });

  it("on Postgres, are trimmed to the newest `keep`", async () => {
    const queue = "retention-trim";
    const sent = jobs(queue, 8);
    await onPostgres.dispatch(sent);
    const finished: string[] = [];
    const worker = onPostgres.worker(queue, async (job) => job.id, { concurrency: 1 });
    worker.on("completed", (job) => finished.push(job.id!));
    await new Promise<void>((resolve) => {
      worker.on("completed", () => finished.length === sent.length && resolve());
    });
    await worker.close();

    const completed = new PgCompletedJobs(db.sql);
    expect(await completed.trim(queue, 3)).toBe(5);
    const kept = await onPostgres.queue(queue).getCompleted(0, -1);
    expect(kept.map((j) => j.id).sort()).toEqual(finished.slice(-3).sort());
    expect(await completed.trim(queue, 3)).toBe(0);
    expect(await completed.trim(queue, 10)).toBe(0);
  });
});
