import { ownValue } from "../records.ts";
import type { RetryPolicy, StepSpec, WorkflowSpec } from "./spec.ts";

export interface ResolvedStep {
  queue: string;
  priority: number;
  retry: RetryPolicy;
  timeoutSeconds: number;
}

export const DEFAULT_TIMEOUT_SECONDS = 3600;
const noRetry: RetryPolicy = {
  maxAttempts: 1,
  backoff: "exponential",
  delaySeconds: 5,
  maxDelaySeconds: 300,
};

/**
 * A step's effective queue, priority, retry policy and timeout: the step's own value, else the
 * workflow's defaults. The queue comes from `queue`, else the first tag that config routes
 * (`tags: { heavy: heavy }`), else the default queue.
 */
export function resolveStep(
  spec: WorkflowSpec,
  step: StepSpec,
  tagRoutes: Readonly<Record<string, string>>,
  runPriority?: number,
): ResolvedStep {
  const tagged = step.tags.map((t) => ownValue(tagRoutes, t)).find((q): q is string => q !== undefined);
  return {
    queue: step.queue ?? tagged ?? spec.defaults?.queue ?? "default",
    priority: step.priority ?? runPriority ?? spec.defaults?.priority ?? 5,
    retry: step.retry ?? spec.defaults?.retry ?? noRetry,
    timeoutSeconds: step.timeoutSeconds ?? spec.defaults?.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS,
  };
}
