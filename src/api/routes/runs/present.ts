/** How a run is shown by every route that answers one. */
import { z } from "zod";
import type { RunRow } from "../../../db/repositories/runs.ts";
import { runKinds, runStatuses } from "../../../domain/status.ts";
import { traceIdOf } from "../../../observability/tracing.ts";
import { isoDate, toIso, toIsoOrNull } from "../../schemas.ts";

export const runSchema = z
  .object({
    id: z.uuid(),
    kind: z.enum(runKinds),
    status: z.enum(runStatuses),
    workflow: z.object({ name: z.string(), version: z.number().int() }),
    params: z.record(z.string(), z.unknown()),
    priority: z.number().int(),
    trigger: z.string(),
    parentRunId: z.uuid().nullable(),
    partitionKey: z.string().nullable(),
    backfillId: z.uuid().nullable(),
    error: z.unknown().nullable(),
    createdAt: isoDate,
    startedAt: isoDate.nullable(),
    finishedAt: isoDate.nullable(),
    traceId: z
      .string()
      .nullable()
      .describe(
        "The run's OpenTelemetry trace id (32 hex digits); null when it was created with tracing off",
      ),
    links: z.object({ self: z.string(), events: z.string() }),
  })
  .meta({ id: "Run" });

export function presentRun(run: RunRow & { workflow_name?: string }, workflowName?: string) {
  return {
    id: run.id,
    kind: run.kind,
    status: run.status,
    workflow: { name: run.workflow_name ?? workflowName ?? "", version: run.workflow_version },
    params: run.params,
    priority: run.priority,
    trigger: run.trigger,
    parentRunId: run.parent_run_id,
    partitionKey: run.partition_key ?? null,
    backfillId: run.backfill_id ?? null,
    error: run.error ?? null,
    createdAt: toIso(run.created_at),
    startedAt: toIsoOrNull(run.started_at),
    finishedAt: toIsoOrNull(run.finished_at),
    traceId: traceIdOf(run.trace_context),
    links: { self: `/v1/runs/${run.id}`, events: `/v1/runs/${run.id}/events` },
  };
}

/** A plan as answered by `dryRun` requests (SPEC §4): each step's action and reason. */
export const planViewSchema = z
  .object({
    kind: z.string(),
    workflow: z.object({ name: z.string(), version: z.number().int() }),
    params: z.record(z.string(), z.unknown()),
    partition: z.string().nullable(),
    steps: z.array(
      z.object({
        stepId: z.string(),
        action: z.enum(["run", "reuse", "skip"]),
        reason: z.string().describe("missing, stale, forced, fresh, selected, upstream-of-selection, …"),
        queue: z.string(),
        tags: z.array(z.string()),
        needs: z.array(z.string()),
      }),
    ),
    toRun: z.number().int(),
    queues: z.array(z.string()),
    tags: z.array(z.string()),
    assets: z.array(z.string()).describe("Assets the steps to run materialize"),
  })
  .meta({ id: "Plan" });
