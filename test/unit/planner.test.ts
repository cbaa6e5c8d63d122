import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { buildGraph, downstreamClosure, upstreamClosure } from "../../src/domain/dag.ts";
import { FlowlineError } from "../../src/domain/errors.ts";
import {
  type AssetState,
  assetFreshness,
  type ParentRun,
  type Plan,
  type PlanReason,
  type PlanRequest,
  planRun,
} from "../../src/domain/planner.ts";
import { type StepStatus, stepStatuses } from "../../src/domain/status.ts";
import { type WorkflowSpec, workflowSpecSchema } from "../../src/domain/workflow/spec.ts";
import { stepGraph } from "../../src/domain/workflow/validate.ts";

interface StepInput {
  id: string;
  needs?: string[];
  provides?: string[];
  requires?: string[];
}

const workflow = (steps: StepInput[], assets?: Record<string, { maxAgeSeconds?: number }>): WorkflowSpec =>
  workflowSpecSchema.parse({
    name: "test",
    steps: steps.map((s) => ({ ...s, run: { type: "noop" } })),
    ...(assets ? { assets } : {}),
  });

const now = new Date("2026-03-01T12:00:00Z");
const HOUR = 3600;
const DAY = 86_400;

/** Asset states from ages in seconds; null = never materialized, absent = no entry at all. */
const states = (ages: Record<string, number | null>): Map<string, AssetState> =>
  new Map(
    Object.entries(ages).map(([asset, age]) => [
      asset,
      { lastMaterializedAt: age === null ? null : new Date(now.getTime() - age * 1000) },
    ]),
  );

// a → b → c, providing raw → clean → report.
const abc = workflow(
  [
    { id: "a", provides: ["raw"] },
    { id: "b", needs: ["a"], provides: ["clean"] },
    { id: "c", needs: ["b"], provides: ["report"] },
  ],
  { raw: { maxAgeSeconds: HOUR }, clean: { maxAgeSeconds: HOUR }, report: { maxAgeSeconds: DAY } },
);
const allFresh = { raw: 60, clean: 60, report: 60 };

const materialize = (
  assets: string[],
  ages: Record<string, number | null>,
  force?: boolean,
): PlanRequest => ({
  kind: "materialize",
  assets,
  assetStates: states(ages),
  now,
  ...(force === undefined ? {} : { force }),
});

/** `{ a: "run/missing", … }`: the whole plan at a glance. */
const summary = (plan: Plan) =>
  Object.fromEntries(plan.steps.map((s) => [s.stepId, `${s.action}/${s.reason}`]));

const parentRun = (statuses: Record<string, StepStatus>, extra: Omit<ParentRun, "stepStatuses"> = {}) => ({
  stepStatuses: new Map(Object.entries(statuses)),
  ...extra,
});

function planError(run: () => unknown): FlowlineError {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(FlowlineError);
    return error as FlowlineError;
  }
  throw new Error("expected the planner to refuse");
}

describe("asset freshness", () => {
  it("is missing without a materialization, stale past maxAgeSeconds, fresh otherwise", () => {
    const at = (age: number) => ({ lastMaterializedAt: new Date(now.getTime() - age * 1000) });
    expect(assetFreshness({ maxAgeSeconds: HOUR }, undefined, now)).toBe("missing");
    expect(assetFreshness({ maxAgeSeconds: HOUR }, { lastMaterializedAt: null }, now)).toBe("missing");
    expect(assetFreshness({ maxAgeSeconds: HOUR }, at(HOUR), now)).toBe("fresh");
    expect(assetFreshness({ maxAgeSeconds: HOUR }, at(HOUR + 1), now)).toBe("stale");
    expect(assetFreshness(undefined, at(10 * 365 * DAY), now)).toBe("fresh");
    expect(assetFreshness({}, at(10 * 365 * DAY), now)).toBe("fresh");
    expect(assetFreshness({ maxAgeSeconds: 1 }, at(-60), now)).toBe("fresh");
  });
});

