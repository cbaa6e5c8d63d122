/**
 * Webhook notifications, a duty of the supervisor. Two steps, each safe to run from several
 * processes at once:
 *
 * 1. `queueWebhookDeliveries` drains `notification_outbox` (filled by `appendEvents` in the same
 *    transaction as every `run.*` event) into `webhook_deliveries`: one row per (event, url) for
 *    each `notify` entry of the run's pinned workflow version whose `on` lists the event type.
 * 2. `deliverDueWebhooks` claims due deliveries one at a time (the claim is a short UPDATE that
 *    counts the attempt and pushes `next_attempt_at` past the request timeout, so no transaction
 *    is held over the network) and POSTs them, a bounded number at once.
 *
 * Delivery is at least once: a process that dies after the receiver answered but before the
 * result was written sends the same delivery again once its claim lapses. Receivers deduplicate
 * on `flowline-delivery` (stable across the retries of one delivery).
 *
 * Request (Standard Webhooks): `POST <url>` with headers `content-type: application/json`,
 * `user-agent: flowline-webhooks`, `webhook-id: <delivery id>` (stable across the retries of one
 * delivery), `webhook-timestamp: <unix seconds>`, `webhook-signature: v1,<base64 HMAC-SHA256 of
 * "<id>.<timestamp>.<raw body>">` signed with the tenant's own secret (`whsec_…`, created on first
 * use, read and rotated at `/v1/webhooks/secret`; for a day after a rotation the previous secret
 * signs too, space-separated), plus `flowline-event` and `flowline-delivery`. The body
 * `{ id, type, occurredAt, tenant, event: { id, type, runId, data }, run: { id, workflow: { name, version }, status } }`
 * names the tenant, so a delivery replayed to another tenant's receiver fails verification there
 * twice over. `run.status` is the run's status when the request is sent.
 *
 * Legacy signature: when the `notify` entry has a `secret`, or `webhooks.secret` is configured,
 * `flowline-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">` is sent too.
 *
 * Outcomes: a 2xx answer is delivered. Anything else (other statuses, including 3xx: redirects are
 * not followed; network errors; no answer within `webhooks.timeoutSeconds`) is retried after
 * `initialRetryDelayMs`, doubling per attempt up to one hour (±20 % jitter, so the retries of
 * many deliveries that failed together do not come back together), until `webhooks.maxAttempts`
 * attempts have been made; then the delivery is `failed` with `last_error`. An address refused by
 * the SSRF checks fails at once (retrying cannot make it acceptable). Response bodies are read up
 * to 64 KB and discarded.
 *
 * Fairness: deliveries are claimed oldest first, but a tenant already being delivered to in this
 * pass comes after tenants that are not, and no tenant holds more than `PER_TENANT_IN_FLIGHT` of
 * the requests in flight; a pass lasts while any of its requests is out, and its idle senders
 * keep picking up deliveries that come due meanwhile. So one tenant's slow or failing receivers
 * cannot delay the others.
 */

import { createHmac } from "node:crypto";
import http from "node:http";
import https from "node:https";
import type postgres from "postgres";
import { Webhook } from "standardwebhooks";
import { webhookSecretsOf } from "../../db/repositories/webhook-secrets.ts";
import type { EngineDeps } from "../../engine/deps.ts";
import { checkedLookup, type EgressPolicy } from "../egress.ts";

/** Requests in flight at once per `deliverDueWebhooks` call. */
const CONCURRENCY = 8;
/** How often an idle sender looks for newly due deliveries while others of its pass are in flight. */
const IDLE_POLL_MS = 200;
/** Requests in flight for one tenant per call, while other tenants have deliveries due. */
const PER_TENANT_IN_FLIGHT = 2;
/** Time beyond the request timeout before a claimed delivery may be claimed again. */
const CLAIM_MARGIN_SECONDS = 30;
const MAX_RETRY_DELAY_MS = 3_600_000;
const MAX_RESPONSE_BYTES = 64 * 1024;
const MAX_ERROR_LENGTH = 1000;

