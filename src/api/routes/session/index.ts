/**
 * Browser credentials (SPEC §10): the dashboard's session cookie, and stream tokens with which a
 * page on another origin opens one run's events or logs with a native EventSource.
 */
import type { FastifyRequest } from "fastify";
import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import type { ApiKeyRecord } from "../../../db/repositories/keys.ts";
import { csrfTokenFor, signSession, signStreamToken, verifySession } from "../../../domain/browser-auth.ts";
import { FlowlineError } from "../../../domain/errors.ts";
import type { EngineDeps } from "../../../engine/deps.ts";
import { runEvents } from "../../../engine/runs.ts";
import {
  type AuthSources,
  CSRF_HEADER,
  callerOf,
  clearSessionCookie,
  SESSION_COOKIE,
  setSessionCookie,
} from "../../plugins/auth.ts";
import { problemResponses } from "../../problem.ts";
import { isoDate } from "../../schemas.ts";

const sessionSchema = z
  .object({
    keyId: z.uuid(),
    tenant: z.string(),
    scopes: z.array(z.string()),
    root: z.boolean(),
    expiresAt: isoDate.nullable().describe("When the session ends; null for a caller using a bearer key"),
    csrfToken: z
      .string()
      .nullable()
      .describe(`Send it as \`${CSRF_HEADER}\` on every unsafe request made with the session cookie`),
  })
  .meta({ id: "Session" });

const streamTokenSchema = z
  .object({
    token: z.string(),
    expiresAt: isoDate,
    url: z
      .string()
      .describe("The run's event stream with the token: open it as is with `new EventSource(url)`"),
  })
  .meta({ id: "StreamToken" });

const noSecurity: Array<Record<string, string[]>> = [];

export interface SessionRouteOptions extends AuthSources {
  engine: EngineDeps;
  sessionTtlSeconds: number;
  streamTokenTtlSeconds: number;
  publicUrl: string | undefined;
}

export const sessionRoutes: FastifyPluginAsyncZod<SessionRouteOptions> = async (app, options) => {
  const { keys } = options;

  const present = (
    key: ApiKeyRecord,
    session: { value: string; expiresAt: number } | null,
    secret: string,
  ) => ({
    keyId: key.id,
    tenant: key.tenantId,
    scopes: key.scopes,
    root: key.root,
    expiresAt: session ? new Date(session.expiresAt * 1000).toISOString() : null,
    csrfToken: session ? csrfTokenFor(secret, session.value) : null,
  });

  app.post(
    "/session",
    {
      config: { public: true },
      schema: {
        tags: ["browser"],
        operationId: "createSession",
        summary: "Log a browser in: exchange an API key for a session cookie",
        description:
          `Sets \`${SESSION_COOKIE}\` (HttpOnly, SameSite=Strict, Secure over HTTPS). Requests with the cookie ` +
          `act as the key until the session expires or the key is revoked; unsafe methods also need ` +
          `\`${CSRF_HEADER}\` with the \`csrfToken\` answered here.`,
        security: noSecurity,
        body: z
          .strictObject({ key: z.string().min(1).max(512).describe("An API key") })
          .meta({ id: "LoginRequest" }),
        response: { 200: sessionSchema, ...problemResponses(401) },
      },
    },
    async (request, reply) => {
      const key = await keys.findByKey(request.body.key);
      if (!key) throw new FlowlineError("unauthorized", "Unknown or revoked API key");
      const secret = await options.secret();
      const expiresAt = Math.floor(Date.now() / 1000) + options.sessionTtlSeconds;
      const value = signSession(secret, { keyId: key.id, expiresAt });
      setSessionCookie(request, reply, value, options.sessionTtlSeconds);
      return present(key, { value, expiresAt }, secret);
    },
  );

  app.get(
    "/session",
    {
      config: { scope: "read" },
      schema: {
        tags: ["browser"],
        operationId: "getSession",
        summary: "Who the caller is (and, with a session cookie, its CSRF token and expiry)",
        response: { 200: sessionSchema, ...problemResponses() },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const key = await keys.findActiveById(caller.keyId);
      if (!key) throw new FlowlineError("unauthorized", "Unknown or revoked API key");
      const secret = await options.secret();
      const value = request.cookies[SESSION_COOKIE];
      // The auth hook accepted this very cookie, so it verifies.
      const claims = caller.via === "session" && value ? verifySession(secret, value, 0) : null;
      return present(key, claims && value ? { value, expiresAt: claims.expiresAt } : null, secret);
    },
  );

  app.delete(
    "/session",
    {
      config: { public: true },
      schema: {
        tags: ["browser"],
        operationId: "deleteSession",
        summary: "Log out: clear the session cookie",
        security: noSecurity,
        response: { 204: z.null().describe("The cookie is cleared"), ...problemResponses() },
      },
    },
    async (request, reply) => {
      clearSessionCookie(request, reply);
      return reply.code(204).send(null);
    },
  );

  app.post(
    "/runs/:id/stream-token",
    {
      config: { scope: "read" },
      schema: {
        tags: ["browser"],
        operationId: "createStreamToken",
        summary: "A token that opens this run's events and logs, for a browser on another origin",
        description:
          "The token reads this run's events and logs and nothing else, reconnects with `Last-Event-ID` " +
          "included, until `expiresAt`. Allow the page's origin in `http.cors.allowedOrigins`.",
        params: z.strictObject({ id: z.uuid() }),
        response: { 201: streamTokenSchema, ...problemResponses(404) },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      const { run } = await runEvents(options.engine, caller.tenantId, request.params.id, 0, 0);
      const expiresAt = Math.floor(Date.now() / 1000) + options.streamTokenTtlSeconds;
      const token = signStreamToken(await options.secret(), {
        runId: run.id,
        keyId: caller.keyId,
        expiresAt,
      });
      const base = options.publicUrl?.replace(/\/+$/, "") ?? originOf(request);
      return reply.code(201).send({
        token,
        expiresAt: new Date(expiresAt * 1000).toISOString(),
        url: `${base}/v1/runs/${run.id}/events?token=${token}`,
      });
    },
  );
};

function originOf(request: FastifyRequest): string {
  return `${request.protocol}://${request.host}`;
}
