import type { Logger } from "pino";
import type { Config } from "../config/index.ts";
import type { DbHandle } from "../db/client.ts";
import { lockRun, type RunRow, type Sql } from "../db/repositories/runs.ts";
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
