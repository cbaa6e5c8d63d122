/**
 * The chaos history checker on made-up histories: a clean history passes, and each kind of
 * violation it promises to find is found (so a green chaos run means something).
 */
import { describe, expect, it } from "vitest";
import { checkHistory, type History, plantViolations } from "../../chaos/checker.ts";
import type { Effect } from "../../chaos/target.ts";

const RUN_A = "00000000-0000-0000-0000-00000000000a";
const RUN_B = "00000000-0000-0000-0000-00000000000b";

function effect(over: Partial<Effect>): Effect {
  return {
    id: 1,
    tag: "t1",
    partition: "-",
    workflow: "wf",
    step: "s",
    phase: "execute",
    asset: null,
    start: 1000,
    end: 1100,
    outcome: "ok",
    ...over,
  };
}

function clean(): History {
  const events = [
    { id: 1, runId: RUN_A, type: "run.queued", stepId: null, phase: "execute", createdAt: 900 },
    { id: 2, runId: RUN_A, type: "step.started", stepId: "s", phase: "execute", createdAt: 1000 },
    { id: 3, runId: RUN_A, type: "step.succeeded", stepId: "s", phase: "execute", createdAt: 1100 },
    { id: 4, runId: RUN_A, type: "run.succeeded", stepId: null, phase: "execute", createdAt: 1100 },
    { id: 5, runId: RUN_B, type: "run.queued", stepId: null, phase: "execute", createdAt: 900 },
    { id: 6, runId: RUN_B, type: "step.started", stepId: "s", phase: "execute", createdAt: 1200 },
    { id: 7, runId: RUN_B, type: "step.succeeded", stepId: "s", phase: "execute", createdAt: 1300 },
    { id: 8, runId: RUN_B, type: "run.succeeded", stepId: null, phase: "execute", createdAt: 1300 },
  ];
  return {
    runs: [
      { id: RUN_A, workflow: "wf", status: "succeeded", trigger: "api", tag: "t1", partition: "-" },
      { id: RUN_B, workflow: "wf", status: "succeeded", trigger: "api", tag: "t2", partition: "-" },
    ],
    accepted: [RUN_A, RUN_B],
    cancelAcks: [],
    idempotency: [{ key: "k1", runIds: [RUN_A, RUN_A] }],
    scheduleSlots: [{ slot: "s1", runIds: ["c1", "c1"] }],
    attemptsSucceeded: [
      { runId: RUN_A, stepId: "s", phase: "execute", attempt: 1 },
      { runId: RUN_B, stepId: "s", phase: "execute", attempt: 1 },
    ],
    materializations: [],
    events,
    effects: [
      // Two attempts of one step, one after the other: a retry, not an overlap.
      effect({ id: 1, start: 1000, end: 1050, outcome: "failed", asset: "x/-" }),
      effect({ id: 2, start: 1050, end: 1100, asset: "x/-" }),
      effect({ id: 3, tag: "t2", start: 1200, end: 1300, asset: "x/-" }),
    ],
    sse: [
      { runId: RUN_A, received: [1, 2, 3, 4], ended: true, endedAt: 1200 },
      { runId: RUN_B, received: [5, 6, 7, 8], ended: true, endedAt: 1400 },
    ],
    faults: [
      {
        kind: "redis FLUSHALL",
        target: "redis",
        injectedAt: 0,
        healedAt: 1,
        affectedRuns: 2,
        recoveryMs: 1500,
      },
    ],
  };
}

const violationsOf = (h: History) =>
  Object.fromEntries(
    checkHistory(h)
      .checks.filter((c) => c.violations > 0)
      .map((c) => [c.name, c.violations]),
  );

