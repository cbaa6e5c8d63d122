/**
 * The reconciler: Postgres is the source of truth, the queue only a delivery mechanism. Each pass
 * repairs what a lost job, a vanished worker or a crash between two writes can leave behind:
 *
 * 1. steps `queued` (or `retrying` past their delay) whose recorded job no longer exists, or
 *    finished without moving the step (Redis flushed or failed over, a crash between commit and
 *    enqueue): a fresh job is enqueued and recorded;
 * 2. steps `running` whose lease expired (the worker died, froze or lost Postgres): the attempt is
 *    abandoned and the next one queued, or the step fails when no attempts are left;
 * 3. runs still `running` whose steps are all terminal: closed with their outcome;
 * 4. runs `rolling_back` with no compensation in flight: advanced (see rollback.ts).
 *
 * 1 and 2 cover both phases of an attempt alike: a compensation is recovered like a step.
 *
 * Every repair happens under the run lock and re-checks the state it saw, so it is safe to run
 * concurrently with workers (and with a second reconciler, though the supervisor lease prevents that).
 */
import { appendEvents, lockRun, stepStatuses } from "../db/repositories/runs.ts";
import { findFinishedRunningRuns, markRunEnded } from "../db/run-transitions.ts";
import {
  findExpiredLeases,
  findWaitingAttempts,
  markCancelled,
  type RecoveryCandidate,
  recheckExpired,
  recheckWaiting,
  recordJob,
} from "../db/transitions.ts";
import { activeRunStatusOf } from "../domain/attempt.ts";
import { stepJobId } from "../domain/ports.ts";
import { outcomeOf } from "../domain/progress.ts";
import { abandonAttempt } from "./attempts.ts";
import { AfterCommit, type EngineDeps } from "./deps.ts";
import { jobFor } from "./jobs.ts";
import { reconcileRollbacks } from "./rollback.ts";

export interface ReconcileOptions {
  /** A queued step younger than this is left alone (its job may be on the way). */
  minAgeSeconds: number;
  /** A running step's lease must have expired this long ago before its worker counts as lost. */
  leaseGraceSeconds: number;
  /** Rows examined per pass and per kind of repair. */
  batch?: number;
}

export interface ReconcileReport {
  requeued: number;
  abandoned: number;
  closed: number;
  /** Compensations re-enqueued or recovered, and rollbacks advanced. */
  compensations: number;
}

export async function reconcile(deps: EngineDeps, options: ReconcileOptions): Promise<ReconcileReport> {
  const batch = options.batch ?? 1000;
  const requeued = await requeueLostJobs(deps, options.minAgeSeconds, batch);
  const abandoned = await recoverExpiredLeases(deps, options.leaseGraceSeconds, batch);
  const closed = await closeFinishedRuns(deps, options.minAgeSeconds, batch);
  const compensations = await reconcileRollbacks(deps, options, batch);
  const report = { requeued, abandoned, closed, compensations };
  if (requeued + abandoned + closed + compensations > 0) deps.log.info(report, "reconciler repaired runs");
  return report;
}

const jobIdOf = (c: RecoveryCandidate) =>
  c.job_id ??
  stepJobId({
    runId: c.run_id,
    stepId: c.step_id,
    attempt: c.attempt,
    ...(c.phase === "compensate" ? { phase: c.phase } : {}),
  });

