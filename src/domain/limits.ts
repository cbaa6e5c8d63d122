/**
 * Sizes and ceilings shared by the API and the workers (SPEC §13). A refusal names the setting
 * that bounds it and the value that crossed it.
 */
import { FlowlineError } from "./errors.ts";

const encoder = new TextEncoder();

/** The size of a value as UTF-8 JSON, the form in which it is stored and sent. */
export function jsonBytes(value: unknown): number {
  return encoder.encode(JSON.stringify(value) ?? "null").length;
}

/** 400 for a request priority above the tenant's `quotas.maxPriority`. */
export function checkRequestPriority(priority: number | undefined, maxPriority: number): void {
  if (priority === undefined || priority <= maxPriority) return;
  throw new FlowlineError(
    "validation_failed",
    `priority ${priority} is above this tenant's ceiling of ${maxPriority} (quotas.maxPriority)`,
    { issues: [{ location: "body", path: ["priority"], message: `must be at most ${maxPriority}` }] },
  );
}

/**
 * 400 for a request's own params over `limits.maxRunParamsBytes`, naming the limit; the engine
 * checks the params merged over the definition's defaults again.
 */
export function checkRequestParams(params: Record<string, unknown> | undefined, maxBytes: number): void {
  if (params === undefined) return;
  const bytes = jsonBytes(params);
  if (bytes <= maxBytes) return;
  throw new FlowlineError(
    "validation_failed",
    `params are ${bytes} bytes as JSON; the limit is ${maxBytes} (limits.maxRunParamsBytes)`,
    {
      issues: [{ location: "body", path: ["params"], message: `must be at most ${maxBytes} bytes as JSON` }],
    },
  );
}

/** 429 `quota_exceeded` naming the quota (`quotas.activeRuns`…), its value and what is held now. */
export function quotaExceeded(quota: string, limit: number, current: string): FlowlineError {
  return new FlowlineError(
    "quota_exceeded",
    `${current}; the quota is ${limit} (quotas.${quota}). Wait for work to finish or raise the quota`,
    { retryAfterSeconds: 5 },
  );
}
