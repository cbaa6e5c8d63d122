/**
 * The one attempt lifecycle (domain/attempt.ts) for both phases of a step — its execution and,
 * during a rollback, its compensation: start (drawing a fresh lease token), keep the lease alive,
 * finish, hand back, abandon. Every write goes through the guarded statements of
 * db/transitions.ts; what follows an attempt's end is decided once (`decideAfterAttempt`) and
 * applied here. Starts and finishes take lists: a lone request is a batch of one.
 */
import { randomUUID } from "node:crypto";
import { claimAssetFence } from "../db/repositories/fences.ts";
import { recordMaterialization } from "../db/repositories/materializations.ts";
import {
  appendEvents,
  lockRun,
  type NewEvent,
  type RunRow,
  type Sql,
  type StepRow,
  stepOutputs,
} from "../db/repositories/runs.ts";
import {
  attemptKey,
  extendLease,
  heldAttempt,
  markActivity,
  markAttemptEnded,
  markHandedBack,
  markRunning,
  markSucceeded,
  readAttempts,
} from "../db/transitions.ts";
import {
  type AttemptDecision,
  type AttemptEnd,
  type AttemptError,
  activeRunStatusOf,
  canFinishIn,
  decideAfterAttempt,
  judgeStart,
  type Phase,
  type Refused,
  refuse,
} from "../domain/attempt.ts";
import { stepJobId } from "../domain/ports.ts";
import { resolveStep } from "../domain/workflow/resolve.ts";
import type { Executor } from "../domain/workflow/spec.ts";
import { collectTemplateRefs } from "../domain/workflow/templates.ts";
import { type Activity, activityEvents } from "./activity.ts";
import { assetLockKey } from "./admission.ts";
import { advanceAfterSuccesses, advanceRun } from "./advance.ts";
import { type AfterCommit, type EngineDeps, inRunsTransaction, inRunTransaction } from "./deps.ts";
import { ItemFailure } from "./group-commit.ts";
import { jobFor } from "./jobs.ts";
import { advanceRollback, failRollback } from "./rollback.ts";
import type { LoadedSpec } from "./specs.ts";

export type { AttemptError } from "../domain/attempt.ts";

export interface AttemptRef {
  runId: string;
  stepId: string;
  attempt: number;
  /** Default `execute`. */
  phase?: Phase;
}

export type HeldRef = AttemptRef & { token: string };

export interface StartedAttempt extends AttemptRef {
  phase: Phase;
  tenantId: string;
  token: string;
  executor: Executor;
  timeoutSeconds: number;
  params: Record<string, unknown>;
  /** Outputs of the upstream steps the executor's templates read. */
  upstream: Record<string, { output: unknown }>;
}

export type StartResult =
  | { accepted: true; attempt: StartedAttempt }
  | (Refused & { /** Ask again after this long (a live attempt's lease). */ retryAfterMs?: number });

export type FinishResult =
  | {
      accepted: true;
      retry?: { attempt: number; delayMs: number };
      /** A child this success made ready, claimed for the same worker (see `Continuation`). */
      next?: StartedAttempt;
    }
  | Refused;

/**
 * Continue in the worker: a success that makes a child ready may claim it for the worker that
 * reported it, in the same transaction, instead of sending it through the queue. The claimed
 * attempt is queued, started, leased and fenced exactly like one a job started (its events say
 * so), and recovered the same way if that worker dies; only the queue round trip is skipped.
 */
export interface Continuation {
  worker: { id: string; leaseSeconds: number };
  /** Queues this worker serves: only their steps can be claimed. */
  queues: ReadonlySet<string>;
}

export type StartRequest = AttemptRef & { jobId?: string };

const phaseOf = (ref: { phase?: Phase }): Phase => ref.phase ?? "execute";
/** Step events of a compensation carry `data.phase`; a step's own carry none. */
const phaseData = (phase: Phase) => (phase === "compensate" ? { phase } : {});

/**
 * Starts attempts of one run's steps (either phase) in one transaction, each judged by
 * `judgeStart` against the rows as they are *now*: an abandonment earlier in the batch can end
 * the run or cancel a sibling, so the rows are read again after one.
 */
