/**
 * Webhook notifications end to end: runs executed by a real worker process, the outbox drained
 * and deliveries sent by calling the supervisor's duties directly, a local HTTP receiver.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { once } from "node:events";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Webhook, WebhookVerificationError } from "standardwebhooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { EngineDeps } from "../../src/engine/deps.ts";
import { deliverDueWebhooks, queueWebhookDeliveries } from "../../src/jobs/supervisor/webhooks.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import {
  engineSettings,
  putWorkflow,
  spawnWorker,
  startRun,
  stopProcess,
  waitForRun,
} from "../helpers/engine.ts";
import { call, expectProblem } from "../helpers/http.ts";
import type { Spawned } from "../helpers/processes.ts";

const CONFIG_SECRET = "config-wide-secret";

interface Received {
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/** A receiver whose answer per path is scripted: a list of statuses, the last one repeating. */
class Receiver {
  readonly requests: Received[] = [];
  readonly scripts = new Map<string, number[]>();
  /** A request to such a path is answered only once its promise resolves (a hanging receiver). */
  readonly holds = new Map<string, Promise<unknown>>();
  delayMs = 0;
  private server!: Server;
  base = "";

  async start() {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", async () => {
        const path = req.url ?? "";
        this.requests.push({ path, headers: req.headers, body: Buffer.concat(chunks).toString("utf8") });
        const script = this.scripts.get(path) ?? [200];
        const status = script.length > 1 ? script.shift()! : script[0]!;
        if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
        await this.holds.get(path);
        res.writeHead(status, { "content-type": "text/plain" }).end(`answer ${status}`);
      });
    });
    this.server.listen(0, "127.0.0.1");
    await once(this.server, "listening");
    this.base = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  at(path: string): Received[] {
    return this.requests.filter((r) => r.path === path);
  }

  async stop() {
    this.server.closeAllConnections();
    this.server.close();
    await once(this.server, "close");
  }
}

let ctx: TestContext;
let worker: Spawned;
let deps: EngineDeps;
const receiver = new Receiver();

beforeAll(async () => {
  await receiver.start();
  ctx = await createTestContext((base) => ({
    ...engineSettings(base),
    http: { allowedHosts: ["127.0.0.1"], allowPrivateNetworks: true },
    webhooks: { maxAttempts: 3, timeoutSeconds: 5, initialRetryDelayMs: 20, secret: CONFIG_SECRET },
  }));
  deps = ctx.app.flowline.engine;
  worker = spawnWorker(ctx);
  await worker.waitFor(/worker started/);
});
afterAll(async () => {
  if (worker) await stopProcess(worker);
  await ctx?.close();
  await receiver.stop();
});

interface DeliveryRow {
  id: string;
  run_id: string;
  event_id: string;
  event_type: string;
  url: string;
  status: string;
  attempts: number;
  response_status: number | null;
  last_error: string | null;
  delivered_at: Date | null;
}

async function deliveriesOf(runId: string): Promise<DeliveryRow[]> {
  return ctx.db.sql<DeliveryRow[]>`select * from webhook_deliveries where run_id = ${runId} order by id`;
}

/** Runs both duties, as the supervisor would, until `done` holds. */
async function pumpUntil(
  done: () => Promise<boolean>,
  options: { limit?: number; deps?: EngineDeps } = {},
): Promise<void> {
  const using = options.deps ?? deps;
  const deadline = Date.now() + 20_000;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error("webhook deliveries did not reach the expected state");
    await queueWebhookDeliveries(using, options.limit);
    await deliverDueWebhooks(using, options.limit === undefined ? {} : { limit: options.limit });
    await new Promise((r) => setTimeout(r, 10));
  }
}

const settled = (runId: string, count: number) => async () => {
  const rows = await deliveriesOf(runId);
  return rows.length === count && rows.every((r) => r.status !== "pending");
};

async function runToEnd(name: string) {
  const run = await waitForRun(ctx, (await startRun(ctx, name)).id);
  return run;
}