describe("planning a whole-workflow run", () => {
  it("runs every step, counting every need as unmet", () => {
    const plan = planRun(abc, { kind: "workflow" });
    expect(plan.runKind).toBe("workflow");
    expect(summary(plan)).toEqual({ a: "run/selected", b: "run/selected", c: "run/selected" });
    expect(plan.steps.map((s) => s.unmetNeeds)).toEqual([0, 1, 1]);
    expect(plan.ready).toEqual(["a"]);
    expect(plan.assets).toEqual(["raw", "clean", "report"]);
  });

  it("lists steps in topological order, implicit `requires` edges included", () => {
    const spec = workflow([
      { id: "report", requires: ["clean"] },
      { id: "clean", needs: ["extract"], provides: ["clean"] },
      { id: "extract" },
    ]);
    const plan = planRun(spec, { kind: "workflow" });
    expect(plan.toRun).toEqual(["extract", "clean", "report"]);
    expect(plan.ready).toEqual(["extract"]);
  });

  it("accepts the caller's cached graph", () => {
    expect(planRun(abc, { kind: "workflow" }, { graph: stepGraph(abc) }).toRun).toEqual(["a", "b", "c"]);
  });
});

describe("planning a materialization of a → b → c", () => {
  it("runs everything when every asset is missing, then nothing when asked again", () => {
    const first = planRun(abc, materialize(["report"], {}));
    expect(first.runKind).toBe("materialization");
    expect(summary(first)).toEqual({ a: "run/missing", b: "run/missing", c: "run/missing" });
    expect(first.ready).toEqual(["a"]);
    expect(first.assets).toEqual(["raw", "clean", "report"]);

    // The run materializes what it ran; the same request then finds everything fresh.
    const after = Object.fromEntries(first.assets.map((asset) => [asset, 0]));
    const second = planRun(abc, materialize(["report"], after));
    expect(second.toRun).toEqual([]);
    expect(summary(second)).toEqual({ a: "skip/fresh", b: "skip/fresh", c: "skip/fresh" });
  });

  it("answers an empty plan when the requested assets are fresh", () => {
    const plan = planRun(abc, materialize(["report"], allFresh));
    expect(plan.toRun).toEqual([]);
    expect(plan.ready).toEqual([]);
    expect(plan.assets).toEqual([]);
    expect(plan.toSkip).toEqual(["a", "b", "c"]);
  });

  it("runs the providers and everything upstream with force", () => {
    const plan = planRun(abc, materialize(["report"], allFresh, true));
    expect(summary(plan)).toEqual({ a: "run/forced", b: "run/forced", c: "run/forced" });
    expect(planRun(abc, materialize(["clean"], allFresh, true)).toRun).toEqual(["a", "b"]);
  });

  it("runs only the provider of a stale asset whose upstream is fresh", () => {
    const plan = planRun(abc, materialize(["report"], { ...allFresh, report: 2 * DAY }));
    expect(summary(plan)).toEqual({ a: "skip/fresh", b: "skip/fresh", c: "run/stale" });
    expect(plan.steps.find((s) => s.stepId === "c")!.unmetNeeds).toBe(0);
    expect(plan.ready).toEqual(["c"]);
    // c reads b's output from clean's last materialization.
    expect(plan.materializedInputs).toEqual(["b"]);
  });

  it("runs a stale upstream step only when a running step needs it", () => {
    const bStale = { ...allFresh, clean: 2 * HOUR };
    // report itself is fresh: nothing to do, even though clean is stale.
    expect(summary(planRun(abc, materialize(["report"], bStale)))).toEqual({
      a: "skip/fresh",
      b: "skip/not-selected",
      c: "skip/fresh",
    });
    // report is stale too: c runs, and needs b, whose asset is stale.
    const both = planRun(abc, materialize(["report"], { ...bStale, report: 2 * DAY }));
    expect(summary(both)).toEqual({ a: "skip/fresh", b: "run/stale", c: "run/stale" });
    expect(both.materializedInputs).toEqual(["a"]);
    expect(both.ready).toEqual(["b"]);
    // Asking for clean never runs what is downstream of it.
    expect(summary(planRun(abc, materialize(["clean"], bStale)))).toEqual({
      a: "skip/fresh",
      b: "run/stale",
      c: "skip/not-selected",
    });
  });

  it("reports missing over stale and covers every requested asset", () => {
    const plan = planRun(abc, materialize(["report", "clean", "report"], { raw: 60, report: 2 * DAY }));
    expect(summary(plan)).toEqual({ a: "skip/fresh", b: "run/missing", c: "run/stale" });
    expect(plan.assets).toEqual(["clean", "report"]);
  });

  it("runs an asset-less step between a running step and a fresh one", () => {
    const spec = workflow(
      [
        { id: "a", provides: ["raw"] },
        { id: "n", needs: ["a"] },
        { id: "c", needs: ["n"], provides: ["report"] },
      ],
      { report: { maxAgeSeconds: DAY } },
    );
    const stale = planRun(spec, materialize(["report"], { raw: 60, report: 2 * DAY }));
    expect(summary(stale)).toEqual({ a: "skip/fresh", n: "run/upstream-of-selection", c: "run/stale" });
    expect(stale.materializedInputs).toEqual(["a"]);
    expect(stale.ready).toEqual(["n"]);
    const fresh = planRun(spec, materialize(["report"], { raw: 60, report: 60 }));
    expect(summary(fresh)).toEqual({ a: "skip/fresh", n: "skip/not-selected", c: "skip/fresh" });
  });

  it("judges a provider by the requested assets, and by all its assets when a running step needs it", () => {
    const spec = workflow([
      { id: "p", provides: ["wanted", "side"] },
      { id: "q", requires: ["side"], provides: ["other"] },
    ]);
    // side is missing, but only wanted was asked for and it is fresh.
    expect(planRun(spec, materialize(["wanted"], { wanted: 60 })).toRun).toEqual([]);
    // q runs and needs p, so p's missing side asset counts.
    expect(summary(planRun(spec, materialize(["wanted", "other"], { wanted: 60 })))).toEqual({
      p: "run/missing",
      q: "run/missing",
    });
  });

  it("never judges an asset without a policy stale", () => {
    const spec = workflow([{ id: "a", provides: ["forever"] }]);
    expect(planRun(spec, materialize(["forever"], { forever: 10 * 365 * DAY })).toRun).toEqual([]);
  });

  it("refuses unknown assets, listing all of them, and an empty request", () => {
    const unknown = planError(() => planRun(abc, materialize(["report", "nope", "gone"], {})));
    expect(unknown.code).toBe("validation_failed");
    expect(unknown.message).toBe("Unknown assets: nope, gone");
    expect(unknown.issues.map((i) => i.path)).toEqual([
      ["assets", 1],
      ["assets", 2],
    ]);
    const empty = planError(() => planRun(abc, materialize([], {})));
    expect(empty.code).toBe("validation_failed");
    expect(empty.issues[0]!.path).toEqual(["assets"]);
  });
});

