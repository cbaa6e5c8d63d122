import type { FastifySchemaCompiler } from "fastify";
import { type FastifyPluginAsyncZod, validatorCompiler } from "fastify-type-provider-zod";
import { z } from "zod";
import { type Config, quotasOf } from "../../../config/index.ts";
import type { WorkflowsRepository } from "../../../db/repositories/workflows.ts";
import { FlowlineError, notFound } from "../../../domain/errors.ts";
import { workflowSpecSchema } from "../../../domain/workflow/spec.ts";
import { type ValidationContext, validateWorkflowDefinition } from "../../../domain/workflow/validate.ts";
import { writeOnlyView } from "../../../domain/workflow/write-only.ts";
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

const putResult = z
  .object({
    name: z.string(),
    version: z.number().int().describe("The version now current; runs started from now on pin it"),
    created: z.boolean().describe("false when the content equals the current version"),
    hash: z.string().describe("SHA-256 of the canonical definition"),
  })
  .meta({ id: "WorkflowPutResult" });

const workflowVersion = z
  .object({
    name: z.string(),
    version: z.number().int(),
    latestVersion: z.number().int(),
    hash: z.string(),
    createdAt: isoDate,
    archivedAt: isoDate.nullable(),
    definition: workflowSpecSchema,
  })
  .meta({ id: "WorkflowVersion" });

const workflowSummary = z
  .object({
    name: z.string(),
    latestVersion: z.number().int(),
    description: z.string().nullable(),
    stepCount: z.number().int(),
    createdAt: isoDate,
    updatedAt: isoDate,
    archivedAt: isoDate.nullable(),
  })
  .meta({ id: "WorkflowSummary" });

/**
 * The PUT body is validated by the domain (shape and semantics, every issue with its path), not
 * by the route's schema, which only documents it; path and query still go through zod here.
 */
// biome-ignore lint/suspicious/noExplicitAny: Fastify types the compiler by the route's whole schema object.
const domainValidatesBody: FastifySchemaCompiler<any> = (route) =>
  route.httpPart === "body" ? (data: unknown) => ({ value: data }) : validatorCompiler(route);

/** What a definition of this tenant is checked against: the allowlists, queues, limits and quotas. */
export function definitionContext(config: Config, tenantId: string): ValidationContext {
  return {
    commands: new Set(Object.keys(config.commands)),
    allowedHosts: config.http.allowedHosts,
    maxSteps: config.limits.maxSteps,
    queues: new Set(Object.keys(config.queues)),
    tagRoutes: config.tags,
    maxPriority: quotasOf(config, tenantId).maxPriority,
    maxSleepSeconds: config.limits.maxSleepSeconds,
    maxTimeoutSeconds: config.limits.maxTimeoutSeconds,
    maxParamsBytes: config.limits.maxRunParamsBytes,
  };
}

export const workflowRoutes: FastifyPluginAsyncZod<{
  workflows: WorkflowsRepository;
  config: Config;
}> = async (app, { workflows, config }) => {
  app.put(
    "/workflows/:name",
    {
      config: { scope: "write" },
      validatorCompiler: domainValidatesBody,
      schema: {
        tags: ["workflows"],
        operationId: "putWorkflow",
        summary: "Create or update a workflow definition",
        description:
          "Send JSON, or YAML with `Content-Type: application/yaml`. The same content as the current " +
          "version answers that version (200); changed content creates the next version (201).",
        params: nameParams,
        body: workflowSpecSchema,
        response: { 200: putResult, 201: putResult, ...problemResponses(413, 415) },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const body = request.body as unknown;
      if (body === undefined || body === null || typeof body !== "object" || Array.isArray(body)) {
        throw new FlowlineError("invalid_definition", "The body must be a workflow definition object", {
          issues: [{ location: "body", path: [], message: "expected an object" }],
        });
      }
      const withName = { name: request.params.name, ...(body as Record<string, unknown>) };
      if (withName.name !== request.params.name) {
        throw new FlowlineError(
          "invalid_definition",
          `The body's name "${String(withName.name)}" differs from the URL's "${request.params.name}"`,
          { issues: [{ location: "body", path: ["name"], message: "must equal the name in the URL" }] },
        );
      }
      const result = validateWorkflowDefinition(withName, definitionContext(config, caller.tenantId));
      if (!result.ok) {
        const first = result.issues[0]!;
        const more = result.issues.length > 1 ? ` (and ${result.issues.length - 1} more)` : "";
        throw new FlowlineError("invalid_definition", `${first.message}${more}`, { issues: result.issues });
      }
      const stored = await workflows.put(caller.tenantId, result.spec);
      request.log.info(
        { workflow: stored.name, version: stored.version, created: stored.created },
        "workflow put",
      );
      return reply.code(stored.created ? 201 : 200).send(stored);
    },
  );

  app.get(
    "/workflows",
    {
      config: { scope: "read" },
      schema: {
        tags: ["workflows"],
        operationId: "listWorkflows",
        summary: "List workflows",
        querystring: z.strictObject({ ...pageQuery, archived: booleanQuery.optional() }),
        response: {
          200: z.object({ items: z.array(workflowSummary), nextCursor: z.string().nullable() }),
          ...problemResponses(),
        },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const afterName = decodeCursor(request.query.cursor, (v) => nameParams.shape.name.safeParse(v).success);
      const page = await workflows.list(caller.tenantId, {
        limit: request.query.limit,
        includeArchived: request.query.archived ?? false,
        ...(afterName === undefined ? {} : { afterName }),
      });
      const last = page.items.at(-1);
      return {
        items: page.items.map((w) => ({
          ...w,
          createdAt: toIso(w.createdAt),
          updatedAt: toIso(w.updatedAt),
          archivedAt: toIsoOrNull(w.archivedAt),
        })),
        nextCursor: page.hasMore && last ? encodeCursor(last.name) : null,
      };
    },
  );

  app.get(
    "/workflows/:name",
    {
      config: { scope: "read" },
      schema: {
        tags: ["workflows"],
        operationId: "getWorkflow",
        summary: "Read a workflow definition (the current version, or ?version=N)",
        description:
          "Write-only fields are shown as `***`: `notify[].secret`, and header values of http steps and " +
          "env values of command steps that hold literal text rather than `{{secrets.NAME}}` references.",
        params: nameParams,
        querystring: z.strictObject({
          version: z.coerce.number().int().min(1).max(2_147_483_647).optional(),
        }),
        response: { 200: workflowVersion, ...problemResponses(404) },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const found = await workflows.get(caller.tenantId, request.params.name, request.query.version);
      if (!found) {
        throw notFound(
          request.query.version === undefined
            ? `Workflow "${request.params.name}"`
            : `Version ${request.query.version} of workflow "${request.params.name}"`,
        );
      }
      return {
        name: found.name,
        version: found.version,
        latestVersion: found.latestVersion,
        hash: found.hash,
        createdAt: toIso(found.createdAt),
        archivedAt: toIsoOrNull(found.archivedAt),
        // Secret-bearing fields are write-only (SPEC §12).
        definition: writeOnlyView(found.spec),
      };
    },
  );

  app.delete(
    "/workflows/:name",
    {
      config: { scope: "write" },
      schema: {
        tags: ["workflows"],
        operationId: "archiveWorkflow",
        summary: "Archive a workflow (its versions stay readable; PUT restores it)",
        params: nameParams,
        response: { 204: z.null().describe("Archived"), ...problemResponses(404) },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      if (!(await workflows.archive(caller.tenantId, request.params.name))) {
        throw notFound(`Workflow "${request.params.name}"`);
      }
      return reply.code(204).send(null);
    },
  );
};