export async function startAttempts(
  deps: EngineDeps,
  runId: string,
  jobs: readonly StartRequest[],
  worker: { id: string; leaseSeconds: number },
): Promise<StartResult[]> {
  return inRunTransaction(deps, runId, (sql, locked, after) =>
    startLocked(deps, sql, runId, locked, jobs, worker, after),
  );
}

/**
 * `startAttempts` inside a transaction that holds the run's lock (`locked`: its row then, or
 * `"reread"` when earlier work in the transaction may have changed it: it is read again together
 * with the attempts, in one round trip).
 */
async function startLocked(
  deps: EngineDeps,
  sql: Sql,
  runId: string,
  locked: RunRow | undefined | "reread",
  jobs: readonly StartRequest[],
  worker: { id: string; leaseSeconds: number },
  after: AfterCommit,
): Promise<StartResult[]> {
  const keys = jobs.map((j) => ({ stepId: j.stepId, phase: phaseOf(j) }));
  // Sent together, answered in order on the transaction's connection (postgres.js pipelines).
  const [current, read] = await Promise.all([
    locked === "reread" ? lockRun(sql, runId) : locked,
    locked === undefined ? undefined : readAttempts(sql, runId, keys),
  ]);
  if (!current || !read) return jobs.map(() => refuse("run_not_found", "run not found"));
  let run: RunRow = current;
  let rows = read;
  const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
  const results: StartResult[] = [];
  const chosen: Array<{ index: number; job: StartRequest; phase: Phase; token: string }> = [];
  const taken = new Set<string>();
  for (const job of jobs) {
    const phase = phaseOf(job);
    const key = attemptKey(job.stepId, phase);
    if (taken.has(key)) {
      results.push(refuse("duplicate", "duplicate delivery of a job started in this batch"));
      continue;
    }
    const row = rows.get(key);
    const judged = judgeStart(
      run.status === activeRunStatusOf[phase],
      run.status,
      row && {
        status: row.status,
        attempt: row.attempt,
        jobId: row.job_id,
        leaseLeftMs: row.lease_left_ms,
      },
      job,
    );
    if (judged.action === "refuse") {
      results.push({
        ...refuse(judged.refusal, judged.reason),
        ...(judged.retryAfterMs !== undefined ? { retryAfterMs: judged.retryAfterMs } : {}),
      });
    } else if (judged.action === "abandon_then_refuse") {
      const outcome = await abandonAttempt(deps, sql, run, loaded, row!, "no heartbeat", after);
      results.push(refuse("lease_lost", `worker lost during attempt ${job.attempt}; ${outcome}`));
      // What the abandonment changed (the run may have failed, siblings been cancelled) is what
      // the rest of the batch is judged against.
      run = (await lockRun(sql, runId))!;
      rows = await readAttempts(sql, runId, keys);
    } else {
      taken.add(key);
      chosen.push({ index: results.length, job, phase, token: randomUUID() });
      results.push(refuse("illegal_transition", "pending")); // replaced below
    }
  }
  const startable = chosen.filter((c) => run.status === activeRunStatusOf[c.phase]);
  const started = await markRunning(
    sql,
    runId,
    startable.map((c) => ({
      stepId: c.job.stepId,
      phase: c.phase,
      attempt: c.job.attempt,
      token: c.token,
    })),
    worker,
  );
  const accepted = chosen.filter((c) => started.has(attemptKey(c.job.stepId, c.phase)));
  for (const c of chosen) {
    if (!started.has(attemptKey(c.job.stepId, c.phase)))
      results[c.index] =
        run.status === activeRunStatusOf[c.phase]
          ? refuse("not_current", "step moved on")
          : refuse("run_inactive", `run is ${run.status}`);
  }
  const attempts = await announceStarts(
    deps,
    sql,
    run,
    loaded,
    accepted.map((c) => ({ stepId: c.job.stepId, phase: c.phase, attempt: c.job.attempt, token: c.token })),
    worker,
    after,
  );
  for (const [i, c] of accepted.entries()) results[c.index] = { accepted: true, attempt: attempts[i]! };
  return results;
}

/**
 * Writes the `step.started` events of attempts just moved to running and builds what their
 * worker needs to execute them (executor, params, the upstream outputs its templates read).
 */
