/**
 * The one place BullMQ queues and workers are built, on Redis or on BullMQ's official Postgres
 * backend (`createPostgresBackend`). A job carries only (run, step, attempt, and `phase` for a
 * compensation): everything else is read from Postgres when the job starts, so a job can be
 * re-created from Postgres at any time.
 */
import { createPostgresBackend, type Processor, Queue, Worker, type WorkerOptions } from "bullmq";
import type { Redis } from "ioredis";
import { z } from "zod";
import { type StepDispatcher, type StepJob, stepJobId } from "../domain/ports.ts";
import { redisKeys } from "../redis/keys.ts";

export const STEP_JOB_NAME = "step";

export const stepJobPayload = z.object({
  tenantId: z.string(),
  runId: z.uuid(),
  stepId: z.string(),
  attempt: z.number().int().min(1),
  phase: z.literal("compensate").optional(),
});
export type StepJobPayload = z.infer<typeof stepJobPayload>;

export { stepJobId };

/** Flowline priorities are 1–10, higher first; BullMQ's are 1.., lower first. */
export const bullPriority = (priority: number): number => 11 - Math.min(10, Math.max(1, priority));

/** Where BullMQ keeps its queues. */
export type QueueConnection =
  | {
      kind: "redis";
      /** Shared by the queues this process produces to. */
      redis: Redis;
      /** A new connection for a worker (BullMQ blocks on it). */
      newConnection: (name: string) => Redis;
      prefix: string;
    }
  | {
      kind: "postgres";
      url: string;
      prefix: string;
      /** Pool size of each queue's and each worker's own connection pool. */
      poolMax: number;
      applicationName: string;
    };

/** A queue on either backend (the type parameters differ only by backend). */
// biome-ignore lint/suspicious/noExplicitAny: one type for the Redis and the Postgres backend's queues.
export type StepQueue = Queue<any, any, string, any, any, string, any, any>;
// biome-ignore lint/suspicious/noExplicitAny: one type for the Redis and the Postgres backend's workers.
export type StepWorker = Worker<any, any, string, any, any, any>;
export type StepWorkerOptions = Omit<WorkerOptions, "connection" | "prefix">;

export class BullStepDispatcher implements StepDispatcher {
  private readonly queues = new Map<string, StepQueue>();

  constructor(private readonly connection: QueueConnection) {}

  get kind(): QueueConnection["kind"] {
    return this.connection.kind;
  }

  private get queuePrefix(): string {
    return redisKeys(this.connection.prefix).queuePrefix();
  }

  /** node-postgres pool settings for one queue or worker of the Postgres backend. */
  private pgConnection(name: string) {
    if (this.connection.kind !== "postgres") throw new Error("not a Postgres queue connection");
    return {
      connectionString: this.connection.url,
      max: this.connection.poolMax,
      application_name: name,
      connectionTimeoutMillis: 10_000,
      // Lets the backend notice a silently dropped LISTEN connection and rebuild it.
      keepAlive: true,
    };
  }

  queue(name: string): StepQueue {
    let queue = this.queues.get(name);
    if (!queue) {
      const c = this.connection;
      queue =
        c.kind === "redis"
          ? new Queue(name, { connection: c.redis, prefix: this.queuePrefix })
          : new Queue(
              name,
              { connection: this.pgConnection(c.applicationName), prefix: this.queuePrefix },
              createPostgresBackend,
            );
      queue.on("error", () => {
        // Connection errors surface on the calls that need the queue (dispatch answers 503).
      });
      this.queues.set(name, queue);
    }
    return queue;
  }

  /** A BullMQ worker for queue `name` with a connection of its own. */
  worker(name: string, processor: Processor, options: StepWorkerOptions): StepWorker {
    const c = this.connection;
    return c.kind === "redis"
      ? new Worker(name, processor, {
          ...options,
          connection: c.newConnection(`flowline-worker-${name}`),
          prefix: this.queuePrefix,
        })
      : new Worker(
          name,
          processor,
          { ...options, connection: this.pgConnection(`flowline-worker-${name}`), prefix: this.queuePrefix },
          createPostgresBackend,
        );
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
    const c = this.connection;
    if (c.kind === "postgres") {
      // One transactional store: a job's state is its row's, never half-written.
      const live = new Set<string>();
      for (let i = 0; i < jobs.length; i += 50) {
        const batch = jobs.slice(i, i + 50);
        const states = await Promise.all(batch.map((j) => this.queue(j.queue).getJobState(j.jobId)));
        batch.forEach((j, n) => {
          if (states[n] !== "unknown" && states[n] !== "completed" && states[n] !== "failed")
            live.add(j.jobId);
        });
      }
      return live;
    }
    const live = new Set<string>();
    for (let i = 0; i < jobs.length; i += 500) {
      const batch = jobs.slice(i, i + 500);
      const pipeline = c.redis.pipeline();
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
