/**
 * The planner (SPEC §4): given a workflow version, the state of its assets or of a parent run, and
 * a request, decide for every step whether the new run executes it, reuses it from the parent run
 * or skips it, and why. Pure and synchronous: the engine loads the inputs, the planner decides,
 * the engine writes. The rules are documented for users in docs/planner.md.
 *
 * Cost: one topological sort plus a constant number of passes over the edges, O(V + E). No
 * closure is computed per step, so 5,000 steps plan in milliseconds.
 */
import { type Graph, topologicalOrder } from "./dag.ts";
import { type FieldIssue, FlowlineError, formatPath } from "./errors.ts";
import { ownValue } from "./records.ts";
import { isTerminalRun, type RunKind, type RunStatus, type StepStatus } from "./status.ts";
import type { WorkflowSpec } from "./workflow/spec.ts";
import { collectTemplateRefs } from "./workflow/templates.ts";
import { stepGraph } from "./workflow/validate.ts";

export const planActions = ["run", "reuse", "skip"] as const;
export type PlanAction = (typeof planActions)[number];

/**
 * Why a step has its action. Two reasons beyond the request kinds' own vocabulary:
 * - `not-selected`: a step outside the request that nothing in the plan needs is skipped; it is
 *   distinct from `fresh` so a dry run never claims a stale or asset-less step is fresh.
 * - `retry`: the step did not finish in the parent run and is executed again. `selected` would
 *   suggest the user picked it; `downstream-of-selection` is kept for steps that did succeed in
 *   the parent but sit below a retried one and must see its new output.
 */
export const planReasons = [
  "missing",
  "stale",
  "forced",
  "fresh",
  "selected",
  "upstream-of-selection",
  "downstream-of-selection",
  "reused-from-parent",
  "not-selected",
  "retry",
] as const;
export type PlanReason = (typeof planReasons)[number];

export type Freshness = "missing" | "stale" | "fresh";

export interface AssetState {
  /** When the asset was last materialized; null (or no entry at all) means never. */
  lastMaterializedAt: Date | null;
}

/** What the planner needs from a parent run of the same workflow version. */
export interface ParentRun {
  /** Status of each step in the parent run. Ids that are not steps of this version are ignored. */
  stepStatuses: ReadonlyMap<string, StepStatus>;
  /** The parent run's own status. A retry of a run that is not terminal is refused. */
  runStatus?: RunStatus;
  /**
   * The reason the parent's plan gave each step (`step_runs.plan_reason`). A retry uses it to
   * keep steps the parent deliberately skipped (`fresh`, `not-selected`) out of the retry.
   */
  planReasons?: ReadonlyMap<string, PlanReason>;
}

export type PlanRequest =
  | { kind: "workflow" }
  | {
      kind: "materialize";
      assets: readonly string[];
      force?: boolean;
      /** Assets without an entry count as never materialized. */
      assetStates: ReadonlyMap<string, AssetState>;
      now: Date;
    }
  | {
      kind: "subgraph";
      steps: readonly string[];
      upstream?: boolean;
      downstream?: boolean;
      parent?: ParentRun;
    }
  | { kind: "retry"; parent: ParentRun };

export interface PlannedStepAction {
  stepId: string;
  action: PlanAction;
  reason: PlanReason;
  /** For `run`: needs that also run in this plan (`step_runs.unmet_needs`); 0 otherwise. */
  unmetNeeds: number;
}

export interface Plan {
  runKind: RunKind;
  /** Every step of the workflow exactly once, in topological order (ties in declaration order). */
  steps: PlannedStepAction[];
  toRun: string[];
  toReuse: string[];
  toSkip: string[];
  /** Steps to run whose needs are all met at creation: queue them with the run. */
  ready: string[];
  /**
   * Skipped `fresh` steps that a running step needs: their output is the metadata of the last
   * materialization of the assets they provide, which the engine must load for their dependants.
   */
  materializedInputs: string[];
  /** Assets provided by steps to run: the per-asset locks a materializing run must hold. */
  assets: string[];
}

