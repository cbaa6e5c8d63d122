/**
 * The API-facing half of the engine: submit a workflow run (idempotently), cancel it, read it.
 */
import { createHash } from "node:crypto";
import {
  appendEvents,
  type EventRow,
  lockRun,
  type NewEvent,
  type RunRow,
  readEvents,
  readStepsWithCompensation,
  runColumns,
  type Sql,
  type StepCompensation,
  type StepRow,
} from "../db/repositories/runs.ts";
import { workflowsRepository } from "../db/repositories/workflows.ts";
import { cancelUnfinished } from "../db/transitions.ts";
import { FlowlineError, notFound } from "../domain/errors.ts";
import { planRun } from "../domain/planner.ts";
import { isTerminalRun, type RunKind, type RunStatus } from "../domain/status.ts";
import { canonicalJson } from "../domain/workflow/canonical.ts";
import { resolveStep } from "../domain/workflow/resolve.ts";
import { releaseTaken } from "./admission.ts";
import { insertRun, type TakenLocks } from "./create-run.ts";
import { AfterCommit, type EngineDeps } from "./deps.ts";
import { checkRunQuotas } from "./quotas.ts";
import { loadedSpec } from "./specs.ts";

export interface SubmitRunInput {
  tenantId: string;
  workflow: string;
  params?: Record<string, unknown>;
  priority?: number;
  idempotencyKey?: string;
  trigger?: string;
}

export interface PlannedStep {
  stepId: string;
  action: "run";
  reason: "selected";
  queue: string;
  tags: string[];
  needs: string[];
}

export function requestHash(route: string, body: unknown): string {
  return createHash("sha256")
    .update(route)
    .update("\n")
    .update(canonicalJson(body ?? null))
    .digest("hex");
}

/** Idempotency keys are kept this long; a retry after that starts a new run. */
const IDEMPOTENCY_TTL_HOURS = 24;

async function loadWorkflow(deps: EngineDeps, tenantId: string, name: string) {
  const found = await workflowsRepository(deps.db.db).get(tenantId, name);
  if (!found) throw notFound(`Workflow "${name}"`);
  if (found.archivedAt)
    throw new FlowlineError("conflict", `Workflow "${name}" is archived; PUT it again to restore it`);
  return found;
}

/** Params layered left to right (defaults first), refused when larger than the configured limit. */
export function mergeParams(deps: EngineDeps, ...layers: Array<Record<string, unknown> | undefined>) {
  const params: Record<string, unknown> = Object.assign({}, ...layers.filter(Boolean));
  const size = Buffer.byteLength(JSON.stringify(params));
  if (size > deps.config.limits.maxRunParamsBytes) {
    throw new FlowlineError(
      "validation_failed",
      `params (merged over the workflow's defaults) are ${size} bytes; the limit is ${deps.config.limits.maxRunParamsBytes} (limits.maxRunParamsBytes)`,
      {
        issues: [
          {
            location: "body",
            path: ["params"],
            message: `${size} bytes, over limits.maxRunParamsBytes (${deps.config.limits.maxRunParamsBytes})`,
          },
        ],
      },
    );
  }
  return params;
}

/** The plan of a whole-workflow run: every step runs. */
export async function planWorkflowRun(deps: EngineDeps, input: SubmitRunInput) {
  const wf = await loadWorkflow(deps, input.tenantId, input.workflow);
  const loaded = loadedSpec(wf.workflowId, wf.version, wf.spec);
  const steps: PlannedStep[] = wf.spec.steps.map((s) => ({
    stepId: s.id,
    action: "run",
    reason: "selected",
    queue: resolveStep(wf.spec, s, deps.config.tags, input.priority).queue,
    tags: s.tags,
    needs: loaded.graph.parents(s.id) as string[],
  }));
  return {
    workflow: { name: wf.name, version: wf.version },
    params: mergeParams(deps, wf.spec.params, input.params),
    steps,
    queues: [...new Set(steps.map((s) => s.queue))],
    tags: [...new Set(steps.flatMap((s) => s.tags))],
  };
}

/**
 * Starts a run of the workflow's current version. With an idempotency key, concurrent duplicates
 * collapse on the key's primary key: the loser waits for the winner's commit and answers its run.
 */
