import type { Logger } from "pino";
import type { Config } from "../config/index.ts";
import type { DbHandle } from "../db/client.ts";
import { lockRun, lockRuns, type RunRow, type Sql } from "../db/repositories/runs.ts";
import type { ControlBus, EventNotifier, LockService, StepDispatcher, StepJob } from "../domain/ports.ts";
import type { SpecCache } from "./specs.ts";

/** The explicit bundle of dependencies every engine operation receives. */
export interface EngineDeps {
  db: DbHandle;
  config: Config;
  dispatcher: StepDispatcher;
  notifier: EventNotifier;
  control: ControlBus;
  locks: LockService;
  log: Logger;
  specs: SpecCache;
  /** After runs ended: free their locks and start what waited for them (see admission.ts). */
  runsEnded(
    runs: ReadonlyArray<
      Pick<RunRow, "id" | "tenant_id" | "locks_held" | "locks_wanted" | "workflow_id" | "workflow_version">
    >,
  ): Promise<void>;
}

/** Work that may only happen once the transaction that decided it has committed. */
export class AfterCommit {
  readonly jobs: StepJob[] = [];
  readonly runs = new Set<string>();
  readonly cancels: Array<{ runId: string; stepIds?: string[] }> = [];
  /** Runs that reached a terminal state: their asset locks are freed and waiting runs admitted. */
  readonly ended: Array<
    Pick<RunRow, "id" | "tenant_id" | "locks_held" | "locks_wanted" | "workflow_id" | "workflow_version">
  > = [];

  async flush(deps: EngineDeps): Promise<void> {
    // Dispatch first: a failure here leaves steps `queued` in Postgres, which the reconciler
    // re-enqueues; the notification only speeds up readers and can be lost safely.
    if (this.jobs.length > 0) await deps.dispatcher.dispatch(this.jobs);
    for (const c of this.cancels) {
      await deps.control
        .publish({ type: "cancel", runId: c.runId, ...(c.stepIds ? { stepIds: c.stepIds } : {}) })
        .catch((error) => deps.log.warn({ err: error, runId: c.runId }, "cancel message not published"));
    }
    if (this.runs.size > 0) {
      await deps.notifier
        .notify(this.runs)
        .catch((error) => deps.log.warn({ err: error }, "event notification failed"));
    }
    if (this.ended.length > 0) {
      await deps.runsEnded(this.ended).catch((error) => deps.log.warn({ err: error }, "after run end"));
    }
  }
}

/**
 * The shape of almost every engine write: one transaction that first locks the run row (which is
 * what orders a run's events), then the after-commit work once it committed. `run` is undefined
 * when there is no such run (or it belongs to another tenant).
 */
export async function inRunTransaction<T>(
  deps: EngineDeps,
  runId: string,
  work: (sql: Sql, run: RunRow | undefined, after: AfterCommit) => Promise<T>,
): Promise<T> {
  const after = new AfterCommit();
  const result = (await deps.db.sql.begin(async (sql) => work(sql, await lockRun(sql, runId), after))) as T;
  await after.flush(deps);
  return result;
}

/**
 * One transaction for the work of several runs (a worker's batch across runs, a batch of
 * submissions): their rows are locked up front in id order by one statement, then `work` runs for
 * each run in that order, and the after-commit work of all of them runs once, after the one
 * commit. A run that does not exist gets `undefined`.
 */
export async function inRunsTransaction<T>(
  deps: EngineDeps,
  runIds: readonly string[],
  work: (sql: Sql, runId: string, run: RunRow | undefined, after: AfterCommit) => Promise<T>,
): Promise<Map<string, T>> {
  const after = new AfterCommit();
  const ordered = [...new Set(runIds)].sort();
  const results = (await deps.db.sql.begin(async (sql) => {
    const locked = await lockRuns(sql, ordered);
    const out = new Map<string, T>();
    for (const runId of ordered) out.set(runId, await work(sql, runId, locked.get(runId), after));
    return out;
  })) as Map<string, T>;
  await after.flush(deps);
  return results;
}
