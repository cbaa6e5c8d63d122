/**
 * `GET /v1/queues`: per queue, BullMQ's job counts, the backlog as Postgres sees it, the workers
 * online and the autoscaler's target — and the same signals as Prometheus gauges, so an external
 * autoscaler (KEDA, HPA) can scale worker deployments on `flowline_queue_backlog`.
 *
 * Queues are shared infrastructure, so counts are global; the steps a worker is running are shown
 * only to their own tenant (all of them to a root key).
 */
import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { Gauge, type Registry } from "prom-client";
import { z } from "zod";
import type { Config } from "../../../config/index.ts";
import { queueLoad } from "../../../db/repositories/queues.ts";
import type { Sql } from "../../../db/repositories/runs.ts";
import type { WorkerDirectory, WorkerInfo } from "../../../domain/ports.ts";
import { ownValue } from "../../../domain/records.ts";
import type { QueueTarget as ScalerTarget } from "../../../domain/scaling.ts";
import type { BullStepDispatcher } from "../../../queue/step-queue.ts";
import { callerOf } from "../../plugins/auth.ts";
import { problemResponses } from "../../problem.ts";

export interface QueueOverview {
  name: string;
  configured: boolean;
  pool: { concurrency: number; min: number; max: number } | null;
  jobs: { waiting: number; active: number; delayed: number; failed: number };
  backlog: number;
  running: number;
  retryingLater: number;
  oldestWaitingSeconds: number | null;
  workers: WorkerInfo[];
  scaler: ScalerTarget | null;
  warning: string | null;
}

export interface QueueSources {
  config: Config;
  sql: Sql;
  dispatcher: BullStepDispatcher;
  registry: WorkerDirectory;
}

export async function queueOverview(sources: QueueSources): Promise<QueueOverview[]> {
  const [load, workers, targets] = await Promise.all([
    queueLoad(sources.sql),
    sources.registry.online(),
    sources.registry.targets(),
  ]);
  const names = [...new Set([...Object.keys(sources.config.queues), ...load.keys()])].sort();
  return Promise.all(
    names.map(async (name): Promise<QueueOverview> => {
      const counts = await sources.dispatcher
        .queue(name)
        .getJobCounts("waiting", "prioritized", "active", "delayed", "failed");
      const pool = ownValue(sources.config.queues, name);
      const serving = workers.filter((w) => w.queues.includes(name));
      const l = load.get(name);
      const backlog = l?.backlog ?? 0;
      let warning: string | null = null;
      if (!pool && serving.length === 0 && backlog > 0) {
        warning = `queue "${name}" is not configured and no worker serves it: its ${backlog} step(s) wait until one does`;
      } else if (serving.length === 0 && backlog > 0) {
        warning = `no worker is online for queue "${name}"`;
      }
      return {
        name,
        configured: pool !== undefined,
        pool: pool ? { concurrency: pool.concurrency, min: pool.min, max: pool.max } : null,
        jobs: {
          waiting: (counts.waiting ?? 0) + (counts.prioritized ?? 0),
          active: counts.active ?? 0,
          delayed: counts.delayed ?? 0,
          failed: counts.failed ?? 0,
        },
        backlog,
        running: l?.active ?? 0,
        retryingLater: l?.delayed ?? 0,
        oldestWaitingSeconds: l?.oldestWaitingSeconds ?? null,
        workers: serving,
        scaler: ownValue(targets, name) ?? null,
        warning,
      };
    }),
  );
}

/** Gauges computed at scrape time from one overview, shared by every gauge of the scrape. */
export function registerQueueMetrics(registry: Registry, read: () => Promise<QueueOverview[]>): void {
  let pending: Promise<QueueOverview[]> | undefined;
  const snapshot = () => {
    pending ??= read().finally(() => {
      setTimeout(() => {
        pending = undefined;
      }, 1000).unref();
    });
    return pending;
  };
  const gauge = (name: string, help: string, value: (q: QueueOverview) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ["queue"],
      registers: [registry],
      async collect() {
        this.reset();
        for (const q of await snapshot().catch(() => [])) this.set({ queue: q.name }, value(q));
      },
    });
  gauge(
    "flowline_queue_backlog",
    "Steps waiting to start, including retries whose delay has passed (the scaling signal)",
    (q) => q.backlog,
  );
  gauge(
    "flowline_queue_oldest_waiting_seconds",
    "Age of the oldest step waiting to start",
    (q) => q.oldestWaitingSeconds ?? 0,
  );
  gauge("flowline_queue_active", "Steps running now", (q) => q.running);
  gauge("flowline_queue_delayed", "Retries waiting for their backoff delay", (q) => q.retryingLater);
  gauge("flowline_workers_online", "Worker processes serving the queue", (q) => q.workers.length);
  gauge(
    "flowline_queue_failed_jobs",
    "Jobs BullMQ holds as failed (infrastructure failures)",
    (q) => q.jobs.failed,
  );
  gauge("flowline_autoscaler_target", "The autoscaler's target process count", (q) => q.scaler?.target ?? 0);
}

const workerSchema = z.object({
  id: z.string(),
  pid: z.number().int(),
  host: z.string(),
  queues: z.array(z.string()),
  concurrency: z.number().int(),
  startedAt: z.string(),
  metricsUrl: z.string().nullable().describe("Where the process serves /metrics; null when it does not"),
  steps: z.array(
    z.object({ runId: z.string(), stepId: z.string(), attempt: z.number().int(), startedAt: z.string() }),
  ),
});

const queueSchema = z
  .object({
    name: z.string(),
    configured: z.boolean().describe("False for a queue steps name that no configured pool serves"),
    pool: z.object({ concurrency: z.number(), min: z.number(), max: z.number() }).nullable(),
    jobs: z
      .object({ waiting: z.number(), active: z.number(), delayed: z.number(), failed: z.number() })
      .describe("BullMQ's job counts"),
    backlog: z.number().describe("Steps waiting to start, incl. retries whose delay has passed"),
    running: z.number().describe("Steps running now"),
    retryingLater: z.number().describe("Retries still waiting for their backoff delay"),
    oldestWaitingSeconds: z.number().nullable(),
    workers: z.array(workerSchema).describe("Worker processes online for this queue"),
    scaler: z
      .object({
        target: z.number(),
        processes: z.number(),
        backlog: z.number(),
        active: z.number(),
        reason: z.string(),
        updatedAt: z.string(),
      })
      .nullable()
      .describe("The autoscaler's latest decision, when one runs"),
    warning: z.string().nullable(),
  })
  .meta({ id: "QueueStatus" });

export const queueRoutes: FastifyPluginAsyncZod<QueueSources> = async (app, sources) => {
  app.get(
    "/queues",
    {
      config: { scope: "read" },
      schema: {
        tags: ["queues"],
        operationId: "listQueues",
        summary: "Queues: backlog, job counts, workers online and the autoscaler's target",
        querystring: z.strictObject({}),
        response: { 200: z.object({ items: z.array(queueSchema) }), ...problemResponses(401) },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const items = await queueOverview(sources);
      return {
        items: items.map((q) => ({
          ...q,
          workers: q.workers.map((w) => ({
            ...w,
            metricsUrl: w.metricsUrl ?? null,
            steps: w.steps
              .filter((s) => caller.root || s.tenantId === caller.tenantId)
              .map(({ tenantId: _tenant, ...step }) => step),
          })),
        })),
      };
    },
  );
};