type Json = postgres.JSONValue;

/**
 * Turns up to `limit` outbox rows into webhook deliveries and deletes them (also those that match
 * no `notify` entry), in one transaction. Rows locked by a concurrent caller are skipped, so two
 * callers never process the same event. Returns the number of deliveries created.
 */
export async function queueWebhookDeliveries(deps: EngineDeps, limit = 500): Promise<number> {
  return deps.db.sql.begin(async (sql) => {
    const rows = await sql<
      {
        event_id: string;
        tenant_id: string;
        run_id: string;
        type: string;
        workflow_id: string;
        workflow_version: number;
      }[]
    >`
      select o.event_id, o.tenant_id, o.run_id, o.type, r.workflow_id, r.workflow_version
      from notification_outbox o join runs r on r.id = o.run_id
      order by o.event_id
      limit ${limit}
      for update of o skip locked`;
    if (rows.length === 0) return 0;

    const deliveries: Array<{
      tenant_id: string;
      run_id: string;
      event_id: number;
      event_type: string;
      url: string;
    }> = [];
    for (const row of rows) {
      const { spec } = await deps.specs.load(row.workflow_id, row.workflow_version);
      for (const entry of spec.notify ?? []) {
        if (!entry.on.includes(row.type)) continue;
        deliveries.push({
          tenant_id: row.tenant_id,
          run_id: row.run_id,
          event_id: Number(row.event_id),
          event_type: row.type,
          url: entry.webhook,
        });
      }
    }
    let created = 0;
    if (deliveries.length > 0) {
      const inserted = await sql`
        insert into webhook_deliveries (tenant_id, run_id, event_id, event_type, url)
        select x.tenant_id, x.run_id, x.event_id, x.event_type, x.url
        from jsonb_to_recordset(${sql.json(deliveries as Json)})
          as x(tenant_id text, run_id uuid, event_id bigint, event_type text, url text)
        on conflict (event_id, url) do nothing
        returning id`;
      created = inserted.length;
    }
    const ids = rows.map((r) => Number(r.event_id));
    await sql`
      delete from notification_outbox
      where event_id in (select value::bigint from jsonb_array_elements_text(${sql.json(ids)}))`;
    return created;
  });
}

export interface DeliverOptions {
  /** At most this many delivery attempts in this call (default 100). */
  limit?: number;
  /** The time that counts as now for what is due and for the next attempt (default: the database's clock). */
  now?: Date;
}

export interface DeliverResult {
  delivered: number;
  /** Attempts that failed and will be tried again. */
  retried: number;
  /** Deliveries given up: out of attempts, or refused by the address checks. */
  failed: number;
}

/** Sends due webhook deliveries; see the module comment for the request and the retry policy. */
export async function deliverDueWebhooks(
  deps: EngineDeps,
  options: DeliverOptions = {},
): Promise<DeliverResult> {
  const sql = deps.db.sql;
  const { maxAttempts } = deps.config.webhooks;
  const clock = options.now ? sql`${options.now}::timestamptz` : sql`now()`;
  const result: DeliverResult = { delivered: 0, retried: 0, failed: 0 };

  // A claim whose process died before it recorded the outcome comes due again; if that was the
  // last attempt, nothing may claim it any more, so it is closed here.
  const abandoned = await sql`
    update webhook_deliveries
    set status = 'failed',
      last_error = coalesce(last_error || '; ', '') || 'the outcome of the last attempt was never recorded'
    where status = 'pending' and attempts >= ${maxAttempts} and next_attempt_at <= ${clock}
    returning id`;
  result.failed += abandoned.length;

  let remaining = options.limit ?? 100;
  const inFlight = new Map<string, number>();
  // Claims are made one after another, so each sees which tenants the previous ones went to.
  let gate: Promise<unknown> = Promise.resolve();
  const claimNext = () => {
    const next = gate.then(async () => {
      const claimed = await claimDelivery(deps, clock, inFlight);
      if (claimed) inFlight.set(claimed.tenantId, (inFlight.get(claimed.tenantId) ?? 0) + 1);
      return claimed;
    });
    gate = next.catch(() => {});
    return next;
  };
  const inFlightTotal = () => [...inFlight.values()].reduce((a, b) => a + b, 0);
  const worker = async () => {
    while (remaining > 0) {
      // Reserved before the claim: a worker whose delivery ended quickly must not claim past the
      // limit while another worker's claim is still on its way.
      remaining--;
      const claimed = await claimNext();
      if (!claimed) {
        remaining++;
        // While other requests of this pass are still out (a slow receiver), look again for
        // deliveries that came due since, rather than leaving them until the pass is over.
        if (inFlightTotal() === 0) return;
        await new Promise((r) => setTimeout(r, IDLE_POLL_MS));
        continue;
      }
      try {
        const outcome = await attemptDelivery(deps, claimed, clock);
        if (outcome) result[outcome]++;
      } finally {
        inFlight.set(claimed.tenantId, inFlight.get(claimed.tenantId)! - 1);
      }
    }
  };
  const settled = await Promise.allSettled(
    Array.from({ length: Math.max(0, Math.min(CONCURRENCY, remaining)) }, worker),
  );
  const rejected = settled.find((s) => s.status === "rejected");
  if (rejected) throw rejected.reason;
  return result;
}

