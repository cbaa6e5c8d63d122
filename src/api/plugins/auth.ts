/**
 * Authentication. Every route is private unless its config says `public: true`; a private route
 * names the scope it needs (`scope: "read" | "write" | "admin"`), and a route without one fails to
 * register — forgetting to protect a route is a start-up error, not a leak.
 *
 * A caller proves itself with, in this order: `Authorization: Bearer <api key>`; on routes marked
 * `streamToken: true`, a `?token=` issued for that very run (a native EventSource sends no
 * headers); or the dashboard's session cookie, where unsafe methods must also carry the session's
 * CSRF token in `X-CSRF-Token`. Sessions and tokens name a key by id, and that key is looked up on
 * every request, so revoking it ends them.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { ApiKeyRecord, KeysRepository } from "../../db/repositories/keys.ts";
import { hasScope } from "../../domain/api-keys.ts";
import { csrfTokenMatches, verifySession, verifyStreamToken } from "../../domain/browser-auth.ts";
import { FlowlineError } from "../../domain/errors.ts";
import type { Scope } from "../../domain/status.ts";

export interface AuthContext {
  keyId: string;
  /** The key's display prefix (`flk_abc123`), for the audit log. */
  keyPrefix: string;
  tenantId: string;
  scopes: readonly string[];
  root: boolean;
  /** How the caller proved itself. */
  via: "key" | "session" | "streamToken";
}

export const SESSION_COOKIE = "flowline_session";
export const CSRF_HEADER = "x-csrf-token";
const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);
const publicPrefixes = ["/docs", "/ui"];

export interface AuthSources {
  keys: KeysRepository;
  /** The secret that signs sessions and stream tokens. */
  secret(): Promise<string>;
  /** Counts failed authentications per client address; null when rate limiting is off. */
  failures: FailedAuthGuard | null;
  /** Records a key's use (`lastUsedAt`); called at most about once a minute per key and process. */
  used?(keyId: string): Promise<void>;
}

export interface FailedAuthGuard {
  blockedFor(address: string): Promise<number | null>;
  recordFailure(address: string): Promise<void>;
}

declare module "fastify" {
  interface FastifyContextConfig {
    /** Reachable without a key (health, docs, OpenAPI). */
    public?: boolean;
    /** The least scope a key needs for this route. */
    scope?: Scope;
    /** Also accepts a stream token for the run in the `id` path parameter (`?token=`). */
    streamToken?: boolean;
  }
  interface FastifyRequest {
    auth: AuthContext | null;
  }
}

const bearer = /^Bearer\s+([\x21-\x7e]{1,512})$/i;

