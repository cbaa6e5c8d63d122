/**
 * Planned requests (SPEC §4): materializations (and backfills), subgraphs, and retries of a
 * finished run. All three answer the plan on `dryRun` and otherwise create runs like any other.
 */
import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import { quotasOf } from "../../../config/index.ts";
import { checkRequestParams, checkRequestPriority } from "../../../domain/limits.ts";
import { expandPartitions, partitionsSchema } from "../../../domain/partitions.ts";
import { assetKey, requestParams, stepId } from "../../../domain/workflow/spec.ts";
import type { EngineDeps } from "../../../engine/deps.ts";
import { materialize, retryRun, runSubgraph } from "../../../engine/requests.ts";
import { callerOf } from "../../plugins/auth.ts";
import { problemResponses } from "../../problem.ts";
import { nameParams } from "../../schemas.ts";
import { planViewSchema, presentRun, runSchema } from "../runs/present.ts";

const unique = <T>(items: T[]) => new Set(items).size === items.length;

const materializeBody = z
  .strictObject({
    assets: z
      .array(assetKey)
      .min(1, "name at least one asset")
      .max(500)
      .refine(unique, "assets must not repeat")
      .describe("Assets to bring up to date"),
    force: z.boolean().optional().describe("Recompute the assets and everything upstream of them"),
    params: requestParams.optional(),
    priority: z.number().int().min(1).max(10).optional(),
    partitions: partitionsSchema
      .optional()
      .describe("A backfill: one run per partition (a list of keys, or a date range with a step)"),
    dryRun: z.boolean().optional(),
  })
  .meta({ id: "MaterializeRequest" });

const subgraphBody = z
  .strictObject({
    workflow: nameParams.shape.name,
    steps: z
      .array(stepId)
      .min(1, "select at least one step")
      .max(5000)
      .refine(unique, "steps must not repeat"),
    upstream: z.boolean().optional().describe("Also run every step the selection depends on"),
    downstream: z.boolean().optional().describe("Also run every step that depends on the selection"),
    parentRunId: z
      .uuid()
      .optional()
      .describe("Reuse the outputs of steps that succeeded in this run of the same workflow"),
    params: requestParams.optional(),
    priority: z.number().int().min(1).max(10).optional(),
    dryRun: z.boolean().optional(),
  })
  .meta({ id: "SubgraphRequest" });

const materializeResponse = z
  .object({
    plans: z.array(planViewSchema).describe("One plan per partition (one without partitions)"),
    runs: z.array(runSchema).describe("Runs started or queued; empty when everything is fresh or on dryRun"),
    backfillId: z.uuid().nullable(),
  })
  .meta({ id: "MaterializeResponse" });

const plannedRun = z
  .object({ plan: planViewSchema, run: runSchema.nullable() })
  .meta({ id: "PlannedRunResponse" });

export const planRoutes: FastifyPluginAsyncZod<{ engine: EngineDeps }> = async (app, { engine }) => {
  app.post(
    "/materializations",
    {
      config: { scope: "write" },
      schema: {
        tags: ["assets"],
        operationId: "materialize",
        summary: "Bring assets up to date: run only what is missing or stale (or all upstream with force)",
        description:
          "Answers 202 with the runs created, or 200 with the plan and no run when every asset is fresh or on " +
          "`dryRun`. A run whose assets another run is materializing waits in `queued`; with `?ifBusy=reject` " +
          "the request is refused with 409 instead.",
        querystring: z.strictObject({ ifBusy: z.enum(["wait", "reject"]).optional() }),
        body: materializeBody,
        response: { 200: materializeResponse, 202: materializeResponse, ...problemResponses(404, 409) },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const body = request.body;
      checkRequestPriority(body.priority, quotasOf(engine.config, caller.tenantId).maxPriority);
      checkRequestParams(body.params, engine.config.limits.maxRunParamsBytes);
      const partitions = body.partitions
        ? expandPartitions(body.partitions, { max: engine.config.limits.backfillRuns })
        : undefined;
      const result = await materialize(engine, {
        tenantId: caller.tenantId,
        assets: body.assets,
        ...(body.force !== undefined ? { force: body.force } : {}),
        ...(body.params ? { params: body.params } : {}),
        ...(body.priority ? { priority: body.priority } : {}),
        ...(partitions ? { partitions } : {}),
        ...(body.dryRun ? { dryRun: true } : {}),
        ...(request.query.ifBusy ? { ifBusy: request.query.ifBusy } : {}),
      });
      const workflowName = result.plans[0]?.workflow.name;
      return reply.code(result.runs.length > 0 ? 202 : 200).send({
        plans: result.plans,
        runs: result.runs.map((c) => presentRun(c.run, workflowName)),
        backfillId: result.backfillId,
      });
    },
  );

  app.post(
    "/subgraphs",
    {
      config: { scope: "write" },
      schema: {
        tags: ["runs"],
        operationId: "runSubgraph",
        summary: "Run selected steps of a workflow, optionally with their upstream/downstream closure",
        description:
          "With `parentRunId`, steps outside the selection that succeeded in that run are reused (their " +
          "outputs passed on, not executed). Answers 202 with the run, or 200 with the plan on `dryRun`.",
        body: subgraphBody,
        response: { 200: plannedRun, 202: plannedRun, ...problemResponses(404, 409) },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const body = request.body;
      checkRequestPriority(body.priority, quotasOf(engine.config, caller.tenantId).maxPriority);
      checkRequestParams(body.params, engine.config.limits.maxRunParamsBytes);
      const result = await runSubgraph(engine, {
        tenantId: caller.tenantId,
        workflow: body.workflow,
        steps: body.steps,
        ...(body.upstream !== undefined ? { upstream: body.upstream } : {}),
        ...(body.downstream !== undefined ? { downstream: body.downstream } : {}),
        ...(body.parentRunId ? { parentRunId: body.parentRunId } : {}),
        ...(body.params ? { params: body.params } : {}),
        ...(body.priority ? { priority: body.priority } : {}),
        ...(body.dryRun ? { dryRun: true } : {}),
      });
      if (result.run) reply.header("location", `/v1/runs/${result.run.run.id}`);
      return reply.code(result.run ? 202 : 200).send({
        plan: result.plan,
        run: result.run ? presentRun(result.run.run, body.workflow) : null,
      });
    },
  );

  app.post(
    "/runs/:id/retry",
    {
      config: { scope: "write" },
      schema: {
        tags: ["runs"],
        operationId: "retryRun",
        summary: "Retry a failed or cancelled run from where it failed",
        description:
          "Creates a subgraph run of the same workflow version that re-executes the failed, cancelled and " +
          "skipped steps and everything downstream of them, reusing the outputs of the rest. 409 when the run " +
          "has not finished or has nothing to retry.",
        params: z.strictObject({ id: z.uuid() }),
        body: z.strictObject({ dryRun: z.boolean().optional() }).optional().meta({ id: "RetryRequest" }),
        response: { 200: plannedRun, 202: plannedRun, ...problemResponses(404, 409) },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const result = await retryRun(engine, caller.tenantId, request.params.id, {
        ...(request.body?.dryRun ? { dryRun: true } : {}),
      });
      if (result.run) reply.header("location", `/v1/runs/${result.run.run.id}`);
      return reply.code(result.run ? 202 : 200).send({
        plan: result.plan,
        run: result.run ? presentRun(result.run.run, result.plan.workflow.name) : null,
      });
    },
  );
};
