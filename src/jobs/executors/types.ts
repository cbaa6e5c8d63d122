import type { Config } from "../../config/index.ts";
import type { Executor } from "../../domain/workflow/spec.ts";
import type { HandlerRegistry } from "../handlers.ts";

export interface ExecutionContext {
  runId: string;
  stepId: string;
  attempt: number;
  params: Record<string, unknown>;
  upstream: Record<string, { output: unknown }>;
  signal: AbortSignal;
  /**
   * Records a log line; false when the attempt's log buffer is full and the producer should pause
   * until `logDrained()` resolves (see jobs/attempt-log.ts).
   */
  log(line: string, stream?: "stdout" | "stderr" | "log"): boolean;
  logDrained(): Promise<void>;
  /** Longest log line kept; longer ones are cut with a marker. */
  maxLineBytes: number;
  progress(pct: number, message?: string): void;
  config: Config;
  handlers: HandlerRegistry | null;
}

/** A failure with a decision about retrying: configuration errors are not worth another attempt. */
export class ExecutionError extends Error {
  constructor(
    message: string,
    readonly retryable: boolean,
    readonly code: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = "ExecutionError";
  }
}

export type ExecutorFn<T extends Executor["type"]> = (
  executor: Extract<Executor, { type: T }>,
  ctx: ExecutionContext,
) => Promise<unknown>;

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
