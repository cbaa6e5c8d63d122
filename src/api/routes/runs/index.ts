import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import type { StepRow } from "../../../db/repositories/runs.ts";
import { compensationStatuses } from "../../../domain/progress.ts";
import { isTerminalRun, runKinds, runStatuses } from "../../../domain/status.ts";
import type { EngineDeps } from "../../../engine/deps.ts";
import {
  cancelRun,
  getRun,
  listRuns,
  planWorkflowRun,
  requestHash,
  runEvents,
  submitRun,
} from "../../../engine/runs.ts";
import { callerOf } from "../../plugins/auth.ts";
import { problemResponses } from "../../problem.ts";
import {
  booleanQuery,
  decodeCursor,
  encodeCursor,
  isoDate,
  nameParams,
  pageQuery,
  toIso,
  toIsoOrNull,
} from "../../schemas.ts";
import { presentRun, runSchema } from "./present.ts";
import { type SseHub, streamRunEvents } from "./sse.ts";

const stepSchema = z
  .object({
    id: z.string(),
    status: z.string(),
    attempt: z.number().int(),
    maxAttempts: z.number().int(),
    queue: z.string(),
    planReason: z.string().nullable().describe("Why the plan runs, reuses or skips it"),
    reusedFromRunId: z.uuid().nullable(),
    output: z.unknown().nullable(),
    error: z.unknown().nullable(),
    progress: z.number().nullable(),
    progressMessage: z.string().nullable(),
    workerId: z.string().nullable(),
    queuedAt: isoDate.nullable(),
    startedAt: isoDate.nullable(),
    finishedAt: isoDate.nullable(),
    compensation: z
      .object({
        status: z.enum(compensationStatuses),
        attempt: z.number().int(),
        error: z.unknown().nullable(),
        startedAt: isoDate.nullable(),
        finishedAt: isoDate.nullable(),
      })
      .nullable()
      .describe("The step's compensation during a rollback; null when it has none to run"),
  })
  .meta({ id: "StepRun" });

const eventSchema = z
  .object({
    id: z.number().int(),
    type: z.string(),
    runId: z.uuid(),
    stepId: z.string().nullable(),
    attempt: z.number().int().nullable(),
    data: z.record(z.string(), z.unknown()),
    at: isoDate,
  })
  .meta({ id: "RunEvent" });

const submitBody = z
  .strictObject({
    params: z
      .record(z.string(), z.unknown())
      .optional()
      .describe("Merged over the workflow's default params"),
    priority: z.number().int().min(1).max(10).optional().describe("1–10, higher is served first; default 5"),
    dryRun: z.boolean().optional().describe("Answer the plan and start nothing"),
  })
  .meta({ id: "SubmitRunRequest" });

const planSchema = z
  .object({
    dryRun: z.literal(true),
    workflow: z.object({ name: z.string(), version: z.number().int() }),
    params: z.record(z.string(), z.unknown()),
    steps: z.array(
      z.object({
        stepId: z.string(),
        action: z.string(),
        reason: z.string(),
        queue: z.string(),
        tags: z.array(z.string()),
        needs: z.array(z.string()),
      }),
    ),
    queues: z.array(z.string()),
    tags: z.array(z.string()),
  })
  .meta({ id: "RunPlan" });

const idParams = z.strictObject({ id: z.uuid() });
/** Events and logs are what a native EventSource reads, and it can send no header. */
const streamSecurity: Array<Record<string, string[]>> = [
  { bearer: [] },
  { session: [] },
  { streamToken: [] },
];
const streamTokenQuery = z
  .string()
  .max(512)
  .optional()
  .describe(
    "A stream token for this run (`POST /v1/runs/{id}/stream-token`), for clients that cannot send headers",
  );
const idempotencyKeyPattern = /^[\x21-\x7e]{1,255}$/;