describe("planning a subgraph of a → b → c", () => {
  it("extends the selection upstream, downstream or both", () => {
    const up = planRun(abc, { kind: "subgraph", steps: ["b"], upstream: true });
    expect(up.runKind).toBe("subgraph");
    expect(summary(up)).toEqual({
      a: "run/upstream-of-selection",
      b: "run/selected",
      c: "skip/not-selected",
    });
    const both = planRun(abc, { kind: "subgraph", steps: ["b"], upstream: true, downstream: true });
    expect(summary(both)).toEqual({
      a: "run/upstream-of-selection",
      b: "run/selected",
      c: "run/downstream-of-selection",
    });
    const roots = planRun(abc, { kind: "subgraph", steps: ["a"], downstream: true });
    expect(roots.toRun).toEqual(["a", "b", "c"]);
    expect(roots.ready).toEqual(["a"]);
  });

  it("reuses what succeeded in the parent run outside the selection", () => {
    const plan = planRun(abc, {
      kind: "subgraph",
      steps: ["b"],
      downstream: true,
      parent: parentRun({ a: "succeeded", b: "failed", c: "cancelled" }),
    });
    expect(summary(plan)).toEqual({
      a: "reuse/reused-from-parent",
      b: "run/selected",
      c: "run/downstream-of-selection",
    });
    expect(plan.toReuse).toEqual(["a"]);
    expect(plan.ready).toEqual(["b"]);
    expect(plan.steps.map((s) => s.unmetNeeds)).toEqual([0, 0, 1]);
    // A step reused by the parent is reusable again; a selected step runs even if it succeeded.
    const again = planRun(abc, {
      kind: "subgraph",
      steps: ["b", "c"],
      parent: parentRun({ a: "reused", b: "succeeded", c: "succeeded" }),
    });
    expect(summary(again)).toEqual({ a: "reuse/reused-from-parent", b: "run/selected", c: "run/selected" });
  });

  it("reports a step that is both upstream and downstream of the selection as upstream", () => {
    const plan = planRun(abc, { kind: "subgraph", steps: ["c", "a"], upstream: true, downstream: true });
    expect(summary(plan)).toEqual({ a: "run/selected", b: "run/upstream-of-selection", c: "run/selected" });
  });

  it("runs a selection whose left-out ancestors it needs only for order (SPEC §4)", () => {
    const alone = planRun(abc, { kind: "subgraph", steps: ["b"] });
    expect(summary(alone)).toEqual({ a: "skip/not-selected", b: "run/selected", c: "skip/not-selected" });
    expect(alone.ready).toEqual(["b"]);
    expect(alone.steps.find((s) => s.stepId === "b")!.unmetNeeds).toBe(0);
    // Two steps with a gap: both start at once, "b" orders neither of them in this plan.
    const gap = planRun(abc, { kind: "subgraph", steps: ["a", "c"] });
    expect(gap.ready).toEqual(["a", "c"]);
    // A need that failed in the parent run is not reused, and only orders the step.
    const failedParent = planRun(abc, {
      kind: "subgraph",
      steps: ["c"],
      parent: parentRun({ a: "succeeded", b: "failed", c: "skipped" }),
    });
    expect(summary(failedParent)).toEqual({
      a: "reuse/reused-from-parent",
      b: "skip/not-selected",
      c: "run/selected",
    });
    expect(failedParent.ready).toEqual(["c"]);
  });

  it("refuses a step whose templates read an output nothing in the plan provides, naming step and template", () => {
    const reading = workflowSpecSchema.parse({
      name: "reading",
      steps: [
        { id: "a", run: { type: "noop", output: { rows: 1 } } },
        { id: "b", needs: ["a"], run: { type: "noop", output: { n: "{{steps.a.output.rows}}" } } },
        {
          id: "c",
          needs: ["b"],
          run: { type: "noop" },
          compensate: { type: "noop", output: ["x {{steps.a.output.rows}}"] },
        },
      ],
    });
    const alone = planError(() => planRun(reading, { kind: "subgraph", steps: ["b"] }));
    expect(alone.code).toBe("validation_failed");
    expect(alone.message).toContain(
      'step "b" reads {{steps.a.output.rows}} (at steps[1].run.output.n), but "a" neither runs in this plan nor can be reused',
    );
    expect(alone.issues).toHaveLength(1);
    expect(alone.issues[0]!.path).toEqual(["steps"]);
    // A transitive read, from a compensation: "c" needs only "b", but reads "a".
    const transitive = planError(() => planRun(reading, { kind: "subgraph", steps: ["b", "c"] }));
    expect(transitive.issues.map((i) => i.message)).toEqual([
      expect.stringContaining('step "b" reads {{steps.a.output.rows}}'),
      expect.stringContaining('step "c" reads {{steps.a.output.rows}} (at steps[2].compensate.output[0])'),
    ]);
    // With "a" reused from a parent run, or running too, the same selection plans.
    expect(
      planRun(reading, { kind: "subgraph", steps: ["b", "c"], parent: parentRun({ a: "succeeded" }) }).toRun,
    ).toEqual(["b", "c"]);
    expect(planRun(reading, { kind: "subgraph", steps: ["c"], upstream: true }).toRun).toEqual([
      "a",
      "b",
      "c",
    ]);
  });

  it("loads the materialization of a fresh step read through a template by a non-dependant", () => {
    const spec = workflowSpecSchema.parse({
      name: "fresh-read",
      assets: { raw: { maxAgeSeconds: HOUR } },
      steps: [
        { id: "a", provides: ["raw"], run: { type: "noop" } },
        { id: "b", needs: ["a"], provides: ["mid"], run: { type: "noop" } },
        { id: "c", needs: ["b"], provides: ["out"], run: { type: "noop", output: "{{steps.a.output.n}}" } },
      ],
    });
    const plan = planRun(spec, materialize(["out"], { raw: 60, mid: 60, out: null }));
    expect(summary(plan)).toEqual({ a: "skip/fresh", b: "skip/fresh", c: "run/missing" });
    // "b" is a need of "c"; "a" is not, but "c" reads it.
    expect(plan.materializedInputs).toEqual(["a", "b"]);
  });

  it("refuses unknown steps and an empty selection", () => {
    const unknown = planError(() => planRun(abc, { kind: "subgraph", steps: ["a", "x", "y", "x"] }));
    expect(unknown.code).toBe("validation_failed");
    expect(unknown.message).toBe("Unknown steps: x, y");
    expect(unknown.issues.map((i) => i.path)).toEqual([
      ["steps", 1],
      ["steps", 2],
    ]);
    const empty = planError(() => planRun(abc, { kind: "subgraph", steps: [] }));
    expect(empty.issues[0]!.path).toEqual(["steps"]);
  });
});