export interface PlanOptions {
  /** The step graph of `spec` (`stepGraph(spec)`), when the caller has it cached. */
  graph?: Graph;
}

/**
 * An asset's freshness: `missing` when never materialized, `stale` when older than its policy's
 * `maxAgeSeconds`, else `fresh`. Without a policy (or without `maxAgeSeconds`), a materialized
 * asset never goes stale. A materialization dated after `now` (clock skew) counts as fresh.
 */
export function assetFreshness(
  policy: { maxAgeSeconds?: number | undefined } | undefined,
  state: AssetState | undefined,
  now: Date,
): Freshness {
  const at = state?.lastMaterializedAt ?? null;
  if (at === null) return "missing";
  const maxAge = policy?.maxAgeSeconds;
  if (maxAge === undefined) return "fresh";
  return now.getTime() - at.getTime() > maxAge * 1000 ? "stale" : "fresh";
}

/**
 * Plans a run of `spec`, which must be a validated definition (unique ids, acyclic). Throws a
 * `validation_failed` FlowlineError naming unknown assets or steps, an empty selection, or a
 * step to run whose templates read the output of a step that neither runs nor can be reused
 * (needs that only order it are dropped from the plan, SPEC §4);
 * throws `conflict` for a retry of a run that has not finished.
 */
export function planRun(spec: WorkflowSpec, request: PlanRequest, options: PlanOptions = {}): Plan {
  const topo = topology(options.graph ?? stepGraph(spec));
  switch (request.kind) {
    case "workflow":
      return finish(spec, topo, "workflow", planWorkflow(topo), []);
    case "materialize":
      return finish(spec, topo, "materialization", planMaterialize(spec, topo, request), ["assets"]);
    case "subgraph":
      return finish(spec, topo, "subgraph", planSubgraph(topo, request), ["steps"]);
    case "retry":
      return finish(spec, topo, "subgraph", planRetry(topo, request.parent), []);
    default: {
      const unknown: never = request;
      throw new Error(`unknown plan request ${JSON.stringify(unknown)}`);
    }
  }
}

/** The graph by topological position: a parent's position is always below its children's. */
interface Topology {
  ids: readonly string[];
  position: ReadonlyMap<string, number>;
  parents: readonly (readonly number[])[];
  children: readonly (readonly number[])[];
}

function topology(graph: Graph): Topology {
  const ids = topologicalOrder(graph);
  const position = new Map<string, number>();
  for (let i = 0; i < ids.length; i++) position.set(ids[i]!, i);
  const parents: number[][] = [];
  const children: number[][] = ids.map(() => []);
  for (let i = 0; i < ids.length; i++) {
    const own = graph.parents(ids[i]!).map((p) => position.get(p)!);
    parents.push(own);
    for (const p of own) children[p]!.push(i);
  }
  return { ids, position, parents, children };
}

/** Decisions by topological position. */
interface Decisions {
  actions: PlanAction[];
  reasons: PlanReason[];
}

function planWorkflow(topo: Topology): Decisions {
  return {
    actions: topo.ids.map(() => "run"),
    reasons: topo.ids.map(() => "selected"),
  };
}

const FRESH = 0;
const STALE = 1;
const MISSING = 2;
const rankOf: Record<Freshness, number> = { fresh: FRESH, stale: STALE, missing: MISSING };

/** Drops repeats, keeping the first index of each value (for issue paths). */
function firstIndices(values: readonly string[]): Map<string, number> {
  const out = new Map<string, number>();
  values.forEach((v, i) => {
    if (!out.has(v)) out.set(v, i);
  });
  return out;
}

function refuse(message: string, issues: FieldIssue[]): never {
  throw new FlowlineError("validation_failed", message, { issues });
}

/**
 * Materialization: run the providers of requested assets that are missing or stale, and, walking
 * up from every step that runs, each parent whose assets are missing or stale or that provides
 * no asset at all. A parent whose assets are all fresh is skipped and read from its last
 * materialization. With `force`, the providers and everything upstream of them run.
 */
