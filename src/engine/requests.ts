/**
 * The three planned request kinds besides a plain workflow run — materializations (and
 * backfills), subgraphs, retries — turned into runs by the same path (`create-run.ts`).
 */
import { randomUUID } from "node:crypto";
import { wantedLocksOfUnfinishedRuns } from "../db/repositories/admission.ts";
import {
  assetProviders,
  autoMaterializeCandidates,
  lastMaterializations,
  lastUnpartitionedMaterializations,
} from "../db/repositories/assets.ts";
import {
  concurrencySlot,
  lockConcurrencySlots,
  readRunWithName,
  readStepsWithCompensation,
  type Sql,
} from "../db/repositories/runs.ts";
import { workflowByName, workflowNames } from "../db/repositories/workflows.ts";
import { type FieldIssue, FlowlineError, notFound } from "../domain/errors.ts";
import type { AssetState, ParentRun, Plan, PlanAction, PlanReason } from "../domain/planner.ts";
import { planRun } from "../domain/planner.ts";
import { resolveStep } from "../domain/workflow/resolve.ts";
import { releaseTaken } from "./admission.ts";
import { type CreatedRun, concurrencyKeyOf, insertRun, type NewRun, type TakenLocks } from "./create-run.ts";
import { AfterCommit, type EngineDeps } from "./deps.ts";
import { checkRunQuotas, quotaCountOf } from "./quotas.ts";
import { mergeParams } from "./runs.ts";
import type { LoadedSpec } from "./specs.ts";

export interface PlanView {
  kind: string;
  workflow: { name: string; version: number };
  params: Record<string, unknown>;
  partition: string | null;
  steps: Array<{
    stepId: string;
    action: PlanAction;
    reason: PlanReason;
    queue: string;
    tags: string[];
    needs: string[];
  }>;
  toRun: number;
  queues: string[];
  tags: string[];
  assets: string[];
}

/** The plan as the API shows it: every step with its action and reason, queues and tags. */
export function presentPlan(
  deps: EngineDeps,
  loaded: LoadedSpec,
  plan: Plan,
  params: Record<string, unknown>,
  priority: number | undefined,
  partition: string | null = null,
): PlanView {
  const steps = plan.steps.map((p) => {
    const spec = loaded.steps.get(p.stepId)!;
    return {
      stepId: p.stepId,
      action: p.action,
      reason: p.reason,
      queue: resolveStep(loaded.spec, spec, deps.config.tags, priority).queue,
      tags: spec.tags,
      needs: loaded.graph.parents(p.stepId) as string[],
    };
  });
  const running = steps.filter((s) => s.action === "run");
  return {
    kind: plan.runKind,
    workflow: { name: loaded.spec.name, version: loaded.version },
    params,
    partition,
    steps,
    toRun: plan.toRun.length,
    queues: [...new Set(running.map((s) => s.queue))],
    tags: [...new Set(running.flatMap((s) => s.tags))],
    assets: plan.assets,
  };
}

function invalid(message: string, issues: FieldIssue[]): never {
  throw new FlowlineError("validation_failed", message, { issues });
}

/** Creates runs in one transaction (all or none); locks taken by a failed attempt are given back. */
async function createRuns(
  deps: EngineDeps,
  inputs: NewRun[],
  check?: (created: CreatedRun) => void,
  guard?: (sql: Sql) => Promise<void>,
): Promise<CreatedRun[]> {
  const after = new AfterCommit();
  const taken: TakenLocks = [];
  const created = await deps.db.sql
    .begin(async (sql) => {
      await guard?.(sql);
      // Several runs in one transaction take their concurrency locks up front, in one global
      // order, so two overlapping backfills cannot deadlock on them.
      if (inputs.length > 1) {
        const slots = new Set<string>();
        for (const input of inputs) {
          if (!input.loaded.spec.concurrency) continue;
          slots.add(concurrencySlot(input.loaded.workflowId, concurrencyKeyOf(input.loaded, input.params)));
        }
        await lockConcurrencySlots(sql, [...slots].sort());
      }
      const out: CreatedRun[] = [];
      for (const input of inputs) {
        const c = await insertRun(deps, sql, input, after, taken);
        check?.(c);
        out.push(c);
      }
      if (inputs[0]) await checkRunQuotas(deps, sql, inputs[0].tenantId, quotaCountOf(inputs));
      return out;
    })
    .catch(async (error) => {
      await releaseTaken(deps, taken);
      throw error;
    });
  await after.flush(deps);
  for (const c of created)
    deps.log.info({ runId: c.run.id, kind: c.run.kind, waiting: c.waiting }, "run created");
  return created;
}

