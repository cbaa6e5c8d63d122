import type { RetryPolicy } from "./workflow/spec.ts";

/**
 * Delay before attempt `nextAttempt` (2 for the first retry), in milliseconds, capped at
 * maxDelaySeconds. exponential: d·2^(k-1); linear: d·k; fixed: d — where k is the retry number.
 */
export function backoffDelayMs(policy: RetryPolicy, nextAttempt: number): number {
  const k = Math.max(1, nextAttempt - 1);
  const base = policy.delaySeconds;
  const seconds =
    policy.backoff === "fixed"
      ? base
      : policy.backoff === "linear"
        ? base * k
        : base * 2 ** Math.min(k - 1, 40);
  return Math.round(Math.min(seconds, policy.maxDelaySeconds) * 1000);
}
