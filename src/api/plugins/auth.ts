/**
 * Bearer-key authentication. Every route is private unless its config says `public: true`;
 * a private route names the scope it needs (`scope: "read" | "write" | "admin"`), and a route
 * without one fails to register — forgetting to protect a route is a start-up error, not a leak.
 */
import type { FastifyInstance, FastifyRequest } from "fastify";
import type { KeysRepository } from "../../db/repositories/keys.ts";
import { hasScope } from "../../domain/api-keys.ts";
import { FlowlineError } from "../../domain/errors.ts";
import type { Scope } from "../../domain/status.ts";

export interface AuthContext {
  keyId: string;
  tenantId: string;
  scopes: readonly string[];
  root: boolean;
}

declare module "fastify" {
  interface FastifyContextConfig {
    /** Reachable without a key (health, docs, OpenAPI). */
    public?: boolean;
    /** The least scope a key needs for this route. */
    scope?: Scope;
  }
  interface FastifyRequest {
    auth: AuthContext | null;
  }
}

const bearer = /^Bearer\s+([\x21-\x7e]{1,512})$/i;

/** Counts failed authentications per client address; null when rate limiting is off. */
export interface FailedAuthGuard {
  blockedFor(address: string): Promise<number | null>;
  recordFailure(address: string): Promise<void>;
}

export function registerAuth(
  app: FastifyInstance,
  keys: KeysRepository,
  failures: FailedAuthGuard | null,
): void {
  app.decorateRequest("auth", null);

  app.addHook("onRoute", (route) => {
    // The interactive reference registers its own routes (page and static assets).
    if (route.url === "/docs" || route.url.startsWith("/docs/"))
      route.config = { ...route.config, public: true };
    const config = route.config as { public?: boolean; scope?: Scope } | undefined;
    if (!config?.public && !config?.scope) {
      throw new Error(`route ${route.method} ${route.url} declares neither a scope nor public: true`);
    }
  });

  app.addHook("onRequest", async (request: FastifyRequest) => {
    const config = request.routeOptions.config;
    if (config.public || request.is404) return;
    const header = request.headers.authorization;
    if (!header)
      throw new FlowlineError("unauthorized", "Missing Authorization header; send 'Bearer <api key>'");
    // Before the key lookup: an address that keeps failing costs no database query.
    const wait = await failures?.blockedFor(request.ip);
    if (wait) {
      throw new FlowlineError(
        "rate_limited",
        `Too many failed authentications from this address; retry in ${wait} s`,
        {
          retryAfterSeconds: wait,
        },
      );
    }
    const match = bearer.exec(header);
    const record = match ? await keys.findByKey(match[1]!) : undefined;
    if (!record) {
      await failures?.recordFailure(request.ip);
      throw new FlowlineError(
        "unauthorized",
        match ? "Unknown or revoked API key" : "Malformed Authorization header; expected 'Bearer <api key>'",
      );
    }
    if (config.scope && !hasScope(record.scopes, config.scope)) {
      throw new FlowlineError("forbidden", `This API key lacks the '${config.scope}' scope`);
    }
    request.auth = { keyId: record.id, tenantId: record.tenantId, scopes: record.scopes, root: record.root };
  });
}

/** The authenticated caller of a private route (the auth hook guarantees one). */
export function callerOf(request: FastifyRequest): AuthContext {
  if (!request.auth) throw new FlowlineError("unauthorized", "Authentication required");
  return request.auth;
}