// --- materializations -------------------------------------------------------------------------

export interface MaterializeInput {
  tenantId: string;
  assets: string[];
  force?: boolean;
  params?: Record<string, unknown>;
  priority?: number;
  /** Partition keys, already expanded; none means one unpartitioned run. */
  partitions?: string[];
  dryRun?: boolean;
  ifBusy?: "wait" | "reject";
  /** What asked for it: api (default), auto-materialize… (a backfill is recorded as backfill). */
  trigger?: string;
  /** Runs first in the creating transaction (the supervisor's fencing check). */
  guard?: (sql: Sql) => Promise<void>;
}

export interface MaterializeResult {
  plans: PlanView[];
  runs: CreatedRun[];
  backfillId: string | null;
}

/** The workflow (latest version) that provides the requested assets; 400 for unknown or split ones. */
async function providerOf(deps: EngineDeps, tenantId: string, assets: string[]): Promise<LoadedSpec> {
  const rows = await assetProviders(deps.db.sql, tenantId, assets);
  const byAsset = new Map<string, Set<string>>();
  for (const r of rows) byAsset.set(r.asset, (byAsset.get(r.asset) ?? new Set()).add(r.workflow_id));
  const unknown = assets.flatMap((a, i) =>
    byAsset.has(a)
      ? []
      : [{ location: "body" as const, path: ["assets", i], message: `no workflow provides asset "${a}"` }],
  );
  if (unknown.length > 0) invalid(`unknown assets: ${unknown.map((u) => u.message).join("; ")}`, unknown);
  const workflowIds = new Set(rows.map((r) => r.workflow_id));
  if (workflowIds.size > 1) {
    const names = await workflowNames(deps.db.sql, [...workflowIds]);
    invalid(`the assets are provided by different workflows (${names.join(", ")}); request them separately`, [
      { location: "body", path: ["assets"], message: "provided by more than one workflow" },
    ]);
  }
  const row = rows[0]!;
  return deps.specs.load(row.workflow_id, row.version);
}

export async function materialize(deps: EngineDeps, input: MaterializeInput): Promise<MaterializeResult> {
  const loaded = await providerOf(deps, input.tenantId, input.assets);
  const provided = [...new Set(loaded.spec.steps.flatMap((s) => s.provides ?? []))];
  const priority = input.priority ?? loaded.spec.defaults?.priority ?? 5;
  const partitions: Array<string | null> = input.partitions?.length ? input.partitions : [null];
  const now = new Date();
  const planned: Array<{
    partition: string | null;
    plan: Plan;
    params: Record<string, unknown>;
    outputs: Map<string, unknown>;
  }> = [];
  for (const partition of partitions) {
    const last = await lastMaterializations(deps.db.sql, input.tenantId, provided, partition);
    const assetStates = new Map<string, AssetState>(
      provided.map((a) => [a, { lastMaterializedAt: last.get(a)?.at ?? null }]),
    );
    const plan = planRun(
      loaded.spec,
      { kind: "materialize", assets: input.assets, force: input.force ?? false, assetStates, now },
      { graph: loaded.graph },
    );
    // A fresh step skipped in the plan stands in for its dependants with its assets' metadata.
    const outputs = new Map<string, unknown>();
    for (const stepId of plan.materializedInputs) {
      const asset = loaded.steps.get(stepId)?.provides?.find((a) => last.has(a));
      if (asset) outputs.set(stepId, last.get(asset)!.metadata);
    }
    const params = mergeParams(deps, loaded.spec.params, input.params, partition ? { partition } : undefined);
    planned.push({ partition, plan, params, outputs });
  }
  const plans = planned.map((p) => presentPlan(deps, loaded, p.plan, p.params, priority, p.partition));
  const toCreate = planned.filter((p) => p.plan.toRun.length > 0);
  if (input.dryRun || toCreate.length === 0) return { plans, runs: [], backfillId: null };

  const backfillId = input.partitions?.length ? randomUUID() : null;
  const runs = await createRuns(
    deps,
    toCreate.map((p) => ({
      tenantId: input.tenantId,
      loaded,
      kind: "materialization",
      trigger: backfillId ? "backfill" : (input.trigger ?? "api"),
      params: p.params,
      priority,
      request: { assets: input.assets, force: input.force ?? false, params: input.params ?? {} },
      plan: p.plan,
      materializedOutputs: p.outputs,
      ...(p.partition ? { partitionKey: p.partition } : {}),
      ...(backfillId ? { backfillId } : {}),
    })),
    (created) => {
      if (input.ifBusy === "reject" && created.waiting && /asset/.test(created.waiting))
        throw new FlowlineError("conflict", `An asset is busy: ${created.waiting}`);
    },
    input.guard,
  );
  return { plans, runs, backfillId };
}

