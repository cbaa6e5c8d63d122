/**
 * A worker process: BullMQ workers for the configured queues, each job one attempt of one step
 * (or, during a rollback, of its compensation).
 * The engine decides whether the attempt may start (and draws its lease token); the worker keeps
 * the lease alive, aborts on timeout, cancel or lost lease, and reports the result — which the
 * engine accepts only if the lease is still this worker's.
 */
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { type Job, Worker } from "bullmq";
import type { Logger } from "pino";
import type { Config } from "../config/index.ts";
import { createDb } from "../db/client.ts";
import {
  completeAttempt,
  type FinishResult,
  failAttempt,
  handBackAttempt,
  recordActivity,
  renewLease,
  type StartedAttempt,
  type StartResult,
  startAttempt,
} from "../engine/attempts.ts";
import { type CompleteRequest, completeAttempts, type StartRequest, startAttempts } from "../engine/batch.ts";
import { createEngineDeps } from "../engine/create.ts";
import { GroupCommitter } from "../engine/group-commit.ts";
import {
  completeCompensation,
  failCompensation,
  handBackCompensation,
  recordCompensationActivity,
  renewCompensationLease,
  startCompensation,
} from "../engine/rollback.ts";
import { RedisAssetLocks } from "../redis/asset-locks.ts";
import { createRedis } from "../redis/connection.ts";
import { RedisEventBus } from "../redis/event-bus.ts";
import { redisKeys } from "../redis/keys.ts";
import { WorkerRegistry } from "../redis/registry.ts";
import { BullStepDispatcher, stepJobPayload } from "../redis/step-queue.ts";
import { ExecutionError, execute } from "./executors/index.ts";
import { loadHandlers } from "./handlers.ts";

export interface WorkerOptions {
  config: Config;
  queues: readonly string[];
  concurrency: number;
  log: Logger;
}

export interface RunningWorker {
  id: string;
  /** Attempts executing right now. */
  active(): number;
  close(): Promise<void>;
}

const LOG_FLUSH_MS = 200;
/** Workers announce themselves this often; an announcement lives three times as long. */
const ANNOUNCE_MS = 5000;
const LOG_BATCH = 200;

/** The engine calls behind one job: attempt N of a step, or of its compensation during a rollback. */
interface AttemptOps {
  start: typeof startAttempt;
  renew: typeof renewLease;
  complete: typeof completeAttempt;
  fail: typeof failAttempt;
  handBack: typeof handBackAttempt;
  activity: typeof recordActivity;
}
const stepOps: AttemptOps = {
  start: startAttempt,
  renew: renewLease,
  complete: completeAttempt,
  fail: failAttempt,
  handBack: handBackAttempt,
  activity: recordActivity,
};
/** Compensations are fenced, leased and retried like step attempts, on their own columns. */
const compensationOps: AttemptOps = {
  start: startCompensation,
  renew: renewCompensationLease,
  complete: completeCompensation,
  fail: failCompensation,
  handBack: handBackCompensation,
  activity: recordCompensationActivity,
};

/** Retries an idempotent engine write a few times (Postgres briefly unreachable), then throws. */
async function withRetries<T>(write: () => Promise<T>, log: Logger, attempts = 5): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await write();
    } catch (error) {
      if (n >= attempts) throw error;
      log.warn({ err: (error as Error).message, retry: n }, "recording the result failed; retrying");
      await new Promise((r) => setTimeout(r, 200 * 2 ** (n - 1)));
    }
  }
}

