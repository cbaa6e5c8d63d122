/**
 * Starting and completing attempts in batches: one transaction per run for every start (or
 * completion) a worker has in hand for it, with set-based statements, so the run-row lock that
 * orders a run's events is taken once per batch instead of once per step. Semantics are those of
 * `startAttempt` / `completeAttempt` applied in order; the worker feeds these through a
 * `GroupCommitter`, so a lone request is a batch of one and goes at once.
 */
import { randomUUID } from "node:crypto";
import { appendEvents, lockRun, type NewEvent, type StepRow, stepOutputs } from "../db/repositories/runs.ts";
import { resolveStep } from "../domain/workflow/resolve.ts";
import { collectTemplateRefs } from "../domain/workflow/templates.ts";
import { advanceAfterSuccesses } from "./advance.ts";
import {
  type AttemptRef,
  abandonAttempt,
  completeAttempt,
  type FinishResult,
  type StartedAttempt,
  type StartResult,
} from "./attempts.ts";
import { AfterCommit, type EngineDeps } from "./deps.ts";
import { ItemFailure } from "./group-commit.ts";

export type StartRequest = AttemptRef & { jobId?: string };

/** `startAttempt` for several jobs of one run, in one transaction. */
export async function startAttempts(
  deps: EngineDeps,
  runId: string,
  jobs: readonly StartRequest[],
  worker: { id: string; leaseSeconds: number },
): Promise<StartResult[]> {
  const after = new AfterCommit();
  const results = await deps.db.sql.begin(async (sql): Promise<StartResult[]> => {
    const run = await lockRun(sql, runId);
    if (!run) return jobs.map(() => ({ accepted: false, reason: "run not found" }));
    if (run.status !== "running")
      return jobs.map(() => ({ accepted: false, reason: `run is ${run.status}` }));
    const rows = await sql<StepRow[]>`
      select * from step_runs where run_id = ${runId} and step_id in ${sql([...new Set(jobs.map((j) => j.stepId))])}`;
    const steps = new Map(rows.map((r) => [r.step_id, r]));
    const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
    const results: StartResult[] = [];
    const accepted: Array<{ index: number; job: StartRequest; token: string }> = [];
    const takenHere = new Set<string>();
    let abandoned = false;
    for (const job of jobs) {
      const step = steps.get(job.stepId);
      if (takenHere.has(job.stepId)) {
        // The same job delivered twice in one batch: the first copy has it.
        results.push({ accepted: false, reason: "duplicate delivery of a job started in this batch" });
      } else if (!step) {
        results.push({ accepted: false, reason: "step not found" });
      } else if (step.attempt !== job.attempt) {
        results.push({ accepted: false, reason: `attempt ${job.attempt} is not current` });
      } else if (job.jobId && step.job_id && job.jobId !== step.job_id) {
        results.push({ accepted: false, reason: `job ${job.jobId} was superseded by ${step.job_id}` });
      } else if (step.status === "running") {
        // BullMQ redelivered the job: its previous holder lost the job lock (killed or frozen).
        const outcome = await abandonAttempt(deps, sql, run, loaded, step, "no heartbeat", after);
        abandoned = true;
        const [fresh] = await sql<StepRow[]>`
          select * from step_runs where run_id = ${runId} and step_id = ${job.stepId}`;
        steps.set(job.stepId, fresh!);
        results.push({ accepted: false, reason: `worker lost during attempt ${job.attempt}; ${outcome}` });
      } else if (step.status !== "queued" && step.status !== "retrying") {
        results.push({ accepted: false, reason: `step is ${step.status}` });
      } else {
        const token = randomUUID();
        accepted.push({ index: results.length, job, token });
        results.push({ accepted: false, reason: "pending" }); // replaced below
        takenHere.add(job.stepId);
      }
    }
    if (accepted.length === 0) return results;
    if (abandoned) {
      // Abandoning an attempt may have ended the run (attempts exhausted, failure policy): then
      // nothing else in this batch may start.
      const [now] = await sql<{ status: string }[]>`select status from runs where id = ${runId}`;
      if (now?.status !== "running") {
        for (const a of accepted) results[a.index] = { accepted: false, reason: `run is ${now?.status}` };
        return results;
      }
    }

    const proposed = accepted.map((a) => ({ step_id: a.job.stepId, attempt: a.job.attempt, token: a.token }));
    // Guarded like the one-by-one path: only a step still waiting under this attempt starts.
    const started = new Set(
      (
        await sql<{ step_id: string }[]>`
          update step_runs s set status = 'running', lease_token = x.token,
            worker_id = ${worker.id}, started_at = now(), finished_at = null, error = null, progress = null,
            lease_expires_at = now() + make_interval(secs => ${worker.leaseSeconds}), updated_at = now()
          from jsonb_to_recordset(${sql.json(proposed)}) as x(step_id text, attempt int, token text)
          where s.run_id = ${runId} and s.step_id = x.step_id and s.attempt = x.attempt
            and s.status in ('queued', 'retrying')
          returning s.step_id`
      ).map((r) => r.step_id),
    );
    for (const a of accepted) {
      if (!started.has(a.job.stepId)) results[a.index] = { accepted: false, reason: "step moved on" };
    }
    accepted.splice(0, accepted.length, ...accepted.filter((a) => started.has(a.job.stepId)));
    if (accepted.length === 0) return results;
    const rowsJson = accepted.map((a) => ({ step_id: a.job.stepId, attempt: a.job.attempt, token: a.token }));
    await sql`
      insert into step_attempts (run_id, step_id, attempt, status, worker_id, started_at)
      select ${runId}, x.step_id, x.attempt, 'running', ${worker.id}, now()
      from jsonb_to_recordset(${sql.json(rowsJson)}) as x(step_id text, attempt int, token text)
      on conflict (run_id, step_id, attempt) do update set status = 'running', worker_id = excluded.worker_id,
        started_at = excluded.started_at, finished_at = null, error = null`;
    await appendEvents(
      sql,
      run.tenant_id,
      run.id,
      accepted.map((a) => ({
        type: "step.started",
        stepId: a.job.stepId,
        attempt: a.job.attempt,
        data: { attempt: a.job.attempt, workerId: worker.id },
      })),
    );
    after.runs.add(run.id);

    const referencedBy = new Map<string, string[]>();
    for (const a of accepted) {
      const refs: string[] = [];
      for (const found of collectTemplateRefs(loaded.steps.get(a.job.stepId)!.run))
        if (found.ref?.kind === "step") refs.push(found.ref.stepId);
      referencedBy.set(a.job.stepId, refs);
    }
    const outputs = await stepOutputs(sql, run.id, [...new Set([...referencedBy.values()].flat())]);
    for (const a of accepted) {
      const spec = loaded.steps.get(a.job.stepId)!;
      const upstream: Record<string, { output: unknown }> = {};
      for (const id of referencedBy.get(a.job.stepId)!)
        if (outputs.has(id)) upstream[id] = { output: outputs.get(id) };
      const attempt: StartedAttempt = {
        runId: run.id,
        stepId: a.job.stepId,
        attempt: a.job.attempt,
        tenantId: run.tenant_id,
        token: a.token,
        executor: spec.run,
        timeoutSeconds: resolveStep(loaded.spec, spec, deps.config.tags, run.priority).timeoutSeconds,
        params: run.params,
        upstream,
      };
      results[a.index] = { accepted: true, attempt };
    }
    return results;
  });
  await after.flush(deps);
  return results;
}

