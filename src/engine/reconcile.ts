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
 * 4. the same for the compensations of runs `rolling_back` (see rollback.ts).
 *
 * Every repair happens under the run lock and re-checks the state it saw, so it is safe to run
 * concurrently with workers (and with a second reconciler, though the supervisor lease prevents that).
 */
import {
  appendEvents,
  lockRun,
  type RunRow,
  type StepRow,
  setRunStatus,
  stepStatuses,
} from "../db/repositories/runs.ts";
import { stepJobId } from "../domain/ports.ts";
import { outcomeOf } from "../domain/progress.ts";
import { abandonAttempt, jobFor } from "./attempts.ts";
import { AfterCommit, type EngineDeps } from "./deps.ts";
import { reconcileCompensations } from "./rollback.ts";

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
  const compensations = await reconcileCompensations(deps, options, batch);
  const report = { requeued, abandoned, closed, compensations };
  if (requeued + abandoned + closed + compensations > 0) deps.log.info(report, "reconciler repaired runs");
  return report;
}

type Candidate = Pick<StepRow, "run_id" | "step_id" | "attempt" | "status" | "queue" | "job_id">;

async function requeueLostJobs(deps: EngineDeps, minAgeSeconds: number, batch: number): Promise<number> {
  const sql = deps.db.sql;
  const candidates = await sql<Candidate[]>`
    select s.run_id, s.step_id, s.attempt, s.status, s.queue, s.job_id
    from step_runs s join runs r on r.id = s.run_id
    where r.status = 'running'
      and ((s.status = 'queued' and s.queued_at < now() - make_interval(secs => ${minAgeSeconds}))
        or (s.status = 'retrying' and s.next_attempt_at < now() - make_interval(secs => ${minAgeSeconds})))
    limit ${batch}`;
  if (candidates.length === 0) return 0;
  const withIds = candidates.map((c) => ({
    ...c,
    jobId: c.job_id ?? stepJobId({ runId: c.run_id, stepId: c.step_id, attempt: c.attempt }),
  }));
  const live = await deps.dispatcher.liveJobs(withIds.map((c) => ({ queue: c.queue, jobId: c.jobId })));
  let requeued = 0;
  for (const lost of withIds.filter((c) => !live.has(c.jobId))) {
    const after = new AfterCommit();
    const done = await deps.db.sql.begin(async (tx) => {
      const run = await lockRun(tx, lost.run_id);
      if (run?.status !== "running") return false;
      const [step] = await tx<StepRow[]>`
        select * from step_runs where run_id = ${lost.run_id} and step_id = ${lost.step_id}
          and attempt = ${lost.attempt} and status = ${lost.status}
          and job_id is not distinct from ${lost.job_id}`;
      if (!step) return false; // it moved on meanwhile
      const job = jobFor(run, step, step.attempt, { jobSuffix: `r${Date.now()}` });
      await tx`update step_runs set job_id = ${stepJobId(job)}, updated_at = now()
        where run_id = ${run.id} and step_id = ${step.step_id}`;
      after.jobs.push(job);
      deps.log.warn(
        {
          runId: run.id,
          stepId: step.step_id,
          attempt: step.attempt,
          lostJob: lost.jobId,
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
  const expired = await deps.db.sql<Candidate[]>`
    select run_id, step_id, attempt, status, queue, job_id from step_runs
    where status = 'running' and lease_expires_at < now() - make_interval(secs => ${graceSeconds})
    limit ${batch}`;
  let abandoned = 0;
  for (const lost of expired) {
    const after = new AfterCommit();
    const done = await deps.db.sql.begin(async (tx) => {
      const run = await lockRun(tx, lost.run_id);
      if (!run) return false;
      const [step] = await tx<StepRow[]>`
        select * from step_runs where run_id = ${lost.run_id} and step_id = ${lost.step_id}
          and attempt = ${lost.attempt} and status = 'running'
          and lease_expires_at < now() - make_interval(secs => ${graceSeconds})`;
      if (!step) return false;
      if (run.status !== "running" && run.status !== "paused") {
        // A run that ended or is rolling back while this step ran: nothing to retry; the step
        // ends cancelled, with its event.
        await tx`update step_runs set status = 'cancelled', lease_token = null, finished_at = now(), updated_at = now()
          where run_id = ${run.id} and step_id = ${step.step_id}`;
        await appendEvents(tx, run.tenant_id, run.id, [
          {
            type: "step.cancelled",
            stepId: step.step_id,
            data: { reason: `worker lost while the run was ${run.status}` },
          },
        ]);
        after.runs.add(run.id);
        return true;
      }
      // Running or paused: the attempt is lost and the next one queued (a paused run's job is
      // refused until resume re-creates it), or the step fails when no attempts are left.
      const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
      await abandonAttempt(deps, tx, run, loaded, step, "lease expired", after);
      return true;
    });
    await after.flush(deps);
    if (done) abandoned++;
  }
  return abandoned;
}

async function closeFinishedRuns(deps: EngineDeps, minAgeSeconds: number, batch: number): Promise<number> {
  const stuck = await deps.db.sql<Pick<RunRow, "id">[]>`
    select r.id from runs r
    where r.status = 'running' and r.updated_at < now() - make_interval(secs => ${minAgeSeconds})
      and not exists (select 1 from step_runs s where s.run_id = r.id
        and s.status not in ('succeeded', 'failed', 'skipped', 'cancelled', 'reused'))
    limit ${batch}`;
  let closed = 0;
  for (const { id } of stuck) {
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
      await tx`update runs set pending_steps = 0 where id = ${id}`;
      await setRunStatus(tx, id, outcome, { finished: true, ...(error ? { error } : {}) });
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
