import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import { quotasOf } from "../../../config/index.ts";
import { stepOutput } from "../../../db/repositories/outputs.ts";
import type { StepCompensation, StepRow } from "../../../db/repositories/runs.ts";
import { notFound } from "../../../domain/errors.ts";
import { isReservedKey, RESERVED_KEY_PREFIX } from "../../../domain/idempotency.ts";
import { checkRequestParams, checkRequestPriority, jsonBytes } from "../../../domain/limits.ts";
import { type CompensationStatus, compensationStatuses } from "../../../domain/progress.ts";
import { isTerminalRun, runKinds, runStatuses } from "../../../domain/status.ts";
import { requestParams, stepId } from "../../../domain/workflow/spec.ts";
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
import { eventStreamContent, runEventSchema } from "./events.ts";
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
    output: z
      .unknown()
      .nullable()
      .describe("null when outputTruncated: read it whole at /v1/runs/{id}/steps/{stepId}/output"),
    outputTruncated: z
      .boolean()
      .describe("The output is larger than limits.inlineOutputBytes and left out of run details"),
    outputBytes: z.number().int().nullable().describe("Size of the output as JSON"),
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

const submitBody = z
  .strictObject({
    params: requestParams.optional().describe("Merged over the workflow's default params"),
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
/** What an EventSource sends when it reconnects: the id of the last event it received. */
const resumeHeaders = z.object({
  "last-event-id": z
    .string()
    .regex(/^\d{1,16}$/)
    .optional(),
});
const afterQuery = z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional();
/** Where a stream or page resumes: `Last-Event-ID` wins over `?after=`. */
const resumeAfter = (headers: z.infer<typeof resumeHeaders>, after: number | undefined) =>
  headers["last-event-id"] !== undefined ? Number(headers["last-event-id"]) : (after ?? 0);
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

function presentStep(step: StepRow & { compensation: StepCompensation | null }, inlineOutputBytes: number) {
  const outputBytes = step.output === null || step.output === undefined ? null : jsonBytes(step.output);
  const outputTruncated = outputBytes !== null && outputBytes > inlineOutputBytes;
  return {
    id: step.step_id,
    status: step.status,
    attempt: step.attempt,
    maxAttempts: step.max_attempts,
    queue: step.queue,
    planReason: step.plan_reason ?? null,
    reusedFromRunId: step.reused_from_run_id ?? null,
    output: outputTruncated ? null : (step.output ?? null),
    outputTruncated,
    outputBytes,
    error: step.error ?? null,
    progress: step.progress,
    progressMessage: step.progress_message,
    workerId: step.worker_id,
    queuedAt: toIsoOrNull(step.queued_at),
    startedAt: toIsoOrNull(step.started_at),
    finishedAt: toIsoOrNull(step.finished_at),
    compensation: step.compensation
      ? {
          status: step.compensation.status as CompensationStatus,
          attempt: step.compensation.attempt,
          error: step.compensation.error ?? null,
          startedAt: toIsoOrNull(step.compensation.started_at),
          finishedAt: toIsoOrNull(step.compensation.finished_at),
        }
      : null,
  };
}

export const runRoutes: FastifyPluginAsyncZod<{ engine: EngineDeps; hub: SseHub }> = async (
  app,
  { engine, hub },
) => {
  const streamQuota = (tenantId: string) => ({
    id: tenantId,
    max: quotasOf(engine.config, tenantId).streams,
  });

  app.post(
    "/workflows/:name/runs",
    {
      config: { scope: "write" },
      schema: {
        tags: ["runs"],
        operationId: "startRun",
        summary: "Start a run of a workflow's current version",
        description:
          "Send `Idempotency-Key` to make retries safe: the same key and body answer the original run (200); " +
          `the same key with another body is 409. Keys starting with \`${RESERVED_KEY_PREFIX}\` are reserved (400).`,
        params: nameParams,
        headers: z.object({
          "idempotency-key": z
            .string()
            .regex(idempotencyKeyPattern)
            .refine((key) => !isReservedKey(key), `keys starting with "${RESERVED_KEY_PREFIX}" are reserved`)
            .optional(),
        }),
        body: submitBody.optional(),
        response: { 200: z.union([runSchema, planSchema]), 202: runSchema, ...problemResponses(404, 409) },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const body = request.body ?? {};
      checkRequestPriority(body.priority, quotasOf(engine.config, caller.tenantId).maxPriority);
      checkRequestParams(body.params, engine.config.limits.maxRunParamsBytes);
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
        operationId: "listRuns",
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
      const position = decodeCursor(q.cursor, (v) => /^\d{1,19}:[0-9a-f-]{36}$/.test(v));
      const before = position
        ? { atMicros: position.split(":")[0]!, id: position.split(":")[1]! }
        : undefined;
      const page = await listRuns(engine, caller.tenantId, {
        limit: q.limit,
        ...(q.workflow ? { workflow: q.workflow } : {}),
        ...(q.status ? { status: q.status } : {}),
        ...(q.kind ? { kind: q.kind } : {}),
        ...(before ? { before } : {}),
      });
      return {
        items: page.items.map((r) => presentRun(r)),
        nextCursor: page.hasMore && page.last ? encodeCursor(`${page.last.atMicros}:${page.last.id}`) : null,
      };
    },
  );

  app.get(
    "/runs/:id",
    {
      config: { scope: "read" },
      schema: {
        tags: ["runs"],
        operationId: "getRun",
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
      const inline = engine.config.limits.inlineOutputBytes;
      return { ...presentRun(run), steps: steps.map((step) => presentStep(step, inline)) };
    },
  );

  app.get(
    "/runs/:id/steps/:stepId/output",
    {
      config: { scope: "read" },
      schema: {
        operationId: "getStepOutput",
        tags: ["runs"],
        summary: "One step's output, whole (run details leave out outputs over limits.inlineOutputBytes)",
        params: z.strictObject({ id: z.uuid(), stepId }),
        response: {
          200: z.object({ output: z.unknown().nullable() }).meta({ id: "StepOutput" }),
          ...problemResponses(404),
        },
      },
    },
    async (request) => {
      const found = await stepOutput(
        engine.db.sql,
        callerOf(request).tenantId,
        request.params.id,
        request.params.stepId,
      );
      if (!found) throw notFound("Step");
      return found;
    },
  );

  app.post(
    "/runs/:id/cancel",
    {
      config: { scope: "write" },
      schema: {
        tags: ["runs"],
        operationId: "cancelRun",
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
        operationId: "getRunLogs",
        summary: "Step logs of a run (`?follow=true` streams them as SSE until the run ends)",
        description:
          "The stream resumes after `Last-Event-ID` (or `?after=`): a reconnecting EventSource gets each line once.",
        security: streamSecurity,
        params: idParams,
        querystring: z.strictObject({
          token: streamTokenQuery,
          step: z.string().max(63).optional().describe("Only this step's lines"),
          follow: booleanQuery.optional(),
          after: afterQuery,
          limit: z.coerce.number().int().min(1).max(5000).default(1000),
        }),
        headers: resumeHeaders,
        response: {
          200: {
            description: "A page of log lines, or with `follow=true` an SSE stream of `step.log` frames",
            content: {
              "application/json": {
                schema: z
                  .object({
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
                  })
                  .meta({ id: "LogPage" }),
              },
              ...eventStreamContent,
            },
          },
          ...problemResponses(404),
        },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const q = request.query;
      const include = (e: { type: string; step_id: string | null }) =>
        e.type === "step.log" && (q.step === undefined || e.step_id === q.step);
      const after = resumeAfter(request.headers, q.after);
      if (q.follow) {
        const { run } = await runEvents(engine, caller.tenantId, request.params.id, after, 0);
        await streamRunEvents(hub, request, reply, run.id, after, {
          terminalAtStart: isTerminalRun(run.status),
          include,
          tenant: streamQuota(caller.tenantId),
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
        operationId: "getRunEvents",
        summary: "A run's events: SSE with `Accept: text/event-stream`, else a JSON page",
        security: streamSecurity,
        description:
          "SSE replays events after `Last-Event-ID` (or `?after=`) and then streams live ones, each exactly once and " +
          "in order; `event: end` follows the run's terminal event.",
        params: idParams,
        querystring: z.strictObject({
          token: streamTokenQuery,
          after: afterQuery,
          limit: z.coerce.number().int().min(1).max(1000).default(200),
        }),
        headers: resumeHeaders,
        response: {
          200: {
            description: "A page of events (JSON), or the live stream (`Accept: text/event-stream`)",
            content: {
              "application/json": {
                schema: z
                  .object({
                    items: z.array(runEventSchema),
                    nextAfter: z.number().int(),
                    runStatus: z.enum(runStatuses),
                  })
                  .meta({ id: "EventPage" }),
              },
              ...eventStreamContent,
            },
          },
          ...problemResponses(404),
        },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const after = resumeAfter(request.headers, request.query.after);
      const wantsStream = /text\/event-stream/.test(String(request.headers.accept ?? ""));
      const { run, events } = await runEvents(
        engine,
        caller.tenantId,
        request.params.id,
        after,
        wantsStream ? 0 : request.query.limit,
      );
      if (wantsStream) {
        await streamRunEvents(hub, request, reply, run.id, after, {
          terminalAtStart: isTerminalRun(run.status),
          tenant: streamQuota(caller.tenantId),
        });
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
