/**
 * The audit log's writer (SPEC §12): every state-changing request of an authenticated caller
 * appends who (key id and prefix), what (action), the target, the outcome (`ok` or the refusal's
 * error code) and the request id. Every unsafe route must be listed in `auditedRoutes` or in
 * `notAudited`: a new one that is in neither fails to register, like a route without a scope.
 *
 * The entry is written in the transaction that makes the request's change (the request's
 * `AuditSlot` rides in an async context around its handler; see db/repositories/audit.ts): a
 * committed change always has its entry, a rolled-back one has none. A request that committed
 * nothing — refused before or by its handler, or with nothing to change — gets its entry appended
 * with its outcome once the answer is known. The answer then completes an entry written with its
 * change when it adds to it (the id of a created key, an error after the commit).
 */
import type { FastifyInstance, FastifyRequest } from "fastify";
import {
  type AuditEntry,
  AuditSlot,
  appendAudit,
  settleAudit,
  withAuditSlot,
} from "../../db/repositories/audit.ts";
import type { Sql } from "../../db/repositories/runs.ts";

interface AuditedRoute {
  action: string;
  /** What the request acts on, from its path parameters (`workflow:<name>`, `run:<id>`). */
  target?: (params: Record<string, string>, answer: Record<string, unknown> | null) => string | undefined;
}

const run = (p: Record<string, string>) => `run:${p.id}`;
const workflow = (p: Record<string, string>) => `workflow:${p.name}`;

export const auditedRoutes: Readonly<Record<string, AuditedRoute>> = {
  "PUT /v1/workflows/:name": { action: "workflow.put", target: workflow },
  "DELETE /v1/workflows/:name": { action: "workflow.archive", target: workflow },
  "POST /v1/workflows/:name/runs": { action: "run.start", target: workflow },
  "POST /v1/runs/:id/cancel": { action: "run.cancel", target: run },
  "POST /v1/runs/:id/pause": { action: "run.pause", target: run },
  "POST /v1/runs/:id/resume": { action: "run.resume", target: run },
  "POST /v1/runs/:id/retry": { action: "run.retry", target: run },
  "POST /v1/runs/:id/rollback": { action: "run.rollback", target: run },
  "POST /v1/materializations": { action: "materialization.start" },
  "POST /v1/subgraphs": { action: "subgraph.start" },
  "POST /v1/keys": {
    action: "key.create",
    target: (_p, answer) => (typeof answer?.id === "string" ? `key:${answer.id}` : undefined),
  },
  "DELETE /v1/keys/:id": { action: "key.revoke", target: (p) => `key:${p.id}` },
  "POST /v1/webhooks/secret/rotate": { action: "webhook_secret.rotate", target: () => "webhook_secret" },
};

/** Unsafe routes that change nothing of a tenant's resources: logging in and out, stream tokens. */
const notAudited: ReadonlySet<string> = new Set([
  "POST /v1/session",
  "DELETE /v1/session",
  "POST /v1/runs/:id/stream-token",
]);

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);
/** Answer fields worth keeping in an entry's details: what was created, and which version. */
const ANSWER_FIELDS = ["id", "version", "created", "status", "tenant", "scopes"] as const;

export function registerAudit(app: FastifyInstance, sql: Sql): void {
  app.addHook("onRoute", (route) => {
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    for (const method of methods) {
      if (!UNSAFE.has(method) || route.config?.public) continue;
      const key = `${method} ${route.url}`;
      if (!auditedRoutes[key] && !notAudited.has(key))
        throw new Error(`route ${key} changes state but is not in the audit log's route list`);
    }
  });

  const slots = new WeakMap<FastifyRequest, AuditSlot>();
  // Around the handler: every transaction it begins writes the entry unless one already did.
  app.addHook("preHandler", (request, _reply, done) => {
    const entry = auditEntry(request, null, undefined);
    if (!entry) return done();
    const slot = new AuditSlot(entry);
    slots.set(request, slot);
    withAuditSlot(slot, done);
  });

  app.addHook("onSend", async (request, reply, payload) => {
    const entry = auditEntry(request, reply.statusCode, payload);
    if (!entry) return payload;
    const slot = slots.get(request);
    const written = slot?.state === "committed" ? slot : undefined;
    if (slot) slot.state = "closed";
    const write = written ? completion(written, entry) : appendAudit(sql, entry);
    await write?.catch((error: Error) =>
      request.log.error({ err: error.message, action: entry.action }, "could not write to the audit log"),
    );
    return payload;
  });

  /** Completes an entry written with the change, when the answer adds to it. */
  function completion(written: AuditSlot, final: AuditEntry): Promise<void> | undefined {
    const noted = written.entry;
    const adds =
      final.outcome !== noted.outcome ||
      (final.target !== null && final.target !== noted.target) ||
      Object.entries(final.details).some(([k, v]) => !(k in noted.details) && v !== undefined);
    return adds ? settleAudit(sql, written.id!, final) : undefined;
  }
}

/**
 * The entry for a request; with `status` null, the one its change writes (outcome `ok`, completed
 * from the answer afterwards).
 */
function auditEntry(request: FastifyRequest, status: number | null, payload: unknown): AuditEntry | null {
  const auth = request.auth;
  if (!auth || !UNSAFE.has(request.method)) return null;
  const route = auditedRoutes[`${request.method} ${request.routeOptions.url}`];
  if (!route) return null;
  const answer = parseAnswer(payload);
  const params = (request.params ?? {}) as Record<string, string>;
  const details: Record<string, unknown> = {};
  let outcome = "ok";
  if (status !== null && status < 400) {
    outcome = "ok";
    if (answer) for (const f of ANSWER_FIELDS) if (answer[f] !== undefined) details[f] = answer[f];
    // Materializations, subgraphs and retries answer their plan and the run it created, if any.
    const created = answer?.run as { id?: unknown } | null | undefined;
    if (typeof created?.id === "string") details.runId = created.id;
  } else if (status !== null) {
    outcome = typeof answer?.code === "string" ? answer.code : `http_${status}`;
    if (typeof answer?.detail === "string") details.detail = answer.detail.slice(0, 500);
  }
  return {
    tenantId: auth.tenantId,
    keyId: auth.keyId,
    keyPrefix: auth.keyPrefix,
    action: route.action,
    target: route.target?.(params, answer) ?? null,
    outcome,
    requestId: request.id,
    details,
  };
}

function parseAnswer(payload: unknown): Record<string, unknown> | null {
  if (typeof payload !== "string" || payload.length === 0 || payload.length > 65_536) return null;
  try {
    const value = JSON.parse(payload) as unknown;
    return value !== null && typeof value === "object" && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : null;
  } catch {
    return null;
  }
}
