/**
 * The API-facing half of the engine: submit a workflow run (idempotently), cancel it, read it.
 */
import { createHash } from "node:crypto";
import {
  type AuditSlot,
  currentAuditSlot,
  withAuditSlot,
  writeAuditSlots,
} from "../db/repositories/audit.ts";
import {
  bindIdempotencyKey,
  claimIdempotencyKey,
  idempotentRequest,
} from "../db/repositories/idempotency.ts";
import {
  appendEvents,
  type EventRow,
  listRunRows,
  lockRun,
  type NewEvent,
  type RunRow,
  readEvents,
  readRun,
  readRunWithName,
  readStepsWithCompensation,
  runStatusOf,
  type Sql,
  type StepCompensation,
  type StepRow,
} from "../db/repositories/runs.ts";
import { workflowName, workflowsRepository } from "../db/repositories/workflows.ts";
import { markRunCancelled } from "../db/run-transitions.ts";
import { cancelUnfinished } from "../db/transitions.ts";
import { FlowlineError, notFound } from "../domain/errors.ts";
import { planRun } from "../domain/planner.ts";
import { isTerminalRun, type RunKind, type RunStatus } from "../domain/status.ts";
import { canonicalJson } from "../domain/workflow/canonical.ts";
import { resolveStep } from "../domain/workflow/resolve.ts";
import { releaseTaken } from "./admission.ts";
import { insertRun, type NewRun, type TakenLocks } from "./create-run.ts";
import { AfterCommit, type EngineDeps } from "./deps.ts";
import { GroupCommitter, ItemFailure } from "./group-commit.ts";
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
 *
 * A run that starts as it is created (no concurrency limit, no asset to lock) goes through this
 * process's submission committer: submissions that arrive while one commits share the next
 * transaction and its one commit. Others take their own transaction (admission takes locks).
 */
export async function submitRun(
  deps: EngineDeps,
  input: SubmitRunInput,
  idempotency?: { key: string; hash: string },
  options: { guard?: (sql: Sql) => Promise<void> } = {},
): Promise<{ run: RunRow; created: boolean }> {
  const wf = await loadWorkflow(deps, input.tenantId, input.workflow);
  const loaded = await deps.specs.load(wf.workflowId, wf.version);
  const plan = planRun(loaded.spec, { kind: "workflow" }, { graph: loaded.graph });
  const submission: Submission = {
    input,
    idempotency,
    guard: options.guard,
    audit: currentAuditSlot(),
    run: {
      tenantId: input.tenantId,
      loaded,
      kind: "workflow",
      trigger: input.trigger ?? "api",
      params: mergeParams(deps, wf.spec.params, input.params),
      priority: input.priority ?? wf.spec.defaults?.priority ?? 5,
      request: { params: input.params ?? {}, priority: input.priority ?? null },
      plan,
    },
  };
  const result =
    !loaded.spec.concurrency && plan.assets.length === 0
      ? await submitterOf(deps).submit("runs", submission)
      : await submitAlone(deps, submission);
  if (result.created)
    deps.log.info({ runId: result.run.id, workflow: wf.name, version: wf.version }, "run started");
  return result;
}

interface Submission {
  input: SubmitRunInput;
  idempotency: { key: string; hash: string } | undefined;
  guard: ((sql: Sql) => Promise<void>) | undefined;
  /** The request's audit entry, written in the transaction that commits this submission. */
  audit: AuditSlot | undefined;
  run: NewRun;
}
type Submitted = { run: RunRow; created: boolean };

const submitters = new WeakMap<EngineDeps, GroupCommitter<Submission, Submitted>>();

function submitterOf(deps: EngineDeps): GroupCommitter<Submission, Submitted> {
  let committer = submitters.get(deps);
  if (!committer) {
    committer = new GroupCommitter((_key, batch) => submitBatch(deps, batch), 100);
    submitters.set(deps, committer);
  }
  return committer;
}

/**
 * Submissions of runs that need no admission, many in one transaction. One refused by its guard,
 * idempotency key or quota fails alone (refusals come before it writes anything); any other error
 * fails the transaction, and then each submission is tried alone.
 */