describe("planning a retry", () => {
  // a → b → c, a → d
  const diamond = workflow([
    { id: "a" },
    { id: "b", needs: ["a"] },
    { id: "c", needs: ["b"] },
    { id: "d", needs: ["a"] },
  ]);

  it("re-runs only the failed step and its descendants, reusing the rest", () => {
    const plan = planRun(diamond, {
      kind: "retry",
      parent: parentRun(
        { a: "succeeded", b: "failed", c: "cancelled", d: "succeeded" },
        { runStatus: "failed" },
      ),
    });
    expect(plan.runKind).toBe("subgraph");
    expect(summary(plan)).toEqual({
      a: "reuse/reused-from-parent",
      b: "run/retry",
      c: "run/retry",
      d: "reuse/reused-from-parent",
    });
    expect(plan.ready).toEqual(["b"]);
  });

  it("re-runs skipped steps and steps that never finished, and succeeded steps below them", () => {
    const plan = planRun(diamond, {
      kind: "retry",
      parent: parentRun({ a: "succeeded", b: "skipped", c: "reused", d: "running" }, { runStatus: "failed" }),
    });
    expect(summary(plan)).toEqual({
      a: "reuse/reused-from-parent",
      b: "run/retry",
      c: "run/downstream-of-selection",
      d: "run/retry",
    });
    expect(plan.ready).toEqual(["b", "d"]);
  });

  it("runs nothing when everything succeeded", () => {
    const plan = planRun(diamond, {
      kind: "retry",
      parent: parentRun({ a: "succeeded", b: "succeeded", c: "reused", d: "succeeded" }),
    });
    expect(plan.toRun).toEqual([]);
    expect(plan.toReuse).toEqual(["a", "b", "c", "d"]);
  });

  it("keeps what the parent's plan skipped out of the retry", () => {
    const plan = planRun(abc, {
      kind: "retry",
      parent: parentRun(
        { a: "succeeded", b: "failed", c: "skipped" },
        { runStatus: "failed", planReasons: new Map<string, PlanReason>([["c", "not-selected"]]) },
      ),
    });
    expect(summary(plan)).toEqual({ a: "reuse/reused-from-parent", b: "run/retry", c: "skip/not-selected" });
    // A materialization whose fresh upstream was skipped: it stays skipped and is read as before.
    const materialized = planRun(abc, {
      kind: "retry",
      parent: parentRun(
        { a: "skipped", b: "skipped", c: "failed" },
        {
          runStatus: "failed",
          planReasons: new Map<string, PlanReason>([
            ["a", "fresh"],
            ["b", "fresh"],
            ["c", "stale"],
          ]),
        },
      ),
    });
    expect(summary(materialized)).toEqual({ a: "skip/fresh", b: "skip/fresh", c: "run/retry" });
    expect(materialized.materializedInputs).toEqual(["b"]);
  });

  it("re-runs the whole plan of a rolled-back run and refuses a run that has not finished", () => {
    const rolledBack = planRun(abc, {
      kind: "retry",
      parent: parentRun({ a: "succeeded", b: "succeeded", c: "failed" }, { runStatus: "rolled_back" }),
    });
    expect(rolledBack.toRun).toEqual(["a", "b", "c"]);
    const running = planError(() =>
      planRun(abc, {
        kind: "retry",
        parent: parentRun({ a: "succeeded", b: "running", c: "pending" }, { runStatus: "running" }),
      }),
    );
    expect(running.code).toBe("conflict");
  });
});

