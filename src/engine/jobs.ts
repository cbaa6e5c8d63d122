import type { RunRow, StepRow } from "../db/repositories/runs.ts";
import type { Phase } from "../domain/attempt.ts";
import type { StepJob } from "../domain/ports.ts";

/**
 * The job carrying `attempt` of a step or compensation. A compensation's job ids carry `rb<N>`
 * for the N-th rollback of a run, so a rollback requested again never collides with the finished
 * jobs of the one before.
 */
export function jobFor(
  run: Pick<RunRow, "id" | "tenant_id" | "rollbacks" | "trace_context">,
  row: Pick<StepRow, "step_id" | "queue" | "priority"> & { phase?: Phase },
  attempt: number,
  extra: { delayMs?: number; jobSuffix?: string } = {},
): StepJob {
  const compensate = row.phase === "compensate";
  const jobSuffix = extra.jobSuffix ?? (compensate && run.rollbacks > 1 ? `rb${run.rollbacks}` : undefined);
  return {
    tenantId: run.tenant_id,
    runId: run.id,
    stepId: row.step_id,
    attempt,
    queue: row.queue,
    priority: row.priority,
    ...(compensate ? { phase: "compensate" as const } : {}),
    ...(extra.delayMs ? { delayMs: extra.delayMs } : {}),
    ...(jobSuffix ? { jobSuffix } : {}),
    ...(run.trace_context ? { traceparent: run.trace_context } : {}),
  };
}
