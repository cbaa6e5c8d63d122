import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { call, expectProblem } from "../helpers/http.ts";

let ctx: TestContext;
beforeAll(async () => {
  ctx = await createTestContext();
});
afterAll(() => ctx?.close());

async function createKey(key: string, body: unknown) {
  return call(ctx.app, "POST", "/v1/keys", { key, body });
}

describe("authentication", () => {
  it("refuses missing, malformed and unknown keys with 401 and a Bearer challenge", async () => {
    for (const headers of [
      {},
      { authorization: "Basic abc" },
      { authorization: "Bearer flk_nope" },
    ] as Record<string, string>[]) {
      const res = await call(ctx.app, "GET", "/v1/workflows", { key: null, headers });
      expectProblem(res, 401);
      expect(res.headers["www-authenticate"]).toMatch(/^Bearer/);
    }
  });

  it("keeps health, readiness, metrics and the API description public", async () => {
    expect((await call(ctx.app, "GET", "/healthz")).json()).toEqual({ status: "ok" });
    const ready = await call(ctx.app, "GET", "/readyz");
    expect(ready.statusCode).toBe(200);
    expect(ready.json()).toMatchObject({ status: "ready", checks: { postgres: "ok", redis: "ok" } });
    const spec = await call(ctx.app, "GET", "/openapi.json");
    expect(spec.statusCode).toBe(200);
    expect(spec.json().openapi).toBe("3.1.0");
    expect(Object.keys(spec.json().paths)).toEqual(
      expect.arrayContaining(["/v1/workflows/{name}", "/v1/keys"]),
    );
    const docs = await call(ctx.app, "GET", "/docs/");
    expect(docs.statusCode).toBe(200);
    expect(docs.headers["content-type"]).toMatch(/text\/html/);
    const metrics = await call(ctx.app, "GET", "/metrics");
    expect(metrics.body).toMatch(/flowline_http_requests_total/);
    expect(ctx.app.printRoutes()).toContain("docs");
  });
});

describe("API keys and scopes", () => {
  it("creates keys shown once, enforces scopes, lists without secrets and revokes", async () => {
    const created = await createKey(ctx.rootKey, { name: "reader", scopes: ["read"] });
    expect(created.statusCode).toBe(201);
    const reader = created.json();
    expect(reader.key).toMatch(/^flk_/);
    expect(reader).toMatchObject({ tenant: "default", scopes: ["read"], root: false });

    expect((await call(ctx.app, "GET", "/v1/workflows", { key: reader.key })).statusCode).toBe(200);
    const put = await call(ctx.app, "PUT", "/v1/workflows/x", {
      key: reader.key,
      body: { steps: [{ id: "a", run: { type: "noop" } }] },
    });
    expect(expectProblem(put, 403).detail).toMatch(/write/);
    expectProblem(await createKey(reader.key, { scopes: ["read"] }), 403);

    const listed = await call(ctx.app, "GET", "/v1/keys", { key: ctx.rootKey });
    expect(listed.statusCode).toBe(200);
    const items = listed.json().items;
    expect(items.some((k: { id: string }) => k.id === reader.id)).toBe(true);
    expect(JSON.stringify(items)).not.toContain(reader.key);
    const stored = await ctx.db.sql`select secret_hash from api_keys where id = ${reader.id}`;
    expect(stored[0]!.secret_hash).not.toContain(reader.key);

    expect((await call(ctx.app, "DELETE", `/v1/keys/${reader.id}`, { key: ctx.rootKey })).statusCode).toBe(
      204,
    );
    expectProblem(await call(ctx.app, "GET", "/v1/workflows", { key: reader.key }), 401);
    expectProblem(await call(ctx.app, "DELETE", `/v1/keys/${reader.id}`, { key: ctx.rootKey }), 404);
  });

  it("lets only root keys manage other tenants; foreign key ids are 404", async () => {
    const adminB = (await createKey(ctx.rootKey, { tenant: "tenant-b", scopes: ["admin"] })).json();
    expect(adminB.tenant).toBe("tenant-b");
    const adminC = (await createKey(ctx.rootKey, { tenant: "tenant-c", scopes: ["admin"] })).json();

    expectProblem(await createKey(adminB.key, { tenant: "tenant-c", scopes: ["read"] }), 403);
    expectProblem(await call(ctx.app, "GET", "/v1/keys?tenant=tenant-c", { key: adminB.key }), 403);
    const own = await createKey(adminB.key, { scopes: ["read", "write"] });
    expect(own.json().tenant).toBe("tenant-b");

    const bKeys = (await call(ctx.app, "GET", "/v1/keys", { key: adminB.key })).json().items;
    expect(bKeys.every((k: { tenant: string }) => k.tenant === "tenant-b")).toBe(true);
    expectProblem(await call(ctx.app, "DELETE", `/v1/keys/${adminC.id}`, { key: adminB.key }), 404);
    expect((await call(ctx.app, "GET", "/v1/keys", { key: adminC.key })).statusCode).toBe(200);
  });
});