interface ClaimedDelivery {
  id: number;
  tenantId: string;
  runId: string;
  eventId: number;
  eventType: string;
  url: string;
  /** This attempt's number, already counted in the row. */
  attempt: number;
  workflowId: string;
  workflowName: string;
  workflowVersion: number;
  runStatus: string;
  eventData: unknown;
  occurredAt: Date;
}

async function claimDelivery(
  deps: EngineDeps,
  clock: postgres.Fragment,
  inFlight: ReadonlyMap<string, number>,
): Promise<ClaimedDelivery | null> {
  const { maxAttempts, timeoutSeconds } = deps.config.webhooks;
  const busy = [...inFlight].filter(([, n]) => n > 0).map(([tenant]) => tenant);
  const full = [...inFlight].filter(([, n]) => n >= PER_TENANT_IN_FLIGHT).map(([tenant]) => tenant);
  const [row] = await deps.db.sql<
    {
      id: string;
      tenant_id: string;
      run_id: string;
      event_id: string;
      event_type: string;
      url: string;
      attempts: number;
      created_at: Date;
      workflow_id: string;
      workflow_name: string;
      workflow_version: number;
      run_status: string;
      event_data: unknown;
      occurred_at: Date | null;
    }[]
  >`
    with next as (
      select id from webhook_deliveries
      where status = 'pending' and next_attempt_at <= ${clock} and attempts < ${maxAttempts}
        and tenant_id <> all(${full}::text[])
      order by tenant_id = any(${busy}::text[]), next_attempt_at, id
      limit 1
      for update skip locked
    ), claimed as (
      update webhook_deliveries d
      set attempts = d.attempts + 1,
        next_attempt_at = ${clock} + make_interval(secs => ${timeoutSeconds + CLAIM_MARGIN_SECONDS})
      from next where d.id = next.id
      returning d.*
    )
    select c.id, c.tenant_id, c.run_id, c.event_id, c.event_type, c.url, c.attempts, c.created_at,
      r.workflow_id, w.name as workflow_name, r.workflow_version, r.status as run_status,
      e.data as event_data, e.created_at as occurred_at
    from claimed c
      join runs r on r.id = c.run_id
      join workflows w on w.id = r.workflow_id
      left join events e on e.id = c.event_id`;
  if (!row) return null;
  return {
    id: Number(row.id),
    tenantId: row.tenant_id,
    runId: row.run_id,
    eventId: Number(row.event_id),
    eventType: row.event_type,
    url: row.url,
    attempt: row.attempts,
    workflowId: row.workflow_id,
    workflowName: row.workflow_name,
    workflowVersion: row.workflow_version,
    runStatus: row.run_status,
    // Retention may have pruned the event; the delivery still goes out.
    eventData: row.event_data ?? {},
    occurredAt: row.occurred_at ?? row.created_at,
  };
}

