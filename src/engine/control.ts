/**
 * Pause and resume. A paused run dispatches no new steps: running attempts finish (their results
 * are recorded and their children become ready, but stay `pending`), queued jobs that reach a
 * worker are refused (the step stays `queued`). Resume queues what became ready meanwhile and
 * gives every waiting step that lost its job a fresh one. Both are idempotent; any other state
 * is a 409.
 */
import {
  appendEvents,
  lockRun,
  type NewEvent,
  type RunRow,
  readySteps,
  type Sql,
  waitingSteps,
} from "../db/repositories/runs.ts";
import { workflowName } from "../db/repositories/workflows.ts";
import { markRunPaused, markRunResumed } from "../db/run-transitions.ts";
import { recordJob } from "../db/transitions.ts";
import { FlowlineError, illegalRunTransition, notFound } from "../domain/errors.ts";
import { stepJobId } from "../domain/ports.ts";
import { queueSteps } from "./advance.ts";
import { AfterCommit, type EngineDeps } from "./deps.ts";
import { jobFor } from "./jobs.ts";

type RunWithName = RunRow & { workflow_name: string };

async function withName(sql: Sql, run: RunRow): Promise<RunWithName> {
  return { ...run, workflow_name: (await workflowName(sql, run.workflow_id))! };
}

export async function pauseRun(deps: EngineDeps, tenantId: string, runId: string): Promise<RunWithName> {
  const after = new AfterCommit();
  const run = await deps.db.sql.begin(async (sql) => {
    const run = await lockRun(sql, runId, tenantId);
    if (!run) throw notFound("Run");
    if (run.status === "paused") return withName(sql, run);
    if (run.status !== "running")
      throw new FlowlineError("conflict", `Run is ${run.status}: only a running run can be paused`);
    const paused = await markRunPaused(sql, runId);
    if (!paused) throw illegalRunTransition(run, "paused");
    await appendEvents(sql, run.tenant_id, run.id, [{ type: "run.paused", data: {} }]);
    after.runs.add(run.id);
    return withName(sql, paused);
  });
  await after.flush(deps);
  deps.log.info({ runId }, "run paused");
  return run;
}

export async function resumeRun(deps: EngineDeps, tenantId: string, runId: string): Promise<RunWithName> {
  const after = new AfterCommit();
  const run = await deps.db.sql.begin(async (sql) => {
    const run = await lockRun(sql, runId, tenantId);
    if (!run) throw notFound("Run");
    if (run.status === "running") return withName(sql, run);
    if (run.status !== "paused")
      throw new FlowlineError("conflict", `Run is ${run.status}: only a paused run can be resumed`);
    const resumed = await markRunResumed(sql, runId);
    if (!resumed) throw illegalRunTransition(run, "running");
    const events: NewEvent[] = [{ type: "run.resumed", data: {} }];
    // A retry's remaining delay is measured on the database clock, which set next_attempt_at:
    // this process's clock may be off.
    const steps = await waitingSteps(sql, runId);
    // Jobs of waiting steps may have reached a worker while the run was paused and been refused.
    // Each gets a fresh job; an old one still waiting is refused as superseded when it arrives.
    for (const step of steps) {
      const delayMs = step.status === "retrying" ? Math.max(0, Math.round(step.due_in_ms ?? 0)) : 0;
      const job = jobFor(resumed, step, step.attempt, {
        jobSuffix: `p${Date.now()}`,
        ...(delayMs ? { delayMs } : {}),
      });
      await recordJob(sql, runId, { stepId: step.step_id, phase: "execute" }, stepJobId(job));
      after.jobs.push(job);
    }
    const ready = await readySteps(sql, runId);
    const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
    await queueSteps(deps, sql, resumed, loaded, ready, after, events);
    await appendEvents(sql, run.tenant_id, run.id, events);
    after.runs.add(run.id);
    return withName(sql, resumed);
  });
  await after.flush(deps);
  deps.log.info({ runId }, "run resumed");
  return run;
}
