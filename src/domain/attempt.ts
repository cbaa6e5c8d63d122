/**
 * One attempt lifecycle for both phases of a step: `execute` (the step itself) and `compensate`
 * (its compensation during a rollback). Pure decisions only; the statements that apply them are
 * in `db/transitions.ts` and the engine's `attempts.ts` is the one applier.
 *
 *   queued ──start──▶ running ──succeeded──▶ succeeded
 *     ▲  ▲               │  │
 *     │  └──hand back────┘  ├──failed, attempts left──▶ retrying ──due──▶ (start)
 *     │                     ├──failed, none left / not retryable──▶ failed
 *     └──lost, attempts left┘  (lost = lease expired: the worker is gone)
 */
import { backoffDelayMs } from "./retry.ts";
import type { StepStatus } from "./status.ts";
import type { RetryPolicy } from "./workflow/spec.ts";

export const phases = ["execute", "compensate"] as const;
export type Phase = (typeof phases)[number];

/** Which run status lets a phase's attempts start and finish. */
export const activeRunStatusOf: Record<Phase, "running" | "rolling_back"> = {
  execute: "running",
  compensate: "rolling_back",
};

/**
 * Which run statuses let a phase's running attempts finish (or be handed back): a paused run's
 * running steps finish (it only stops dispatching new ones).
 */
export function canFinishIn(phase: Phase, runStatus: string): boolean {
  return runStatus === activeRunStatusOf[phase] || (phase === "execute" && runStatus === "paused");
}

/** Why a transition was refused. Every refusal names one; none is a bare `false`. */
export const refusals = [
  "run_not_found",
  "step_not_found",
  "run_inactive",
  "not_current",
  "superseded",
  "lease_lost",
  "lease_valid",
  "illegal_transition",
  "duplicate",
] as const;
export type Refusal = (typeof refusals)[number];

export type Refused = { accepted: false; refusal: Refusal; reason: string };
export const refuse = (refusal: Refusal, reason: string): Refused => ({ accepted: false, refusal, reason });

/** How an attempt ended, as the worker (or the reconciler, for `lost`) reports it. */
export type AttemptEnd =
  | { kind: "succeeded"; output: unknown }
  | { kind: "failed"; error: AttemptError; retryable: boolean }
  | { kind: "lost"; why: string };

export interface AttemptError {
  message: string;
  code?: string;
  [key: string]: unknown;
}

/** What follows an attempt's end: decided once, then applied by the engine. */
export type AttemptDecision =
  | { next: "succeed"; output: unknown }
  | { next: "retry"; attempt: number; delayMs: number; error: AttemptError; reason?: string }
  | { next: "fail"; error: AttemptError };

/**
 * The retry-or-fail decision, the same for both phases. `maxAttempts` comes from the attempt's
 * row (written from the step's resolved retry policy when the row was created), never from a
 * second source. A lost attempt is retried at once: its worker is gone, nothing failed.
 */
export function decideAfterAttempt(
  attempt: { attempt: number; maxAttempts: number; retry: RetryPolicy },
  end: AttemptEnd,
): AttemptDecision {
  if (end.kind === "succeeded") return { next: "succeed", output: end.output };
  const error: AttemptError =
    end.kind === "lost"
      ? {
          message: `worker lost during attempt ${attempt.attempt} (${end.why})${attempt.attempt >= attempt.maxAttempts ? "; no attempts left" : ""}`,
          code: "worker_lost",
        }
      : end.error;
  const retryable = end.kind === "lost" || end.retryable;
  if (!retryable || attempt.attempt >= attempt.maxAttempts) return { next: "fail", error };
  const next = attempt.attempt + 1;
  return end.kind === "lost"
    ? { next: "retry", attempt: next, delayMs: 0, error, reason: `worker lost (${end.why})` }
    : { next: "retry", attempt: next, delayMs: backoffDelayMs(attempt.retry, next), error };
}

/** The state of an attempt's row that a start request is judged against. */
export interface AttemptState {
  status: StepStatus;
  attempt: number;
  jobId: string | null;
  /** Milliseconds the current lease has left by the database clock (≤ 0: expired; null: none). */
  leaseLeftMs: number | null;
}

export type StartJudgement =
  | { action: "start" }
  | { action: "abandon_then_refuse" }
  | { action: "refuse"; refusal: Refusal; reason: string; retryAfterMs?: number };

/**
 * May this delivery of a job start attempt `request.attempt`? Only the job the engine recorded may
 * (a stray duplicate must not take over an attempt running elsewhere). A job delivered again while
 * its attempt is `running` means the queue believes the holder is gone; the lease decides: while
 * it is valid the holder is alive (SPEC §8.5) and the delivery waits or drops itself; once it
 * expired, the attempt is abandoned (the next one gets a job of its own).
 */
export function judgeStart(
  runActive: boolean,
  runStatus: string,
  state: AttemptState | undefined,
  request: { attempt: number; jobId?: string },
): StartJudgement {
  if (!runActive) return { action: "refuse", refusal: "run_inactive", reason: `run is ${runStatus}` };
  if (!state) return { action: "refuse", refusal: "step_not_found", reason: "step not found" };
  if (state.attempt !== request.attempt)
    return { action: "refuse", refusal: "not_current", reason: `attempt ${request.attempt} is not current` };
  if (request.jobId && state.jobId && request.jobId !== state.jobId)
    return {
      action: "refuse",
      refusal: "superseded",
      reason: `job ${request.jobId} was superseded by ${state.jobId}`,
    };
  if (state.status === "running") {
    if (state.leaseLeftMs !== null && state.leaseLeftMs > 0)
      return {
        action: "refuse",
        refusal: "lease_valid",
        reason: `attempt ${request.attempt} is running under a valid lease`,
        retryAfterMs: state.leaseLeftMs,
      };
    return { action: "abandon_then_refuse" };
  }
  if (state.status !== "queued" && state.status !== "retrying")
    return { action: "refuse", refusal: "illegal_transition", reason: `step is ${state.status}` };
  return { action: "start" };
}