type Outcome = keyof DeliverResult;

async function attemptDelivery(
  deps: EngineDeps,
  d: ClaimedDelivery,
  clock: postgres.Fragment,
): Promise<Outcome | null> {
  const { maxAttempts, timeoutSeconds, initialRetryDelayMs } = deps.config.webhooks;
  const logFields = { runId: d.runId, deliveryId: d.id, url: redactUrl(d.url), attempt: d.attempt };
  const body = JSON.stringify({
    id: d.id,
    type: d.eventType,
    occurredAt: d.occurredAt.toISOString(),
    tenant: d.tenantId,
    event: { id: d.eventId, type: d.eventType, runId: d.runId, data: d.eventData },
    run: { id: d.runId, workflow: { name: d.workflowName, version: d.workflowVersion }, status: d.runStatus },
  });
  const headers: Record<string, string> = {
    "content-type": "application/json",
    "content-length": String(Buffer.byteLength(body)),
    "user-agent": "flowline-webhooks",
    "flowline-event": d.eventType,
    "flowline-delivery": String(d.id),
    ...(await standardSignature(deps, d, body)),
  };
  const legacy = await legacySecret(deps, d);
  if (legacy !== undefined) headers["flowline-signature"] = signature(legacy, body);

  const response = await postWebhook(d.url, headers, body, {
    timeoutMs: timeoutSeconds * 1000,
    egress: deps.config.http,
  });

  let outcome: Outcome;
  let recorded: readonly unknown[];
  const sql = deps.db.sql;
  // Every write is fenced on the attempt number: if this claim lapsed and another process took
  // the delivery over, its outcome wins and this one is dropped.
  const fence = sql`id = ${d.id} and attempts = ${d.attempt} and status = 'pending'`;
  if (response.status !== undefined && response.status >= 200 && response.status < 300) {
    outcome = "delivered";
    recorded = await sql`
      update webhook_deliveries
      set status = 'delivered', response_status = ${response.status}, delivered_at = now()
      where ${fence} returning id`;
  } else {
    const error = (response.error ?? statusError(response.status ?? 0)).slice(0, MAX_ERROR_LENGTH);
    if (response.permanent || d.attempt >= maxAttempts) {
      outcome = "failed";
      recorded = await sql`
        update webhook_deliveries
        set status = 'failed', response_status = ${response.status ?? null}, last_error = ${error}
        where ${fence} returning id`;
    } else {
      outcome = "retried";
      const delayMs =
        Math.min(initialRetryDelayMs * 2 ** (d.attempt - 1), MAX_RETRY_DELAY_MS) *
        (0.8 + Math.random() * 0.4);
      recorded = await sql`
        update webhook_deliveries
        set response_status = ${response.status ?? null}, last_error = ${error},
          next_attempt_at = ${clock} + make_interval(secs => ${delayMs / 1000})
        where ${fence} returning id`;
    }
    const level = outcome === "failed" ? "error" : "warn";
    deps.log[level](
      { ...logFields, status: response.status, error, ...(outcome === "retried" ? {} : { final: true }) },
      outcome === "failed" ? "webhook delivery failed" : "webhook attempt failed, will retry",
    );
  }
  if (recorded.length === 0) {
    deps.log.warn(logFields, "webhook outcome dropped: the delivery was claimed again meanwhile");
    return null;
  }
  if (outcome === "delivered") deps.log.info({ ...logFields, status: response.status }, "webhook delivered");
  return outcome;
}

function statusError(status: number): string {
  return status >= 300 && status < 400 ? `HTTP ${status} (redirects are not followed)` : `HTTP ${status}`;
}

/**
 * Standard Webhooks headers, signed with the tenant's secret and, within a day of a rotation, with
 * the previous one too (receivers accept any listed signature that verifies).
 */