export function registerAuth(app: FastifyInstance, sources: AuthSources): void {
  const { keys, failures } = sources;
  app.decorateRequest("auth", null);

  app.addHook("onRoute", (route) => {
    // The interactive reference and the dashboard register their own routes (pages and static
    // files); the dashboard's data comes from /v1 with the session cookie.
    if (publicPrefixes.some((p) => route.url === p || route.url.startsWith(`${p}/`)))
      route.config = { ...route.config, public: true };
    const config = route.config as { public?: boolean; scope?: Scope } | undefined;
    if (!config?.public && !config?.scope) {
      throw new Error(`route ${route.method} ${route.url} declares neither a scope nor public: true`);
    }
  });

  const now = () => Math.floor(Date.now() / 1000);
  const authorize = (record: ApiKeyRecord | null, scope: Scope | undefined, missing: string) => {
    if (!record) throw new FlowlineError("unauthorized", missing);
    if (scope && !hasScope(record.scopes, scope)) {
      throw new FlowlineError("forbidden", `This API key lacks the '${scope}' scope`);
    }
    return record;
  };

  // These establish who the caller is; the route's scope is checked once that is recorded.
  const fromKey = async (header: string) => {
    const match = bearer.exec(header);
    if (!match)
      throw new FlowlineError("unauthorized", "Malformed Authorization header; expected 'Bearer <api key>'");
    return authorize(await keys.findByKey(match[1]!), undefined, "Unknown or revoked API key");
  };

  const fromStreamToken = async (token: string, runId: string | undefined) => {
    const claims = verifyStreamToken(await sources.secret(), token, now());
    if (!claims) throw new FlowlineError("unauthorized", "Invalid or expired stream token");
    if (claims.runId !== runId) throw new FlowlineError("forbidden", "This stream token is for another run");
    return authorize(await keys.findActiveById(claims.keyId), undefined, "The token's API key was revoked");
  };

  const fromSession = async (request: FastifyRequest, cookie: string) => {
    const secret = await sources.secret();
    const claims = verifySession(secret, cookie, now());
    if (!claims) throw new FlowlineError("unauthorized", "The session has expired; log in again");
    const record = authorize(
      await keys.findActiveById(claims.keyId),
      undefined,
      "The session's API key was revoked",
    );
    // A cookie rides along on requests another site makes the browser send; the CSRF token
    // cannot, as only pages of this origin can read it.
    if (!SAFE_METHODS.has(request.method)) {
      const given = request.headers[CSRF_HEADER];
      if (typeof given !== "string" || !csrfTokenMatches(secret, cookie, given))
        throw new FlowlineError(
          "forbidden",
          `A session-authenticated ${request.method} needs the session's CSRF token in the ${CSRF_HEADER} header`,
        );
    }
    return record;
  };

  app.addHook("onRequest", async (request: FastifyRequest) => {
    const config = request.routeOptions.config;
    // Preflights are answered by the CORS plugin; what reaches here for OPTIONS is refused there.
    if (config.public || request.is404 || request.method === "OPTIONS") return;
    const header = request.headers.authorization;
    const token = config.streamToken ? (request.query as { token?: unknown }).token : undefined;
    const cookie = request.cookies[SESSION_COOKIE];
    if (!header && typeof token !== "string" && !cookie)
      throw new FlowlineError("unauthorized", "Missing Authorization header; send 'Bearer <api key>'");
    // Before any lookup: an address that keeps failing costs no database query.
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
    let record: ApiKeyRecord;
    let via: AuthContext["via"];
    try {
      if (header) {
        record = await fromKey(header);
        via = "key";
      } else if (typeof token === "string") {
        record = await fromStreamToken(token, (request.params as { id?: string }).id);
        via = "streamToken";
      } else {
        record = await fromSession(request, cookie!);
        via = "session";
      }
    } catch (error) {
      if (error instanceof FlowlineError && error.code === "unauthorized")
        await failures?.recordFailure(request.ip);
      throw error;
    }
    const stale = record.lastUsedAt === null || Date.now() - record.lastUsedAt.getTime() > 60_000;
    if (stale && sources.used) {
      sources
        .used(record.id)
        .catch((error: Error) =>
          request.log.warn({ err: error.message, keyId: record.id }, "could not record the key's use"),
        );
    }
    request.auth = {
      keyId: record.id,
      keyPrefix: record.prefix,
      tenantId: record.tenantId,
      scopes: record.scopes,
      root: record.root,
      via,
    };
    // Checked once the caller is known, so a refusal for scope is still attributed (audit log,
    // per-key rate limits).
    authorize(record, config.scope, "");
  });
}

/** Sets the session cookie: HttpOnly, SameSite=Strict, Secure when the request came over HTTPS. */
export function setSessionCookie(
  request: FastifyRequest,
  reply: FastifyReply,
  value: string,
  maxAge: number,
) {
  reply.setCookie(SESSION_COOKIE, value, {
    httpOnly: true,
    sameSite: "strict",
    secure: request.protocol === "https",
    path: "/",
    maxAge,
  });
}

export function clearSessionCookie(request: FastifyRequest, reply: FastifyReply) {
  reply.clearCookie(SESSION_COOKIE, {
    httpOnly: true,
    sameSite: "strict",
    secure: request.protocol === "https",
    path: "/",
  });
}

/** The authenticated caller of a private route (the auth hook guarantees one). */
export function callerOf(request: FastifyRequest): AuthContext {
  if (!request.auth) throw new FlowlineError("unauthorized", "Authentication required");
  return request.auth;
}
