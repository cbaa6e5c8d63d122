/**
 * The Prometheus metrics of a Flowline process, in one registry per process: the engine's
 * (counted from the events it commits, in whichever process commits them), a worker's attempts,
 * a supervisor's duties, webhook deliveries. Every label takes values from a small fixed set
 * (outcomes, event kinds, executor types) or from the configured queues: never a run id, step id
 * or tenant name.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { runKinds } from "../domain/status.ts";
import { installObserver, type ObservedEvent } from "./hooks.ts";

let registry: Registry | undefined;

/** The registry of this process, with Node's default metrics (prefixed `flowline_`). */
export function processRegistry(): Registry {
  if (!registry) {
    registry = new Registry();
    collectDefaultMetrics({ register: registry, prefix: "flowline_" });
  }
  return registry;
}

const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900];
const FAST_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256];

const RUN_ENDS: Record<string, string> = {
  "run.succeeded": "succeeded",
  "run.failed": "failed",
  "run.cancelled": "cancelled",
  "run.rolled_back": "rolled_back",
};
const STEP_ENDS: Record<string, string> = {
  "step.succeeded": "succeeded",
  "step.failed": "failed",
  "step.skipped": "skipped",
  "step.cancelled": "cancelled",
  "step.reused": "reused",
};
const RUN_KINDS = new Set<string>(runKinds);

function engineMetrics(r: Registry) {
  return {
    runsCreated: new Counter({
      name: "flowline_runs_created_total",
      help: "Runs created, by kind",
      labelNames: ["kind"],
      registers: [r],
    }),
    runsStarted: new Counter({
      name: "flowline_runs_started_total",
      help: "Runs started (admitted)",
      registers: [r],
    }),
    runsFinished: new Counter({
      name: "flowline_runs_finished_total",
      help: "Runs that reached an end, by outcome",
      labelNames: ["outcome"],
      registers: [r],
    }),
    stepsFinished: new Counter({
      name: "flowline_steps_finished_total",
      help: "Steps (phase compensate: compensations) that reached an end, by outcome",
      labelNames: ["outcome", "phase"],
      registers: [r],
    }),
    stepRetries: new Counter({
      name: "flowline_step_retries_total",
      help: "Attempts that were followed by another one, by cause (failed, or lost with its worker)",
      labelNames: ["cause", "phase"],
      registers: [r],
    }),
    transactions: new Histogram({
      name: "flowline_db_transaction_duration_seconds",
      help: "Database transactions, by outcome (commit or rollback)",
      labelNames: ["outcome"],
      buckets: FAST_BUCKETS,
      registers: [r],
    }),
  };
}

type EngineMetrics = ReturnType<typeof engineMetrics>;
let engine: EngineMetrics | undefined;

function countEvents(m: EngineMetrics, events: readonly ObservedEvent[]): void {
  for (const e of events) {
    const phase = e.data?.phase === "compensate" ? "compensate" : "execute";
    if (e.type === "run.queued") {
      const kind = String(e.data?.kind ?? "workflow");
      m.runsCreated.inc({ kind: RUN_KINDS.has(kind) ? kind : "other" });
    } else if (e.type === "run.started") m.runsStarted.inc();
    else if (RUN_ENDS[e.type]) m.runsFinished.inc({ outcome: RUN_ENDS[e.type] });
    else if (STEP_ENDS[e.type]) m.stepsFinished.inc({ outcome: STEP_ENDS[e.type], phase });
    else if (e.type === "step.retrying")
      m.stepRetries.inc({ cause: e.data?.error === undefined ? "lost" : "failed", phase });
  }
}

/**
 * Counts what the engine commits in this process (runs and steps by outcome, retries) and times
 * its transactions. Every process that runs the engine installs it once.
 */
export function installEngineMetrics(): void {
  if (engine) return;
  const m = engineMetrics(processRegistry());
  engine = m;
  installObserver({
    onEvents: (events) => countEvents(m, events),
    onTransaction: (seconds, committed) =>
      m.transactions.observe({ outcome: committed ? "commit" : "rollback" }, seconds),
  });
}

// ---------------------------------------------------------------------------------------------
// Workers

/** How an attempt ended, as a worker saw it. */
export type AttemptOutcome =
  | "succeeded"
  | "failed"
  | "retrying"
  | "lease_lost"
  | "cancelled"
  | "handed_back"
  | "refused";

