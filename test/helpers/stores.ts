/**
 * What the lock or queue store can lose, done to whichever store the suite runs on (see
 * TEST_STORES): the tests that need such a loss then hold for both.
 */
import type { StepQueue } from "../../src/queue/step-queue.ts";
import type { TestContext } from "./context.ts";

/** The lock store loses an asset lock (a lease running out, a failover); its fence counter stays. */
export async function loseAssetLock(ctx: TestContext, tenantId: string, lockKey: string): Promise<void> {
  const prefix = ctx.config.redis.prefix;
  const lost =
    ctx.stores.kind === "redis"
      ? await ctx.redis.del(`${prefix}:lock:asset:${tenantId}:${lockKey}`)
      : (
          await ctx.db.sql`
            update store_leases set token = null, expires_at = null
            where name = ${`${prefix}:asset:${tenantId}:${lockKey}`} and token is not null`
        ).count;
  if (lost !== 1) throw new Error(`asset lock ${lockKey} was not held`);
}

/**
 * The queue loses part of a waiting job. On Redis: its hash survives in none of the lists a worker
 * takes jobs from (a partial flush, a failover mid-write). Postgres keeps a job in one row, so the
 * most it can lose is the whole job.
 */
export async function loseJobPartially(ctx: TestContext, queue: StepQueue, jobId: string): Promise<void> {
  if (ctx.stores.kind === "redis") {
    for (const list of ["wait", "paused"]) await ctx.redis.lrem(queue.toKey(list), 0, jobId);
    for (const set of ["prioritized", "delayed"]) await ctx.redis.zrem(queue.toKey(set), jobId);
    if ((await ctx.redis.exists(queue.toKey(jobId))) !== 1) throw new Error("the job hash is gone too");
  } else {
    await queue.remove(jobId);
  }
}