async function announceStarts(
  deps: EngineDeps,
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  started: ReadonlyArray<{ stepId: string; phase: Phase; attempt: number; token: string }>,
  worker: { id: string },
  after: AfterCommit,
): Promise<StartedAttempt[]> {
  if (started.length === 0) return [];
  await appendEvents(
    sql,
    run.tenant_id,
    run.id,
    started.map((c) => ({
      type: "step.started",
      stepId: c.stepId,
      attempt: c.attempt,
      data: { ...phaseData(c.phase), attempt: c.attempt, workerId: worker.id },
    })),
  );
  after.runs.add(run.id);
  const executors = started.map((c) => {
    const spec = loaded.steps.get(c.stepId)!;
    return c.phase === "compensate" ? spec.compensate! : spec.run;
  });
  const referencedBy = executors.map((executor) => {
    const refs: string[] = [];
    for (const found of collectTemplateRefs(executor))
      if (found.ref?.kind === "step") refs.push(found.ref.stepId);
    return refs;
  });
  const wanted = [...new Set(referencedBy.flat())];
  const outputs = wanted.length === 0 ? new Map<string, unknown>() : await stepOutputs(sql, run.id, wanted);
  return started.map((c, i) => {
    const upstream: Record<string, { output: unknown }> = {};
    for (const id of referencedBy[i]!) if (outputs.has(id)) upstream[id] = { output: outputs.get(id) };
    return {
      runId: run.id,
      stepId: c.stepId,
      attempt: c.attempt,
      phase: c.phase,
      tenantId: run.tenant_id,
      token: c.token,
      executor: executors[i]!,
      timeoutSeconds: resolveStep(loaded.spec, loaded.steps.get(c.stepId)!, deps.config.tags, run.priority)
        .timeoutSeconds,
      params: run.params,
      upstream,
    };
  });
}

export async function startAttempt(
  deps: EngineDeps,
  job: StartRequest,
  worker: { id: string; leaseSeconds: number },
): Promise<StartResult> {
  return (await startAttempts(deps, job.runId, [job], worker))[0]!;
}

/** Extends the lease; false when the attempt is no longer this holder's (cancelled, taken over). */
export async function renewLease(deps: EngineDeps, ref: HeldRef, leaseSeconds: number): Promise<boolean> {
  return extendLease(deps.db.sql, { ...ref, phase: phaseOf(ref) }, leaseSeconds);
}

export interface FinishRequest {
  ref: HeldRef;
  end: Extract<AttemptEnd, { kind: "succeeded" | "failed" }>;
  /** Ask to continue with a child this success makes ready (see `Continuation`). */
  continue?: boolean;
}

/**
 * Finishes attempts of one run in one transaction: successes of either phase with one fenced
 * statement, then the run advances once for them all; failures each through the decision. A
 * result is refused (`lease_lost`) when the attempt is no longer the holder's.
 */
export async function finishAttempts(
  deps: EngineDeps,
  runId: string,
  items: readonly FinishRequest[],
  continuation?: Continuation,
): Promise<FinishResult[]> {
  const results = await inRunTransaction(deps, runId, (sql, run, after) =>
    finishLocked(deps, sql, runId, run, items, continuation, after),
  );
  logRefusedFinishes(deps, items, results);
  return results;
}

function logRefusedFinishes(
  deps: EngineDeps,
  items: readonly FinishRequest[],
  results: readonly FinishResult[],
) {
  for (const [i, r] of results.entries())
    if (!r.accepted)
      deps.log.warn({ ...items[i]!.ref, token: undefined, refusal: r.refusal }, "stale result refused");
}

