import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import type { DbHandle } from "../../../db/client.ts";
import {
  rotateWebhookSecret,
  type TenantWebhookSecrets,
  webhookSecretsOf,
} from "../../../db/repositories/webhook-secrets.ts";
import { callerOf } from "../../plugins/auth.ts";
import { problemResponses } from "../../problem.ts";
import { isoDate, toIso } from "../../schemas.ts";

const webhookSecret = z
  .object({
    secret: z
      .string()
      .describe(
        "The tenant's signing secret (whsec_…): verify deliveries with any Standard Webhooks library",
      ),
    createdAt: isoDate,
    previousExpiresAt: isoDate
      .nullable()
      .describe("Until then the secret before the last rotation also signs every delivery; null when none"),
  })
  .meta({ id: "WebhookSecret" });

const present = (s: TenantWebhookSecrets) => ({
  secret: s.secret,
  createdAt: toIso(s.createdAt),
  previousExpiresAt: s.previous ? toIso(s.previous.expiresAt) : null,
});

/** The calling tenant's webhook signing secret (SPEC §12); admin keys only. */
export const webhookRoutes: FastifyPluginAsyncZod<{ db: DbHandle }> = async (app, { db }) => {
  app.get(
    "/webhooks/secret",
    {
      config: { scope: "admin" },
      schema: {
        tags: ["webhooks"],
        operationId: "getWebhookSecret",
        summary: "Read the tenant's webhook signing secret (created on first use)",
        response: { 200: webhookSecret, ...problemResponses(403) },
      },
    },
    async (request, reply) => {
      const secrets = await webhookSecretsOf(db.sql, callerOf(request).tenantId);
      return reply.header("cache-control", "no-store").send(present(secrets));
    },
  );

  app.post(
    "/webhooks/secret/rotate",
    {
      config: { scope: "admin" },
      schema: {
        tags: ["webhooks"],
        operationId: "rotateWebhookSecret",
        summary: "Replace the tenant's webhook signing secret; the old one keeps signing for 24 hours",
        response: { 200: webhookSecret, ...problemResponses(403) },
      },
    },
    async (request, reply) => {
      const secrets = await rotateWebhookSecret(db.sql, callerOf(request).tenantId);
      request.log.info({ tenant: callerOf(request).tenantId }, "webhook secret rotated");
      return reply.header("cache-control", "no-store").send(present(secrets));
    },
  );
};