// --- subgraphs and retries --------------------------------------------------------------------

async function parentRunOf(deps: EngineDeps, tenantId: string, runId: string) {
  const run = await readRunWithName(deps.db.sql, tenantId, runId);
  if (!run) return undefined;
  const steps = await readStepsWithCompensation(deps.db.sql, runId);
  const parent: ParentRun = {
    // A step a rollback compensated, or is about to, has had its effects undone: it counts as not
    // done (nothing to reuse), whatever its own status says.
    stepStatuses: new Map(steps.map((s) => [s.step_id, s.compensation ? "cancelled" : s.status])),
    runStatus: run.status,
    planReasons: new Map(
      steps.flatMap((s) => (s.plan_reason ? [[s.step_id, s.plan_reason as PlanReason] as const] : [])),
    ),
  };
  return { run, parent, outputs: new Map(steps.map((s) => [s.step_id, s.output])) };
}

export interface SubgraphInput {
  tenantId: string;
  workflow: string;
  steps: string[];
  upstream?: boolean;
  downstream?: boolean;
  parentRunId?: string;
  params?: Record<string, unknown>;
  priority?: number;
  dryRun?: boolean;
}

export async function runSubgraph(
  deps: EngineDeps,
  input: SubgraphInput,
): Promise<{ plan: PlanView; run?: CreatedRun }> {
  const wf = await workflowByName(deps.db.sql, input.tenantId, input.workflow);
  if (!wf) throw notFound(`Workflow "${input.workflow}"`);
  const parent = input.parentRunId ? await parentRunOf(deps, input.tenantId, input.parentRunId) : undefined;
  if (input.parentRunId && !parent) throw notFound("Parent run");
  if (parent && parent.run.workflow_id !== wf.id)
    invalid(
      `parent run ${parent.run.id} is a run of workflow "${parent.run.workflow_name}", not "${input.workflow}"`,
      [{ location: "body", path: ["parentRunId"], message: "belongs to another workflow" }],
    );
  if (!parent && wf.archived_at)
    throw new FlowlineError(
      "conflict",
      `Workflow "${input.workflow}" is archived; PUT it again to restore it`,
    );
  // With a parent, the subgraph runs the parent's version, so reused outputs fit their dependants.
  const loaded = await deps.specs.load(wf.id, parent ? parent.run.workflow_version : wf.latest_version);
  const plan = planRun(
    loaded.spec,
    {
      kind: "subgraph",
      steps: input.steps,
      upstream: input.upstream ?? false,
      downstream: input.downstream ?? false,
      ...(parent ? { parent: parent.parent } : {}),
    },
    { graph: loaded.graph },
  );
  const priority = input.priority ?? parent?.run.priority ?? loaded.spec.defaults?.priority ?? 5;
  const params = mergeParams(deps, loaded.spec.params, parent?.run.params, input.params);
  const view = presentPlan(deps, loaded, plan, params, priority);
  if (input.dryRun) return { plan: view };
  const [run] = await createRuns(deps, [
    {
      tenantId: input.tenantId,
      loaded,
      kind: "subgraph",
      trigger: "api",
      params,
      priority,
      request: {
        steps: input.steps,
        upstream: input.upstream ?? false,
        downstream: input.downstream ?? false,
        parentRunId: input.parentRunId ?? null,
        params: input.params ?? {},
      },
      plan,
      ...(parent ? { parent: { runId: parent.run.id, outputs: parent.outputs } } : {}),
    },
  ]);
  return { plan: view, run: run! };
}