/** `finishAttempts` inside a transaction that holds the run's lock (`run`: its row then). */
async function finishLocked(
  deps: EngineDeps,
  sql: Sql,
  runId: string,
  run: RunRow | undefined,
  items: readonly FinishRequest[],
  continuation: Continuation | undefined,
  after: AfterCommit,
): Promise<FinishResult[]> {
  if (!run) return items.map(() => refuse("run_not_found", "run not found"));
  const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
  const results: FinishResult[] = items.map(() =>
    refuse("lease_lost", "the attempt is no longer this holder's"),
  );
  const events: NewEvent[] = [];
  const successes: number[] = [];
  const failures: number[] = [];
  for (const [i, item] of items.entries()) {
    const phase = phaseOf(item.ref);
    if (!canFinishIn(phase, run.status)) results[i] = refuse("run_inactive", `run is ${run.status}`);
    else if (item.end.kind === "succeeded") successes.push(i);
    else failures.push(i);
  }

  // Steps that provide assets write only with the run's newest fencing tokens (SPEC §8.6).
  const fenced: number[] = [];
  for (const i of successes) {
    const { ref } = items[i]!;
    const provides = phaseOf(ref) === "execute" ? (loaded.steps.get(ref.stepId)?.provides ?? []) : [];
    if (provides.length === 0) {
      fenced.push(i);
      continue;
    }
    if (!(await heldAttempt(sql, { ...ref, phase: "execute" }))) continue;
    const refusedWrites = await claimAssetWrites(sql, run, provides);
    if (refusedWrites.length === 0) {
      fenced.push(i);
      continue;
    }
    deps.log.warn(
      { runId, stepId: ref.stepId, refused: refusedWrites },
      "materialization refused (stale fencing token)",
    );
    const error = {
      message: `asset lock lost: ${refusedWrites.join("; ")}; this run's materialization is refused`,
      code: "lock_lost",
    };
    await applyFailure(deps, sql, run, loaded, ref, { kind: "failed", error, retryable: false }, after);
    results[i] = refuse("lease_lost", error.message);
  }

  const moved = await markSucceeded(
    sql,
    runId,
    fenced.map((i) => {
      const { ref, end } = items[i]!;
      return {
        stepId: ref.stepId,
        phase: phaseOf(ref),
        attempt: ref.attempt,
        token: ref.token,
        output: (end as { output: unknown }).output,
      };
    }),
  );
  const succeeded: Record<Phase, string[]> = { execute: [], compensate: [] };
  for (const i of fenced) {
    const { ref, end } = items[i]!;
    const phase = phaseOf(ref);
    const key = attemptKey(ref.stepId, phase);
    if (!moved.delete(key)) continue; // refused, or a duplicate that already counted
    results[i] = { accepted: true };
    succeeded[phase].push(ref.stepId);
    const output = (end as { output: unknown }).output;
    events.push({
      type: "step.succeeded",
      stepId: ref.stepId,
      attempt: ref.attempt,
      // The output is written once, on the step's row (GET /v1/runs/{id}), not again here.
      data: { ...phaseData(phase), attempt: ref.attempt },
    });
    if (phase === "execute") {
      const provides = loaded.steps.get(ref.stepId)?.provides ?? [];
      if (provides.length > 0)
        events.push(...(await recordMaterializations(sql, run, ref.stepId, provides, output)));
    }
  }
  if (succeeded.execute.length > 0) {
    await advanceAfterSuccesses(deps, sql, run, loaded, succeeded.execute, after, events);
  } else if (succeeded.compensate.length > 0) {
    await advanceRollback(sql, run, loaded, after, events);
    await appendEvents(sql, run.tenant_id, run.id, events);
    after.runs.add(run.id);
  } else if (events.length > 0) {
    await appendEvents(sql, run.tenant_id, run.id, events);
    after.runs.add(run.id);
  }

  for (const i of failures) {
    const { ref, end } = items[i]!;
    const current = (await lockRun(sql, runId))!;
    if (!canFinishIn(phaseOf(ref), current.status)) {
      results[i] = refuse("run_inactive", `run is ${current.status}`);
      continue;
    }
    results[i] = await applyFailure(
      deps,
      sql,
      current,
      loaded,
      ref,
      end as Extract<AttemptEnd, { kind: "failed" }>,
      after,
    );
  }
  if (continuation) await claimReadyChildren(deps, sql, run, loaded, items, results, continuation, after);
  return results;
}

/** A start or a finish, for the worker's one committer (`commitAttempts`). */
export type AttemptRequest = { start: StartRequest } | { finish: FinishRequest };
export type AttemptResult = StartResult | FinishResult;

const runOfRequest = (r: AttemptRequest): string => ("start" in r ? r.start.runId : r.finish.ref.runId);

/**
 * The worker's one committer: starts and finishes of any number of runs in one transaction and one
 * commit (the runs locked in id order up front; per run, finishes first, then starts, each judged
 * against the rows as the earlier ones left them). If the shared transaction fails (a deadlock
 * with another process, a run whose work throws), each run is tried again in a transaction of its
 * own, so one run's failure is that run's alone.
 */