function planMaterialize(
  spec: WorkflowSpec,
  topo: Topology,
  request: Extract<PlanRequest, { kind: "materialize" }>,
): Decisions {
  const requested = firstIndices(request.assets);
  if (requested.size === 0) {
    refuse("Name at least one asset to materialize", [
      { location: "body", path: ["assets"], message: "must not be empty" },
    ]);
  }
  const providerOf = new Map<string, number>();
  for (const step of spec.steps) {
    const at = topo.position.get(step.id);
    if (at === undefined) continue;
    for (const asset of step.provides) if (!providerOf.has(asset)) providerOf.set(asset, at);
  }
  const unknown = [...requested].filter(([asset]) => !providerOf.has(asset));
  if (unknown.length > 0) {
    refuse(
      `Unknown ${unknown.length === 1 ? "asset" : "assets"}: ${unknown.map(([a]) => a).join(", ")}`,
      unknown.map(([asset, i]) => ({
        location: "body",
        path: ["assets", i],
        message: `no step of workflow "${spec.name}" provides asset "${asset}"`,
      })),
    );
  }

  const n = topo.ids.length;
  // Worst freshness over all assets a step provides, and over the requested ones; -1 = none.
  const worstAll = new Int8Array(n).fill(-1);
  const worstRequested = new Int8Array(n).fill(-1);
  const policies = spec.assets ?? {};
  for (const [asset, at] of providerOf) {
    const rank =
      rankOf[assetFreshness(ownValue(policies, asset), request.assetStates.get(asset), request.now)];
    worstAll[at] = Math.max(worstAll[at]!, rank);
    if (requested.has(asset)) worstRequested[at] = Math.max(worstRequested[at]!, rank);
  }

  const force = request.force === true;
  const actions: PlanAction[] = new Array(n);
  const reasons: PlanReason[] = new Array(n);
  // Upstream of (or one of) the providers of requested assets.
  const inRequest = new Uint8Array(n);
  // Children come after parents in topological order: walking backwards, a step's children are
  // decided before the step itself.
  for (let i = n - 1; i >= 0; i--) {
    const target = worstRequested[i]! >= 0;
    let neededByRun = false;
    let below = target;
    for (const c of topo.children[i]!) {
      if (actions[c] === "run") neededByRun = true;
      if (inRequest[c] === 1) below = true;
    }
    inRequest[i] = below ? 1 : 0;
    const providesAssets = worstAll[i]! >= 0;

    let reason: PlanReason | null = null;
    if (force && (target || neededByRun)) reason = "forced";
    else if (neededByRun && !providesAssets) reason = "upstream-of-selection";
    else {
      // A provider's requested assets decide for it; a needed parent's assets all count.
      const rank = Math.max(target ? worstRequested[i]! : FRESH, neededByRun ? worstAll[i]! : FRESH);
      if (rank === MISSING) reason = "missing";
      else if (rank === STALE) reason = "stale";
    }
    if (reason !== null) {
      actions[i] = "run";
      reasons[i] = reason;
    } else {
      actions[i] = "skip";
      const fresh = below && (target || (providesAssets && worstAll[i] === FRESH));
      reasons[i] = fresh ? "fresh" : "not-selected";
    }
  }
  return { actions, reasons };
}

function selectionOf(topo: Topology, steps: readonly string[]): Uint8Array {
  const wanted = firstIndices(steps);
  if (wanted.size === 0) {
    refuse("Select at least one step", [{ location: "body", path: ["steps"], message: "must not be empty" }]);
  }
  const unknown = [...wanted].filter(([id]) => !topo.position.has(id));
  if (unknown.length > 0) {
    refuse(
      `Unknown ${unknown.length === 1 ? "step" : "steps"}: ${unknown.map(([id]) => id).join(", ")}`,
      unknown.map(([id, i]) => ({ location: "body", path: ["steps", i], message: `unknown step "${id}"` })),
    );
  }
  const selected = new Uint8Array(topo.ids.length);
  for (const id of wanted.keys()) selected[topo.position.get(id)!] = 1;
  return selected;
}

