/**
 * What a worker records about one step attempt, in one object so the worker makes one call per
 * moment of the attempt: the metrics (attempts by queue, kind and outcome, execution time, queue
 * wait, lease losses) and, when tracing is on, the attempt's span under its run's span, with a
 * `queue.wait` child (from the job's enqueue, or the end of its retry delay, to a worker) and an
 * `execute` child inside which the executor runs.
 */
import { performance } from "node:perf_hooks";
import type { Span } from "@opentelemetry/api";
import { type AttemptOutcome, workerMetricsOf } from "./metrics.ts";
import { contextOf, contextWith, SpanKind, SpanStatusCode, startSpan, withSpan } from "./tracing.ts";

export interface AttemptInfo {
  runId: string;
  stepId: string;
  attempt: number;
  phase?: string;
  queue: string;
  /** The run's `traceparent`, carried by the job. */
  traceparent?: string | null;
  /** When the job became due (enqueued, or its delay ran out), ms since the epoch. */
  dueAt?: number;
  /** When a worker took the job, ms since the epoch. */
  takenAt?: number;
}

export class AttemptObserver {
  private readonly span: Span | null;
  private kind = "unknown";
  private executeStarted?: number;
  private ended = false;

  constructor(private readonly info: AttemptInfo) {
    const metrics = workerMetricsOf();
    const takenAt = info.takenAt ?? Date.now();
    if (info.dueAt !== undefined)
      metrics.queueWait.observe({ queue: info.queue }, Math.max(0, takenAt - info.dueAt) / 1000);
    this.span = startSpan(`step ${info.stepId}`, {
      kind: SpanKind.CONSUMER,
      parent: contextOf(info.traceparent ? { traceparent: info.traceparent } : {}),
      startTime: info.dueAt ?? takenAt,
      attributes: {
        "flowline.run_id": info.runId,
        "flowline.step_id": info.stepId,
        "flowline.attempt": info.attempt,
        "flowline.phase": info.phase ?? "execute",
        "flowline.queue": info.queue,
      },
    });
    if (this.span && info.dueAt !== undefined)
      startSpan("queue.wait", {
        parent: contextWith(this.span),
        startTime: info.dueAt,
        attributes: { "flowline.queue": info.queue },
      })?.end(takenAt);
  }

  /** Runs engine work for this attempt (starting it, recording its end) inside its span. */
  within<T>(work: () => Promise<T>): Promise<T> {
    return withSpan(this.span, work);
  }

  /** `fn`, made to run inside the attempt's span (see `within`). */
  wrap<A extends unknown[], R>(fn: (...args: A) => Promise<R>): (...args: A) => Promise<R> {
    return (...args) => this.within(() => fn(...args));
  }

  /** `fn` (the executor), made to run as the attempt's execution (see `execute`). */
  executing<A extends unknown[], R>(
    kind: string,
    fn: (...args: A) => Promise<R>,
  ): (...args: A) => Promise<R> {
    return (...args) => this.execute(kind, () => fn(...args));
  }

  /** Runs the executor inside the attempt's `execute` span; times it for the duration histogram. */
  async execute<T>(kind: string, work: () => Promise<T>): Promise<T> {
    this.kind = kind;
    this.executeStarted = performance.now();
    workerMetricsOf().running.inc({ queue: this.info.queue });
    const executeSpan = this.span
      ? startSpan(`execute ${kind}`, {
          parent: contextWith(this.span),
          attributes: { "flowline.executor": kind },
        })
      : null;
    try {
      return await withSpan(executeSpan, work);
    } catch (error) {
      executeSpan?.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error)?.message });
      throw error;
    } finally {
      executeSpan?.end();
      workerMetricsOf().running.dec({ queue: this.info.queue });
    }
  }

  /** The attempt ended this way (counted once). */
  end(outcome: AttemptOutcome, error?: string): void {
    if (this.ended) return;
    this.ended = true;
    const metrics = workerMetricsOf();
    const labels = { queue: this.info.queue, kind: this.kind, outcome };
    metrics.attempts.inc(labels);
    if (this.executeStarted !== undefined)
      metrics.duration.observe(labels, (performance.now() - this.executeStarted) / 1000);
    if (outcome === "lease_lost") metrics.leaseLosses.inc({ queue: this.info.queue });
    if (this.span) {
      this.span.setAttribute("flowline.outcome", outcome);
      if (outcome !== "succeeded" && outcome !== "handed_back")
        this.span.setStatus({ code: SpanStatusCode.ERROR, ...(error ? { message: error } : {}) });
      this.span.end();
    }
  }

  /**
   * The job did not start an attempt (a duplicate, a step that moved on, or starting failed:
   * then `error` is rethrown): no attempt to count.
   */
  skip(reason: string): void;
  skip(reason: string, error: unknown): never;
  skip(reason: string, ...error: unknown[]): void {
    if (!this.ended) {
      this.ended = true;
      this.span?.setAttribute("flowline.skipped", reason);
      this.span?.end();
    }
    if (error.length > 0) throw error[0];
  }
}