export async function commitAttempts(
  deps: EngineDeps,
  requests: readonly AttemptRequest[],
  continuation: Continuation,
): Promise<Array<AttemptResult | ItemFailure>> {
  const byRun = new Map<string, number[]>();
  for (const [i, r] of requests.entries()) {
    const runId = runOfRequest(r);
    const list = byRun.get(runId);
    if (list) list.push(i);
    else byRun.set(runId, [i]);
  }
  const results: Array<AttemptResult | ItemFailure> = new Array(requests.length);
  const work = async (sql: Sql, runId: string, locked: RunRow | undefined, after: AfterCommit) => {
    const indexes = byRun.get(runId)!;
    const finishes = indexes.filter((i) => "finish" in requests[i]!);
    const starts = indexes.filter((i) => "start" in requests[i]!);
    if (finishes.length > 0) {
      const items = finishes.map((i) => (requests[i] as { finish: FinishRequest }).finish);
      const done = await finishLocked(deps, sql, runId, locked, items, continuation, after);
      logRefusedFinishes(deps, items, done);
      for (const [k, i] of finishes.entries()) results[i] = done[k]!;
    }
    if (starts.length > 0) {
      const jobs = starts.map((i) => (requests[i] as { start: StartRequest }).start);
      // The finishes may have changed the run: its row is read again with the attempts.
      const current = finishes.length > 0 && locked ? "reread" : locked;
      const done = await startLocked(deps, sql, runId, current, jobs, continuation.worker, after);
      for (const [k, i] of starts.entries()) results[i] = done[k]!;
    }
  };
  try {
    await inRunsTransaction(deps, [...byRun.keys()], work);
  } catch (error) {
    if (byRun.size === 1) throw error;
    deps.log.warn(
      { err: (error as Error).message, runs: byRun.size },
      "batch across runs failed; each run alone",
    );
    await Promise.all(
      [...byRun.entries()].map(([runId, indexes]) =>
        inRunTransaction(deps, runId, (sql, run, after) => work(sql, runId, run, after)).catch((failure) => {
          for (const i of indexes) results[i] = new ItemFailure(failure);
        }),
      ),
    );
  }
  return results;
}

/**
 * Claims, for the worker that asked, children the successes in this transaction made ready on
 * queues it serves: one per success that asked. Their jobs are not sent; everything else about
 * them is as if a job had started them. The caller holds the run lock.
 */
async function claimReadyChildren(
  deps: EngineDeps,
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  items: readonly FinishRequest[],
  results: FinishResult[],
  continuation: Continuation,
  after: AfterCommit,
): Promise<void> {
  const wanting = items.flatMap((item, i) => (item.continue && results[i]!.accepted ? [i] : []));
  if (wanting.length === 0) return;
  const runId = run.id;
  // Jobs this transaction queued. If a failure later in the same batch ended the run, their steps
  // were cancelled and markRunning's guard (queued or retrying) moves none of them.
  const claimable = after.jobs.filter(
    (j) =>
      j.runId === runId &&
      j.phase === undefined &&
      !j.delayMs &&
      !j.jobSuffix &&
      j.attempt === 1 &&
      continuation.queues.has(j.queue),
  );
  if (claimable.length === 0) return;
  const picked = claimable.slice(0, wanting.length).map((job) => ({
    job,
    stepId: job.stepId,
    phase: "execute" as const,
    attempt: job.attempt,
    token: randomUUID(),
  }));
  const moved = await markRunning(sql, runId, picked, continuation.worker);
  const claimed = picked.filter((p) => moved.has(attemptKey(p.stepId, p.phase)));
  for (const p of claimed) after.jobs.splice(after.jobs.indexOf(p.job), 1);
  const attempts = await announceStarts(deps, sql, run, loaded, claimed, continuation.worker, after);
  attempts.forEach((attempt, k) => {
    const i = wanting[k]!;
    results[i] = { ...(results[i] as { accepted: true }), next: attempt };
  });
}