describe("key lifecycle", () => {
  it("a non-root admin of the default tenant neither sees nor revokes root keys", async () => {
    const admin = (await createKey(ctx.rootKey, { scopes: ["admin"], name: "ops" })).json();
    const listed = await call(ctx.app, "GET", "/v1/keys", { key: admin.key });
    expect(listed.statusCode).toBe(200);
    expect(listed.json().items.some((k: { root: boolean }) => k.root)).toBe(false);
    expect(listed.json().items.map((k: { id: string }) => k.id)).toContain(admin.id);
    const root = (await call(ctx.app, "GET", "/v1/keys", { key: ctx.rootKey }))
      .json()
      .items.find((k: { root: boolean }) => k.root);
    expect(root).toBeDefined();
    expectProblem(await call(ctx.app, "DELETE", `/v1/keys/${root.id}`, { key: admin.key }), 404);
    expect((await call(ctx.app, "GET", "/v1/workflows", { key: ctx.rootKey })).statusCode).toBe(200);
    // Its own tenant's ordinary keys it still manages.
    const other = (await createKey(admin.key, { scopes: ["read"] })).json();
    expect((await call(ctx.app, "DELETE", `/v1/keys/${other.id}`, { key: admin.key })).statusCode).toBe(204);
  });

  it("an expired key no longer authenticates; lastUsedAt is recorded", async () => {
    const created = await createKey(ctx.rootKey, { scopes: ["read"], expiresInSeconds: 60 });
    expect(created.statusCode).toBe(201);
    const key = created.json();
    expect(Date.parse(key.expiresAt) - Date.now()).toBeGreaterThan(50_000);
    expect(key.lastUsedAt).toBeNull();
    expect((await call(ctx.app, "GET", "/v1/workflows", { key: key.key })).statusCode).toBe(200);
    let lastUsedAt: string | null = null;
    for (let i = 0; i < 50 && !lastUsedAt; i++) {
      const items = (await call(ctx.app, "GET", "/v1/keys", { key: ctx.rootKey })).json().items;
      lastUsedAt = items.find((k: { id: string }) => k.id === key.id).lastUsedAt;
      if (!lastUsedAt) await new Promise((r) => setTimeout(r, 20));
    }
    expect(lastUsedAt).not.toBeNull();
    await ctx.db.sql`update api_keys set expires_at = now() - interval '1 second' where id = ${key.id}`;
    expectProblem(await call(ctx.app, "GET", "/v1/workflows", { key: key.key }), 401);
    expectProblem(await createKey(ctx.rootKey, { scopes: ["read"], expiresInSeconds: 5 }), 400);
  });

  it("a revoked bootstrap key stays revoked at the next start", async () => {
    const { keysRepository } = await import("../../src/db/repositories/keys.ts");
    const keys = keysRepository(ctx.db.db);
    const bootstrap = "flk_bootstrap_rotation_test_0123456789abcdef";
    expect(await keys.ensureRootKey(bootstrap)).toEqual({});
    const record = await keys.findByKey(bootstrap);
    expect(record).toMatchObject({ root: true, name: "bootstrap" });
    expect((await call(ctx.app, "DELETE", `/v1/keys/${record!.id}`, { key: ctx.rootKey })).statusCode).toBe(
      204,
    );
    // A start with the same FLOWLINE_BOOTSTRAP_KEY: not restored, and said so.
    expect(await keys.ensureRootKey(bootstrap)).toEqual({ bootstrapRevoked: true });
    expect(await keys.findByKey(bootstrap)).toBeNull();
    // Rotation: a new value makes a new root key.
    const next = "flk_bootstrap_rotation_next_0123456789abcdef";
    expect(await keys.ensureRootKey(next)).toEqual({});
    expect(await keys.findByKey(next)).toMatchObject({ root: true });
  });
});

