/**
 * Planner timings on 5,000-step workflows: a wide fan-out/join, a chain, and random layers.
 * Prints the median and p95 of planning each request kind, with the step graph cached (as the
 * engine plans from its spec cache) and built from the spec on every call. Pure CPU, no services;
 * asserts nothing. `node bin/run-ts.js bench/planner.ts`, or call `benchPlanner()`.
 */
import { pathToFileURL } from "node:url";
import type { Graph } from "../src/domain/dag.ts";
import { type AssetState, type PlanRequest, planRun } from "../src/domain/planner.ts";
import type { StepStatus } from "../src/domain/status.ts";
import { type WorkflowSpec, workflowSpecSchema } from "../src/domain/workflow/spec.ts";
import { stepGraph } from "../src/domain/workflow/validate.ts";

const STEPS = 5000;
const WARMUP = 3;
const ITERATIONS = 30;
const now = new Date("2026-03-01T12:00:00Z");

/** A small seeded generator (mulberry32), so every run times the same graphs. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface RawStep {
  id: string;
  needs: string[];
  provides: string[];
}

function spec(name: string, steps: RawStep[], rand: () => number): WorkflowSpec {
  const assets: Record<string, { maxAgeSeconds: number }> = {};
  for (const s of steps) for (const a of s.provides) if (rand() < 0.5) assets[a] = { maxAgeSeconds: 3600 };
  return workflowSpecSchema.parse({
    name,
    assets,
    steps: steps.map((s) => ({ ...s, run: { type: "noop" } })),
  });
}

/** One root, STEPS - 2 parallel steps each providing an asset, one join. */
function wide(rand: () => number): WorkflowSpec {
  const middle = Array.from({ length: STEPS - 2 }, (_, i) => ({
    id: `w${i}`,
    needs: ["root"],
    provides: [`w${i}.out`],
  }));
  return spec(
    "wide",
    [
      { id: "root", needs: [], provides: ["root.out"] },
      ...middle,
      { id: "join", needs: middle.map((s) => s.id), provides: ["join.out"] },
    ],
    rand,
  );
}

function chain(rand: () => number): WorkflowSpec {
  return spec(
    "chain",
    Array.from({ length: STEPS }, (_, i) => ({
      id: `c${i}`,
      needs: i === 0 ? [] : [`c${i - 1}`],
      provides: [`c${i}.out`],
    })),
    rand,
  );
}

/** 50 layers of 100; each step needs 1–4 steps of the previous three layers; 60% provide an asset. */
function layered(rand: () => number): WorkflowSpec {
  const width = 100;
  const layers = STEPS / width;
  const steps: RawStep[] = [];
  for (let l = 0; l < layers; l++) {
    for (let k = 0; k < width; k++) {
      const needs = new Set<string>();
      if (l > 0) {
        const count = 1 + Math.floor(rand() * 4);
        for (let j = 0; j < count; j++) {
          const from = Math.max(0, l - 1 - Math.floor(rand() * 3));
          needs.add(`l${from}_${Math.floor(rand() * width)}`);
        }
      }
      steps.push({ id: `l${l}_${k}`, needs: [...needs], provides: rand() < 0.6 ? [`l${l}_${k}.out`] : [] });
    }
  }
  return spec("layered", steps, rand);
}

/** 80% of assets fresh, 15% stale, 5% never materialized. */
function assetStates(workflow: WorkflowSpec, rand: () => number): Map<string, AssetState> {
  const states = new Map<string, AssetState>();
  for (const step of workflow.steps) {
    for (const asset of step.provides) {
      const r = rand();
      const age = r < 0.8 ? 60 : r < 0.95 ? 7200 : null;
      states.set(asset, { lastMaterializedAt: age === null ? null : new Date(now.getTime() - age * 1000) });
    }
  }
  return states;
}

/** A failed parent: 1% of steps failed, everything below them cancelled, the rest succeeded. */
function failedParent(workflow: WorkflowSpec, graph: Graph, rand: () => number): Map<string, StepStatus> {
  const statuses = new Map<string, StepStatus>();
  for (const step of workflow.steps) statuses.set(step.id, rand() < 0.01 ? "failed" : "succeeded");
  const stack = [...statuses].filter(([, s]) => s === "failed").map(([id]) => id);
  while (stack.length > 0) {
    for (const child of graph.children(stack.pop()!)) {
      if (statuses.get(child) === "succeeded") {
        statuses.set(child, "cancelled");
        stack.push(child);
      }
    }
  }
  return statuses;
}

function requests(workflow: WorkflowSpec, graph: Graph, rand: () => number): Array<[string, PlanRequest]> {
  const ids = workflow.steps.map((s) => s.id);
  const sinks = ids.filter((id) => graph.children(id).length === 0);
  const sinkAssets = workflow.steps.filter((s) => sinks.includes(s.id)).flatMap((s) => s.provides);
  const someAssets = workflow.steps.flatMap((s) => s.provides).filter(() => rand() < 0.1);
  const requested = sinkAssets.length > 0 ? sinkAssets : someAssets;
  const states = assetStates(workflow, rand);
  const selection = Array.from(
    { length: 10 },
    () => ids[Math.floor(ids.length / 4 + rand() * (ids.length / 2))]!,
  );
  const succeeded = new Map(ids.map((id) => [id, "succeeded" as StepStatus]));
  return [
    ["workflow", { kind: "workflow" }],
    ["materialize", { kind: "materialize", assets: requested, assetStates: states, now }],
    ["materialize force", { kind: "materialize", assets: requested, force: true, assetStates: states, now }],
    [
      "subgraph up+down",
      {
        kind: "subgraph",
        steps: selection,
        upstream: true,
        downstream: true,
        parent: { stepStatuses: succeeded },
      },
    ],
    [
      "subgraph downstream",
      { kind: "subgraph", steps: selection, downstream: true, parent: { stepStatuses: succeeded } },
    ],
    [
      "retry",
      { kind: "retry", parent: { stepStatuses: failedParent(workflow, graph, rand), runStatus: "failed" } },
    ],
  ];
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

function time(run: () => unknown): { median: number; p95: number } {
  for (let i = 0; i < WARMUP; i++) run();
  const samples: number[] = [];
  for (let i = 0; i < ITERATIONS; i++) {
    const started = performance.now();
    run();
    samples.push(performance.now() - started);
  }
  samples.sort((a, b) => a - b);
  return { median: percentile(samples, 50), p95: percentile(samples, 95) };
}

export async function benchPlanner(): Promise<void> {
  const rand = random(20260301);
  const shapes: Array<[string, WorkflowSpec]> = [
    ["wide", wide(rand)],
    ["chain", chain(rand)],
    ["layered random", layered(rand)],
  ];
  const ms = (n: number) => n.toFixed(2);
  console.log(`planner: ${STEPS}-step workflows, ${ITERATIONS} iterations after ${WARMUP} warm-up\n`);
  console.log(
    "| shape | request | steps to run | cached graph: median / p95 ms | graph built: median / p95 ms |",
  );
  console.log("|---|---|---|---|---|");
  for (const [shape, workflow] of shapes) {
    const graph = stepGraph(workflow);
    for (const [name, request] of requests(workflow, graph, rand)) {
      const toRun = planRun(workflow, request, { graph }).toRun.length;
      const cached = time(() => planRun(workflow, request, { graph }));
      const cold = time(() => planRun(workflow, request));
      console.log(
        `| ${shape} | ${name} | ${toRun} | ${ms(cached.median)} / ${ms(cached.p95)} | ${ms(cold.median)} / ${ms(cold.p95)} |`,
      );
    }
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await benchPlanner();
}
