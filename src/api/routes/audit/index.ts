import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import type { DbHandle } from "../../../db/client.ts";
import { listAudit } from "../../../db/repositories/audit.ts";
import { tenantIdPattern } from "../../../domain/api-keys.ts";
import { FlowlineError } from "../../../domain/errors.ts";
import { callerOf } from "../../plugins/auth.ts";
import { problemResponses } from "../../problem.ts";
import { decodeCursor, encodeCursor, isoDate, pageQuery, toIso } from "../../schemas.ts";

const auditEntry = z
  .object({
    id: z.number().int(),
    time: isoDate,
    keyId: z.uuid().nullable().describe("The API key that made the request"),
    keyPrefix: z.string().nullable(),
    action: z.string().describe("e.g. workflow.put, run.cancel, key.create, webhook_secret.rotate"),
    target: z.string().nullable().describe("e.g. workflow:<name>, run:<id>, key:<id>"),
    outcome: z.string().describe("ok, or the error code of a refused request"),
    requestId: z.string().nullable(),
    details: z.record(z.string(), z.unknown()),
  })
  .meta({ id: "AuditEntry" });

export const auditRoutes: FastifyPluginAsyncZod<{ db: DbHandle }> = async (app, { db }) => {
  app.get(
    "/audit",
    {
      config: { scope: "admin" },
      schema: {
        tags: ["audit"],
        operationId: "listAudit",
        summary: "Who did what: the tenant's state-changing requests, newest first",
        querystring: z.strictObject({
          ...pageQuery,
          action: z.string().min(1).max(100).optional(),
          keyId: z.uuid().optional(),
          target: z.string().min(1).max(300).optional(),
          outcome: z.string().min(1).max(100).optional(),
          since: isoDate.optional().describe("Only entries at or after this time"),
          tenant: z
            .string()
            .regex(tenantIdPattern, "must match ^[a-z0-9][a-z0-9_-]{0,62}$")
            .optional()
            .describe("Root keys only; defaults to the caller's tenant"),
        }),
        response: {
          200: z.object({ items: z.array(auditEntry), nextCursor: z.string().nullable() }),
          ...problemResponses(403),
        },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const q = request.query;
      const tenantId = q.tenant ?? caller.tenantId;
      if (tenantId !== caller.tenantId && !caller.root)
        throw new FlowlineError("forbidden", "Only a root key may read another tenant's audit log");
      const before = decodeCursor(q.cursor, (v) => /^[1-9]\d{0,17}$/.test(v));
      const page = await listAudit(db.sql, {
        tenantId,
        limit: q.limit,
        ...(q.action === undefined ? {} : { action: q.action }),
        ...(q.keyId === undefined ? {} : { keyId: q.keyId }),
        ...(q.target === undefined ? {} : { target: q.target }),
        ...(q.outcome === undefined ? {} : { outcome: q.outcome }),
        ...(q.since === undefined ? {} : { since: new Date(q.since) }),
        ...(before === undefined ? {} : { beforeId: Number(before) }),
      });
      const last = page.items.at(-1);
      return {
        items: page.items.map((e) => ({
          id: e.id,
          time: toIso(e.createdAt),
          keyId: e.keyId,
          keyPrefix: e.keyPrefix,
          action: e.action,
          target: e.target,
          outcome: e.outcome,
          requestId: e.requestId,
          details: e.details,
        })),
        nextCursor: page.hasMore && last ? encodeCursor(String(last.id)) : null,
      };
    },
  );
};
