/**
 * A worker process: BullMQ workers for the configured queues, each job one attempt of one step
 * (or, during a rollback, of its compensation).
 * The engine decides whether the attempt may start (and draws its lease token); the worker keeps
 * the lease alive, aborts on timeout, cancel or lost lease, and reports the result — which the
 * engine accepts only if the lease is still this worker's.
 */
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import type { Job } from "bullmq";
import type { Logger } from "pino";
import type { Config } from "../config/index.ts";
import { createDb } from "../db/client.ts";
import { storableText, storableValue } from "../domain/limits.ts";
import { ownValue } from "../domain/records.ts";
import {
  type AttemptRequest,
  type AttemptResult,
  commitAttempts,
  type FinishRequest,
  type FinishResult,
  type HeldRef,
  handBackAttempt,
  recordActivity,
  renewLease,
  type StartedAttempt,
  type StartRequest,
  type StartResult,
} from "../engine/attempts.ts";
import { createEngineDeps } from "../engine/create.ts";
import { GroupCommitter } from "../engine/group-commit.ts";
import { AttemptObserver } from "../observability/attempts.ts";
import { timedBatches } from "../observability/metrics.ts";
import { stepJobPayload } from "../queue/step-queue.ts";
import { openStores } from "../stores/index.ts";
import { AttemptLog } from "./attempt-log.ts";
import { ExecutionError, execute } from "./executors/index.ts";
import { loadHandlers } from "./handlers.ts";
import { handBackNewerJob } from "./job-format.ts";
import { RunningAttempts } from "./running-attempts.ts";