const satisfied = (s: StepStatus | undefined): boolean => s === "succeeded" || s === "reused";

/**
 * Subgraph: the selection, plus its upstream and/or downstream closure, runs. Outside it, a step
 * that succeeded (or was reused) in the parent run is reused; the rest is skipped. A step that is
 * both upstream and downstream of the selection is reported as upstream.
 */
function planSubgraph(topo: Topology, request: Extract<PlanRequest, { kind: "subgraph" }>): Decisions {
  const selected = selectionOf(topo, request.steps);
  const n = topo.ids.length;
  const upstream = new Uint8Array(n);
  if (request.upstream) {
    for (let i = n - 1; i >= 0; i--) {
      for (const c of topo.children[i]!) {
        if (selected[c] === 1 || upstream[c] === 1) {
          upstream[i] = 1;
          break;
        }
      }
    }
  }
  const downstream = new Uint8Array(n);
  if (request.downstream) {
    for (let i = 0; i < n; i++) {
      for (const p of topo.parents[i]!) {
        if (selected[p] === 1 || downstream[p] === 1) {
          downstream[i] = 1;
          break;
        }
      }
    }
  }
  const actions: PlanAction[] = new Array(n);
  const reasons: PlanReason[] = new Array(n);
  const parent = request.parent;
  for (let i = 0; i < n; i++) {
    if (selected[i] === 1 || upstream[i] === 1 || downstream[i] === 1) {
      actions[i] = "run";
      reasons[i] =
        selected[i] === 1
          ? "selected"
          : upstream[i] === 1
            ? "upstream-of-selection"
            : "downstream-of-selection";
    } else if (parent !== undefined && satisfied(parent.stepStatuses.get(topo.ids[i]!))) {
      actions[i] = "reuse";
      reasons[i] = "reused-from-parent";
    } else {
      actions[i] = "skip";
      reasons[i] = "not-selected";
    }
  }
  return { actions, reasons };
}

/**
 * Retry: every step that did not succeed in the parent (failed, cancelled, skipped, or never
 * finished) runs again, and so does everything downstream of one; every other step is reused.
 * Steps the parent's own plan skipped stay skipped, so a retry finishes the parent's plan rather
 * than growing into a whole-workflow run. A rolled-back run's effects were undone: nothing in it
 * is reusable, so its whole plan runs again.
 */
function planRetry(topo: Topology, parent: ParentRun): Decisions {
  if (parent.runStatus !== undefined && !isTerminalRun(parent.runStatus)) {
    throw new FlowlineError(
      "conflict",
      `The run is ${parent.runStatus}; only a finished run can be retried (cancel it first)`,
    );
  }
  const reuseNothing = parent.runStatus === "rolled_back";
  const n = topo.ids.length;
  const actions: PlanAction[] = new Array(n);
  const reasons: PlanReason[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const id = topo.ids[i]!;
    const done = !reuseNothing && satisfied(parent.stepStatuses.get(id));
    const planned = parent.planReasons?.get(id);
    if (!done && (planned === "fresh" || planned === "not-selected")) {
      actions[i] = "skip";
      reasons[i] = planned;
      continue;
    }
    if (!done) {
      actions[i] = "run";
      reasons[i] = "retry";
      continue;
    }
    let belowRetried = false;
    for (const p of topo.parents[i]!) {
      if (actions[p] === "run") {
        belowRetried = true;
        break;
      }
    }
    actions[i] = belowRetried ? "run" : "reuse";
    reasons[i] = belowRetried ? "downstream-of-selection" : "reused-from-parent";
  }
  return { actions, reasons };
}

/**
 * SPEC §4: a step to run whose needs do not run (nor are reused) still runs when it needs them
 * only for order; it is refused only when one of its templates reads the output of a step that
 * provides none in this plan. Templates may read any transitive upstream step, so every step to
 * run is checked; a `fresh` skipped step provides its last materialization, so reading it marks
 * it as an input to load. Answers one message per unprovided read, naming step and template.
 */