function verifySignature(header: string | undefined, body: string, secret: string): boolean {
  const match = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header ?? "");
  if (!match) return false;
  const expected = createHmac("sha256", secret).update(`${match[1]}.${body}`).digest();
  return timingSafeEqual(expected, Buffer.from(match[2]!, "hex"));
}

describe("webhook notifications", () => {
  it("delivers run.succeeded once, signed with the entry's secret or else the configured one", async () => {
    await putWorkflow(ctx, "hooked", {
      notify: [
        { on: ["run.succeeded"], webhook: `${receiver.base}/own-secret`, secret: "entry-secret" },
        { on: ["run.succeeded"], webhook: `${receiver.base}/config-secret` },
      ],
      steps: [{ id: "a", run: { type: "noop", output: { ok: true } } }],
    });
    const run = await runToEnd("hooked");
    expect(run.status).toBe("succeeded");
    await pumpUntil(settled(run.id, 2));

    const rows = await deliveriesOf(run.id);
    expect(rows.map((r) => [r.status, r.attempts, r.response_status, r.event_type])).toEqual([
      ["delivered", 1, 200, "run.succeeded"],
      ["delivered", 1, 200, "run.succeeded"],
    ]);
    expect(rows.every((r) => r.delivered_at !== null)).toBe(true);

    // More passes send nothing again.
    await queueWebhookDeliveries(deps);
    await deliverDueWebhooks(deps);
    const [own] = receiver.at("/own-secret");
    const [viaConfig] = receiver.at("/config-secret");
    expect(receiver.at("/own-secret")).toHaveLength(1);
    expect(receiver.at("/config-secret")).toHaveLength(1);

    expect(own!.headers).toMatchObject({
      "content-type": "application/json",
      "user-agent": "flowline-webhooks",
      "flowline-event": "run.succeeded",
      "flowline-delivery": rows[0]!.id,
    });
    expect(verifySignature(own!.headers["flowline-signature"] as string, own!.body, "entry-secret")).toBe(
      true,
    );
    expect(verifySignature(own!.headers["flowline-signature"] as string, own!.body, CONFIG_SECRET)).toBe(
      false,
    );
    expect(
      verifySignature(viaConfig!.headers["flowline-signature"] as string, viaConfig!.body, CONFIG_SECRET),
    ).toBe(true);

    const body = JSON.parse(own!.body);
    expect(body).toEqual({
      id: Number(rows[0]!.id),
      type: "run.succeeded",
      occurredAt: expect.any(String),
      tenant: "default",
      event: {
        id: Number(rows[0]!.event_id),
        type: "run.succeeded",
        runId: run.id,
        data: expect.any(Object),
      },
      run: { id: run.id, workflow: { name: "hooked", version: 1 }, status: "succeeded" },
    });
    expect(new Date(body.occurredAt).toISOString()).toBe(body.occurredAt);
  });

  it("retries a failing receiver with backoff and records the delivery on the third attempt", async () => {
    receiver.scripts.set("/flaky", [500, 500, 200]);
    await putWorkflow(ctx, "flaky-receiver", {
      notify: [{ on: ["run.succeeded"], webhook: `${receiver.base}/flaky` }],
      steps: [{ id: "a", run: { type: "noop" } }],
    });
    const run = await runToEnd("flaky-receiver");
    await pumpUntil(settled(run.id, 1));

    const [row] = await deliveriesOf(run.id);
    expect(row).toMatchObject({
      status: "delivered",
      attempts: 3,
      response_status: 200,
      last_error: "HTTP 500",
    });
    const calls = receiver.at("/flaky");
    expect(calls).toHaveLength(3);
    // The same delivery id on every attempt, so receivers can deduplicate.
    expect(new Set(calls.map((c) => c.headers["flowline-delivery"]))).toEqual(new Set([row!.id]));
  });

  it("gives up after maxAttempts against a receiver that always fails", async () => {
    receiver.scripts.set("/broken", [503]);
    await putWorkflow(ctx, "broken-receiver", {
      notify: [{ on: ["run.succeeded"], webhook: `${receiver.base}/broken` }],
      steps: [{ id: "a", run: { type: "noop" } }],
    });
    const run = await runToEnd("broken-receiver");
    await pumpUntil(settled(run.id, 1));

    const [row] = await deliveriesOf(run.id);
    expect(row).toMatchObject({
      status: "failed",
      attempts: 3,
      response_status: 503,
      last_error: "HTTP 503",
      delivered_at: null,
    });
    expect(receiver.at("/broken")).toHaveLength(3);
    await deliverDueWebhooks(deps);
    expect(receiver.at("/broken")).toHaveLength(3);
  });

  it("writes outbox rows only for the events a workflow notifies on", async () => {
    await putWorkflow(ctx, "silent", { steps: [{ id: "a", run: { type: "noop" } }] });
    const done = await runToEnd("silent");
    expect(done.status).toBe("succeeded");
    const [rows] = await ctx.db
      .sql`select count(*)::int as n from notification_outbox where run_id = ${done.id}`;
    expect(rows!.n).toBe(0);
  });

  it("fires only for the event types listed in `on`", async () => {
    await putWorkflow(ctx, "on-success", {
      notify: [
        { on: ["run.failed"], webhook: `${receiver.base}/failed-only` },
        { on: ["run.succeeded"], webhook: `${receiver.base}/witness` },
      ],
      steps: [{ id: "a", run: { type: "noop" } }],
    });
    const ok = await runToEnd("on-success");
    expect(ok.status).toBe("succeeded");
    await pumpUntil(settled(ok.id, 1));
    expect((await deliveriesOf(ok.id)).map((r) => r.url)).toEqual([`${receiver.base}/witness`]);
    expect(receiver.at("/failed-only")).toHaveLength(0);
    // Every run-level event of the run has left the outbox.
    const [left] = await ctx.db
      .sql`select count(*)::int as n from notification_outbox where run_id = ${ok.id}`;
    expect(left!.n).toBe(0);

    await putWorkflow(ctx, "on-failure", {
      notify: [{ on: ["run.failed"], webhook: `${receiver.base}/failed-only` }],
      steps: [{ id: "x", run: { type: "handler", name: "test.fail", input: {} } }],
    });
    const failed = await runToEnd("on-failure");
    expect(failed.status).toBe("failed");
    await pumpUntil(settled(failed.id, 1));
    const calls = receiver.at("/failed-only");
    expect(calls).toHaveLength(1);
    expect(JSON.parse(calls[0]!.body)).toMatchObject({
      type: "run.failed",
      run: { id: failed.id, status: "failed" },
    });
  });

  it("never delivers one event twice with two callers draining and delivering at once", async () => {
    await putWorkflow(ctx, "busy", {
      notify: [
        { on: ["run.queued", "run.started", "run.succeeded"], webhook: `${receiver.base}/busy` },
        { on: ["run.succeeded"], webhook: `${receiver.base}/busy-2` },
      ],
      steps: [{ id: "a", run: { type: "noop" } }],
    });
    const runs = await Promise.all(Array.from({ length: 6 }, () => runToEnd("busy")));
    receiver.delayMs = 20;
    try {
      const allSettled = async () => {
        for (const run of runs) if (!(await settled(run.id, 4)())) return false;
        return true;
      };
      // Small batches, so the two callers interleave on the outbox and on the deliveries.
      await Promise.all([pumpUntil(allSettled, { limit: 3 }), pumpUntil(allSettled, { limit: 3 })]);
    } finally {
      receiver.delayMs = 0;
    }
    const calls = [...receiver.at("/busy"), ...receiver.at("/busy-2")];
    expect(calls).toHaveLength(runs.length * 4);
    const deliveryIds = calls.map((c) => c.headers["flowline-delivery"]);
    expect(new Set(deliveryIds).size).toBe(calls.length);
    const eventsPerUrl = calls.map((c) => `${c.path} ${JSON.parse(c.body).event.id}`);
    expect(new Set(eventsPerUrl).size).toBe(calls.length);
    for (const run of runs) {
      const rows = await deliveriesOf(run.id);
      expect(rows.map((r) => [r.status, r.attempts])).toEqual(
        Array.from({ length: 4 }, () => ["delivered", 1]),
      );
    }
  });

  it("signs with the tenant's own secret (Standard Webhooks); the legacy header only when a legacy secret is set", async () => {
    const noLegacy: EngineDeps = {
      ...deps,
      config: { ...deps.config, webhooks: { ...deps.config.webhooks, secret: undefined } },
    };
    await putWorkflow(ctx, "standard", {
      notify: [{ on: ["run.succeeded"], webhook: `${receiver.base}/standard` }],
      steps: [{ id: "a", run: { type: "noop" } }],
    });
    const run = await runToEnd("standard");
    await pumpUntil(settled(run.id, 1), { deps: noLegacy });
    const [delivery] = receiver.at("/standard");
    expect(delivery!.headers["flowline-signature"]).toBeUndefined();

    // A receiver written only with the standardwebhooks package verifies it.
    const read = await call(ctx.app, "GET", "/v1/webhooks/secret", { key: ctx.rootKey });
    expect(read.statusCode).toBe(200);
    const { secret } = read.json();
    expect(secret).toMatch(/^whsec_/);
    const verified = new Webhook(secret).verify(delivery!.body, delivery!.headers as Record<string, string>);
    expect(verified).toMatchObject({
      tenant: "default",
      run: { id: run.id },
      event: { type: "run.succeeded" },
    });
    expect(delivery!.headers["webhook-id"]).toBe((await deliveriesOf(run.id))[0]!.id);

    // Another tenant's secret does not verify it: a delivery replayed to that tenant's receiver fails.
    const other = await call(ctx.app, "POST", "/v1/keys", {
      key: ctx.rootKey,
      body: { tenant: "hooks-other", scopes: ["admin"] },
    });
    const otherSecret = (await call(ctx.app, "GET", "/v1/webhooks/secret", { key: other.json().key })).json()
      .secret;
    expect(otherSecret).not.toBe(secret);
    expect(() =>
      new Webhook(otherSecret).verify(delivery!.body, delivery!.headers as Record<string, string>),
    ).toThrow(WebhookVerificationError);
    // The same secret on every read; write keys may not read it.
    expect((await call(ctx.app, "GET", "/v1/webhooks/secret", { key: ctx.rootKey })).json().secret).toBe(
      secret,
    );
    const writer = await call(ctx.app, "POST", "/v1/keys", { key: ctx.rootKey, body: { scopes: ["write"] } });
    expectProblem(await call(ctx.app, "GET", "/v1/webhooks/secret", { key: writer.json().key }), 403);
  });

  it("after a rotation both the old and the new secret verify each delivery for a day", async () => {
    const before = (await call(ctx.app, "GET", "/v1/webhooks/secret", { key: ctx.rootKey })).json();
    const rotated = await call(ctx.app, "POST", "/v1/webhooks/secret/rotate", { key: ctx.rootKey });
    expect(rotated.statusCode).toBe(200);
    const after = rotated.json();
    expect(after.secret).not.toBe(before.secret);
    const hours = (Date.parse(after.previousExpiresAt) - Date.now()) / 3_600_000;
    expect(hours).toBeGreaterThan(23.9);
    expect(hours).toBeLessThanOrEqual(24);

    await putWorkflow(ctx, "rotated", {
      notify: [{ on: ["run.succeeded"], webhook: `${receiver.base}/rotated` }],
      steps: [{ id: "a", run: { type: "noop" } }],
    });
    const run = await runToEnd("rotated");
    await pumpUntil(settled(run.id, 1));
    const [delivery] = receiver.at("/rotated");
    const headers = delivery!.headers as Record<string, string>;
    expect(headers["webhook-signature"]!.split(" ")).toHaveLength(2);
    for (const secret of [before.secret, after.secret])
      expect(new Webhook(secret).verify(delivery!.body, headers)).toMatchObject({ run: { id: run.id } });

    // Once the overlap is over, only the new secret signs.
    await ctx.db
      .sql`update tenant_webhook_secrets set previous_expires_at = now() where tenant_id = 'default'`;
    expect(
      (await call(ctx.app, "GET", "/v1/webhooks/secret", { key: ctx.rootKey })).json().previousExpiresAt,
    ).toBeNull();
    const again = await runToEnd("rotated");
    await pumpUntil(settled(again.id, 1));
    const later = receiver.at("/rotated")[1]!;
    expect(String(later.headers["webhook-signature"]).split(" ")).toHaveLength(1);
    expect(() =>
      new Webhook(before.secret).verify(later.body, later.headers as Record<string, string>),
    ).toThrow();
    new Webhook(after.secret).verify(later.body, later.headers as Record<string, string>);
  });

  it("follows the egress rule of http steps: a host listed exactly is reachable even when private", async () => {
    // The receiver is on 127.0.0.1, which http.allowedHosts lists; private networks are not allowed.
    const strict = (allowedHosts: string[]): EngineDeps => ({
      ...deps,
      config: { ...deps.config, http: { ...deps.config.http, allowPrivateNetworks: false, allowedHosts } },
    });
    await putWorkflow(ctx, "egress", {
      notify: [{ on: ["run.succeeded"], webhook: `${receiver.base}/egress` }],
      steps: [{ id: "a", run: { type: "noop" } }],
    });
    const listed = await runToEnd("egress");
    await pumpUntil(settled(listed.id, 1), { deps: strict(["127.0.0.1"]) });
    expect((await deliveriesOf(listed.id))[0]).toMatchObject({ status: "delivered" });

    const unlisted = await runToEnd("egress");
    await pumpUntil(settled(unlisted.id, 1), { deps: strict(["api.example.com"]) });
    const [row] = await deliveriesOf(unlisted.id);
    expect(row).toMatchObject({ status: "failed", attempts: 1 });
    expect(row!.last_error).toMatch(/private or loopback/);
  });

  it("a hanging receiver of one tenant does not hold back a delivery of another that comes due meanwhile", async () => {
    const bKey = (
      await call(ctx.app, "POST", "/v1/keys", {
        key: ctx.rootKey,
        body: { tenant: "fair-c", scopes: ["admin"] },
      })
    ).json().key;
    let release!: () => void;
    receiver.holds.set("/hanging", new Promise<void>((r) => (release = r)));
    await putWorkflow(ctx, "hanging", {
      notify: [{ on: ["run.succeeded"], webhook: `${receiver.base}/hanging` }],
      steps: [{ id: "a", run: { type: "noop" } }],
    });
    const hanging = await runToEnd("hanging");
    while ((await deliveriesOf(hanging.id)).length === 0) await queueWebhookDeliveries(deps);
    // The hanging request would time out only after a minute.
    const patient: EngineDeps = {
      ...deps,
      config: { ...deps.config, webhooks: { ...deps.config.webhooks, timeoutSeconds: 60 } },
    };
    let passOver = false;
    const pass = deliverDueWebhooks(patient).finally(() => {
      passOver = true;
    });
    while (receiver.at("/hanging").length === 0) await new Promise((r) => setTimeout(r, 20));

    // Tenant fair-c's run finishes while the pass waits on the hanging receiver.
    const put = await call(ctx.app, "PUT", "/v1/workflows/prompt", {
      key: bKey,
      body: {
        notify: [{ on: ["run.succeeded"], webhook: `${receiver.base}/prompt` }],
        steps: [{ id: "a", run: { type: "noop" } }],
      },
    });
    expect(put.statusCode).toBe(201);
    const started = (
      await call(ctx.app, "POST", "/v1/workflows/prompt/runs", { key: bKey, body: {} })
    ).json();
    for (;;) {
      const run = await call(ctx.app, "GET", `/v1/runs/${started.id}`, { key: bKey });
      if (run.json().status === "succeeded") break;
      await new Promise((r) => setTimeout(r, 50));
    }
    while ((await deliveriesOf(started.id)).length === 0) await queueWebhookDeliveries(deps);
    const deadline = Date.now() + 10_000;
    while (receiver.at("/prompt").length === 0 && Date.now() < deadline) {
      expect(passOver).toBe(false);
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(receiver.at("/prompt"), "the other tenant's delivery waited for the hanging one").toHaveLength(1);
    expect(receiver.at("/hanging")).toHaveLength(1);
    release();
    expect(await pass).toMatchObject({ delivered: 2 });
  });

  it("one tenant's backlog does not hold back another tenant's delivery", async () => {
    const otherKey = (
      await call(ctx.app, "POST", "/v1/keys", {
        key: ctx.rootKey,
        body: { tenant: "fair-b", scopes: ["admin"] },
      })
    ).json().key;
    await putWorkflow(ctx, "fair-a", {
      notify: [{ on: ["run.queued", "run.started", "run.succeeded"], webhook: `${receiver.base}/fair-a` }],
      steps: [{ id: "a", run: { type: "noop" } }],
    });
    const put = await call(ctx.app, "PUT", "/v1/workflows/fair-b", {
      key: otherKey,
      body: {
        notify: [{ on: ["run.succeeded"], webhook: `${receiver.base}/fair-b` }],
        steps: [{ id: "a", run: { type: "noop" } }],
      },
    });
    expect(put.statusCode).toBe(201);
    // Tenant A's deliveries are older than tenant B's one.
    const aRuns = await Promise.all(Array.from({ length: 4 }, () => runToEnd("fair-a")));
    const started = await call(ctx.app, "POST", "/v1/workflows/fair-b/runs", { key: otherKey, body: {} });
    const bRun = started.json().id as string;
    for (;;) {
      const run = await call(ctx.app, "GET", `/v1/runs/${bRun}`, { key: otherKey });
      if (run.json().status === "succeeded") break;
      await new Promise((r) => setTimeout(r, 50));
    }
    await ctx.db
      .sql`update webhook_deliveries set next_attempt_at = now() + interval '1 hour' where status = 'pending'`;
    const due = async () => {
      await queueWebhookDeliveries(deps);
      const [n] = await ctx.db.sql`select count(*)::int as n from webhook_deliveries
        where run_id = any(${[...aRuns.map((r) => r.id as string), bRun]}::uuid[])`;
      return n!.n === 13;
    };
    while (!(await due())) await new Promise((r) => setTimeout(r, 20));
    await ctx.db.sql`update webhook_deliveries set next_attempt_at = now() - interval '1 minute'
      where run_id = any(${aRuns.map((r) => r.id as string)}::uuid[])`;
    await ctx.db.sql`update webhook_deliveries set next_attempt_at = now() where run_id = ${bRun}`;
    // Two sends in one pass: oldest first would be two of tenant A's twelve.
    await deliverDueWebhooks(deps, { limit: 2 });
    expect(receiver.at("/fair-b")).toHaveLength(1);
    expect(receiver.at("/fair-a")).toHaveLength(1);
  });

  it("refuses metadata and link-local addresses at once, without a request or a retry", async () => {
    await putWorkflow(ctx, "metadata", {
      notify: [
        { on: ["run.succeeded"], webhook: "http://169.254.169.254/latest/meta-data/" },
        { on: ["run.succeeded"], webhook: "http://[::ffff:169.254.169.254]/latest/meta-data/" },
      ],
      steps: [{ id: "a", run: { type: "noop" } }],
    });
    const run = await runToEnd("metadata");
    await pumpUntil(settled(run.id, 2));
    const rows = await deliveriesOf(run.id);
    expect(rows).toHaveLength(2);
    for (const row of rows) {
      expect(row).toMatchObject({ status: "failed", attempts: 1, response_status: null });
      expect(row.last_error).toMatch(/^refused: .*link-local or a cloud metadata endpoint/);
    }
  });
});
