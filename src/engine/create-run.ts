/**
 * Creating a run from a plan: the one path all request kinds share (workflow runs,
 * materializations and backfills, subgraphs, retries). Inside the caller's transaction it writes
 * the run, one step row per step of the workflow (to run: `pending`; reused from the parent:
 * `reused` with the parent's output; skipped: `skipped` with the plan's reason), their events,
 * and then tries to admit the run (concurrency slot, asset locks); an admitted run starts at once,
 * another waits in `queued`.
 */
import {
  appendEvents,
  insertRunRow,
  insertStepRows,
  type NewEvent,
  type NewStepRow,
  type RunRow,
  type Sql,
} from "../db/repositories/runs.ts";
import { FlowlineError } from "../domain/errors.ts";
import type { Plan } from "../domain/planner.ts";
import { stepJobId } from "../domain/ports.ts";
import type { RunKind } from "../domain/status.ts";
import { resolveStep } from "../domain/workflow/resolve.ts";
import { renderTemplates, TemplateError } from "../domain/workflow/templates.ts";
import { startRunSpan } from "../observability/hooks.ts";
import { assetLockKey, startAdmittedRun, tryAdmit } from "./admission.ts";
import { announceQueued } from "./advance.ts";
import type { AfterCommit, EngineDeps } from "./deps.ts";
import type { LoadedSpec } from "./specs.ts";

export interface NewRun {
  tenantId: string;
  loaded: LoadedSpec;
  kind: RunKind;
  trigger: string;
  params: Record<string, unknown>;
  priority: number;
  /** The request as submitted, kept for audit and retries. */
  request: unknown;
  plan: Plan;
  parent?: { runId: string; outputs: ReadonlyMap<string, unknown> };
  /** Outputs standing in for skipped `fresh` steps (their assets' last materialization metadata). */
  materializedOutputs?: ReadonlyMap<string, unknown>;
  partitionKey?: string;
  backfillId?: string;
}

export interface CreatedRun {
  run: RunRow;
  /** Why it waits in `queued`, when it does. */
  waiting?: string;
}

/** Locks a failed transaction must give back (they were taken before it failed). */
export type TakenLocks = Array<{ tenantId: string; lockKey: string; token: string }>;

/** The rendered `concurrency.key`, or null for the workflow-wide pool. */
export function concurrencyKeyOf(loaded: LoadedSpec, params: Record<string, unknown>): string | null {
  const template = loaded.spec.concurrency?.key;
  if (!template) return null;
  try {
    const value = renderTemplates(template, { params, steps: {} });
    return typeof value === "string" ? value : JSON.stringify(value);
  } catch (error) {
    if (!(error instanceof TemplateError)) throw error;
    throw new FlowlineError("validation_failed", `concurrency.key: ${error.message}`, {
      issues: [
        {
          location: "body",
          path: ["params"],
          message: `concurrency.key cannot be rendered: ${error.message}`,
        },
      ],
    });
  }
}

export async function insertRun(
  deps: EngineDeps,
  sql: Sql,
  input: NewRun,
  after: AfterCommit,
  taken: TakenLocks,
): Promise<CreatedRun> {
  const { loaded, plan } = input;
  const locksWanted = plan.assets.map((asset) => assetLockKey(asset, input.partitionKey));
  // Nothing to wait for (no concurrency limit, no asset to lock): the run starts as it is created.
  const unrestricted = !loaded.spec.concurrency && locksWanted.length === 0;
  const span = startRunSpan({ workflow: loaded.spec.name, kind: input.kind });
  const run = await insertRunRow(sql, {
    tenantId: input.tenantId,
    workflowId: loaded.workflowId,
    workflowVersion: loaded.version,
    kind: input.kind,
    status: unrestricted ? "running" : "queued",
    trigger: input.trigger,
    params: input.params,
    priority: input.priority,
    request: input.request,
    plan: plan.steps.map((s) => ({ stepId: s.stepId, action: s.action, reason: s.reason })),
    parentRunId: input.parent?.runId ?? null,
    backfillId: input.backfillId ?? null,
    partitionKey: input.partitionKey ?? null,
    concurrencyKey: concurrencyKeyOf(loaded, input.params),
    locksWanted,
    pendingSteps: plan.toRun.length,
    traceContext: span.traceparent,
  });
  span.end(run.id);

  // A run that starts as it is created writes its roots queued: no second write to queue them.
  const queuedNow = new Set(unrestricted ? plan.ready : []);
  const rows = plan.steps.map((p): NewStepRow => {
    const spec = loaded.steps.get(p.stepId)!;
    const resolved = resolveStep(loaded.spec, spec, deps.config.tags, input.priority);
    const queued = queuedNow.has(p.stepId);
    const output =
      p.action === "reuse"
        ? (input.parent?.outputs.get(p.stepId) ?? null)
        : (input.materializedOutputs?.get(p.stepId) ?? null);
    return {
      step_id: p.stepId,
      status:
        p.action === "reuse" ? "reused" : p.action === "skip" ? "skipped" : queued ? "queued" : "pending",
      job_id: queued ? stepJobId({ runId: run.id, stepId: p.stepId, attempt: 1 }) : null,
      unmet_needs: p.unmetNeeds,
      max_attempts: resolved.retry.maxAttempts,
      queue: resolved.queue,
      priority: resolved.priority,
      timeout_seconds: resolved.timeoutSeconds,
      plan_reason: p.reason,
      output,
      reused_from: p.action === "reuse" ? (input.parent?.runId ?? null) : null,
      finished: p.action !== "run",
    };
  });
  await insertStepRows(sql, run.id, rows);

  const admission: Awaited<ReturnType<typeof tryAdmit>> = unrestricted
    ? { ok: true, held: {} }
    : await tryAdmit(deps, sql, run, loaded.spec, taken);
  const events: NewEvent[] = [
    {
      type: "run.queued",
      data: {
        workflow: loaded.spec.name,
        version: loaded.version,
        kind: input.kind,
        plan: { run: plan.toRun.length, reuse: plan.toReuse.length, skip: plan.toSkip.length },
        ...(input.partitionKey ? { partition: input.partitionKey } : {}),
        ...(admission.ok ? {} : { waiting: admission.reason }),
      },
    },
  ];
  for (const p of plan.steps) {
    if (p.action === "reuse")
      events.push({
        type: "step.reused",
        stepId: p.stepId,
        data: { fromRunId: input.parent?.runId, reason: p.reason },
      });
    else if (p.action === "skip")
      events.push({ type: "step.skipped", stepId: p.stepId, data: { reason: p.reason } });
  }
  if (unrestricted) {
    events.push({ type: "run.started", data: {} });
    announceQueued(deps, run, loaded, plan.ready, after, events);
    await appendEvents(sql, run.tenant_id, run.id, events, loaded.notifyOn);
    after.runs.add(run.id);
    return { run };
  }
  await appendEvents(sql, run.tenant_id, run.id, events, loaded.notifyOn);
  after.runs.add(run.id);
  if (!admission.ok) return { run, waiting: admission.reason };
  return { run: await startAdmittedRun(deps, sql, run, loaded, admission.held, after) };
}