function presentStep(step: StepRow) {
  return {
    id: step.step_id,
    status: step.status,
    attempt: step.attempt,
    maxAttempts: step.max_attempts,
    queue: step.queue,
    planReason: step.plan_reason ?? null,
    reusedFromRunId: step.reused_from_run_id ?? null,
    output: step.output ?? null,
    error: step.error ?? null,
    progress: step.progress,
    progressMessage: step.progress_message,
    workerId: step.worker_id,
    queuedAt: toIsoOrNull(step.queued_at),
    startedAt: toIsoOrNull(step.started_at),
    finishedAt: toIsoOrNull(step.finished_at),
    compensation: step.compensation_status
      ? {
          status: step.compensation_status,
          attempt: step.compensation_attempt,
          error: step.compensation_error ?? null,
          startedAt: toIsoOrNull(step.compensation_started_at),
          finishedAt: toIsoOrNull(step.compensation_finished_at),
        }
      : null,
  };
}

export const runRoutes: FastifyPluginAsyncZod<{ engine: EngineDeps; hub: SseHub }> = async (
  app,
  { engine, hub },
) => {
  app.post(
    "/workflows/:name/runs",
    {
      config: { scope: "write" },
      schema: {
        tags: ["runs"],
        summary: "Start a run of a workflow's current version",
        description:
          "Send `Idempotency-Key` to make retries safe: the same key and body answer the original run (200); " +
          "the same key with another body is 409.",
        params: nameParams,
        headers: z.object({ "idempotency-key": z.string().regex(idempotencyKeyPattern).optional() }),
        body: submitBody.optional(),
        response: { 200: z.union([runSchema, planSchema]), 202: runSchema, ...problemResponses(404, 409) },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const body = request.body ?? {};
      const input = {
        tenantId: caller.tenantId,
        workflow: request.params.name,
        ...(body.params ? { params: body.params } : {}),
        ...(body.priority ? { priority: body.priority } : {}),
      };
      if (body.dryRun)
        return reply.code(200).send({ dryRun: true as const, ...(await planWorkflowRun(engine, input)) });
      const key = request.headers["idempotency-key"];
      const { run, created } = await submitRun(
        engine,
        input,
        key ? { key, hash: requestHash(`POST /v1/workflows/${request.params.name}/runs`, body) } : undefined,
      );
      reply.header("location", `/v1/runs/${run.id}`);
      return reply.code(created ? 202 : 200).send(presentRun(run, request.params.name));
    },
  );

  app.get(
    "/runs",
    {
      config: { scope: "read" },
      schema: {
        tags: ["runs"],
        summary: "List runs, newest first",
        querystring: z.strictObject({
          ...pageQuery,
          workflow: nameParams.shape.name.optional(),
          status: z.enum(runStatuses).optional(),
          kind: z.enum(runKinds).optional(),
        }),
        response: {
          200: z.object({ items: z.array(runSchema), nextCursor: z.string().nullable() }),
          ...problemResponses(),
        },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const q = request.query;
      const before = decodeCursor(q.cursor, (v) => /^[0-9a-f-]{36}$/.test(v));
      const page = await listRuns(engine, caller.tenantId, {
        limit: q.limit,
        ...(q.workflow ? { workflow: q.workflow } : {}),
        ...(q.status ? { status: q.status } : {}),
        ...(q.kind ? { kind: q.kind } : {}),
        ...(before ? { before } : {}),
      });
      const last = page.items.at(-1);
      return {
        items: page.items.map((r) => presentRun(r)),
        nextCursor: page.hasMore && last ? encodeCursor(last.id) : null,
      };
    },
  );

  app.get(
    "/runs/:id",
    {
      config: { scope: "read" },
      schema: {
        tags: ["runs"],
        summary: "A run with its steps",
        params: idParams,
        response: {
          200: runSchema.extend({ steps: z.array(stepSchema) }).meta({ id: "RunDetails" }),
          ...problemResponses(404),
        },
      },
    },
    async (request) => {
      const { run, steps } = await getRun(engine, callerOf(request).tenantId, request.params.id);
      return { ...presentRun(run), steps: steps.map(presentStep) };
    },
  );

  app.post(
    "/runs/:id/cancel",
    {
      config: { scope: "write" },
      schema: {
        tags: ["runs"],
        summary: "Cancel a run (idempotent)",
        params: idParams,
        response: { 200: runSchema, ...problemResponses(404) },
      },
    },
    async (request) => {
      return presentRun(await cancelRun(engine, callerOf(request).tenantId, request.params.id));
    },
  );

  app.get(
    "/runs/:id/logs",
    {
      config: { scope: "read", streamToken: true },
      schema: {
        tags: ["runs"],
        summary: "Step logs of a run (`?follow=true` streams them as SSE until the run ends)",
        security: streamSecurity,
        params: idParams,
        querystring: z.strictObject({
          token: streamTokenQuery,
          step: z.string().max(63).optional().describe("Only this step's lines"),
          follow: booleanQuery.optional(),
          after: z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
          limit: z.coerce.number().int().min(1).max(5000).default(1000),
        }),
        response: {
          200: z.object({
            items: z.array(
              z.object({
                id: z.number().int(),
                stepId: z.string().nullable(),
                attempt: z.number().int().nullable(),
                stream: z.string(),
                line: z.string(),
                at: isoDate,
              }),
            ),
            nextAfter: z.number().int(),
          }),
          ...problemResponses(404),
        },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const q = request.query;
      const include = (e: { type: string; step_id: string | null }) =>
        e.type === "step.log" && (q.step === undefined || e.step_id === q.step);
      const after = q.after ?? 0;
      if (q.follow) {
        const { run } = await runEvents(engine, caller.tenantId, request.params.id, after, 0);
        streamRunEvents(hub, request, reply, run.id, after, {
          terminalAtStart: isTerminalRun(run.status),
          include,
        });
        return reply;
      }
      const items: Array<{
        id: number;
        stepId: string | null;
        attempt: number | null;
        stream: string;
        line: string;
        at: string;
      }> = [];
      let cursor = after;
      // Logs are events; page through them until enough lines are found or the run has no more.
      for (;;) {
        const { events } = await runEvents(engine, caller.tenantId, request.params.id, cursor, 1000);
        for (const e of events) {
          cursor = e.id;
          if (!include(e)) continue;
          items.push({
            id: e.id,
            stepId: e.step_id,
            attempt: e.attempt,
            stream: String(e.data.stream ?? "log"),
            line: String(e.data.line ?? ""),
            at: toIso(e.created_at),
          });
          if (items.length >= q.limit) break;
        }
        if (events.length < 1000 || items.length >= q.limit) break;
      }
      return { items, nextAfter: items.at(-1)?.id ?? cursor };
    },
  );

  app.get(
    "/runs/:id/events",
    {
      config: { scope: "read", streamToken: true },
      schema: {
        tags: ["runs"],
        summary: "A run's events: SSE with `Accept: text/event-stream`, else a JSON page",
        security: streamSecurity,
        description:
          "SSE replays events after `Last-Event-ID` (or `?after=`) and then streams live ones, each exactly once and " +
          "in order; `event: end` follows the run's terminal event.",
        params: idParams,
        querystring: z.strictObject({
          token: streamTokenQuery,
          after: z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
          limit: z.coerce.number().int().min(1).max(1000).default(200),
        }),
        headers: z.object({
          "last-event-id": z
            .string()
            .regex(/^\d{1,16}$/)
            .optional(),
        }),
        response: {
          200: z.object({
            items: z.array(eventSchema),
            nextAfter: z.number().int(),
            runStatus: z.enum(runStatuses),
          }),
          ...problemResponses(404),
        },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const lastEventId = request.headers["last-event-id"];
      const after = lastEventId !== undefined ? Number(lastEventId) : (request.query.after ?? 0);
      const wantsStream = /text\/event-stream/.test(String(request.headers.accept ?? ""));
      const { run, events } = await runEvents(
        engine,
        caller.tenantId,
        request.params.id,
        after,
        wantsStream ? 0 : request.query.limit,
      );
      if (wantsStream) {
        streamRunEvents(hub, request, reply, run.id, after, { terminalAtStart: isTerminalRun(run.status) });
        return reply;
      }
      return {
        items: events.map((e) => ({
          id: e.id,
          type: e.type,
          runId: e.run_id,
          stepId: e.step_id,
          attempt: e.attempt,
          data: e.data,
          at: toIso(e.created_at),
        })),
        nextAfter: events.at(-1)?.id ?? after,
        runStatus: run.status,
      };
    },
  );
};
