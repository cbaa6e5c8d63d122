/**
 * The one place BullMQ queues are built. A job carries only (run, step, attempt, and `phase` for a
 * compensation): everything else is read from Postgres when the job starts, so a job can be
 * re-created from Postgres at any time. Every job also carries its payload `format`
 * (domain/versions.ts): a worker of an older release hands a job of a newer format back.
 */
import { Queue } from "bullmq";
import type { Redis } from "ioredis";
import { z } from "zod";
import { fairQueuePriority, plainQueuePriority } from "../domain/fairness.ts";
import { type StepDispatcher, type StepJob, stepJobId } from "../domain/ports.ts";
import { FORMATS } from "../domain/versions.ts";
import { FairQueueClock } from "./fair-queue.ts";
import { redisKeys } from "./keys.ts";

export const STEP_JOB_NAME = "step";

export const stepJobPayload = z.object({
  tenantId: z.string(),
  runId: z.uuid(),
  stepId: z.string(),
  attempt: z.number().int().min(1),
  phase: z.literal("compensate").optional(),
  /** The run's W3C trace context, when it was traced (observability/tracing.ts). */
  traceparent: z.string().max(512).optional(),
});
export type StepJobPayload = z.infer<typeof stepJobPayload>;
/**
 * What a job's data holds: the payload and its format (read by jobs/job-format.ts before the
 * payload is parsed; absent in jobs of releases before 0.2.0, which is format 1).
 */
export type StepJobData = StepJobPayload & { format: number };

export { stepJobId };

/** Whether a queue shares itself fairly between tenants (`queues.<name>.fairShare`). */
export type FairShare = (queue: string) => boolean;

/** `fairShare` of each configured queue; a queue the configuration does not define is fair. */
export const fairShareOf =
  (queues: Readonly<Record<string, { fairShare: boolean }>>): FairShare =>
  (queue) =>
    !Object.hasOwn(queues, queue) || queues[queue]!.fairShare;

export class BullStepDispatcher implements StepDispatcher {
  private readonly queues = new Map<string, Queue>();
  private readonly clock: FairQueueClock;

  constructor(
    private readonly connection: Redis,
    private readonly prefix: string,
    private readonly fairShare: FairShare,
  ) {
    this.clock = new FairQueueClock(connection);
  }

  queue(name: string): Queue {
    let queue = this.queues.get(name);
    if (!queue) {
      queue = new Queue(name, { connection: this.connection, prefix: redisKeys(this.prefix).queuePrefix() });
      this.queues.set(name, queue);
    }
    return queue;
  }

  async dispatch(jobs: readonly StepJob[]): Promise<void> {
    const byQueue = new Map<string, StepJob[]>();
    for (const job of jobs) byQueue.set(job.queue, [...(byQueue.get(job.queue) ?? []), job]);
    await Promise.all(
      [...byQueue].map(async ([name, list]) => {
        const queue = this.queue(name);
        // Fair queues order by each job's tag (domain/fairness.ts); others by priority, then arrival.
        const priorities = this.fairShare(name)
          ? (
              await this.clock.assign(
                redisKeys(this.prefix).fairQueue(name),
                queue.toKey("prioritized"),
                list,
              )
            ).map(fairQueuePriority)
          : list.map((job) => plainQueuePriority(job.priority));
        await queue.addBulk(
          list.map((job, n) => ({
            name: STEP_JOB_NAME,
            data: {
              tenantId: job.tenantId,
              runId: job.runId,
              stepId: job.stepId,
              attempt: job.attempt,
              ...(job.phase ? { phase: job.phase } : {}),
              ...(job.traceparent ? { traceparent: job.traceparent } : {}),
              format: FORMATS.job,
            } satisfies StepJobData,
            opts: {
              jobId: stepJobId(job),
              priority: priorities[n]!,
              ...(job.delayMs ? { delay: job.delayMs } : {}),
              // Execution failures are retried by the engine, never by BullMQ. BullMQ's attempts only
              // cover the worker failing to reach Postgres around a job; the engine's fencing makes
              // such a repeat safe.
              attempts: 5,
              backoff: { type: "exponential", delay: 1000 },
              removeOnComplete: { age: 3600, count: 10_000 },
              removeOnFail: { age: 24 * 3600 },
            },
          })),
        );
      }),
    );
  }

  /**
   * A job is live when its hash exists, it has not finished, and it sits in one of the queue's
   * lists (waiting, prioritized, delayed, active…): Redis can lose part of a job's data (a
   * partial flush, a failover mid-write), and a hash in no list would never be handed out.
   */
  async liveJobs(jobs: ReadonlyArray<{ queue: string; jobId: string }>): Promise<Set<string>> {
    const live = new Set<string>();
    for (let i = 0; i < jobs.length; i += 500) {
      const batch = jobs.slice(i, i + 500);
      const pipeline = this.connection.pipeline();
      // A job is a hash under BullMQ's key prefix; `finishedOn` is set once it completed or failed.
      for (const { queue, jobId } of batch)
        pipeline.hmget(this.queue(queue).toKey(jobId), "timestamp", "finishedOn");
      const results = (await pipeline.exec()) ?? [];
      const unfinished: Array<{ queue: string; jobId: string }> = [];
      results.forEach(([error, value], n) => {
        if (error) throw error;
        const [timestamp, finishedOn] = value as [string | null, string | null];
        if (timestamp !== null && finishedOn === null) unfinished.push(batch[n]!);
      });
      const states = await Promise.all(unfinished.map((j) => this.queue(j.queue).getJobState(j.jobId)));
      unfinished.forEach((j, n) => {
        if (states[n] !== "unknown" && states[n] !== "completed" && states[n] !== "failed") live.add(j.jobId);
      });
    }
    return live;
  }

  async close(): Promise<void> {
    await Promise.all([...this.queues.values()].map((q) => q.close()));
  }
}