export async function submitRun(
  deps: EngineDeps,
  input: SubmitRunInput,
  idempotency?: { key: string; hash: string },
  options: { guard?: (sql: Sql) => Promise<void> } = {},
): Promise<{ run: RunRow; created: boolean }> {
  const wf = await loadWorkflow(deps, input.tenantId, input.workflow);
  const loaded = await deps.specs.load(wf.workflowId, wf.version);
  const params = mergeParams(deps, wf.spec.params, input.params);
  const priority = input.priority ?? wf.spec.defaults?.priority ?? 5;
  const after = new AfterCommit();
  const taken: TakenLocks = [];
  const result = await deps.db.sql
    .begin(async (sql) => {
      await options.guard?.(sql);
      if (idempotency) {
        const claimed = await sql`
        insert into idempotency_keys (tenant_id, key, request_hash, expires_at)
        values (${input.tenantId}, ${idempotency.key}, ${idempotency.hash}, now() + make_interval(hours => ${IDEMPOTENCY_TTL_HOURS}))
        on conflict (tenant_id, key) do update set request_hash = excluded.request_hash, run_id = null,
          created_at = now(), expires_at = excluded.expires_at
          where idempotency_keys.expires_at < now()
        returning 1`;
        if (claimed.length === 0) {
          const [existing] = await sql<{ request_hash: string; run_id: string | null }[]>`
          select request_hash, run_id from idempotency_keys where tenant_id = ${input.tenantId} and key = ${idempotency.key}`;
          if (!existing || existing.request_hash !== idempotency.hash) {
            throw new FlowlineError(
              "idempotency_conflict",
              "This Idempotency-Key was used with a different request",
            );
          }
          const [run] = await sql<
            RunRow[]
          >`select ${runColumns(sql)} from runs where id = ${existing.run_id}`;
          if (!run)
            throw new FlowlineError("conflict", "The request with this Idempotency-Key did not create a run");
          return { run, created: false };
        }
      }
      const plan = planRun(loaded.spec, { kind: "workflow" }, { graph: loaded.graph });
      const { run } = await insertRun(
        deps,
        sql,
        {
          tenantId: input.tenantId,
          loaded,
          kind: "workflow",
          trigger: input.trigger ?? "api",
          params,
          priority,
          request: { params: input.params ?? {}, priority: input.priority ?? null },
          plan,
        },
        after,
        taken,
      );
      await checkRunQuotas(deps, sql, input.tenantId, { runs: 1, steps: plan.toRun.length });
      if (idempotency) {
        await sql`update idempotency_keys set run_id = ${run.id} where tenant_id = ${input.tenantId} and key = ${idempotency.key}`;
      }
      return { run, created: true };
    })
    .catch(async (error) => {
      await releaseTaken(deps, taken);
      throw error;
    });
  if (result.created) {
    deps.log.info({ runId: result.run.id, workflow: wf.name, version: wf.version }, "run started");
    await after.flush(deps);
  }
  return result;
}

/** Cancels a run and everything still to do in it. Idempotent: a finished run is answered as is. */
export async function cancelRun(
  deps: EngineDeps,
  tenantId: string,
  runId: string,
): Promise<RunRow & { workflow_name: string }> {
  const after = new AfterCommit();
  const run = await deps.db.sql.begin(async (sql) => {
    const run = await lockRun(sql, runId, tenantId);
    if (!run) throw notFound("Run");
    const [wf] = await sql<{ name: string }[]>`select name from workflows where id = ${run.workflow_id}`;
    const name = wf!.name;
    if (isTerminalRun(run.status)) return { ...run, workflow_name: name };
    // Steps and, during a rollback, compensations: running ones are aborted alike.
    const stopped = await cancelUnfinished(sql, runId);
    const events: NewEvent[] = stopped.map((s) =>
      s.phase === "compensate"
        ? {
            type: "step.cancelled",
            stepId: s.step_id,
            ...(s.attempt > 0 ? { attempt: s.attempt } : {}),
            data: { phase: s.phase, reason: "run cancelled" },
          }
        : { type: "step.cancelled", stepId: s.step_id, data: { reason: "run cancelled" } },
    );
    events.push({ type: "run.cancelled", data: {} });
    const [updated] = await sql<RunRow[]>`
      update runs set status = 'cancelled', pending_steps = 0, finished_at = now(), updated_at = now(), revision = revision + 1
      where id = ${runId} returning ${runColumns(sql)}`;
    await appendEvents(sql, run.tenant_id, run.id, events);
    after.runs.add(run.id);
    after.ended.push(run);
    const running = [...new Set(stopped.filter((s) => s.status === "running").map((s) => s.step_id))];
    if (running.length > 0) after.cancels.push({ runId, stepIds: running });
    return { ...updated!, workflow_name: name };
  });
  await after.flush(deps);
  deps.log.info({ runId }, "run cancelled");
  return run;
}

