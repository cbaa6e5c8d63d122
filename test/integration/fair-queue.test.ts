/**
 * The order in which a fair queue hands steps out (docs/configuration.md, "Fair sharing of a
 * queue"), read from BullMQ's prioritized set in Redis without any worker: tenants alternate,
 * priority orders a tenant's own steps, priority 10 everywhere does not jump other tenants, and
 * the clock starts again once nothing waits.
 */
import { randomBytes, randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StepJob } from "../../src/domain/ports.ts";
import { BullStepDispatcher } from "../../src/queue/step-queue.ts";
import { createRedis } from "../../src/redis/connection.ts";
import { redisKeys } from "../../src/redis/keys.ts";
import { TEST_REDIS_URL } from "../helpers/services.ts";

const prefix = `fltest:${randomBytes(4).toString("hex")}`;
let redis: Redis;
let dispatcher: BullStepDispatcher;

beforeAll(async () => {
  redis = createRedis(TEST_REDIS_URL, "consumer");
  await redis.connect();
  dispatcher = new BullStepDispatcher(
    { kind: "redis", redis, newConnection: () => redis.duplicate(), prefix },
    (queue) => queue !== "plain",
  );
});
afterAll(async () => {
  await dispatcher?.close();
  const keys = await redis.keys(redisKeys(prefix).all());
  if (keys.length > 0) await redis.del(...keys);
  await redis.quit();
});

/** `n` one-attempt jobs of one run of `tenantId` on `queue`; the label is tenant/priority/index. */
function jobs(queue: string, tenantId: string, n: number, priority = 5): StepJob[] {
  const runId = randomUUID();
  return Array.from({ length: n }, (_, i) => ({
    tenantId,
    runId,
    stepId: `${tenantId}-p${priority}-${i}`,
    attempt: 1,
    queue,
    priority,
  }));
}

/** Step ids in the order the queue would hand them out. */
async function order(queue: string): Promise<string[]> {
  const waiting = await dispatcher.queue(queue).getPrioritized(0, -1);
  return waiting.map((job) => (job.data as { stepId: string }).stepId);
}

/** Takes the first `n` jobs off the queue's prioritized set, as workers starting them would. */
async function take(queue: string, n: number): Promise<void> {
  const key = dispatcher.queue(queue).toKey("prioritized");
  await redis.zpopmin(key, n);
}

describe("a fair queue", () => {
  it("alternates between a tenant's backlog and a tenant that arrives later", async () => {
    await dispatcher.dispatch(jobs("q1", "a", 6));
    await take("q1", 2); // a-0, a-1 started
    await dispatcher.dispatch(jobs("q1", "b", 2));
    expect(await order("q1")).toEqual(["a-p5-2", "b-p5-0", "a-p5-3", "b-p5-1", "a-p5-4", "a-p5-5"]);
  });

  it("gives priority 10 no precedence over another tenant, but over the same tenant's lower priority", async () => {
    await dispatcher.dispatch(jobs("q2", "a", 4, 5));
    await dispatcher.dispatch(jobs("q2", "b", 3, 10));
    await dispatcher.dispatch(jobs("q2", "a", 1, 10));
    await dispatcher.dispatch(jobs("q2", "a", 1, 1));
    expect(await order("q2")).toEqual([
      "a-p5-0",
      "b-p10-0",
      "a-p10-0",
      "a-p5-1",
      "b-p10-1",
      "a-p5-2",
      "b-p10-2",
      "a-p5-3",
      "a-p1-0",
    ]);
  });

  it("starts its clock again once nothing waits", async () => {
    await dispatcher.dispatch(jobs("q3", "a", 3));
    await take("q3", 3);
    await dispatcher.dispatch(jobs("q3", "b", 1));
    const [job] = await dispatcher.queue("q3").getPrioritized(0, 0);
    expect(job!.priority).toBe(1);
  });

  it("without fairShare, orders by priority, then arrival", async () => {
    await dispatcher.dispatch(jobs("plain", "a", 3));
    await dispatcher.dispatch(jobs("plain", "b", 1));
    await dispatcher.dispatch(jobs("plain", "c", 1, 6));
    expect(await order("plain")).toEqual(["c-p6-0", "a-p5-0", "a-p5-1", "a-p5-2", "b-p5-0"]);
  });
});