describe("planning 5,000 steps", () => {
  it("plans a chain end to end", () => {
    const ids = Array.from({ length: 5000 }, (_, i) => `s${i}`);
    const spec = workflow(
      ids.map((id, i) => ({ id, ...(i > 0 ? { needs: [`s${i - 1}`] } : {}), provides: [`a${i}`] })),
    );
    const ages = Object.fromEntries(ids.map((_, i) => [`a${i}`, i === 4000 ? null : 60]));
    const plan = planRun(spec, materialize(["a4999"], ages));
    expect(plan.toRun).toEqual([]);
    const stale = planRun(spec, materialize(["a4999"], { ...ages, a4999: null }));
    expect(stale.toRun).toEqual(["s4999"]);
    const retry = planRun(spec, {
      kind: "retry",
      parent: { stepStatuses: new Map(ids.map((id, i) => [id, i < 2500 ? "succeeded" : "cancelled"])) },
    });
    expect(retry.toRun).toHaveLength(2500);
    expect(retry.ready).toEqual(["s2500"]);
  });
});

// ---------------------------------------------------------------------------------------------
// Properties over random DAGs.

interface RandomWorkflow {
  spec: WorkflowSpec;
  ids: string[];
}

/**
 * A random validated workflow: edges only from earlier to later steps of a hidden order, about
 * half the steps providing one or two assets, some assets with a policy.
 */