/** Records a successful attempt and advances the run (a batch of one). */
export async function completeAttempt(
  deps: EngineDeps,
  ref: HeldRef,
  output: unknown,
): Promise<FinishResult> {
  return (await finishAttempts(deps, ref.runId, [{ ref, end: { kind: "succeeded", output } }]))[0]!;
}

/** Records a failed attempt: a retry after its backoff, or the step fails (a batch of one). */
export async function failAttempt(
  deps: EngineDeps,
  ref: HeldRef,
  error: AttemptError,
  options: { retryable: boolean } = { retryable: true },
): Promise<FinishResult> {
  return (
    await finishAttempts(deps, ref.runId, [
      { ref, end: { kind: "failed", error, retryable: options.retryable } },
    ])
  )[0]!;
}

/** A failed attempt of a holder: fence, decide, apply. The caller holds the run lock. */
async function applyFailure(
  deps: EngineDeps,
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  ref: HeldRef,
  end: Extract<AttemptEnd, { kind: "failed" }>,
  after: AfterCommit,
): Promise<FinishResult> {
  const row = await heldAttempt(sql, { ...ref, phase: phaseOf(ref) });
  if (!row) return refuse("lease_lost", "the attempt is no longer this holder's");
  const decision = decide(deps, run, loaded, row, end);
  if (decision.next === "succeed") throw new Error("a failed attempt cannot succeed");
  await applyDecision(deps, sql, run, loaded, row, decision, after);
  return decision.next === "retry"
    ? { accepted: true, retry: { attempt: decision.attempt, delayMs: decision.delayMs } }
    : { accepted: true };
}

function decide(
  deps: EngineDeps,
  run: RunRow,
  loaded: LoadedSpec,
  row: StepRow,
  end: AttemptEnd,
): AttemptDecision {
  const resolved = resolveStep(loaded.spec, loaded.steps.get(row.step_id)!, deps.config.tags, run.priority);
  return decideAfterAttempt(
    { attempt: row.attempt, maxAttempts: row.max_attempts, retry: resolved.retry },
    end,
  );
}

/**
 * Applies a retry or a failure to a row whose attempt ended (failed, or lost): the row moves on
 * with its event, and a failure for good advances the run (execute) or stops the rollback
 * (compensate). The caller holds the run lock and has checked the fence.
 */
async function applyDecision(
  deps: EngineDeps,
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  row: StepRow,
  decision: Exclude<AttemptDecision, { next: "succeed" }>,
  after: AfterCommit,
  lost = false,
): Promise<void> {
  const phase = row.phase;
  const key = { stepId: row.step_id, phase };
  if (decision.next === "retry") {
    const job = jobFor(run, row, decision.attempt, { delayMs: decision.delayMs });
    await markAttemptEnded(
      sql,
      run.id,
      { ...key, attempt: row.attempt },
      { status: "failed", error: decision.error },
      {
        status: decision.delayMs > 0 ? "retrying" : "queued",
        attempt: decision.attempt,
        delayMs: decision.delayMs,
        jobId: stepJobId(job),
        error: decision.error,
      },
    );
    await appendEvents(sql, run.tenant_id, run.id, [
      {
        type: "step.retrying",
        stepId: row.step_id,
        attempt: decision.attempt,
        data: {
          ...phaseData(phase),
          attempt: decision.attempt,
          delayMs: decision.delayMs,
          ...(lost ? {} : { error: decision.error }),
          ...(decision.reason ? { reason: decision.reason } : {}),
        },
      },
    ]);
    after.runs.add(run.id);
    after.jobs.push(job);
    return;
  }
  await markAttemptEnded(
    sql,
    run.id,
    { ...key, attempt: row.attempt },
    { status: "failed", error: decision.error },
    { status: "failed", error: decision.error },
  );
  const events: NewEvent[] = [
    {
      type: "step.failed",
      stepId: row.step_id,
      attempt: row.attempt,
      data: { ...phaseData(phase), attempt: row.attempt, error: decision.error },
    },
  ];
  if (phase === "execute") {
    await advanceRun(
      deps,
      sql,
      run,
      loaded,
      { stepId: row.step_id, status: "failed", error: decision.error },
      after,
      events,
    );
  } else {
    await failRollback(deps, sql, run, row.step_id, decision.error, after, events);
  }
}

