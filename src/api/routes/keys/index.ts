import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import type { ApiKeyRecord, KeysRepository } from "../../../db/repositories/keys.ts";
import { tenantIdPattern } from "../../../domain/api-keys.ts";
import { FlowlineError, notFound } from "../../../domain/errors.ts";
import { scopes } from "../../../domain/status.ts";
import { callerOf } from "../../plugins/auth.ts";
import { problemResponses } from "../../problem.ts";
import { isoDate, toIso, toIsoOrNull } from "../../schemas.ts";

const tenantId = z
  .string()
  .regex(tenantIdPattern, "must match ^[a-z0-9][a-z0-9_-]{0,62}$")
  .describe("Tenant identifier");

const apiKey = z
  .object({
    id: z.uuid(),
    tenant: z.string(),
    name: z.string(),
    prefix: z.string().describe("The first characters of the key, for telling keys apart"),
    scopes: z.array(z.string()),
    root: z.boolean().describe("Root keys administer every tenant"),
    createdAt: isoDate,
    lastUsedAt: isoDate.nullable().describe("Recorded at most once a minute"),
    expiresAt: isoDate.nullable().describe("After this the key no longer authenticates; null: never"),
  })
  .meta({ id: "ApiKey" });

const createdKey = apiKey
  .extend({ key: z.string().describe("The secret key. Shown only in this response.") })
  .meta({
    id: "CreatedApiKey",
  });

const createBody = z
  .strictObject({
    tenant: tenantId
      .optional()
      .describe("Tenant of the new key; defaults to the caller's. Root keys only for others."),
    name: z.string().min(1).max(100).optional(),
    scopes: z
      .array(z.enum(scopes))
      .min(1)
      .max(scopes.length)
      .refine((s) => new Set(s).size === s.length, "scopes must not repeat"),
    expiresInSeconds: z
      .number()
      .int()
      .min(60)
      .max(10 * 365 * 86_400)
      .optional()
      .describe("The key stops authenticating this long after its creation; default: never"),
  })
  .meta({ id: "CreateApiKeyRequest" });

const present = (r: ApiKeyRecord) => ({
  id: r.id,
  tenant: r.tenantId,
  name: r.name,
  prefix: r.prefix,
  scopes: r.scopes,
  root: r.root,
  createdAt: toIso(r.createdAt),
  lastUsedAt: toIsoOrNull(r.lastUsedAt),
  expiresAt: toIsoOrNull(r.expiresAt),
});

export const keyRoutes: FastifyPluginAsyncZod<{ keys: KeysRepository }> = async (app, { keys }) => {
  app.post(
    "/keys",
    {
      config: { scope: "admin" },
      schema: {
        tags: ["keys"],
        operationId: "createKey",
        summary: "Create an API key (the secret is shown once)",
        body: createBody,
        response: { 201: createdKey, ...problemResponses(403) },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const tenant = request.body.tenant ?? caller.tenantId;
      if (tenant !== caller.tenantId && !caller.root) {
        throw new FlowlineError("forbidden", "Only a root key may create keys for another tenant");
      }
      const { record, key } = await keys.create({
        tenantId: tenant,
        name: request.body.name ?? "unnamed",
        scopes: request.body.scopes,
        ...(request.body.expiresInSeconds === undefined
          ? {}
          : { expiresAt: new Date(Date.now() + request.body.expiresInSeconds * 1000) }),
      });
      request.log.info({ keyId: record.id, tenant }, "api key created");
      return reply.code(201).send({ ...present(record), key });
    },
  );

  app.get(
    "/keys",
    {
      config: { scope: "admin" },
      schema: {
        tags: ["keys"],
        operationId: "listKeys",
        summary: "List the active API keys of a tenant (root keys only to root keys)",
        querystring: z.strictObject({
          tenant: tenantId.optional().describe("Root keys only; defaults to the caller's"),
        }),
        response: { 200: z.object({ items: z.array(apiKey) }), ...problemResponses(403) },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const tenant = request.query.tenant ?? caller.tenantId;
      if (tenant !== caller.tenantId && !caller.root) {
        throw new FlowlineError("forbidden", "Only a root key may list keys of another tenant");
      }
      // Root keys are administered by root keys only (SPEC §12).
      const items = (await keys.list(tenant)).filter((k) => caller.root || !k.root);
      return { items: items.map(present) };
    },
  );

  app.delete(
    "/keys/:id",
    {
      config: { scope: "admin" },
      schema: {
        tags: ["keys"],
        operationId: "revokeKey",
        summary: "Revoke an API key (a root key only with a root key)",
        params: z.strictObject({ id: z.uuid() }),
        response: { 204: z.null().describe("Revoked"), ...problemResponses(403, 404) },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      // A root key looks missing to a non-root caller, like another tenant's key.
      const revoked = caller.root
        ? await keys.revoke(null, request.params.id)
        : await keys.revoke(caller.tenantId, request.params.id, { root: false });
      if (!revoked) throw notFound("API key");
      request.log.info({ keyId: request.params.id }, "api key revoked");
      return reply.code(204).send(null);
    },
  );
};
