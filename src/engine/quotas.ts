/**
 * Per-tenant quotas, exact (SPEC §13): checked at the end of the transaction that creates runs,
 * under the tenant's quota lock, for every kind of run (workflow runs, materializations and
 * backfills, subgraphs, retries, and runs started by schedules and auto-materialization). Over
 * quota → 429 `quota_exceeded` naming the quota, and the transaction writes nothing.
 *
 * The lock is taken last, once the runs are written, and held to the commit: two creations of one
 * tenant count one after the other, each seeing the other's committed runs, while the writing
 * itself runs side by side. Every other lock of a run's creation (concurrency slots, idempotency
 * keys) is taken before it, so it closes no cycle.
 */
import { quotasOf } from "../config/index.ts";
import { lockTenantQuotas } from "../db/quota-lock.ts";
import { tenantLoad } from "../db/repositories/quotas.ts";
import type { Sql } from "../db/repositories/runs.ts";
import { quotaExceeded } from "../domain/limits.ts";
import type { NewRun } from "./create-run.ts";
import type { EngineDeps } from "./deps.ts";

/** What runs being created count against their tenant's quotas. */
export const quotaCountOf = (inputs: readonly NewRun[]) => ({
  runs: inputs.length,
  steps: inputs.reduce((n, input) => n + input.plan.toRun.length, 0),
});

/**
 * Refuses runs over their tenant's quotas: `created.runs` runs with `created.steps` steps to run,
 * already written by this transaction (`written`, the default), or about to be (a submission that
 * shares its transaction with others checks first, so a refusal leaves nothing to undo). Takes the
 * tenant's quota lock, held to the commit.
 */
export async function checkRunQuotas(
  deps: EngineDeps,
  sql: Sql,
  tenantId: string,
  created: { runs: number; steps: number; written?: boolean },
): Promise<void> {
  if (created.runs === 0) return;
  await lockTenantQuotas(sql, tenantId);
  const quotas = quotasOf(deps.config, tenantId);
  const load = await tenantLoad(sql, tenantId);
  const before =
    created.written === false
      ? load
      : { activeRuns: load.activeRuns - created.runs, openSteps: load.openSteps - created.steps };
  if (before.activeRuns + created.runs > quotas.activeRuns) {
    throw quotaExceeded(
      "activeRuns",
      quotas.activeRuns,
      `tenant "${tenantId}" has ${before.activeRuns} active runs and asks for ${created.runs} more`,
    );
  }
  if (before.openSteps + created.steps > quotas.queuedSteps) {
    throw quotaExceeded(
      "queuedSteps",
      quotas.queuedSteps,
      `tenant "${tenantId}" has ${before.openSteps} steps to run and asks for ${created.steps} more`,
    );
  }
}