/**
 * Gives up on a running attempt whose worker is gone (its lease expired): the attempt is recorded
 * as lost and the next one is queued at once as a job of its own, or, with no attempts left, the
 * step (or the rollback) fails. The caller holds the run lock and has checked the lease.
 */
export async function abandonAttempt(
  deps: EngineDeps,
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  row: StepRow,
  why: string,
  after: AfterCommit,
): Promise<string> {
  deps.log.warn(
    {
      runId: run.id,
      stepId: row.step_id,
      phase: row.phase,
      attempt: row.attempt,
      workerId: row.worker_id,
      why,
    },
    "worker lost",
  );
  const decision = decide(deps, run, loaded, row, { kind: "lost", why });
  if (decision.next === "succeed") throw new Error("a lost attempt cannot succeed");
  await applyDecision(deps, sql, run, loaded, row, decision, after, true);
  return decision.next === "retry" ? `attempt ${decision.attempt} queued` : "attempts exhausted";
}

/** step.log / step.progress events from a running attempt; dropped if the attempt is no longer current. */
export async function recordActivity(deps: EngineDeps, ref: HeldRef, activity: Activity): Promise<boolean> {
  return inRunTransaction(deps, ref.runId, async (sql, run, after) => {
    if (!run) return false;
    const phase = phaseOf(ref);
    if (!(await markActivity(sql, { ...ref, phase }, activity.progress))) return false;
    await appendEvents(sql, run.tenant_id, run.id, activityEvents(ref, activity, phaseData(phase)));
    after.runs.add(run.id);
    return true;
  });
}

/**
 * A stopping worker gives a running attempt back: queued again under the same attempt number
 * (its work was interrupted, not failed), with a fresh job.
 */
export async function handBackAttempt(deps: EngineDeps, ref: HeldRef): Promise<boolean> {
  const suffix = `h${Date.now()}`;
  const phase = phaseOf(ref);
  return inRunTransaction(deps, ref.runId, async (sql, run, after) => {
    if (!run || !canFinishIn(phase, run.status)) return false;
    const jobId = stepJobId({ ...ref, phase: phase === "compensate" ? phase : undefined, jobSuffix: suffix });
    const row = await markHandedBack(sql, { ...ref, phase }, jobId);
    if (!row) return false;
    await appendEvents(sql, run.tenant_id, run.id, [
      {
        type: "step.queued",
        stepId: ref.stepId,
        attempt: ref.attempt,
        data: { ...phaseData(phase), attempt: ref.attempt, reason: "handed back" },
      },
    ]);
    after.runs.add(run.id);
    after.jobs.push(jobFor(run, row, ref.attempt, { jobSuffix: suffix }));
    return true;
  });
}

/**
 * Checks and advances the fencing token of each asset lock the step writes: a token older than
 * the newest that has written is refused. Returns what was refused (nothing is written then).
 */
async function claimAssetWrites(sql: Sql, run: RunRow, assets: readonly string[]): Promise<string[]> {
  const refused: string[] = [];
  for (const asset of assets) {
    const lockKey = assetLockKey(asset, run.partition_key);
    const fence = run.locks_held?.[lockKey];
    if (fence === undefined) {
      refused.push(`the run holds no lock for ${lockKey}`);
      continue;
    }
    const claimed = await claimAssetFence(sql, run.tenant_id, lockKey, String(fence));
    if (!claimed.ok) refused.push(`${lockKey} fencing token ${fence} < ${claimed.newest ?? "?"}`);
  }
  return refused;
}

/** One materialization per asset the step provides, with the run's fencing token. */
async function recordMaterializations(
  sql: Sql,
  run: RunRow,
  stepId: string,
  assets: readonly string[],
  output: unknown,
): Promise<NewEvent[]> {
  const events: NewEvent[] = [];
  for (const asset of assets) {
    const fence = run.locks_held[assetLockKey(asset, run.partition_key)]!;
    const materializationId = await recordMaterialization(sql, {
      tenantId: run.tenant_id,
      asset,
      runId: run.id,
      stepId,
      partitionKey: run.partition_key,
      fence,
      metadata: output,
    });
    events.push({
      type: "asset.materialized",
      stepId,
      data: { asset, partition: run.partition_key, fencingToken: fence, materializationId },
    });
  }
  return events;
}