describe("chaos history checker", () => {
  it("finds nothing in a clean history and reports recovery per fault kind", () => {
    const verdict = checkHistory(clean());
    expect(verdict.violations).toBe(0);
    expect(verdict.recovery).toEqual([
      { kind: "redis FLUSHALL", count: 1, p50: 1500, p99: 1500, unrecovered: 0 },
    ]);
  });

  it("finds runs that never ended, lost runs and duplicate runs per key or slot", () => {
    const h = clean();
    h.runs[1]!.status = "running";
    h.accepted.push("00000000-0000-0000-0000-0000000000ff");
    h.idempotency.push({ key: "k2", runIds: [RUN_A, RUN_B] });
    h.runs.push({
      id: "c",
      workflow: "cron",
      status: "succeeded",
      trigger: "schedule",
      tag: "cron",
      partition: "-",
    });
    expect(violationsOf(h)).toEqual({
      "runs that never ended": 1,
      "lost runs (accepted, not stored)": 1,
      "duplicate runs per idempotency key or cron slot": 2,
    });
  });

  it("finds a success recorded twice, in attempts or in events", () => {
    const h = clean();
    h.attemptsSucceeded.push({ runId: RUN_A, stepId: "s", phase: "execute", attempt: 2 });
    h.events.push({
      id: 9,
      runId: RUN_B,
      type: "step.succeeded",
      stepId: "s",
      phase: "execute",
      createdAt: 1300,
    });
    // A compensation's success is not the step's.
    h.events.push({
      id: 10,
      runId: RUN_A,
      type: "step.succeeded",
      stepId: "s",
      phase: "compensate",
      createdAt: 1300,
    });
    h.sse = [];
    expect(violationsOf(h)).toEqual({ "step success recorded more than once": 2 });
  });

  it("finds a step running concurrently with itself and two runs in one asset's critical section", () => {
    const h = clean();
    // A second attempt of run t2's step while the first is still at the target.
    h.effects.push(effect({ id: 4, tag: "t2", start: 1250, end: 1400, asset: "x/-" }));
    // Another run's step inside x's critical section while t2 is in it.
    h.effects.push(effect({ id: 5, tag: "t3", step: "o", start: 1210, end: 1220, asset: "x/-" }));
    expect(violationsOf(h)).toEqual({
      "steps running concurrently with themselves": 1,
      "asset lock overlaps (two runs in one critical section)": 1,
    });
    // The same asset in another partition is another lock.
    const other = clean();
    other.effects.push(effect({ id: 4, tag: "t9", start: 1250, end: 1400, asset: "x/p1" }));
    expect(violationsOf(other)).toEqual({});
  });

  it("finds an effect that started after its run was cancelled, beyond the grace", () => {
    const h = clean();
    h.runs[1]!.status = "cancelled";
    h.events.push({
      id: 9,
      runId: RUN_B,
      type: "run.cancelled",
      stepId: null,
      phase: "execute",
      createdAt: 1250,
    });
    h.sse = [];
    expect(violationsOf(h)).toEqual({});
    h.effects.push(effect({ id: 4, tag: "t2", step: "later", start: 3500, end: 3600 }));
    expect(violationsOf(h)).toEqual({ "effects after their run was cancelled": 1 });
    // Unless an attempt of that step was running when the run was cancelled (its worker froze
    // between its start and its request): started before run.cancelled, none after.
    const frozen = structuredClone(h);
    frozen.events.push({
      id: 8.5,
      runId: RUN_B,
      type: "step.started",
      stepId: "later",
      phase: "execute",
      createdAt: 1240,
    });
    expect(violationsOf(frozen)).toEqual({});
    // Measured from the API's answer when there is one (the commit came before it).
    h.cancelAcks.push({ runId: RUN_B, at: 1600 });
    expect(violationsOf(h)).toEqual({});
  });

  it("finds SSE gaps, foreign events, duplicates, reordering and streams that never ended", () => {
    const h = clean();
    h.sse = [
      { runId: RUN_A, received: [1, 3, 4], ended: true, endedAt: 1200 },
      { runId: RUN_A, received: [1, 2, 2, 3, 4], ended: true, endedAt: 1200 },
      { runId: RUN_A, received: [1, 3, 2, 4], ended: true, endedAt: 1200 },
      // Another run's event in this run's stream (and its own event 2 missing).
      { runId: RUN_A, received: [1, 6, 3, 4], ended: true, endedAt: 1200 },
      { runId: RUN_B, received: [5, 6], ended: false, endedAt: null },
      // Ended, but the last events, committed well before the end, never came.
      { runId: RUN_B, received: [5, 6], ended: true, endedAt: 10_000 },
      // Committed shortly before the end: may still have been in flight (not counted).
      { runId: RUN_B, received: [5, 6], ended: true, endedAt: 6000 },
    ];
    expect(violationsOf(h)).toEqual({
      "SSE gaps (events never delivered)": 3,
      "SSE events of another run": 1,
      "SSE duplicates": 1,
      "SSE reordering": 3,
      "SSE streams that never ended": 1,
    });
  });

  it("counts a fault whose runs did not progress within the bound", () => {
    const h = clean();
    h.faults.push({ ...h.faults[0]!, recoveryMs: null });
    expect(violationsOf(h)).toEqual({ "faults not recovered within the bound": 1 });
  });

  it("catches the planted violations", () => {
    expect(violationsOf(plantViolations(clean()))).toEqual({
      "steps running concurrently with themselves": 1,
      "SSE gaps (events never delivered)": 1,
    });
  });
});