export interface WorkerOptions {
  config: Config;
  queues: readonly string[];
  concurrency: number;
  log: Logger;
  /** Announced with the worker (GET /v1/queues lists it). */
  metricsUrl?: string;
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
/** Log lines an attempt buffers before its producer must wait for the write in flight. */
const LOG_HIGH_WATER = 500;

/** Steps and time one job may go on with children it made ready before handing back to the queue. */
const CONTINUE_MAX_STEPS = 100;
const CONTINUE_MAX_MS = 1000;
/** Transactions a worker keeps in flight at once for its attempts' starts and finishes. */
const COMMIT_LANES = 4;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startWorker(options: WorkerOptions): Promise<RunningWorker> {
  const { config } = options;
  const id = `${hostname()}:${process.pid}:${randomBytes(2).toString("hex")}`;
  const log = options.log.child({ workerId: id });
  const leaseSeconds = config.worker.stallSeconds;
  const db = createDb({ ...config.database, applicationName: "flowline-worker" });
  const onError = (error: Error) => log.warn({ err: error.message }, "store connection error");
  const stores = await openStores(config, {
    name: "flowline-worker",
    flavour: "consumer",
    subscribe: true,
    sql: db.sql,
    onError,
  });
  const { bus, dispatcher } = stores;
  await bus.start();
  const deps = createEngineDeps({
    db,
    config,
    dispatcher,
    notifier: bus,
    control: bus,
    locks: stores.locks,
    log,
  });
  const handlers = await loadHandlers(config.worker.handlersModule);
  const serves = new Set(options.queues);
  // One committer for the starts and finishes of every run this worker handles: what arrives
  // while a transaction is in flight goes together in the next one (group commit, no timer), so
  // many attempts of many runs share one commit. A few lanes (by run) keep the database busy on
  // more than one connection; one run always uses the same lane. A request that has not answered
  // within a lease fails: a start's job is tried again later by BullMQ (if it did commit, the
  // attempt is recovered when its lease runs out); a finish is tried again (see `finish`).
  const engine = new GroupCommitter<AttemptRequest, AttemptResult>(
    timedBatches(
      "attempts",
      (_lane, requests) => commitAttempts(deps, requests, { worker: { id, leaseSeconds }, queues: serves }),
      (request) => ("start" in request ? "start" : "finish"),
    ),
    256,
    leaseSeconds * 1000,
  );
  const laneOf = (runId: string) => String(Number.parseInt(runId.slice(0, 8), 16) % COMMIT_LANES);
  const starts = {
    submit: (runId: string, request: StartRequest) =>
      engine.submit(laneOf(runId), { start: request }) as Promise<StartResult>,
  };
  const finishes = {
    submit: (runId: string, item: FinishRequest) =>
      engine.submit(laneOf(runId), { finish: item }) as Promise<FinishResult>,
  };
  let stopping = false;
  let stoppingAt = 0;
  const closingFor = () => Date.now() - stoppingAt;

  const running = new RunningAttempts<{
    attempt: StartedAttempt;
    controller: AbortController;
    startedAt: string;
  }>();
  const registry = stores.registry;
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
          ...(options.metricsUrl ? { metricsUrl: options.metricsUrl } : {}),
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
    running.abortRun(message.runId, message.stepIds, new ExecutionError("cancelled", false, "cancelled"));
  });

  /**
   * Starts the attempt a job carries. A job delivered again while its attempt runs under a valid
   * lease (the queue lost its own lock: a failover, say) must not take it over: it waits for the
   * lease once — the holder may be dead and the lease about to expire — then drops itself if
   * the holder still renews it (SPEC §8.5).
   */
  async function startJob(request: StartRequest): Promise<StartResult> {
    const first = await starts.submit(request.runId, request);
    if (first.accepted || first.refusal !== "lease_valid" || first.retryAfterMs === undefined) return first;
    await sleep(Math.min(first.retryAfterMs, leaseSeconds * 1000) + 250);
    return starts.submit(request.runId, request);
  }

  /**
   * Records how an attempt ended. The write is fenced, so repeating it is safe: while Postgres is
   * unreachable it is retried for as long as the lease can still be this worker's (the heartbeat
   * has not been refused), rather than handed back to the queue, which would start the step over
   * and count finished work as lost.
   */
  async function finish(
    item: FinishRequest,
    leaseLost: () => boolean,
    stepLog: Logger,
  ): Promise<FinishResult> {
    for (let n = 1; ; n++) {
      try {
        return await finishes.submit(item.ref.runId, item);
      } catch (error) {
        if (leaseLost()) throw error;
        stepLog.warn({ err: (error as Error).message, retry: n }, "recording the result failed; retrying");
        await sleep(Math.min(5000, 200 * 2 ** Math.min(n - 1, 5)));
      }
    }
  }

  async function processJob(job: Job, token?: string): Promise<void> {
    await handBackNewerJob(job, token, log);
    const { phase, traceparent, ...payload } = stepJobPayload.parse(job.data);
    const due = { dueAt: job.timestamp + (job.opts.delay ?? 0), takenAt: job.processedOn ?? Date.now() };
    const observer = new AttemptObserver({ ...payload, phase, queue: job.queueName, traceparent, ...due });
    const started = await observer
      .wrap(startJob)({ ...payload, ...(phase ? { phase } : {}), jobId: job.id })
      .catch((error) => observer.skip("start failed", error));
    if (!started.accepted) {
      observer.skip(started.refusal);
      log.info({ ...payload, phase, refusal: started.refusal, reason: started.reason }, "job skipped");
      return;
    }
    // Continue in the worker: a child the step made ready runs here next, within a budget, then
    // the queue takes over again (so one chain cannot hold a slot forever or starve priorities).
    const began = Date.now();
    let next: StartedAttempt | undefined = started.attempt;
    for (let n = 0; next; n++) {
      const mayContinue = !stopping && n + 1 < CONTINUE_MAX_STEPS && Date.now() - began < CONTINUE_MAX_MS;
      const observing =
        n === 0 ? observer : new AttemptObserver({ ...next, queue: job.queueName, traceparent });
      next = await runAttempt(next, mayContinue, observing);
    }
  }

  /** Executes a started attempt and records its end; answers the child it may continue with. */
  async function runAttempt(
    attempt: StartedAttempt,
    mayContinue: boolean,
    observer: AttemptObserver,
  ): Promise<StartedAttempt | undefined> {
    const phase = attempt.phase;
    const ref: HeldRef = {
      runId: attempt.runId,
      stepId: attempt.stepId,
      attempt: attempt.attempt,
      phase: attempt.phase,
      token: attempt.token,
    };
    const stepLog = log.child({ runId: ref.runId, stepId: ref.stepId, attempt: ref.attempt, phase });
    const controller = new AbortController();
    const entry = { attempt, controller, startedAt: new Date().toISOString() };
    running.add(entry);
    changed();

    const timeout = setTimeout(
      () =>
        controller.abort(new ExecutionError(`timed out after ${attempt.timeoutSeconds} s`, true, "timeout")),
      attempt.timeoutSeconds * 1000,
    );
    let leaseLost = false;
    const heartbeat = setInterval(
      () => {
        renewLease(deps, ref, leaseSeconds).then(
          (ours) => {
            if (ours) return;
            leaseLost = true;
            controller.abort(new ExecutionError("lease lost", false, "lease_lost"));
          },
          (error) => stepLog.warn({ err: error }, "lease renewal failed"),
        );
      },
      Math.max(250, (leaseSeconds * 1000) / 3),
    );
    let progress: { pct: number; message?: string } | undefined;
    const logs = new AttemptLog({
      maxLineBytes: config.limits.logLineBytes,
      maxLines: config.limits.logLinesPerAttempt,
      highWater: LOG_HIGH_WATER,
      write: async (lines) => {
        const pending = progress;
        progress = undefined;
        await recordActivity(deps, ref, { logs: lines, ...(pending ? { progress: pending } : {}) });
      },
      onError: (error) => stepLog.warn({ err: error }, "could not record logs"),
    });
    const flush = async () => {
      if (logs.buffered > 0) return logs.flush();
      if (!progress) return;
      const pending = progress;
      progress = undefined;
      await recordActivity(deps, ref, { progress: pending }).catch((error) =>
        stepLog.warn({ err: error }, "could not record progress"),
      );
    };
    let flushing: Promise<void> | undefined;
    const flushTimer = setInterval(() => {
      flushing ??= flush().finally(() => {
        flushing = undefined;
      });
    }, LOG_FLUSH_MS);

    let outcome: { ok: true; output: unknown } | { ok: false; error: ExecutionError };
    try {
      stepLog.info({ type: attempt.executor.type }, "attempt started");
      const output = await observer.executing(attempt.executor.type, execute)(attempt.executor, {
        runId: ref.runId,
        stepId: ref.stepId,
        attempt: ref.attempt,
        params: attempt.params,
        upstream: attempt.upstream,
        signal: controller.signal,
        log: (line, stream = "log") => logs.push(line, stream),
        logDrained: () => logs.drained(),
        maxLineBytes: config.limits.logLineBytes,
        progress: (pct, message) => {
          progress = {
            pct: Math.min(1, Math.max(0, pct)),
            ...(message ? { message: storableText(message) } : {}),
          };
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
      await flushing;
      await logs.flush(true);
      await flush();
      const lost = () => leaseLost || (stopping && closingFor() > config.worker.graceSeconds * 1000);
      const record = observer.wrap(finish);
      if (outcome.ok) {
        const result = await record(
          {
            ref,
            end: { kind: "succeeded", output: outcome.output },
            ...(mayContinue ? { continue: true } : {}),
          },
          lost,
          stepLog,
        );
        observer.end(result.accepted ? "succeeded" : "refused");
        const next = result.accepted ? result.next : undefined;
        stepLog.info(
          { accepted: result.accepted, ...(next ? { continuesWith: next.stepId } : {}) },
          "attempt succeeded",
        );
        return next;
      }
      const error = outcome.error;
      if (error.code === "shutdown") {
        const handedBack = await observer.wrap(handBackAttempt)(deps, ref);
        observer.end("handed_back");
        stepLog.info({ handedBack }, "attempt handed back");
      } else if (error.code === "cancelled" || error.code === "lease_lost") {
        observer.end(error.code, error.message);
        stepLog.info({ reason: error.code }, "attempt aborted");
      } else {
        const result = await record(
          {
            ref,
            end: {
              kind: "failed",
              // What a step says goes into Postgres: text it cannot store would fail the write forever.
              error: storableValue({ message: error.message, code: error.code, ...error.details }),
              retryable: error.retryable,
            },
          },
          lost,
          stepLog,
        );
        observer.end(!result.accepted ? "refused" : result.retry ? "retrying" : "failed", error.message);
        stepLog.info(
          { err: error.message, retry: result.accepted ? result.retry : undefined },
          "attempt failed",
        );
      }
      return undefined;
    } finally {
      observer.end("refused"); // no-op unless recording the result failed: it did not count
      clearInterval(heartbeat);
      running.remove(entry);
      changed();
    }
  }

  const workers = options.queues.map((queue) =>
    dispatcher.worker(queue, processJob, {
      concurrency: options.concurrency,
      lockDuration: leaseSeconds * 1000,
      stalledInterval: Math.max(1000, Math.floor((leaseSeconds * 1000) / 2)),
      // Redelivery after a stall is how a killed worker's step moves on; Postgres counts attempts.
      maxStalledCount: 1000,
      ...(ownValue(config.queues, queue)?.rateLimit
        ? {
            limiter: {
              max: ownValue(config.queues, queue)!.rateLimit!.max,
              duration: ownValue(config.queues, queue)!.rateLimit!.durationMs,
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
        stopping = true;
        stoppingAt = Date.now();
        log.info({ active: running.size }, "worker stopping");
        const closed = Promise.all(workers.map((w) => w.close()));
        const grace = new Promise<"grace">((r) =>
          setTimeout(() => r("grace"), config.worker.graceSeconds * 1000).unref(),
        );
        if ((await Promise.race([closed, grace])) === "grace") {
          running.abortAll(new ExecutionError("worker shutting down", true, "shutdown"));
          await closed;
        }
        stopControl();
        clearInterval(announcer);
        clearTimeout(announceSoon);
        await registry.remove(id).catch(() => {});
        await stores.close();
        await db.close();
        log.info("worker stopped");
      })();
      return closing;
    },
  };
}