async function submitBatch(
  deps: EngineDeps,
  batch: readonly Submission[],
): Promise<Array<Submitted | ItemFailure>> {
  if (batch.length === 1) return [await submitAlone(deps, batch[0]!)];
  const after = new AfterCommit();
  const taken: TakenLocks = [];
  const audited: AuditSlot[] = [];
  try {
    // Outside any one request's audit context: the entries of all submissions are written below.
    const results = await withAuditSlot(undefined, () =>
      deps.db.sql.begin(async (sql) => {
        const out: Array<Submitted | ItemFailure> = new Array(batch.length);
        // By tenant: their quota locks, held to the commit, are taken in one order by every batch.
        const order = [...batch.keys()].sort((a, b) =>
          batch[a]!.input.tenantId < batch[b]!.input.tenantId
            ? -1
            : batch[a]!.input.tenantId > batch[b]!.input.tenantId
              ? 1
              : a - b,
        );
        for (const i of order) {
          try {
            out[i] = await submitIn(deps, sql, batch[i]!, after, taken);
          } catch (error) {
            // A refusal (guard, idempotency key, quota) comes before the submission writes anything.
            if (!(error instanceof FlowlineError)) throw error;
            out[i] = new ItemFailure(error);
          }
        }
        batch.forEach((item, i) => {
          const result = out[i]!;
          if (result instanceof ItemFailure || !item.audit?.claim()) return;
          noteSubmitted(item.audit, result);
          audited.push(item.audit);
        });
        await writeAuditSlots(sql, audited);
        return out;
      }),
    );
    for (const slot of audited) slot.settle(true);
    await after.flush(deps);
    return results as Array<Submitted | ItemFailure>;
  } catch (error) {
    for (const slot of audited) slot.settle(false);
    await releaseTaken(deps, taken);
    deps.log.warn(
      { err: (error as Error).message, runs: batch.length },
      "batch of submissions failed; each alone",
    );
    return Promise.all(batch.map((item) => submitAlone(deps, item).catch((e) => new ItemFailure(e))));
  }
}

const noteSubmitted = (slot: AuditSlot, { run, created }: Submitted) =>
  slot.note({ id: run.id, status: run.status, created });

async function submitAlone(deps: EngineDeps, item: Submission): Promise<Submitted> {
  const after = new AfterCommit();
  const taken: TakenLocks = [];
  // In the submitting request's audit context, whichever request's work commits it.
  const result = await withAuditSlot(item.audit, () =>
    deps.db.sql.begin(async (sql) => {
      const submitted = await submitIn(deps, sql, item, after, taken);
      if (item.audit) noteSubmitted(item.audit, submitted);
      return submitted;
    }),
  ).catch(async (error) => {
    await releaseTaken(deps, taken);
    throw error;
  });
  if (result.created) await after.flush(deps);
  return result;
}

/**
 * One submission inside a transaction: its guard, its idempotency key, its quota, its run. Every
 * refusal (a FlowlineError) is thrown before the first write, which lets a shared transaction go on.
 */
async function submitIn(
  deps: EngineDeps,
  sql: Sql,
  { input, idempotency, guard, run: newRun }: Submission,
  after: AfterCommit,
  taken: TakenLocks,
): Promise<Submitted> {
  await guard?.(sql);
  if (idempotency) {
    const claimed = await claimIdempotencyKey(
      sql,
      input.tenantId,
      idempotency.key,
      idempotency.hash,
      IDEMPOTENCY_TTL_HOURS,
    );
    if (!claimed) {
      const existing = await idempotentRequest(sql, input.tenantId, idempotency.key);
      if (!existing || existing.request_hash !== idempotency.hash) {
        throw new FlowlineError(
          "idempotency_conflict",
          "This Idempotency-Key was used with a different request",
        );
      }
      const run = existing.run_id ? await readRun(sql, existing.run_id) : undefined;
      if (!run)
        throw new FlowlineError("conflict", "The request with this Idempotency-Key did not create a run");
      return { run, created: false };
    }
  }
  // Before anything is written: a refusal then leaves nothing to undo in a shared transaction.
  await checkRunQuotas(deps, sql, input.tenantId, {
    runs: 1,
    steps: newRun.plan.toRun.length,
    written: false,
  });
  const { run } = await insertRun(deps, sql, newRun, after, taken);
  if (idempotency) await bindIdempotencyKey(sql, input.tenantId, idempotency.key, run.id);
  return { run, created: true };
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
    const name = (await workflowName(sql, run.workflow_id))!;
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
    const updated = await markRunCancelled(sql, runId);
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
  const run = await readRunWithName(deps.db.sql, tenantId, runId);
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
  const rows = await listRunRows(deps.db.sql, tenantId, filter);
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
  const run = await runStatusOf(deps.db.sql, tenantId, runId);
  if (!run) throw notFound("Run");
  return { run, events: await readEvents(deps.db.sql, runId, afterId, limit) };
}