/** A subgraph run forked from a finished run: what did not succeed, and what follows it, runs again. */
export async function retryRun(
  deps: EngineDeps,
  tenantId: string,
  runId: string,
  options: { dryRun?: boolean } = {},
): Promise<{ plan: PlanView; run?: CreatedRun }> {
  const parent = await parentRunOf(deps, tenantId, runId);
  if (!parent) throw notFound("Run");
  const loaded = await deps.specs.load(parent.run.workflow_id, parent.run.workflow_version);
  const plan = planRun(loaded.spec, { kind: "retry", parent: parent.parent }, { graph: loaded.graph });
  if (plan.toRun.length === 0)
    throw new FlowlineError("conflict", `Run ${runId} is ${parent.run.status}: it has nothing to retry`);
  const view = presentPlan(deps, loaded, plan, parent.run.params, parent.run.priority);
  if (options.dryRun) return { plan: view };
  const [run] = await createRuns(deps, [
    {
      tenantId,
      loaded,
      kind: "subgraph",
      trigger: "retry",
      params: parent.run.params,
      priority: parent.run.priority,
      request: { retryOf: runId },
      plan,
      parent: { runId, outputs: parent.outputs },
      ...(parent.run.partition_key ? { partitionKey: parent.run.partition_key } : {}),
    },
  ]);
  return { plan: view, run: run! };
}

// --- auto-materialization ---------------------------------------------------------------------

/**
 * Starts a materialization for every asset whose policy says `autoMaterialize: true` and that is
 * missing or stale, unless a run that materializes it is already queued or running. One request
 * per workflow, for all its assets that need it. Returns the runs started.
 */
export async function autoMaterialize(
  deps: EngineDeps,
  stillActive: () => boolean = () => true,
  guard?: (sql: Sql) => Promise<void>,
): Promise<number> {
  const sql = deps.db.sql;
  const candidates = await autoMaterializeCandidates(sql);
  if (candidates.length === 0) return 0;
  const lastAt = await lastUnpartitionedMaterializations(
    sql,
    candidates.map((c) => ({ tenantId: c.tenant_id, asset: c.asset })),
  );
  const busyLocks = await wantedLocksOfUnfinishedRuns(sql);
  const now = Date.now();
  const due = new Map<string, { tenantId: string; assets: string[] }>();
  for (const c of candidates) {
    const id = `${c.tenant_id}/${c.asset}`;
    if (busyLocks.has(id)) continue;
    const at = lastAt.get(id);
    const stale = !at || (c.max_age !== null && now - at.getTime() > c.max_age * 1000);
    if (!stale) continue;
    const key = `${c.tenant_id}/${c.workflow_id}`;
    const entry = due.get(key) ?? { tenantId: c.tenant_id, assets: [] };
    entry.assets.push(c.asset);
    due.set(key, entry);
  }
  let started = 0;
  for (const { tenantId, assets } of due.values()) {
    if (!stillActive()) break;
    try {
      const result = await materialize(deps, {
        tenantId,
        assets,
        trigger: "auto-materialize",
        ...(guard ? { guard } : {}),
      });
      started += result.runs.length;
      if (result.runs.length > 0)
        deps.log.info({ tenantId, assets, runId: result.runs[0]!.run.id }, "auto-materialization started");
    } catch (error) {
      deps.log.warn({ err: error, tenantId, assets }, "auto-materialization failed");
    }
  }
  return started;
}