async function standardSignature(deps: EngineDeps, d: ClaimedDelivery, body: string) {
  const secrets = await webhookSecretsOf(deps.db.sql, d.tenantId);
  const id = String(d.id);
  const now = new Date();
  const signatures = [secrets.secret, ...(secrets.previous ? [secrets.previous.secret] : [])].map((s) =>
    new Webhook(s).sign(id, now, body),
  );
  return {
    "webhook-id": id,
    "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
    "webhook-signature": signatures.join(" "),
  };
}

/**
 * The legacy `flowline-signature` key: the `notify` entry's secret (the first entry with this URL
 * and event type is the one whose row was kept by `on conflict (event_id, url) do nothing`), else
 * `webhooks.secret`; undefined when neither is set.
 */
async function legacySecret(deps: EngineDeps, d: ClaimedDelivery): Promise<string | undefined> {
  const { spec } = await deps.specs.load(d.workflowId, d.workflowVersion);
  const entries = (spec.notify ?? []).filter((n) => n.webhook === d.url);
  const entry = entries.find((n) => n.on.includes(d.eventType)) ?? entries[0];
  return entry?.secret ?? deps.config.webhooks.secret;
}

/** `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`; the timestamp lets receivers refuse replays. */
function signature(secret: string, body: string, now = Date.now()): string {
  const t = Math.floor(now / 1000);
  const v1 = createHmac("sha256", secret).update(`${t}.${body}`).digest("hex");
  return `t=${t},v1=${v1}`;
}

function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (!u.username && !u.password) return url;
    u.username = "redacted";
    u.password = "";
    return u.toString();
  } catch {
    return url.slice(0, 200);
  }
}

interface PostResult {
  status?: number;
  error?: string;
  /** Retrying cannot help (the address is refused, the URL is unusable). */
  permanent?: boolean;
}

/**
 * Why webhooks do not require `http.allowedHosts`, unlike http steps: a `notify` URL is written
 * by whoever may define workflows and is the endpoint they chose to be called, not data flowing
 * through a run, so an allowlist would only be a second copy of the definitions. The address the
 * connection uses follows the one egress policy of http steps (../egress.ts): a host listed
 * exactly in `http.allowedHosts` is reachable even when private; other private and loopback
 * addresses only with `http.allowPrivateNetworks`; metadata and link-local ones never, unless the
 * IP itself is listed.
 */
function postWebhook(
  rawUrl: string,
  headers: Record<string, string>,
  body: string,
  options: { timeoutMs: number; egress: EgressPolicy },
): Promise<PostResult> {
  let url: URL;
  try {
    url = new URL(rawUrl);
  } catch {
    return Promise.resolve({ error: "invalid URL", permanent: true });
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return Promise.resolve({ error: "only http and https URLs are allowed", permanent: true });
  }
  const hostname = url.hostname.replace(/^\[|\]$/g, "");
  const egress = checkedLookup(hostname, options.egress);
  const literal = egress.literalRefusal();
  if (literal) return Promise.resolve({ error: `refused: ${literal}`, permanent: true });
  const lookup = egress.lookup;
  const signal = AbortSignal.timeout(options.timeoutMs);
  return new Promise<PostResult>((resolve) => {
    let status: number | undefined;
    const request = (url.protocol === "https:" ? https : http).request(
      url,
      { method: "POST", headers, lookup, signal, agent: false },
      (res) => {
        status = res.statusCode ?? 0;
        let received = 0;
        res.on("data", (chunk: Buffer) => {
          received += chunk.length;
          if (received > MAX_RESPONSE_BYTES) res.destroy();
        });
        // The status is the answer; a body cut short (too large, timeout) does not change it.
        res.on("error", () => {});
        res.on("close", () => resolve({ status: status! }));
      },
    );
    request.on("error", (error) => {
      if (status !== undefined) resolve({ status });
      else if (egress.refusal()) resolve({ error: `refused: ${egress.refusal()}`, permanent: true });
      else if (signal.aborted) resolve({ error: `no response within ${options.timeoutMs} ms` });
      else resolve({ error: `request failed: ${error.message}` });
    });
    request.end(body);
  });
}
