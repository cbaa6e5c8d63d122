/**
 * Per-tenant quotas checked before a submission (SPEC §13): a tenant at its quota of active runs
 * or open steps gets 429 `quota_exceeded` and nothing is written. The check reads before the
 * submission's transaction, so concurrent submissions may pass it together: a quota bounds what a
 * tenant holds to about the quota, not to the exact unit.
 */
import { quotasOf } from "../config/index.ts";
import { tenantLoad } from "../db/repositories/quotas.ts";
import { quotaExceeded } from "../domain/limits.ts";
import type { EngineDeps } from "../engine/deps.ts";

export interface Submission {
  /** The workflow whose current version the new run(s) execute, when the request names one. */
  workflow?: string;
  /** Runs the request creates (one per partition for a backfill). */
  runs?: number;
}

export async function checkSubmissionQuotas(
  engine: EngineDeps,
  tenantId: string,
  submission: Submission = {},
): Promise<void> {
  const quotas = quotasOf(engine.config, tenantId);
  const runs = submission.runs ?? 1;
  const load = await tenantLoad(engine.db.sql, tenantId, submission.workflow);
  if (load.activeRuns + runs > quotas.activeRuns) {
    throw quotaExceeded(
      "activeRuns",
      quotas.activeRuns,
      `tenant "${tenantId}" has ${load.activeRuns} active runs and asks for ${runs} more`,
    );
  }
  // Without a named workflow the new run's size is unknown until planned: it counts as one step.
  const newSteps = Math.max(1, load.workflowSteps * runs);
  if (load.openSteps + newSteps > quotas.queuedSteps) {
    throw quotaExceeded(
      "queuedSteps",
      quotas.queuedSteps,
      `tenant "${tenantId}" has ${load.openSteps} steps to run and asks for ${newSteps} more`,
    );
  }
}
