/**
 * The pure attempt lifecycle (domain/attempt.ts): the retry-or-fail decision for both phases and
 * the judgement of a job delivered to start an attempt.
 */
import { describe, expect, it } from "vitest";
import { decideAfterAttempt, judgeStart } from "../../src/domain/attempt.ts";
import { stepSourcesOf } from "../../src/domain/status.ts";

const retry = { maxAttempts: 3, backoff: "exponential" as const, delaySeconds: 2, maxDelaySeconds: 60 };

describe("decideAfterAttempt", () => {
  it("succeeds with the output", () => {
    expect(
      decideAfterAttempt({ attempt: 1, maxAttempts: 3, retry }, { kind: "succeeded", output: 7 }),
    ).toEqual({
      next: "succeed",
      output: 7,
    });
  });

  it("retries a retryable failure with backoff while attempts are left, then fails", () => {
    const error = { message: "boom" };
    expect(
      decideAfterAttempt({ attempt: 1, maxAttempts: 3, retry }, { kind: "failed", error, retryable: true }),
    ).toEqual({ next: "retry", attempt: 2, delayMs: 2000, error });
    expect(
      decideAfterAttempt({ attempt: 2, maxAttempts: 3, retry }, { kind: "failed", error, retryable: true }),
    ).toEqual({ next: "retry", attempt: 3, delayMs: 4000, error });
    expect(
      decideAfterAttempt({ attempt: 3, maxAttempts: 3, retry }, { kind: "failed", error, retryable: true }),
    ).toEqual({ next: "fail", error });
  });

  it("fails a non-retryable failure at once", () => {
    const error = { message: "no", code: "lock_lost" };
    expect(
      decideAfterAttempt({ attempt: 1, maxAttempts: 3, retry }, { kind: "failed", error, retryable: false }),
    ).toEqual({ next: "fail", error });
  });

  it("retries a lost attempt at once, and says so when none is left", () => {
    expect(
      decideAfterAttempt({ attempt: 1, maxAttempts: 2, retry }, { kind: "lost", why: "lease expired" }),
    ).toMatchObject({
      next: "retry",
      attempt: 2,
      delayMs: 0,
      reason: "worker lost (lease expired)",
    });
    expect(
      decideAfterAttempt({ attempt: 2, maxAttempts: 2, retry }, { kind: "lost", why: "lease expired" }),
    ).toMatchObject({
      next: "fail",
      error: {
        code: "worker_lost",
        message: "worker lost during attempt 2 (lease expired); no attempts left",
      },
    });
  });
});

describe("judgeStart", () => {
  const state = { status: "queued" as const, attempt: 1, jobId: "r.s.1", leaseLeftMs: null };
  it("starts the recorded job of the current attempt", () => {
    expect(judgeStart(true, "running", state, { attempt: 1, jobId: "r.s.1" })).toEqual({ action: "start" });
  });
  it("refuses with a reason: inactive run, stale attempt, superseded job, finished step", () => {
    expect(judgeStart(false, "paused", state, { attempt: 1 })).toMatchObject({ refusal: "run_inactive" });
    expect(judgeStart(true, "running", state, { attempt: 2 })).toMatchObject({ refusal: "not_current" });
    expect(judgeStart(true, "running", state, { attempt: 1, jobId: "r.s.1.r9" })).toMatchObject({
      refusal: "superseded",
    });
    expect(judgeStart(true, "running", { ...state, status: "succeeded" }, { attempt: 1 })).toMatchObject({
      refusal: "illegal_transition",
    });
  });
  it("never takes over a running attempt whose lease is valid; abandons it once expired", () => {
    const running = { ...state, status: "running" as const };
    expect(judgeStart(true, "running", { ...running, leaseLeftMs: 1500 }, { attempt: 1 })).toMatchObject({
      action: "refuse",
      refusal: "lease_valid",
      retryAfterMs: 1500,
    });
    expect(judgeStart(true, "running", { ...running, leaseLeftMs: -10 }, { attempt: 1 })).toEqual({
      action: "abandon_then_refuse",
    });
  });
});

describe("the transition table guards the writers", () => {
  it("derives each statement's source statuses from it", () => {
    expect(stepSourcesOf("running").sort()).toEqual(["queued", "retrying"]);
    expect(stepSourcesOf("succeeded")).toEqual(["running"]);
    expect(stepSourcesOf("cancelled").sort()).toEqual(["pending", "queued", "retrying", "running"]);
  });
});