export interface CompleteRequest {
  ref: AttemptRef & { token: string };
  output: unknown;
}

/**
 * `completeAttempt` for several attempts of one run, in one transaction. Steps that provide
 * assets take the one-by-one path (their fencing checks and materializations); the rest are
 * recorded with set-based statements and the run advances once for all of them.
 */
export async function completeAttempts(
  deps: EngineDeps,
  runId: string,
  items: readonly CompleteRequest[],
): Promise<Array<FinishResult | ItemFailure>> {
  const results: Array<FinishResult | ItemFailure> = items.map(() => ({ accepted: false }));
  const loadedRun = await deps.db.sql<{ workflow_id: string; workflow_version: number }[]>`
    select workflow_id, workflow_version from runs where id = ${runId}`;
  if (!loadedRun[0]) return results;
  const loaded = await deps.specs.load(loadedRun[0].workflow_id, loadedRun[0].workflow_version);
  const simple: number[] = [];
  for (let i = 0; i < items.length; i++) {
    if ((loaded.steps.get(items[i]!.ref.stepId)?.provides ?? []).length > 0) {
      // Its own transaction: a failure here must not cost the rest of the batch.
      results[i] = await completeAttempt(deps, items[i]!.ref, items[i]!.output).catch(
        (error) => new ItemFailure(error),
      );
    } else simple.push(i);
  }
  if (simple.length === 0) return results;

  const after = new AfterCommit();
  await deps.db.sql.begin(async (sql) => {
    const run = await lockRun(sql, runId);
    if (!run) return;
    const rowsJson = simple.map((i) => ({
      step_id: items[i]!.ref.stepId,
      attempt: items[i]!.ref.attempt,
      token: items[i]!.ref.token,
      output: items[i]!.output ?? null,
    }));
    const done = await sql<{ step_id: string; attempt: number; lease: string }[]>`
      update step_runs s set status = 'succeeded', output = x.output, finished_at = now(), progress = 1,
        lease_token = null, updated_at = now()
      from jsonb_to_recordset(${sql.json(rowsJson as never)}) as x(step_id text, attempt int, token text, output jsonb)
      where s.run_id = ${runId} and s.step_id = x.step_id and s.attempt = x.attempt
        and s.lease_token = x.token and s.status = 'running'
      returning s.step_id, s.attempt, x.token as lease`;
    if (done.length === 0) return;
    const won = new Set(done.map((d) => `${d.step_id}\u0000${d.attempt}\u0000${d.lease}`));
    await sql`
      update step_attempts a set status = 'succeeded', finished_at = now()
      from jsonb_to_recordset(${sql.json(done.map((d) => ({ step_id: d.step_id, attempt: d.attempt })))})
        as x(step_id text, attempt int)
      where a.run_id = ${runId} and a.step_id = x.step_id and a.attempt = x.attempt`;
    const events: NewEvent[] = [];
    const succeeded: string[] = [];
    for (const i of simple) {
      const { ref, output } = items[i]!;
      if (!won.has(`${ref.stepId}\u0000${ref.attempt}\u0000${ref.token}`)) continue;
      won.delete(`${ref.stepId}\u0000${ref.attempt}\u0000${ref.token}`); // a duplicate counts once
      results[i] = { accepted: true };
      succeeded.push(ref.stepId);
      events.push({
        type: "step.succeeded",
        stepId: ref.stepId,
        attempt: ref.attempt,
        data: { attempt: ref.attempt, output },
      });
    }
    await advanceAfterSuccesses(deps, sql, run, loaded, succeeded, after, events);
  });
  for (const i of simple) {
    const result = results[i]!;
    if (!(result instanceof ItemFailure) && !result.accepted)
      deps.log.warn({ ...items[i]!.ref, token: undefined }, "stale completion refused");
  }
  await after.flush(deps);
  return results;
}