const workflowArbitrary = fc.integer({ min: 1, max: 30 }).chain((n) =>
  fc
    .tuple(
      fc.array(fc.array(fc.nat(), { maxLength: 3 }), { minLength: n, maxLength: n }),
      fc.array(fc.integer({ min: 0, max: 2 }), { minLength: n, maxLength: n }),
      fc.array(fc.option(fc.integer({ min: 1, max: 1000 })), { minLength: n, maxLength: n }),
    )
    .map(([picks, assetCounts, maxAges]): RandomWorkflow => {
      const ids = Array.from({ length: n }, (_, i) => `s${i}`);
      const assets: Record<string, { maxAgeSeconds?: number }> = {};
      const steps = ids.map((id, i) => {
        const provides = Array.from({ length: assetCounts[i]! }, (_, k) => `${id}.x${k}`);
        const maxAge = maxAges[i];
        if (maxAge !== null && maxAge !== undefined && provides[0])
          assets[provides[0]] = { maxAgeSeconds: maxAge };
        return { id, needs: i === 0 ? [] : [...new Set(picks[i]!.map((p) => ids[p % i]!))], provides };
      });
      // Reversed declaration order, so the topological sort has work to do.
      return { spec: workflow(steps.reverse(), assets), ids };
    }),
);

const allAssets = (spec: WorkflowSpec) => spec.steps.flatMap((s) => s.provides);

