/**
 * The one place BullMQ queues are built. A job carries only (run, step, attempt, and `phase` for a
 * compensation): everything else is read from Postgres when the job starts, so a job can be
 * re-created from Postgres at any time.
 */
import { Queue } from "bullmq";
import type { Redis } from "ioredis";
import { z } from "zod";
import { type StepDispatcher, type StepJob, stepJobId } from "../domain/ports.ts";
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

export { stepJobId };

/** Flowline priorities are 1–10, higher first; BullMQ's are 1.., lower first. */
export const bullPriority = (priority: number): number => 11 - Math.min(10, Math.max(1, priority));

export class BullStepDispatcher implements StepDispatcher {
  private readonly queues = new Map<string, Queue>();

  constructor(
    private readonly connection: Redis,
    private readonly prefix: string,
  ) {}

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
      [...byQueue].map(([name, list]) =>
        this.queue(name).addBulk(
          list.map((job) => ({
            name: STEP_JOB_NAME,
            data: {
              tenantId: job.tenantId,
              runId: job.runId,
              stepId: job.stepId,
              attempt: job.attempt,
              ...(job.phase ? { phase: job.phase } : {}),
              ...(job.traceparent ? { traceparent: job.traceparent } : {}),
            } satisfies StepJobPayload,
            opts: {
              jobId: stepJobId(job),
              priority: bullPriority(job.priority),
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
        ),
      ),
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
