import Fastify from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
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

    // Every entry was settled: none is left pending once its answer was sent.
    expect(items.every((e: { outcome: string }) => e.outcome !== "pending")).toBe(true);
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

  it("an entry is on record, pending, before the change is made", async () => {
    let release!: () => void;
    let locked!: () => void;
    const isLocked = new Promise<void>((r) => (locked = r));
    // Holds the workflows table so that the PUT's change waits inside its handler.
    const holder = ctx.db.sql.begin(async (sql) => {
      await sql`lock table workflows in exclusive mode`;
      locked();
      await new Promise<void>((r) => (release = r));
    });
    await isLocked;
    const put = call(ctx.app, "PUT", "/v1/workflows/blocked", { key: ctx.rootKey, body: workflow });
    let row: { outcome: string } | undefined;
    const deadline = Date.now() + 5000;
    while (!row && Date.now() < deadline) {
      [row] = await ctx.db.sql<{ outcome: string }[]>`
        select outcome from audit_log where target = 'workflow:blocked'`;
      if (!row) await new Promise((r) => setTimeout(r, 20));
    }
    release();
    expect(row?.outcome, "no entry while the change was being made").toBe("pending");
    await holder;
    expect((await put).statusCode).toBe(201);
    const [after] = await ctx.db.sql<{ outcome: string }[]>`
      select outcome from audit_log where target = 'workflow:blocked'`;
    expect(after!.outcome).toBe("ok");
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
