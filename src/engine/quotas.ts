/**
 * Per-tenant quotas, exact (SPEC §13): checked inside the transaction that creates a run, under
 * the tenant's quota lock, for every kind of run (workflow runs, materializations and backfills,
 * subgraphs, retries, and runs started by schedules and auto-materialization). Over quota → 429
 * `quota_exceeded` naming the quota, and the transaction writes nothing.
 *
 * The lock is taken before any other lock of a run's creation (concurrency slots are taken after
 * it, in create-run.ts and requests.ts alike), so creations of one tenant cannot deadlock on it.
 */
import { quotasOf } from "../config/index.ts";
import { lockTenantQuotas } from "../db/quota-lock.ts";
import { tenantLoad } from "../db/repositories/quotas.ts";
import type { Sql } from "../db/repositories/runs.ts";
import { quotaExceeded } from "../domain/limits.ts";
import type { EngineDeps } from "./deps.ts";

export { lockTenantQuotas };

/** What the tenant holds, per transaction: read once under the lock, then counted up locally. */
const held = new WeakMap<Sql, { tenantId: string; activeRuns: number; openSteps: number }>();

/**
 * Refuses one more run of `steps` steps to run when the tenant, counting the runs this transaction
 * created already, is at its quota of active runs or would pass its quota of unfinished steps.
 * Runs ending meanwhile elsewhere only lower what the tenant holds, so counting up from one read
 * stays exact for a transaction that creates many runs (a backfill).
 */
export async function checkRunQuotas(
  deps: EngineDeps,
  sql: Sql,
  tenantId: string,
  steps: number,
): Promise<void> {
  let load = held.get(sql);
  if (load?.tenantId !== tenantId) {
    await lockTenantQuotas(sql, tenantId);
    const { activeRuns, openSteps } = await tenantLoad(sql, tenantId);
    load = { tenantId, activeRuns, openSteps };
    held.set(sql, load);
  }
  const quotas = quotasOf(deps.config, tenantId);
  if (load.activeRuns + 1 > quotas.activeRuns) {
    throw quotaExceeded(
      "activeRuns",
      quotas.activeRuns,
      `tenant "${tenantId}" has ${load.activeRuns} active runs and asks for 1 more`,
    );
  }
  if (load.openSteps + steps > quotas.queuedSteps) {
    throw quotaExceeded(
      "queuedSteps",
      quotas.queuedSteps,
      `tenant "${tenantId}" has ${load.openSteps} steps to run and asks for ${steps} more`,
    );
  }
  load.activeRuns += 1;
  load.openSteps += steps;
}
