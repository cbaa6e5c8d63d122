import { describe, expect, it } from "vitest";
import { buildGraph } from "../../src/domain/dag.ts";
import { outcomeOf, progressAfter } from "../../src/domain/progress.ts";
import { backoffDelayMs } from "../../src/domain/retry.ts";
import {
  canTransitionRun,
  canTransitionStep,
  narrowSources,
  runSourcesOf,
  type StepStatus,
} from "../../src/domain/status.ts";
import { resolveStep } from "../../src/domain/workflow/resolve.ts";
import type { WorkflowSpec } from "../../src/domain/workflow/spec.ts";

// a → b, a → c, (b, c) → d, e independent, c → f
const graph = buildGraph(
  ["a", "b", "c", "d", "e", "f"],
  (id) => ({ a: [], b: ["a"], c: ["a"], d: ["b", "c"], e: [], f: ["c"] })[id]!,
);
const statusesOf = (s: Record<string, StepStatus>) => (id: string) => s[id] ?? "pending";

describe("progress after a step finishes", () => {
  it("readies children whose parents are all satisfied, once", () => {
    expect(
      progressAfter(
        graph,
        { stepId: "a", status: "succeeded", onFailure: "fail" },
        statusesOf({ a: "succeeded" }),
      ).ready,
    ).toEqual(["b", "c"]);
    const half = progressAfter(
      graph,
      { stepId: "b", status: "succeeded", onFailure: "fail" },
      statusesOf({ a: "succeeded", b: "succeeded", c: "running" }),
    );
    expect(half.ready).toEqual([]);
    const both = progressAfter(
      graph,
      { stepId: "c", status: "succeeded", onFailure: "fail" },
      statusesOf({ a: "succeeded", b: "succeeded", c: "succeeded" }),
    );
    expect(both.ready).toEqual(["d", "f"]);
    const reused = progressAfter(
      graph,
      { stepId: "c", status: "reused", onFailure: "fail" },
      statusesOf({ a: "reused", b: "reused", c: "reused" }),
    );
    expect(reused.ready).toEqual(["d", "f"]);
  });

  it("fail: cancels every unfinished step and fails the run", () => {
    const p = progressAfter(
      graph,
      { stepId: "b", status: "failed", onFailure: "fail" },
      statusesOf({ a: "succeeded", b: "failed", c: "running", e: "succeeded" }),
    );
    expect(p.runOutcome).toBe("failed");
    expect(p.transitions).toEqual([
      { stepId: "c", to: "cancelled" },
      { stepId: "d", to: "cancelled" },
      { stepId: "f", to: "cancelled" },
    ]);
  });

  it("continue: skips only the failed step's pending descendants", () => {
    const p = progressAfter(
      graph,
      { stepId: "c", status: "failed", onFailure: "continue" },
      statusesOf({ a: "succeeded", b: "running", c: "failed" }),
    );
    expect(p.runOutcome).toBeUndefined();
    expect(p.transitions.sort((x, y) => x.stepId.localeCompare(y.stepId))).toEqual([
      { stepId: "d", to: "skipped" },
      { stepId: "f", to: "skipped" },
    ]);
  });

  it("judges the outcome of a finished run", () => {
    expect(outcomeOf(["succeeded", "reused"])).toBe("succeeded");
    expect(outcomeOf(["succeeded", "skipped", "failed"])).toBe("failed");
    expect(outcomeOf(["succeeded", "cancelled"])).toBe("failed");
    // Steps a plan skipped on purpose (fresh assets, outside a subgraph) do not fail the run.
    expect(outcomeOf(["succeeded", "skipped", "reused"])).toBe("succeeded");
  });
});

describe("state machines", () => {
  it("allow only the documented transitions", () => {
    expect(canTransitionRun("running", "succeeded")).toBe(true);
    expect(canTransitionRun("succeeded", "running")).toBe(false);
    expect(canTransitionRun("cancelled", "running")).toBe(false);
    expect(canTransitionStep("pending", "queued")).toBe(true);
    expect(canTransitionStep("succeeded", "failed")).toBe(false);
    expect(canTransitionStep("running", "retrying")).toBe(true);
  });

  it("derive each writer's guard: the sources of a status, narrowed only within the table", () => {
    // The last step of a paused run may end it either way.
    expect(runSourcesOf("succeeded").sort()).toEqual(["paused", "running"]);
    expect(runSourcesOf("running").sort()).toEqual(["paused", "queued"]);
    expect(narrowSources("running", runSourcesOf("running"), ["paused"])).toEqual(["paused"]);
    expect(() => narrowSources("running", runSourcesOf("running"), ["cancelled"])).toThrow(
      /cancelled → running/,
    );
  });
});

describe("retry backoff", () => {
  const policy = { maxAttempts: 5, delaySeconds: 2, maxDelaySeconds: 10 };
  it("grows exponentially, linearly or not at all, capped", () => {
    expect([2, 3, 4, 5].map((n) => backoffDelayMs({ ...policy, backoff: "exponential" }, n))).toEqual([
      2000, 4000, 8000, 10000,
    ]);
    expect([2, 3, 4].map((n) => backoffDelayMs({ ...policy, backoff: "linear" }, n))).toEqual([
      2000, 4000, 6000,
    ]);
    expect([2, 3].map((n) => backoffDelayMs({ ...policy, backoff: "fixed" }, n))).toEqual([2000, 2000]);
  });
});

describe("step resolution", () => {
  const spec = {
    name: "w",
    params: {},
    schedules: [],
    defaults: { queue: "standard", priority: 3, timeoutSeconds: 60 },
    steps: [],
  } as unknown as WorkflowSpec;
  const step = (extra: object) =>
    ({
      id: "s",
      needs: [],
      provides: [],
      requires: [],
      tags: [],
      onFailure: "fail",
      run: { type: "noop" },
      ...extra,
    }) as never;
  it("takes the step's queue, else a routed tag, else the defaults", () => {
    expect(resolveStep(spec, step({ queue: "q1", tags: ["heavy"] }), { heavy: "heavy" }).queue).toBe("q1");
    expect(resolveStep(spec, step({ tags: ["x", "heavy"] }), { heavy: "heavy" }).queue).toBe("heavy");
    expect(resolveStep(spec, step({}), {})).toMatchObject({
      queue: "standard",
      priority: 3,
      timeoutSeconds: 60,
      retry: { maxAttempts: 1 },
    });
    expect(resolveStep(spec, step({ priority: 9 }), {}, 7).priority).toBe(9);
  });
});
