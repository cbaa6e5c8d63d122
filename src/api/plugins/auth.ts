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

export function registerAuth(app: FastifyInstance, keys: KeysRepository): void {
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
    const match = bearer.exec(header);
    if (!match)
      throw new FlowlineError("unauthorized", "Malformed Authorization header; expected 'Bearer <api key>'");
    const record = await keys.findByKey(match[1]!);
    if (!record) throw new FlowlineError("unauthorized", "Unknown or revoked API key");
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