function workerMetrics(r: Registry) {
  return {
    attempts: new Counter({
      name: "flowline_step_attempts_total",
      help: "Step attempts a worker ran, by queue, executor kind and outcome",
      labelNames: ["queue", "kind", "outcome"],
      registers: [r],
    }),
    duration: new Histogram({
      name: "flowline_step_duration_seconds",
      help: "Time an attempt's executor ran, by queue, executor kind and outcome",
      labelNames: ["queue", "kind", "outcome"],
      buckets: DURATION_BUCKETS,
      registers: [r],
    }),
    queueWait: new Histogram({
      name: "flowline_step_queue_wait_seconds",
      help: "Time a step's job waited in its queue (from enqueue, or the end of its retry delay, to a worker)",
      labelNames: ["queue"],
      buckets: DURATION_BUCKETS,
      registers: [r],
    }),
    leaseLosses: new Counter({
      name: "flowline_lease_losses_total",
      help: "Attempts a worker stopped because its lease was no longer its own",
      labelNames: ["queue"],
      registers: [r],
    }),
    running: new Gauge({
      name: "flowline_worker_attempts_running",
      help: "Attempts executing in this worker process",
      labelNames: ["queue"],
      registers: [r],
    }),
    batchSize: new Histogram({
      name: "flowline_engine_batch_size",
      help: "Requests committed together by one engine transaction (group commit), by operation",
      labelNames: ["operation"],
      buckets: BATCH_BUCKETS,
      registers: [r],
    }),
    batchSeconds: new Histogram({
      name: "flowline_engine_batch_duration_seconds",
      help: "Time one group-commit batch took, by operation",
      labelNames: ["operation"],
      buckets: FAST_BUCKETS,
      registers: [r],
    }),
  };
}

let worker: ReturnType<typeof workerMetrics> | undefined;
export function workerMetricsOf(): ReturnType<typeof workerMetrics> {
  worker ??= workerMetrics(processRegistry());
  return worker;
}

/**
 * Wraps a group-commit handler so each batch's size and duration are recorded: the size per kind
 * of request it carried (`operationOf`), the duration under `operation`.
 */
export function timedBatches<Req, Res>(
  operation: string,
  handle: (key: string, requests: Req[]) => Promise<Res[]>,
  operationOf: (request: Req) => string = () => operation,
): (key: string, requests: Req[]) => Promise<Res[]> {
  const m = workerMetricsOf();
  return async (key, requests) => {
    const sizes = new Map<string, number>();
    for (const r of requests) {
      const op = operationOf(r);
      sizes.set(op, (sizes.get(op) ?? 0) + 1);
    }
    for (const [op, n] of sizes) m.batchSize.observe({ operation: op }, n);
    const end = m.batchSeconds.startTimer({ operation });
    try {
      return await handle(key, requests);
    } finally {
      end();
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Supervisors

const activeChecks = new Set<() => boolean>();

function supervisorMetrics(r: Registry) {
  return {
    active: new Gauge({
      name: "flowline_supervisor_active",
      help: "1 while this process holds the supervisor lease",
      registers: [r],
      collect() {
        let n = 0;
        for (const check of activeChecks) if (check()) n++;
        this.set(n);
      },
    }),
    duties: new Counter({
      name: "flowline_supervisor_duty_runs_total",
      help: "Supervisor duty passes, by duty and outcome (ok or error)",
      labelNames: ["duty", "outcome"],
      registers: [r],
    }),
    dutySeconds: new Histogram({
      name: "flowline_supervisor_duty_duration_seconds",
      help: "Time one supervisor duty pass took",
      labelNames: ["duty"],
      buckets: DURATION_BUCKETS,
      registers: [r],
    }),
    repairs: new Counter({
      name: "flowline_reconciler_repairs_total",
      help: "What the reconciler repaired, by kind (requeued, abandoned, closed, compensations)",
      labelNames: ["kind"],
      registers: [r],
    }),
    webhooks: new Counter({
      name: "flowline_webhook_deliveries_total",
      help: "Webhook delivery attempts, by outcome (delivered, retried, failed)",
      labelNames: ["outcome"],
      registers: [r],
    }),
  };
}

let supervisor: ReturnType<typeof supervisorMetrics> | undefined;
export function supervisorMetricsOf(): ReturnType<typeof supervisorMetrics> {
  supervisor ??= supervisorMetrics(processRegistry());
  return supervisor;
}

/** Counts a supervisor as active while `isActive()`; returns how to stop counting it. */
export function trackSupervisor(isActive: () => boolean): () => void {
  supervisorMetricsOf();
  activeChecks.add(isActive);
  return () => activeChecks.delete(isActive);
}

/** Adds each numeric field of a report to a counter labelled with the field's name. */
export function countReport(counter: Counter<string>, label: string, report: object): void {
  for (const [key, value] of Object.entries(report))
    if (typeof value === "number" && value > 0) counter.inc({ [label]: key }, value);
}