export interface RunDetails {
  run: RunRow & { workflow_name: string };
  steps: Array<StepRow & { compensation: StepCompensation | null }>;
}

export async function getRun(deps: EngineDeps, tenantId: string, runId: string): Promise<RunDetails> {
  const [run] = await deps.db.sql<(RunRow & { workflow_name: string })[]>`
    select ${runColumns(deps.db.sql, "r")}, w.name as workflow_name from runs r join workflows w on w.id = r.workflow_id
    where r.id = ${runId} and r.tenant_id = ${tenantId}`;
  if (!run) throw notFound("Run");
  const steps = await readStepsWithCompensation(deps.db.sql, runId);
  const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
  steps.sort((a, b) => (loaded.order.get(a.step_id) ?? 0) - (loaded.order.get(b.step_id) ?? 0));
  return { run, steps };
}

export interface ListRunsFilter {
  workflow?: string;
  status?: RunStatus;
  kind?: RunKind;
  limit: number;
  /** Where the previous page ended: its last run's creation time (µs since the epoch) and id. */
  before?: RunListPosition;
}

/** A place in the run list that holds whether or not its run still exists (retention). */
export interface RunListPosition {
  atMicros: string;
  id: string;
}

export async function listRuns(deps: EngineDeps, tenantId: string, filter: ListRunsFilter) {
  const sql = deps.db.sql;
  const rows = await sql<(RunRow & { workflow_name: string; position_us: string })[]>`
    select ${runColumns(deps.db.sql, "r")}, w.name as workflow_name,
      (extract(epoch from r.created_at) * 1000000)::bigint::text as position_us
    from runs r join workflows w on w.id = r.workflow_id
    where r.tenant_id = ${tenantId}
      ${filter.workflow ? sql`and w.name = ${filter.workflow}` : sql``}
      ${filter.status ? sql`and r.status = ${filter.status}` : sql``}
      ${filter.kind ? sql`and r.kind = ${filter.kind}` : sql``}
      ${
        // A position, not a row: the cursor holds even when retention deleted the run it names.
        // Compared in the database: created_at has microseconds, which a JSON timestamp would lose.
        filter.before
          ? sql`and (r.created_at, r.id) < (timestamptz 'epoch' + ${filter.before.atMicros}::bigint * interval '1 microsecond', ${filter.before.id}::uuid)`
          : sql``
      }
    -- NULLS LAST matches runs_tenant_created_idx, so the page is read from the index, not sorted.
    order by r.created_at desc nulls last, r.id desc nulls last
    limit ${filter.limit + 1}`;
  const items = rows.slice(0, filter.limit);
  const last = items.at(-1);
  return {
    items,
    hasMore: rows.length > filter.limit,
    last: last ? { atMicros: last.position_us, id: last.id } : undefined,
  };
}

/** A page of a run's events after `afterId` (the run must belong to the tenant). */
export async function runEvents(
  deps: EngineDeps,
  tenantId: string,
  runId: string,
  afterId: number,
  limit: number,
): Promise<{ run: Pick<RunRow, "id" | "status">; events: EventRow[] }> {
  const [run] = await deps.db.sql<Pick<RunRow, "id" | "status">[]>`
    select id, status from runs where id = ${runId} and tenant_id = ${tenantId}`;
  if (!run) throw notFound("Run");
  return { run, events: await readEvents(deps.db.sql, runId, afterId, limit) };
}