/** Ages in seconds (null = never materialized) for every asset, drawn from a seed list. */
const agesFor = (assets: string[], draws: (number | null)[]) =>
  Object.fromEntries(assets.map((a, i) => [a, draws.length === 0 ? null : draws[i % draws.length]!]));

const statusesArbitrary = fc.array(fc.constantFrom(...stepStatuses), { minLength: 1, maxLength: 30 });
const statusMap = (ids: string[], draws: StepStatus[]) =>
  new Map(ids.map((id, i) => [id, draws[i % draws.length]!] as const));

/** Invariants every plan keeps, whatever the request. */
/** `orderOnly`: a step to run may need a skipped step (subgraphs, SPEC §4; no templates here). */
function checkPlanShape(spec: WorkflowSpec, plan: Plan, orderOnly = false): void {
  const graph = stepGraph(spec);
  const ids = plan.steps.map((s) => s.stepId);
  expect([...ids].sort()).toEqual(spec.steps.map((s) => s.id).sort());
  expect(new Set(ids).size).toBe(ids.length);
  const byId = new Map(plan.steps.map((s, i) => [s.stepId, { ...s, i }]));
  expect(plan.toRun).toEqual(plan.steps.filter((s) => s.action === "run").map((s) => s.stepId));
  expect(plan.toReuse).toEqual(plan.steps.filter((s) => s.action === "reuse").map((s) => s.stepId));
  expect(plan.toSkip).toEqual(plan.steps.filter((s) => s.action === "skip").map((s) => s.stepId));
  for (const step of plan.steps) {
    const parents = graph.parents(step.stepId).map((p) => byId.get(p)!);
    for (const p of parents) expect(p.i).toBeLessThan(byId.get(step.stepId)!.i);
    if (step.action !== "run") {
      expect(step.unmetNeeds).toBe(0);
      continue;
    }
    for (const p of parents) {
      const met =
        p.action === "run" ||
        p.action === "reuse" ||
        (p.action === "skip" && (orderOnly || p.reason === "fresh"));
      expect(met, `${step.stepId} needs ${p.stepId} (${p.action}/${p.reason})`).toBe(true);
    }
    expect(step.unmetNeeds).toBe(parents.filter((p) => p.action === "run").length);
  }
  expect(plan.ready).toEqual(
    plan.steps.filter((s) => s.action === "run" && s.unmetNeeds === 0).map((s) => s.stepId),
  );
}