export async function startWorker(options: WorkerOptions): Promise<RunningWorker> {
  const { config } = options;
  const id = `${hostname()}:${process.pid}:${randomBytes(2).toString("hex")}`;
  const log = options.log.child({ workerId: id });
  const leaseSeconds = config.worker.stallSeconds;
  const db = createDb({ ...config.database, applicationName: "flowline-worker" });
  const onError = (error: Error) => log.warn({ err: error.message }, "redis connection error");
  const publisher = createRedis(config.redis.url, "consumer", { name: "flowline-worker", onError });
  const subscriber = createRedis(config.redis.url, "consumer", { name: "flowline-worker-sub", onError });
  await Promise.all([publisher.connect(), subscriber.connect()]);
  const bus = new RedisEventBus(publisher, subscriber, config.redis.prefix);
  await bus.start();
  const dispatcher = new BullStepDispatcher(publisher, config.redis.prefix);
  const deps = createEngineDeps({
    db,
    config,
    dispatcher,
    notifier: bus,
    control: bus,
    locks: new RedisAssetLocks(publisher, config.redis.prefix),
    log,
  });
  const handlers = await loadHandlers(config.worker.handlersModule);
  // Starts and completions of one run that arrive while a transaction for that run is in flight
  // go together in the next one (group commit): one run-row lock per batch, not per step.
  const starts = new GroupCommitter<StartRequest, StartResult>((runId, jobs) =>
    startAttempts(deps, runId, jobs, { id, leaseSeconds }),
  );
  const completions = new GroupCommitter<CompleteRequest, FinishResult>((runId, items) =>
    completeAttempts(deps, runId, items),
  );
  const batchedStepOps: AttemptOps = {
    ...stepOps,
    start: (_deps, job) => starts.submit(job.runId, job),
    complete: (_deps, ref, output) => completions.submit(ref.runId, { ref, output }),
  };

  const running = new Map<
    string,
    { attempt: StartedAttempt; controller: AbortController; startedAt: string }
  >();
  const registry = new WorkerRegistry(publisher, config.redis.prefix);
  const startedAt = new Date().toISOString();
  const announce = () =>
    registry
      .announce(
        {
          id,
          pid: process.pid,
          host: hostname(),
          queues: [...options.queues],
          concurrency: options.concurrency,
          startedAt,
          steps: [...running.values()].map((r) => ({
            tenantId: r.attempt.tenantId,
            runId: r.attempt.runId,
            stepId: r.attempt.stepId,
            attempt: r.attempt.attempt,
            startedAt: r.startedAt,
          })),
        },
        ANNOUNCE_MS * 3,
      )
      .catch((error) => log.warn({ err: (error as Error).message }, "worker announcement failed"));
  const announcer = setInterval(announce, ANNOUNCE_MS);
  // A step starting or ending is announced soon after (coalesced), not only on the next beat.
  let announceSoon: NodeJS.Timeout | undefined;
  const changed = () => {
    announceSoon ??= setTimeout(() => {
      announceSoon = undefined;
      void announce();
    }, 100);
  };
  const stopControl = bus.onControl((message) => {
    if (message.type !== "cancel") return;
    for (const { attempt, controller } of running.values()) {
      if (attempt.runId === message.runId && (!message.stepIds || message.stepIds.includes(attempt.stepId))) {
        controller.abort(new ExecutionError("cancelled", false, "cancelled"));
      }
    }
  });

  async function processJob(job: Job): Promise<void> {
    const { phase, ...payload } = stepJobPayload.parse(job.data);
    const ops = phase === "compensate" ? compensationOps : batchedStepOps;
    const started = await ops.start(deps, { ...payload, jobId: job.id }, { id, leaseSeconds });
    if (!started.accepted) {
      log.info({ ...payload, phase, reason: started.reason }, "job skipped");
      return;
    }
    const attempt = started.attempt;
    const ref = {
      runId: attempt.runId,
      stepId: attempt.stepId,
      attempt: attempt.attempt,
      token: attempt.token,
    };
    const stepLog = log.child({ runId: ref.runId, stepId: ref.stepId, attempt: ref.attempt, phase });
    const controller = new AbortController();
    const key = `${ref.runId}.${ref.stepId}${phase ? `.${phase}` : ""}`;
    running.set(key, { attempt, controller, startedAt: new Date().toISOString() });
    changed();

    const timeout = setTimeout(
      () =>
        controller.abort(new ExecutionError(`timed out after ${attempt.timeoutSeconds} s`, true, "timeout")),
      attempt.timeoutSeconds * 1000,
    );
    const heartbeat = setInterval(
      () => {
        ops.renew(deps, ref, leaseSeconds).then(
          (ours) => {
            if (!ours) controller.abort(new ExecutionError("lease lost", false, "lease_lost"));
          },
          (error) => stepLog.warn({ err: error }, "lease renewal failed"),
        );
      },
      Math.max(250, (leaseSeconds * 1000) / 3),
    );
    let logs: Array<{ stream: "stdout" | "stderr" | "log"; line: string }> = [];
    let progress: { pct: number; message?: string } | undefined;
    let flushing = Promise.resolve();
    const flush = () => {
      if (logs.length === 0 && !progress) return flushing;
      const batch = { logs, ...(progress ? { progress } : {}) };
      logs = [];
      progress = undefined;
      flushing = flushing.then(() =>
        ops.activity(deps, ref, batch).then(
          () => {},
          (error) => stepLog.warn({ err: error }, "could not record logs"),
        ),
      );
      return flushing;
    };
    const flushTimer = setInterval(flush, LOG_FLUSH_MS);

    let outcome: { ok: true; output: unknown } | { ok: false; error: ExecutionError };
    try {
      stepLog.info({ type: attempt.executor.type }, "attempt started");
      const output = await execute(attempt.executor, {
        runId: ref.runId,
        stepId: ref.stepId,
        attempt: ref.attempt,
        params: attempt.params,
        upstream: attempt.upstream,
        signal: controller.signal,
        log: (line, stream = "log") => {
          logs.push({ stream, line: line.slice(0, 8192) });
          if (logs.length >= LOG_BATCH) void flush();
        },
        progress: (pct, message) => {
          progress = { pct: Math.min(1, Math.max(0, pct)), ...(message ? { message } : {}) };
        },
        config,
        handlers,
      });
      outcome = { ok: true, output };
    } catch (thrown) {
      outcome = {
        ok: false,
        error:
          thrown instanceof ExecutionError
            ? thrown
            : controller.signal.aborted && controller.signal.reason instanceof ExecutionError
              ? controller.signal.reason
              : new ExecutionError((thrown as Error)?.message ?? String(thrown), true, "error"),
      };
    } finally {
      clearTimeout(timeout);
      clearInterval(flushTimer);
    }
    try {
      await flush();
      // Only the step's own outcome decides success or failure: an error while recording it
      // (Postgres unreachable) is thrown to BullMQ, which retries the job; fencing keeps that safe.
      if (outcome.ok) {
        // The write is fenced, so repeating it is safe: retry it here rather than hand the job
        // back to BullMQ, which would start the step over and count the finished work as lost.
        const result = await withRetries(() => ops.complete(deps, ref, outcome.output), stepLog);
        stepLog.info({ accepted: result.accepted }, "attempt succeeded");
        return;
      }
      const error = outcome.error;
      if (error.code === "shutdown") {
        const handedBack = await ops.handBack(deps, ref);
        stepLog.info({ handedBack }, "attempt handed back");
      } else if (error.code === "cancelled" || error.code === "lease_lost") {
        stepLog.info({ reason: error.code }, "attempt aborted");
      } else {
        const result = await ops.fail(
          deps,
          ref,
          { message: error.message, code: error.code, ...error.details },
          { retryable: error.retryable },
        );
        stepLog.info(
          { err: error.message, retry: result.accepted ? result.retry : undefined },
          "attempt failed",
        );
      }
    } finally {
      clearInterval(heartbeat);
      running.delete(key);
      changed();
    }
  }

  const workers = options.queues.map(
    (queue) =>
      new Worker(queue, processJob, {
        connection: createRedis(config.redis.url, "consumer", { name: `flowline-worker-${queue}`, onError }),
        prefix: redisKeys(config.redis.prefix).queuePrefix(),
        concurrency: options.concurrency,
        lockDuration: leaseSeconds * 1000,
        stalledInterval: Math.max(1000, Math.floor((leaseSeconds * 1000) / 2)),
        // Redelivery after a stall is how a killed worker's step moves on; Postgres counts attempts.
        maxStalledCount: 1000,
        ...(config.queues[queue]?.rateLimit
          ? {
              limiter: {
                max: config.queues[queue]!.rateLimit!.max,
                duration: config.queues[queue]!.rateLimit!.durationMs,
              },
            }
          : {}),
      }),
  );
  for (const w of workers) {
    w.on("error", (error) => log.warn({ err: error.message }, "queue worker error"));
    w.on("failed", (job, error) =>
      log.error({ jobId: job?.id, err: error.message }, "job failed in the worker"),
    );
  }
  await announce();
  log.info({ queues: options.queues, concurrency: options.concurrency }, "worker started");

  let closing: Promise<void> | undefined;
  return {
    id,
    active: () => running.size,
    close: () => {
      closing ??= (async () => {
        log.info({ active: running.size }, "worker stopping");
        const closed = Promise.all(workers.map((w) => w.close()));
        const grace = new Promise<"grace">((r) =>
          setTimeout(() => r("grace"), config.worker.graceSeconds * 1000).unref(),
        );
        if ((await Promise.race([closed, grace])) === "grace") {
          for (const { controller } of running.values()) {
            controller.abort(new ExecutionError("worker shutting down", true, "shutdown"));
          }
          await closed;
        }
        stopControl();
        clearInterval(announcer);
        clearTimeout(announceSoon);
        await registry.remove(id).catch(() => {});
        await dispatcher.close();
        await Promise.allSettled([publisher.quit(), subscriber.quit(), db.close()]);
        log.info("worker stopped");
      })();
      return closing;
    },
  };
}
