/**
 * The seam between the engine and observability: the few calls the engine and the database layer
 * make (a transaction, events written, a run created), with nothing behind them until a process
 * installs an observer (`metrics.ts`, `tracing.ts`). Imports no metrics or tracing library, so
 * the engine stays free of them and a process that installs nothing pays a function call.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { performance } from "node:perf_hooks";

/** What observers learn of an event the engine wrote (a subset of `NewEvent`). */
export interface ObservedEvent {
  type: string;
  data?: Record<string, unknown>;
}

/** A run's span: its W3C `traceparent`, stored with the run, and how to end it once created. */
export interface RunSpan {
  traceparent: string | null;
  end(runId: string): void;
}

export interface Observer {
  /** Events that committed (written outside a transaction: when written). */
  onEvents?(events: readonly ObservedEvent[]): void;
  /** A transaction ended: its duration and whether it committed. */
  onTransaction?(seconds: number, committed: boolean): void;
  /** Runs `work` (a transaction) inside a span of its own. */
  traceTransaction?<T>(work: () => Promise<T>): Promise<T>;
  /** Starts the span of a run being created, a child of the active context. */
  startRunSpan?(attributes: Record<string, string>): RunSpan;
}

const observers: Observer[] = [];
/** Events written by the transaction in progress, counted once it commits. */
const pending = new AsyncLocalStorage<ObservedEvent[]>();
const NO_RUN_SPAN: RunSpan = { traceparent: null, end: () => {} };

/** Adds an observer for the rest of the process's life (idempotent for the same object). */
export function installObserver(observer: Observer): void {
  if (!observers.includes(observer)) observers.push(observer);
}

/** Called by the one function that writes events. */
export function eventsWritten(events: readonly ObservedEvent[]): void {
  if (observers.length === 0 || events.length === 0) return;
  const list = pending.getStore();
  if (list) list.push(...events);
  else for (const o of observers) o.onEvents?.(events);
}

/** Wraps one database transaction (see db/client.ts): its span, its latency, its events. */
export async function observedTransaction<T>(work: () => Promise<T>): Promise<T> {
  if (observers.length === 0) return work();
  const outer = pending.getStore();
  const list: ObservedEvent[] = [];
  let run = () => pending.run(list, work);
  for (const o of observers) {
    const traced = o.traceTransaction;
    if (traced) {
      const inner = run;
      run = () => traced.call(o, inner) as Promise<T>;
    }
  }
  const started = performance.now();
  let committed = false;
  try {
    const result = await run();
    committed = true;
    return result;
  } finally {
    const seconds = (performance.now() - started) / 1000;
    for (const o of observers) o.onTransaction?.(seconds, committed);
    if (committed && list.length > 0) {
      if (outer) outer.push(...list);
      else for (const o of observers) o.onEvents?.(list);
    }
  }
}

/** The span of a run being created; its `traceparent` is stored with the run and sent with its jobs. */
export function startRunSpan(attributes: Record<string, string>): RunSpan {
  for (const o of observers) if (o.startRunSpan) return o.startRunSpan(attributes);
  return NO_RUN_SPAN;
}