describe("planner properties", () => {
  it("materialization: minimal, complete, and every running step's needs are met", () => {
    fc.assert(
      fc.property(
        workflowArbitrary,
        fc.array(fc.option(fc.integer({ min: 0, max: 2000 })), { maxLength: 20 }),
        fc.array(fc.nat(), { minLength: 1, maxLength: 4 }),
        fc.boolean(),
        ({ spec }, draws, picks, force) => {
          const assets = allAssets(spec);
          fc.pre(assets.length > 0);
          const requested = picks.map((p) => assets[p % assets.length]!);
          const ages = agesFor(assets, draws);
          const request = materialize(requested, ages, force);
          const plan = planRun(spec, request);
          checkPlanShape(spec, plan);

          const graph = stepGraph(spec);
          const providerOf = new Map(spec.steps.flatMap((s) => s.provides.map((a) => [a, s] as const)));
          const freshness = (a: string) => assetFreshness(spec.assets?.[a], states(ages).get(a), now);
          const targets = new Set(requested.map((a) => providerOf.get(a)!.id));
          const closure = upstreamClosure(graph, targets);
          const action = new Map(plan.steps.map((s) => [s.stepId, s]));
          const runs = (id: string) => action.get(id)!.action === "run";
          for (const step of spec.steps) {
            const hasRunningChild = graph.children(step.id).some(runs);
            if (runs(step.id)) {
              expect(closure.has(step.id)).toBe(true);
              // Minimal: a step runs for a requested asset or because a running step needs it.
              expect(targets.has(step.id) || hasRunningChild).toBe(true);
            }
            if (force && closure.has(step.id)) expect(runs(step.id)).toBe(true);
            const requestedHere = requested.filter((a) => providerOf.get(a)!.id === step.id);
            if (requestedHere.some((a) => freshness(a) !== "fresh")) expect(runs(step.id)).toBe(true);
            if (hasRunningChild && !runs(step.id)) {
              expect(step.provides.length).toBeGreaterThan(0);
              expect(step.provides.every((a) => freshness(a) === "fresh")).toBe(true);
              expect(plan.materializedInputs).toContain(step.id);
            }
          }
          if (!force && requested.every((a) => freshness(a) === "fresh")) expect(plan.toRun).toEqual([]);
        },
      ),
      { numRuns: 300 },
    );
  });

  it("subgraph: the selection and its closures run, the parent's successes are reused, the rest skipped", () => {
    fc.assert(
      fc.property(
        workflowArbitrary,
        fc.array(fc.nat(), { minLength: 1, maxLength: 4 }),
        fc.boolean(),
        fc.boolean(),
        fc.option(statusesArbitrary),
        ({ spec, ids }, picks, upstream, downstream, draws) => {
          const steps = picks.map((p) => ids[p % ids.length]!);
          const parent = draws === null ? undefined : { stepStatuses: statusMap(ids, draws) };
          const request: PlanRequest = {
            kind: "subgraph",
            steps,
            upstream,
            downstream,
            ...(parent ? { parent } : {}),
          };

          const graph = stepGraph(spec);
          const running = new Set(steps);
          if (upstream) for (const id of upstreamClosure(graph, steps)) running.add(id);
          if (downstream) for (const id of downstreamClosure(graph, steps)) running.add(id);
          const reusable = (id: string) => {
            const s = parent?.stepStatuses.get(id);
            return !running.has(id) && (s === "succeeded" || s === "reused");
          };
          // No step reads another's output here, so left-out needs only order: every selection plans.
          const plan = planRun(spec, request);
          checkPlanShape(spec, plan, true);
          expect(new Set(plan.toRun)).toEqual(running);
          expect(plan.toReuse.every(reusable)).toBe(true);
          expect(plan.toSkip.every((id) => !reusable(id))).toBe(true);
        },
      ),
      { numRuns: 300 },
    );
  });

  it("retry: re-runs exactly what did not succeed and what is below it, never a step with nothing to redo", () => {
    fc.assert(
      fc.property(workflowArbitrary, statusesArbitrary, ({ spec, ids }, draws) => {
        const stepStatuses = statusMap(ids, draws);
        const plan = planRun(spec, { kind: "retry", parent: { stepStatuses, runStatus: "failed" } });
        checkPlanShape(spec, plan);
        const graph = stepGraph(spec);
        const done = (id: string) => {
          const s = stepStatuses.get(id);
          return s === "succeeded" || s === "reused";
        };
        const unfinished = ids.filter((id) => !done(id));
        expect(new Set(plan.toRun)).toEqual(downstreamClosure(graph, unfinished));
        for (const id of ids) {
          const ancestors = [...upstreamClosure(graph, [id])].filter((a) => a !== id);
          if (done(id) && ancestors.every(done)) expect(plan.toReuse).toContain(id);
        }
        expect(plan.toSkip).toEqual([]);
      }),
      { numRuns: 300 },
    );
  });

  it("a whole-workflow run runs every step once", () => {
    fc.assert(
      fc.property(workflowArbitrary, ({ spec }) => {
        const plan = planRun(spec, { kind: "workflow" });
        checkPlanShape(spec, plan);
        expect(plan.toRun).toHaveLength(spec.steps.length);
      }),
      { numRuns: 100 },
    );
  });
});

describe("unknown Graph implementations", () => {
  it("plans over any Graph whose nodes are the spec's steps", () => {
    const graph = buildGraph(["c", "b", "a"], (id) => ({ a: [], b: ["a"], c: ["b"] })[id]!);
    expect(planRun(abc, { kind: "workflow" }, { graph }).toRun).toEqual(["a", "b", "c"]);
  });
});
