/**
 * Builds the Fastify application without listening, so tests drive it with `inject` and
 * `server.ts` adds the socket and the shutdown handling.
 */
import { randomUUID } from "node:crypto";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import cookie from "@fastify/cookie";
import cors from "@fastify/cors";
import rateLimit from "@fastify/rate-limit";
import fastifyStatic from "@fastify/static";
import swagger from "@fastify/swagger";
import swaggerUi from "@fastify/swagger-ui";
import Fastify, {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from "fastify";
import {
  jsonSchemaTransform,
  jsonSchemaTransformObject,
  serializerCompiler,
  validatorCompiler,
  type ZodTypeProvider,
} from "fastify-type-provider-zod";
import type { OpenAPIV3_1 } from "openapi-types";
import type { Config } from "../config/index.ts";
import type { DbHandle } from "../db/client.ts";
import { recordKeyUse } from "../db/repositories/key-usage.ts";
import { keysRepository } from "../db/repositories/keys.ts";
import { readEvents } from "../db/repositories/runs.ts";
import { workflowsRepository } from "../db/repositories/workflows.ts";
import { FlowlineError } from "../domain/errors.ts";
import { createEngineDeps } from "../engine/create.ts";
import type { EngineDeps } from "../engine/deps.ts";
import type { Stores } from "../stores/index.ts";
import { tidyDocument } from "./openapi.ts";
import { registerAudit } from "./plugins/audit.ts";
import { CSRF_HEADER, registerAuth, SESSION_COOKIE } from "./plugins/auth.ts";
import { registerBodyParsers } from "./plugins/body-parsers.ts";
import { registerMetrics, registerStreamGauge } from "./plugins/metrics.ts";
import { registerRouteIndex } from "./plugins/route-index.ts";
import { registerTracing } from "./plugins/tracing.ts";
import { problemFromFlowlineError, rawProblemResponse, toFlowlineError } from "./problem.ts";
import { assetRoutes } from "./routes/assets/index.ts";
import { auditRoutes } from "./routes/audit/index.ts";
import { controlRoutes } from "./routes/control/index.ts";
import { healthRoutes } from "./routes/health/index.ts";
import { keyRoutes } from "./routes/keys/index.ts";
import { planRoutes } from "./routes/plans/index.ts";
import { queueOverview, queueRoutes, registerQueueMetrics } from "./routes/queues/index.ts";
import { rollbackRoutes } from "./routes/rollback/index.ts";
import { runRoutes } from "./routes/runs/index.ts";
import { coalesceReads, HEARTBEAT_MS, type SseHub } from "./routes/runs/sse.ts";
import { sessionRoutes } from "./routes/session/index.ts";
import { webhookRoutes } from "./routes/webhooks/index.ts";
import { workflowRoutes } from "./routes/workflows/index.ts";

export interface AppDeps {
  config: Config;
  db: DbHandle;
  /**
   * Queues, locks, rate limits and event fan-out (Redis or Postgres; see src/stores), opened with
   * the fail-fast "request" flavour and a subscription. Owned by the caller: closing the app
   * leaves them open.
   */
  stores: Stores;
  /** A pino logger to use; by default the app logs JSON at the configured level. */
  logger?: FastifyBaseLogger;
  /** SSE heartbeat interval (tests shorten it). */
  sseHeartbeatMs?: number;
}

export interface AppExtras {
  engine: EngineDeps;
  hub: SseHub;
}

declare module "fastify" {
  interface FastifyInstance {
    flowline: AppExtras;
  }
}

const requestIdPattern = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * Socket timeouts (SPEC §13): slow clients cannot hold sockets forever. Node checks request and
 * header deadlines on an interval, which is kept well below the shortest deadline.
 */
function serverTimeouts(config: Config) {
  const { requestTimeoutMs, headersTimeoutMs, keepAliveTimeoutMs, connectionTimeoutMs } = config.server;
  const deadlines = [requestTimeoutMs, headersTimeoutMs].filter((ms) => ms > 0);
  const checkEvery = Math.min(30_000, Math.max(50, Math.floor(Math.min(...deadlines, 120_000) / 4)));
  return {
    requestTimeout: requestTimeoutMs,
    keepAliveTimeout: keepAliveTimeoutMs,
    connectionTimeout: connectionTimeoutMs,
    http: { headersTimeout: headersTimeoutMs, connectionsCheckingInterval: checkEvery },
  };
}

/** The one way an error leaves the API: problem+json, logged by its class. */
function sendProblem(request: FastifyRequest, reply: FastifyReply, error: unknown): FastifyReply {
  const flowlineError = toFlowlineError(error);
  const problem = problemFromFlowlineError(flowlineError, request.id);
  if (problem.status >= 500) {
    request.log.error({ err: error, code: flowlineError.code }, "request failed");
  } else {
    request.log.info({ code: flowlineError.code, detail: flowlineError.message }, "request refused");
  }
  reply.headers(problem.headers).code(problem.status).type("application/problem+json");
  // Bypass the route's response serializer: problems share one fixed shape.
  return reply.serializer(JSON.stringify).send(problem.body);
}

/** Fastify's request log line, with stream tokens (`?token=`) in URLs masked. */
const requestSerializer = (req: { method: string; url: string; ip?: string; host?: string }) => ({
  method: req.method,
  url: req.url.replace(/([?&]token=)[^&]*/g, "$1***"),
  host: req.host,
  remoteAddress: req.ip,
});

export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const { config } = deps;
  const app = Fastify({
    ...(deps.logger
      ? { loggerInstance: deps.logger.child({}, { serializers: { req: requestSerializer } }) }
      : {
          logger: {
            level: config.log.level,
            redact: ["req.headers.authorization", "req.headers.cookie"],
            serializers: { req: requestSerializer },
          },
        }),
    bodyLimit: config.server.bodyLimitBytes,
    ...serverTimeouts(config),
    trustProxy: config.server.trustProxy,
    requestIdHeader: false,
    genReqId: (req) => {
      const given = req.headers["x-request-id"];
      return typeof given === "string" && requestIdPattern.test(given) ? given : randomUUID();
    },
    routerOptions: { maxParamLength: 256, ignoreTrailingSlash: true },
    // Errors raised before a route runs (a malformed or over-long URL) and on the socket before
    // a request exists (timeouts, oversized headers) are problem+json like every other error.
    frameworkErrors: (error, request, reply) => {
      reply.header("x-request-id", request.id);
      return sendProblem(request, reply, error);
    },
    clientErrorHandler: (error, socket) => {
      if ((error as NodeJS.ErrnoException).code === "ECONNRESET" || socket.destroyed) return;
      if (socket.writable) socket.write(rawProblemResponse(error));
      socket.destroy(error);
    },
    // Validation errors are collected whole (every bad field), not just the first.
    ajv: { customOptions: { allErrors: true } },
  }).withTypeProvider<ZodTypeProvider>();

  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);

  app.addHook("onRequest", async (request, reply) => {
    reply.header("x-request-id", request.id);
  });

  app.setErrorHandler((error, request, reply) => sendProblem(request, reply, error));
  const methodsFor = registerRouteIndex(app);
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split("?")[0]!;
    const allowed = methodsFor(path);
    // A route for this method exists but found nothing (a static file that is not there): 404.
    if (allowed.length > 0 && !allowed.includes(request.method)) {
      reply.header("allow", allowed.join(", "));
      return sendProblem(
        request,
        reply,
        new FlowlineError(
          "method_not_allowed",
          `${request.method} is not allowed on ${path}; use ${allowed.join(", ")}`,
        ),
      );
    }
    return sendProblem(request, reply, new FlowlineError("not_found", `No route ${request.method} ${path}`));
  });

  registerBodyParsers(app, { maxDepth: config.server.maxJsonDepth });
  registerTracing(app);
  // Generated clients name their methods after operationIds: a documented route without one is a
  // start-up error, like a route without a scope.
  app.addHook("onRoute", (route) => {
    const schema = route.schema as { hide?: boolean; operationId?: string } | undefined;
    if (schema && !schema.hide && !schema.operationId && !route.url.startsWith("/docs"))
      throw new Error(`route ${route.method} ${route.url} is documented without an operationId`);
  });
  // Before authentication, so that preflights are answered and refusals still carry CORS headers.
  await app.register(cors, {
    origin: config.http.cors.allowedOrigins.length > 0 ? [...config.http.cors.allowedOrigins] : false,
    methods: ["GET", "HEAD", "POST", "PUT", "DELETE"],
    allowedHeaders: ["authorization", "content-type", "idempotency-key", "last-event-id", "x-request-id"],
    exposedHeaders: ["location", "x-request-id", "retry-after"],
    maxAge: 600,
  });
  await app.register(cookie);
  // Before any route is added, so that every route is checked for a scope.
  const keys = keysRepository(deps.db.db);
  let secret: Promise<string> | undefined;
  const authSources = {
    keys,
    used: (keyId: string) => recordKeyUse(deps.db.sql, keyId),
    failures: config.rateLimit.enabled
      ? deps.stores.failureLimiter(config.rateLimit.failedAuthMax, config.rateLimit.failedAuthWindowSeconds)
      : null,
    secret: () => {
      if (config.auth.sessionSecret) return Promise.resolve(config.auth.sessionSecret);
      secret ??= deps.stores.sessionSecret().catch((error: Error) => {
        secret = undefined;
        throw new FlowlineError(
          "service_unavailable",
          `Sessions need the ${deps.stores.kind === "redis" ? "Redis" : "Postgres"} store, which is unreachable: ${error.message}`,
        );
      });
      return secret;
    },
  };
  registerAuth(app, authSources);
  registerAudit(app, deps.db.sql);

  await app.register(swagger, {
    openapi: {
      openapi: "3.1.0",
      info: {
        title: "Flowline API",
        version: "1",
        description:
          "Workflow orchestration over HTTP. Authenticate with `Authorization: Bearer <api key>`; browsers " +
          "may use the session cookie from `POST /v1/session` (unsafe methods then also send `" +
          CSRF_HEADER +
          "`), and a run's event and log streams accept a stream token as `?token=`. " +
          "Errors are RFC 9457 problem+json.",
        license: { name: "Apache-2.0", identifier: "Apache-2.0" },
      },
      // Relative to where the document is served, unless the public address is configured.
      servers: [{ url: config.server.publicUrl ?? "/" }],
      components: {
        securitySchemes: {
          bearer: { type: "http", scheme: "bearer" },
          session: { type: "apiKey", in: "cookie", name: SESSION_COOKIE },
          streamToken: { type: "apiKey", in: "query", name: "token" },
        },
      },
      security: [{ bearer: [] }, { session: [] }],
    },
    transform: jsonSchemaTransform,
    transformObject: (document) => tidyDocument(jsonSchemaTransformObject(document) as OpenAPIV3_1.Document),
  });
  await app.register(swaggerUi, { routePrefix: "/docs", uiConfig: { deepLinking: true } });

  const metrics = registerMetrics(app);

  await app.register(rateLimit, {
    global: true,
    max: config.rateLimit.max,
    timeWindow: config.rateLimit.windowSeconds * 1000,
    ...deps.stores.rateLimit,
    // Rate limiting must not take the API down with its store: fail open, readiness reports it.
    skipOnError: true,
    keyGenerator: (request) => (request.auth ? `key:${request.auth.keyId}` : `ip:${request.ip}`),
    // Public reads (health, metrics, docs) are free; a public POST (logging in) tries keys, so it counts.
    allowList: (request) =>
      !config.rateLimit.enabled ||
      (request.routeOptions.config.public === true &&
        (request.method === "GET" || request.method === "HEAD")),
    errorResponseBuilder: (_request, context) =>
      new FlowlineError(
        "rate_limited",
        `Rate limit of ${context.max} requests exceeded; retry in ${context.after}`,
        {
          retryAfterSeconds: Math.max(1, Math.ceil(context.ttl / 1000)),
        },
      ),
  });

  app.get("/openapi.json", { config: { public: true }, schema: { hide: true } }, async () => app.swagger());
  await registerDashboard(app);

  // One subscription per API process, fanned out to every SSE stream it serves; it is made as
  // soon as the store is reachable.
  const { bus, dispatcher } = deps.stores;
  void bus.start().catch((error: Error) => app.log.warn({ err: error.message }, "event subscription failed"));
  const engine = createEngineDeps({
    db: deps.db,
    config,
    dispatcher,
    notifier: bus,
    control: bus,
    locks: deps.stores.locks,
    log: app.log as unknown as EngineDeps["log"],
  });
  const hub: SseHub = {
    bus,
    streams: new Map(),
    // A lease outlives a few missed heartbeats; a dead process's streams stop counting after it.
    leases: deps.stores.streamLeases(3 * (deps.sseHeartbeatMs ?? HEARTBEAT_MS) + 5000),
    readPage: coalesceReads(
      (runId) => bus.generation(runId),
      (runId, afterId, limit) => readEvents(deps.db.sql, runId, afterId, limit),
    ),
    ...(deps.sseHeartbeatMs ? { heartbeatMs: deps.sseHeartbeatMs } : {}),
  };
  app.decorate("flowline", { engine, hub });
  registerStreamGauge(metrics, () => hub.streams.size);
  // Open event streams would keep close() waiting forever: end them first.
  app.addHook("preClose", async () => {
    for (const close of [...hub.streams.keys()]) close();
  });
  await app.register(healthRoutes, { db: deps.db, stores: deps.stores });
  await app.register(runRoutes, { prefix: "/v1", engine, hub });
  await app.register(assetRoutes, { prefix: "/v1", engine });
  await app.register(planRoutes, { prefix: "/v1", engine });
  await app.register(controlRoutes, { prefix: "/v1", engine });
  await app.register(rollbackRoutes, { prefix: "/v1", engine });
  await app.register(keyRoutes, { prefix: "/v1", keys });
  await app.register(webhookRoutes, { prefix: "/v1", db: deps.db });
  await app.register(auditRoutes, { prefix: "/v1", db: deps.db });
  await app.register(sessionRoutes, {
    prefix: "/v1",
    ...authSources,
    engine,
    sessionTtlSeconds: config.auth.sessionTtlSeconds,
    streamTokenTtlSeconds: config.auth.streamTokenTtlSeconds,
    publicUrl: config.server.publicUrl,
  });
  const queueSources = {
    config,
    sql: deps.db.sql,
    dispatcher,
    registry: deps.stores.registry,
  };
  await app.register(queueRoutes, { prefix: "/v1", ...queueSources });
  registerQueueMetrics(metrics, () => queueOverview(queueSources));
  await app.register(workflowRoutes, {
    prefix: "/v1",
    workflows: workflowsRepository(deps.db.db),
    config,
  });

  return app;
}

/**
 * The dashboard (`/ui/`): plain ES modules from `ui/`, and the pinned browser builds of its two
 * libraries straight from node_modules, so `npm ci` is the whole build.
 */
async function registerDashboard(app: FastifyInstance): Promise<void> {
  const require = createRequire(import.meta.url);
  const packageDir = (name: string) => dirname(require.resolve(`${name}/package.json`));
  const mounts = [
    { root: fileURLToPath(new URL("../../ui/", import.meta.url)), prefix: "/ui/" },
    { root: join(packageDir("@dagrejs/dagre"), "dist"), prefix: "/ui/vendor/dagre/" },
    { root: join(packageDir("croner"), "dist"), prefix: "/ui/vendor/croner/" },
  ];
  for (const [i, mount] of mounts.entries()) {
    await app.register(fastifyStatic, {
      ...mount,
      decorateReply: i === 0,
      cacheControl: false,
      index: false,
    });
  }
  const page = { config: { public: true }, schema: { hide: true } };
  app.get("/ui/", page, (_request, reply) => reply.sendFile("index.html", mounts[0]!.root));
  app.get("/", page, (_request, reply) => reply.redirect("/ui/"));
}
