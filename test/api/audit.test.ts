import Fastify from "fastify";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { registerAudit } from "../../src/api/plugins/audit.ts";
import { pruneAudit } from "../../src/db/repositories/audit.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { call, expectProblem } from "../helpers/http.ts";

let ctx: TestContext;
beforeAll(async () => {
  ctx = await createTestContext();
});
afterAll(() => ctx?.close());

const workflow = { steps: [{ id: "a", run: { type: "sleep", seconds: 60 } }] };

async function audit(key: string, query = "") {
  const res = await call(ctx.app, "GET", `/v1/audit${query}`, { key });
  expect(res.statusCode, res.body).toBe(200);
  return res.json();
}

describe("audit log", () => {
  it("records who did what for every state-changing request, refused ones included", async () => {
    const admin = (
      await call(ctx.app, "POST", "/v1/keys", {
        key: ctx.rootKey,
        body: { tenant: "audited", scopes: ["admin"], name: "ops" },
      })
    ).json();
    const as = (method: "PUT" | "POST" | "DELETE", url: string, body?: unknown, requestId?: string) =>
      call(ctx.app, method, url, {
        key: admin.key,
        ...(body === undefined ? {} : { body }),
        ...(requestId ? { headers: { "x-request-id": requestId } } : {}),
      });

    expect((await as("PUT", "/v1/workflows/daily", workflow, "req-put-1")).statusCode).toBe(201);
    const run = (await as("POST", "/v1/workflows/daily/runs", {})).json();
    expect((await as("POST", `/v1/runs/${run.id}/cancel`)).statusCode).toBeLessThan(300);
    expectProblem(await as("PUT", "/v1/workflows/broken", { steps: [] }, "req-bad"), 400);
    const reader = (await as("POST", "/v1/keys", { scopes: ["read"] })).json();
    expect((await as("DELETE", `/v1/keys/${reader.id}`)).statusCode).toBe(204);
    expect((await as("POST", "/v1/webhooks/secret/rotate")).statusCode).toBe(200);
    expect((await as("DELETE", "/v1/workflows/daily")).statusCode).toBe(204);

    const { items } = await audit(admin.key);
    const summary = items.map((e: { action: string; target: string; outcome: string }) => [
      e.action,
      e.target,
      e.outcome,
    ]);
    expect(summary).toEqual([
      ["workflow.archive", "workflow:daily", "ok"],
      ["webhook_secret.rotate", "webhook_secret", "ok"],
      ["key.revoke", `key:${reader.id}`, "ok"],
      ["key.create", `key:${reader.id}`, "ok"],
      ["workflow.put", "workflow:broken", "invalid_definition"],
      ["run.cancel", `run:${run.id}`, "ok"],
      ["run.start", "workflow:daily", "ok"],
      ["workflow.put", "workflow:daily", "ok"],
    ]);
    for (const e of items) expect(e).toMatchObject({ keyId: admin.id, keyPrefix: admin.prefix });
    const put = items.at(-1);
    expect(put).toMatchObject({ requestId: "req-put-1", details: { version: 1, created: true } });
    expect(items.find((e: { action: string }) => e.action === "run.start").details.id).toBe(run.id);
    // The secret of a created key is never kept.
    expect(JSON.stringify(items)).not.toContain(reader.key);

    // A request refused by schema validation, before any handler, is recorded once with its code.
    expectProblem(await as("POST", "/v1/keys", { scopes: [] }), 400);
    const refusedKeys = (await audit(admin.key, "?action=key.create")).items;
    expect(refusedKeys.map((e: { outcome: string }) => e.outcome)).toEqual([
      expect.not.stringMatching(/^ok$/),
      "ok",
    ]);

    // Filters and paging.
    expect((await audit(admin.key, "?action=workflow.put")).items).toHaveLength(2);
    expect((await audit(admin.key, "?outcome=invalid_definition")).items[0].requestId).toBe("req-bad");
    expect((await audit(admin.key, `?target=run:${run.id}`)).items).toHaveLength(1);
    const first = await audit(admin.key, "?limit=3");
    expect(first.items).toHaveLength(3);
    const second = await audit(admin.key, `?limit=3&cursor=${first.nextCursor}`);
    expect(second.items[0].id).toBeLessThan(first.items[2].id);
    expectProblem(await call(ctx.app, "GET", "/v1/audit?cursor=zzz", { key: admin.key }), 400);

    // Tenant-scoped; admin only; root may read another tenant's.
    expect((await audit(ctx.rootKey)).items.some((e: { keyId: string }) => e.keyId === admin.id)).toBe(false);
    expect((await audit(ctx.rootKey, "?tenant=audited")).items).toHaveLength(9);
    expectProblem(await call(ctx.app, "GET", "/v1/audit?tenant=default", { key: admin.key }), 403);
    const writer = (await as("POST", "/v1/keys", { scopes: ["write"] })).json();
    expectProblem(await call(ctx.app, "GET", "/v1/audit", { key: writer.key }), 403);
    // A refusal for scope is attributed to the key that tried.
    const tried = await call(ctx.app, "POST", "/v1/keys", { key: writer.key, body: { scopes: ["admin"] } });
    expectProblem(tried, 403);
    const [refused] = (await audit(admin.key, `?keyId=${writer.id}`)).items;
    expect(refused).toMatchObject({
      action: "key.create",
      outcome: "forbidden",
      target: null,
      keyPrefix: writer.prefix,
    });
  });

  it("writes each entry in the transaction that makes its change", async () => {
    // As if the process died after each commit, before answering: the answer never completes an
    // entry (and an update would give its row a new xmin).
    await ctx.db.sql.unsafe(`
      create function refuse_audit_update() returns trigger language plpgsql as
        $$ begin raise exception 'no completion in this test'; end $$;
      create trigger no_audit_update before update on audit_log
        for each row execute function refuse_audit_update()`);
    onTestFinished(async () => {
      await ctx.db.sql.unsafe(
        "drop trigger no_audit_update on audit_log; drop function refuse_audit_update()",
      );
    });
    const key = ctx.rootKey;
    const as = (method: "PUT" | "POST" | "DELETE", url: string, body?: unknown) =>
      call(ctx.app, method, url, { key, ...(body === undefined ? {} : { body }) });
    // The transaction that wrote a row, and the one that wrote the request's entry.
    const xminOf = async (table: string, where: string, value: string) =>
      (await ctx.db.sql.unsafe(`select xmin::text as x from ${table} where ${where} = $1`, [value]))[0]?.x;
    const entryXmin = async (requestId: string) =>
      (
        await ctx.db.sql<{ x: string; outcome: string }[]>`
          select xmin::text as x, outcome from audit_log where request_id = ${requestId}`
      )[0];
    const expectSameTransaction = async (requestId: string, table: string, where: string, value: string) => {
      const entry = await entryXmin(requestId);
      expect(entry?.outcome, requestId).toBe("ok");
      expect(entry?.x, `${requestId}: entry and change in one transaction`).toBe(
        await xminOf(table, where, value),
      );
    };
    const requestIdOf = (res: { headers: Record<string, unknown> }) => String(res.headers["x-request-id"]);

    const put = await as("PUT", "/v1/workflows/txn", workflow);
    expect(put.statusCode).toBe(201);
    await expectSameTransaction(requestIdOf(put), "workflows", "name", "txn");

    // Alone and in a shared submission transaction: each run commits with its own entry.
    const starts = await Promise.all(
      Array.from({ length: 6 }, () => as("POST", "/v1/workflows/txn/runs", {})),
    );
    for (const res of starts) {
      expect(res.statusCode, res.body).toBeLessThan(300);
      await expectSameTransaction(requestIdOf(res), "runs", "id::text", res.json().id);
    }
    const runId = starts[0]!.json().id as string;
    for (const action of ["pause", "resume", "cancel"]) {
      const res = await as("POST", `/v1/runs/${runId}/${action}`);
      expect(res.statusCode, res.body).toBeLessThan(300);
      await expectSameTransaction(requestIdOf(res), "runs", "id::text", runId);
    }
    const retried = await as("POST", `/v1/runs/${runId}/retry`, {});
    expect(retried.statusCode, retried.body).toBeLessThan(300);
    await expectSameTransaction(requestIdOf(retried), "runs", "id::text", retried.json().run.id);
    const created = await as("POST", "/v1/keys", { scopes: ["read"] });
    await expectSameTransaction(requestIdOf(created), "api_keys", "id::text", created.json().id);
    const revoked = await as("DELETE", `/v1/keys/${created.json().id}`);
    await expectSameTransaction(requestIdOf(revoked), "api_keys", "id::text", created.json().id);
    const rotated = await as("POST", "/v1/webhooks/secret/rotate");
    await expectSameTransaction(requestIdOf(rotated), "tenant_webhook_secrets", "tenant_id", "default");
    const archived = await as("DELETE", "/v1/workflows/txn");
    await expectSameTransaction(requestIdOf(archived), "workflows", "name", "txn");
  });

  it("names the run a retry, materialization or subgraph created", async () => {
    const as = (method: "PUT" | "POST", url: string, body?: unknown) =>
      call(ctx.app, method, url, { key: ctx.rootKey, ...(body === undefined ? {} : { body }) });
    expect((await as("PUT", "/v1/workflows/retried", workflow)).statusCode).toBe(201);
    const run = (await as("POST", "/v1/workflows/retried/runs", {})).json();
    expect((await as("POST", `/v1/runs/${run.id}/cancel`)).statusCode).toBe(200);
    const retried = await as("POST", `/v1/runs/${run.id}/retry`, {});
    expect(retried.statusCode, retried.body).toBe(202);
    const [entry] = (await audit(ctx.rootKey, `?action=run.retry&target=run:${run.id}`)).items;
    expect(entry.details.runId).toBe(retried.json().run.id);
  });

  it("a change that dies before its commit leaves neither the change nor an ok entry", async () => {
    let release!: () => void;
    let locked!: () => void;
    const isLocked = new Promise<void>((r) => (locked = r));
    // Holds the workflows table so that the PUT's change waits inside its transaction.
    const holder = ctx.db.sql.begin(async (sql) => {
      await sql`lock table workflows in exclusive mode`;
      locked();
      await new Promise<void>((r) => (release = r));
    });
    await isLocked;
    const put = call(ctx.app, "PUT", "/v1/workflows/blocked", { key: ctx.rootKey, body: workflow });
    let waiting: { pid: number }[] = [];
    const deadline = Date.now() + 10_000;
    while (waiting.length === 0 && Date.now() < deadline) {
      waiting = await ctx.db.sql<{ pid: number }[]>`
        select pid from pg_stat_activity
        where datname = current_database() and wait_event_type = 'Lock' and query ilike '%workflows%'`;
      if (waiting.length === 0) await new Promise((r) => setTimeout(r, 20));
    }
    expect(waiting, "the PUT waits on the lock").toHaveLength(1);
    const seen = await ctx.db.sql`select outcome from audit_log where target = 'workflow:blocked'`;
    expect(seen, "nothing on record while the change is uncommitted").toHaveLength(0);
    // The change's connection dies mid-transaction, as with a crash of its process.
    await ctx.db.sql`select pg_terminate_backend(${waiting[0]!.pid})`;
    const res = await put;
    release();
    await holder;
    expect(res.statusCode).toBeGreaterThanOrEqual(500);
    expect(await ctx.db.sql`select 1 from workflows where name = 'blocked'`).toHaveLength(0);
    const entries = await ctx.db.sql<{ outcome: string }[]>`
      select outcome from audit_log where target = 'workflow:blocked'`;
    expect(entries.map((e) => e.outcome)).not.toContain("ok");
  });

  it("a state-changing route missing from the audit list fails to register", async () => {
    const app = Fastify();
    registerAudit(app, ctx.db.sql);
    expect(() => app.post("/v1/gadgets", { config: { scope: "write" } }, async () => ({}))).toThrow(
      /POST \/v1\/gadgets changes state but is not in the audit log/,
    );
    app.get("/v1/gadgets", { config: { scope: "read" } }, async () => ({}));
    await app.close();
  });

  it("keeps entries as long as runs (retention.runsDays)", async () => {
    await call(ctx.app, "PUT", "/v1/workflows/kept", { key: ctx.rootKey, body: workflow });
    await ctx.db
      .sql`update audit_log set created_at = now() - interval '100 days' where target = 'workflow:kept'`;
    expect(await pruneAudit(ctx.db.sql, ctx.config.retention.runsDays)).toBe(1);
    expect((await audit(ctx.rootKey, "?target=workflow:kept")).items).toHaveLength(0);
  });
});