async function requeueLostJobs(deps: EngineDeps, minAgeSeconds: number, batch: number): Promise<number> {
  const candidates = await findWaitingAttempts(deps.db.sql, minAgeSeconds, batch);
  if (candidates.length === 0) return 0;
  const live = await deps.dispatcher.liveJobs(candidates.map((c) => ({ queue: c.queue, jobId: jobIdOf(c) })));
  let requeued = 0;
  for (const lost of candidates.filter((c) => !live.has(jobIdOf(c)))) {
    const after = new AfterCommit();
    const done = await deps.db.sql.begin(async (tx) => {
      const run = await lockRun(tx, lost.run_id);
      if (run?.status !== activeRunStatusOf[lost.phase]) return false;
      const row = await recheckWaiting(tx, lost);
      if (!row) return false; // it moved on meanwhile
      const job = jobFor(run, row, row.attempt, { jobSuffix: `r${Date.now()}` });
      await recordJob(tx, run.id, { stepId: row.step_id, phase: row.phase }, stepJobId(job));
      after.jobs.push(job);
      deps.log.warn(
        {
          runId: run.id,
          stepId: row.step_id,
          phase: row.phase,
          attempt: row.attempt,
          lostJob: jobIdOf(lost),
          jobId: stepJobId(job),
        },
        "step had no job; enqueued again",
      );
      return true;
    });
    await after.flush(deps);
    if (done) requeued++;
  }
  return requeued;
}

async function recoverExpiredLeases(deps: EngineDeps, graceSeconds: number, batch: number): Promise<number> {
  const expired = await findExpiredLeases(deps.db.sql, graceSeconds, batch);
  let abandoned = 0;
  for (const lost of expired) {
    const after = new AfterCommit();
    const done = await deps.db.sql.begin(async (tx) => {
      const run = await lockRun(tx, lost.run_id);
      if (!run) return false;
      const row = await recheckExpired(tx, lost, graceSeconds);
      if (!row) return false;
      // A paused run's step is recovered like a running one's (its next job is refused until
      // resume re-creates it).
      const active =
        run.status === activeRunStatusOf[row.phase] || (row.phase === "execute" && run.status === "paused");
      if (!active) {
        // The run ended (or moved to another phase) while this attempt ran: nothing to retry; the
        // attempt ends cancelled, with its event.
        await markCancelled(tx, run.id, { stepId: row.step_id, phase: row.phase });
        await appendEvents(tx, run.tenant_id, run.id, [
          {
            type: "step.cancelled",
            stepId: row.step_id,
            data: {
              ...(row.phase === "compensate" ? { phase: row.phase } : {}),
              reason: `worker lost while the run was ${run.status}`,
            },
          },
        ]);
        after.runs.add(run.id);
        return true;
      }
      const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
      await abandonAttempt(deps, tx, run, loaded, row, "lease expired", after);
      return true;
    });
    await after.flush(deps);
    if (done) abandoned++;
  }
  return abandoned;
}

async function closeFinishedRuns(deps: EngineDeps, minAgeSeconds: number, batch: number): Promise<number> {
  const stuck = await findFinishedRunningRuns(deps.db.sql, minAgeSeconds, batch);
  let closed = 0;
  for (const id of stuck) {
    const after = new AfterCommit();
    const done = await deps.db.sql.begin(async (tx) => {
      const run = await lockRun(tx, id);
      if (run?.status !== "running") return false;
      const statuses = await stepStatuses(tx, id);
      if (
        [...statuses.values()].some(
          (s) => !["succeeded", "failed", "skipped", "cancelled", "reused"].includes(s),
        )
      )
        return false;
      const outcome = outcomeOf(statuses.values());
      const failed = [...statuses].filter(([, s]) => s === "failed").map(([stepId]) => stepId);
      const error = outcome === "failed" ? { message: `steps failed: ${failed.join(", ")}` } : undefined;
      if (!(await markRunEnded(tx, id, outcome, { resetPending: true, ...(error ? { error } : {}) })))
        return false;
      await appendEvents(tx, run.tenant_id, id, [
        { type: outcome === "succeeded" ? "run.succeeded" : "run.failed", data: error ? { error } : {} },
      ]);
      after.runs.add(id);
      after.ended.push(run);
      deps.log.warn({ runId: id, outcome }, "run had only finished steps; closed");
      return true;
    });
    await after.flush(deps);
    if (done) closed++;
  }
  return closed;
}
