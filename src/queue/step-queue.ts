/**
 * The one place BullMQ queues and workers are built, on Redis or on BullMQ's official Postgres
 * backend (`createPostgresBackend`). A job carries only (run, step, attempt, and `phase` for a
 * compensation): everything else is read from Postgres when the job starts, so a job can be
 * re-created from Postgres at any time. Every job also carries its payload `format`
 * (domain/versions.ts): a worker of an older release hands a job of a newer format back.
 */
import { createPostgresBackend, type Processor, Queue, Worker, type WorkerOptions } from "bullmq";
import type { Redis } from "ioredis";
import type postgres from "postgres";
import { z } from "zod";
import { PgFairQueueClock } from "../db/stores/fair-queue.ts";
import { PgCompletedJobs } from "../db/stores/queue-retention.ts";
import { fairQueuePriority, plainQueuePriority } from "../domain/fairness.ts";
import { type StepDispatcher, type StepJob, stepJobId } from "../domain/ports.ts";
import { FORMATS } from "../domain/versions.ts";
import { FairQueueClock } from "../redis/fair-queue.ts";
import { redisKeys } from "../redis/keys.ts";

export const STEP_JOB_NAME = "step";

/** Completed jobs are kept this long and at most this many per queue (a re-sent job id is ignored meanwhile). */
const COMPLETED_KEEP_SECONDS = 3600;
const COMPLETED_KEEP_COUNT = 10_000;
/**
 * On Postgres, how often a process with a worker for a queue trims its completed jobs to the count
 * (a trim reads the newest `COMPLETED_KEEP_COUNT` index entries; between trims a queue may keep
 * what completes in this time beyond the count).
 */
const COMPLETED_TRIM_MS = 30_000;

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
      /** The process's own client: the fair-share clock keeps its state with it. */
      sql: postgres.Sql;
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

  /** Queues this process trims to `COMPLETED_KEEP_COUNT` (Postgres; see db/stores/queue-retention.ts). */
  private readonly trimmers = new Map<string, NodeJS.Timeout>();

  /** Hands out fair-share tags on either backend, reading the queue's head where BullMQ keeps it. */
  private readonly clock: (queue: string, jobs: readonly StepJob[]) => Promise<number[]>;

  constructor(
    private readonly connection: QueueConnection,
    private readonly fairShare: FairShare = () => false,
  ) {
    const stateKey = (queue: string) => redisKeys(connection.prefix).fairQueue(queue);
    if (connection.kind === "redis") {
      const clock = new FairQueueClock(connection.redis);
      this.clock = (queue, jobs) =>
        clock.assign(stateKey(queue), this.queue(queue).toKey("prioritized"), jobs);
    } else {
      const clock = new PgFairQueueClock(connection.sql);
      this.clock = (queue, jobs) => clock.assign(stateKey(queue), queue, jobs);
    }
  }

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

  /**
   * A BullMQ worker for queue `name` with a connection of its own. On Postgres, this process then
   * also keeps the queue's completed jobs to `COMPLETED_KEEP_COUNT` (see `completedRetention`).
   */
  worker(name: string, processor: Processor, options: StepWorkerOptions): StepWorker {
    const c = this.connection;
    if (c.kind === "redis")
      return new Worker(name, processor, {
        ...options,
        connection: c.newConnection(`flowline-worker-${name}`),
        prefix: this.queuePrefix,
      });
    if (!this.trimmers.has(name)) {
      const completed = new PgCompletedJobs(c.sql);
      const timer = setInterval(() => {
        // A trim that fails (Postgres unreachable) is the next one's to do.
        completed.trim(name, COMPLETED_KEEP_COUNT).catch(() => {});
      }, COMPLETED_TRIM_MS);
      timer.unref();
      this.trimmers.set(name, timer);
    }
    return new Worker(
      name,
      processor,
      { ...options, connection: this.pgConnection(`flowline-worker-${name}`), prefix: this.queuePrefix },
      createPostgresBackend,
    );
  }

  /**
   * `removeOnComplete` of every job. Redis trims to the count per completion cheaply (a sorted
   * set); BullMQ's Postgres backend would read every kept job on each completion, so there the
   * count is left to the workers' periodic trim and each completion applies only the age.
   */
  private completedRetention(): { age: number; count?: number } {
    return this.connection.kind === "redis"
      ? { age: COMPLETED_KEEP_SECONDS, count: COMPLETED_KEEP_COUNT }
      : { age: COMPLETED_KEEP_SECONDS };
  }

  async dispatch(jobs: readonly StepJob[]): Promise<void> {
    const byQueue = new Map<string, StepJob[]>();
    for (const job of jobs) byQueue.set(job.queue, [...(byQueue.get(job.queue) ?? []), job]);
    await Promise.all(
      [...byQueue].map(async ([name, list]) => {
        const queue = this.queue(name);
        const removeOnComplete = this.completedRetention();
        // Fair queues order by each job's tag (domain/fairness.ts); others by priority, then arrival.
        const priorities = this.fairShare(name)
          ? (await this.clock(name, list)).map(fairQueuePriority)
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
              removeOnComplete,
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
    for (const timer of this.trimmers.values()) clearInterval(timer);
    this.trimmers.clear();
    await Promise.all([...this.queues.values()].map((q) => q.close()));
  }
}