describe("rate limiting", () => {
  let limited: TestContext;
  beforeAll(async () => {
    limited = await createTestContext((c) => ({
      ...c,
      rateLimit: { enabled: true, max: 5, windowSeconds: 60 },
    }));
  });
  afterAll(() => limited?.close());

  it("limits each key separately with 429, Retry-After and problem+json", async () => {
    const make = async () =>
      (
        await call(limited.app, "POST", "/v1/keys", { key: limited.rootKey, body: { scopes: ["read"] } })
      ).json().key;
    const a = await make();
    const b = await make();
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++)
      statuses.push((await call(limited.app, "GET", "/v1/workflows", { key: a })).statusCode);
    expect(statuses).toEqual([200, 200, 200, 200, 200]);
    const over = await call(limited.app, "GET", "/v1/workflows", { key: a });
    const problem = expectProblem(over, 429);
    expect(problem.code).toBe("rate_limited");
    expect(Number(over.headers["retry-after"])).toBeGreaterThan(0);
    expect((await call(limited.app, "GET", "/v1/workflows", { key: b })).statusCode).toBe(200);
    expect((await call(limited.app, "GET", "/healthz")).statusCode).toBe(200);
    const stored = await limited.redis.keys(`${limited.config.redis.prefix}:rl:*`);
    expect(stored.length).toBeGreaterThan(0);
  });
});

describe("failed authentication", () => {
  let guarded: TestContext;
  beforeAll(async () => {
    guarded = await createTestContext((c) => ({
      ...c,
      rateLimit: { enabled: true, failedAuthMax: 3, failedAuthWindowSeconds: 60 },
    }));
  });
  afterAll(() => guarded?.close());

  const from = (remoteAddress: string, key: string) =>
    guarded.app.inject({
      method: "GET",
      url: "/v1/workflows",
      remoteAddress,
      headers: { authorization: `Bearer ${key}` },
    });

  it("is limited per client address, before the key is looked up", async () => {
    const wrong = "flk_wrong_key_0123456789abcdefghijkl";
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) statuses.push((await from("10.0.0.1", wrong)).statusCode);
    expect(statuses).toEqual([401, 401, 401]);
    // The address is refused now, even with a valid key; another address is not.
    const blocked = await from("10.0.0.1", guarded.rootKey);
    expect(expectProblem(blocked, 429).detail).toMatch(/failed authentications/);
    expect(Number(blocked.headers["retry-after"])).toBeGreaterThan(0);
    expect((await from("10.0.0.2", guarded.rootKey)).statusCode).toBe(200);
    expect((await from("10.0.0.2", "not a bearer")).statusCode).toBe(401);

    // With the keys table gone, a lookup fails; the blocked address never gets that far.
    await guarded.db.sql`alter table api_keys rename to api_keys_away`;
    try {
      expect((await from("10.0.0.1", wrong)).statusCode).toBe(429);
      expect((await from("10.0.0.3", wrong)).statusCode).toBeGreaterThanOrEqual(500);
    } finally {
      await guarded.db.sql`alter table api_keys_away rename to api_keys`;
    }
  });
});