function unprovidedReads(
  spec: WorkflowSpec,
  topo: Topology,
  actions: readonly PlanAction[],
  reasons: readonly PlanReason[],
  readFromMaterialization: Uint8Array,
): string[] {
  const problems: string[] = [];
  spec.steps.forEach((step, declared) => {
    const at = topo.position.get(step.id);
    if (at === undefined || actions[at] !== "run") return;
    const found = collectTemplateRefs(step.run, ["steps", declared, "run"]);
    if (step.compensate)
      found.push(...collectTemplateRefs(step.compensate, ["steps", declared, "compensate"]));
    for (const { ref, path } of found) {
      if (ref?.kind !== "step" || ref.stepId === step.id) continue;
      const source = topo.position.get(ref.stepId);
      if (source === undefined || actions[source] !== "skip") continue;
      if (reasons[source] === "fresh") {
        readFromMaterialization[source] = 1;
        continue;
      }
      const template = `{{steps.${[ref.stepId, "output", ...ref.path].join(".")}}}`;
      problems.push(
        `step "${step.id}" reads ${template} (at ${formatPath(path)}), but "${ref.stepId}" neither runs in this plan nor can be reused from a parent run`,
      );
    }
  });
  return problems;
}

/** Issues listed for an unrunnable plan; the message counts the rest. */
const MAX_UNRUNNABLE_ISSUES = 50;

/**
 * Counts unmet needs, refuses an unrunnable plan, and lays the plan out. A need is met when it
 * runs in this plan (it then counts as unmet until it finishes), is reused, or is skipped as
 * `fresh` (its output is its last materialization).
 */
function finish(
  spec: WorkflowSpec,
  topo: Topology,
  runKind: RunKind,
  decisions: Decisions,
  issuePath: (string | number)[],
): Plan {
  const { actions, reasons } = decisions;
  const plan: Plan = {
    runKind,
    steps: [],
    toRun: [],
    toReuse: [],
    toSkip: [],
    ready: [],
    materializedInputs: [],
    assets: [],
  };
  const n = topo.ids.length;
  const readFromMaterialization = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const stepId = topo.ids[i]!;
    const action = actions[i]!;
    let unmetNeeds = 0;
    if (action === "run") {
      for (const p of topo.parents[i]!) {
        const need = actions[p]!;
        if (need === "run") unmetNeeds++;
        else if (need === "skip" && reasons[p] === "fresh") readFromMaterialization[p] = 1;
        // Another skipped need only orders the step: it is met. unprovidedReads refuses reads of it.
      }
    }
    plan.steps.push({ stepId, action, reason: reasons[i]!, unmetNeeds });
    if (action === "run") {
      plan.toRun.push(stepId);
      if (unmetNeeds === 0) plan.ready.push(stepId);
    } else if (action === "reuse") plan.toReuse.push(stepId);
    else plan.toSkip.push(stepId);
  }
  // Any skipped step may be read through a template, not only by its direct dependants.
  const problems =
    plan.toSkip.length > 0 ? unprovidedReads(spec, topo, actions, reasons, readFromMaterialization) : [];
  if (problems.length > 0) {
    const more = problems.length - MAX_UNRUNNABLE_ISSUES;
    refuse(
      `The plan cannot run: ${problems[0]}${problems.length > 1 ? ` (and ${problems.length - 1} more)` : ""}`,
      [
        ...problems
          .slice(0, MAX_UNRUNNABLE_ISSUES)
          .map((message): FieldIssue => ({ location: "body", path: issuePath, message })),
        ...(more > 0
          ? [{ location: "body" as const, path: issuePath, message: `${more} more steps cannot run` }]
          : []),
      ],
    );
  }
  for (let i = 0; i < n; i++)
    if (readFromMaterialization[i] === 1) plan.materializedInputs.push(topo.ids[i]!);
  for (const step of spec.steps) {
    const at = topo.position.get(step.id);
    if (at !== undefined && actions[at] === "run") for (const asset of step.provides) plan.assets.push(asset);
  }
  return plan;
}
