/**
 * `quotas.streams` counts a tenant's open event streams across API processes: two API instances
 * on the same stores share one count, a closed stream frees its place for the other instance, and
 * the place of a stream whose process died frees itself once its lease expires.
 */
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.ts";
import { PgStreamLeases } from "../../src/db/stores/stream-leases.ts";
import type { StreamLeaseStore } from "../../src/domain/ports.ts";
import { StreamLeases } from "../../src/redis/stream-leases.ts";
import { openStores, type Stores } from "../../src/stores/index.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { call } from "../helpers/http.ts";
import { TEST_STORES } from "../helpers/services.ts";

let ctx: TestContext;
let second: FastifyInstance;
let secondStores: Stores;
let key: string;
let runId: string;
const bases: string[] = [];

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...c,
    rateLimit: { enabled: false },
    quotas: { tenants: { watcher: { streams: 2 } } },
  }));
  // A second API process: its own store connections, the same stores.
  secondStores = await openStores(ctx.config, {
    name: "flowline-test-2",
    flavour: "consumer",
    subscribe: true,
    sql: ctx.db.sql,
  });
  second = await buildApp({ config: ctx.config, db: ctx.db, stores: secondStores });
  await second.ready();
  key = (
    await call(ctx.app, "POST", "/v1/keys", {
      key: ctx.rootKey,
      body: { tenant: "watcher", scopes: ["read", "write"] },
    })
  ).json().key;
  await call(ctx.app, "PUT", "/v1/workflows/w", {
    key,
    body: { steps: [{ id: "a", queue: "default", run: { type: "noop" } }] },
  });
  runId = (await call(ctx.app, "POST", "/v1/workflows/w/runs", { key, body: {} })).json().id;
  bases.push(
    await ctx.app.listen({ host: "127.0.0.1", port: 0 }),
    await second.listen({ host: "127.0.0.1", port: 0 }),
  );
});
afterAll(async () => {
  await second?.close();
  await secondStores?.close();
  await ctx?.close();
});

const open = (instance: number) =>
  fetch(`${bases[instance]}/v1/runs/${runId}/events`, {
    headers: { authorization: `Bearer ${key}`, accept: "text/event-stream" },
  });

describe("open streams per tenant across API processes", () => {
  it("counts the streams of both instances against one quota, and frees a place on close", async () => {
    const a = await open(0);
    const b = await open(1);
    expect([a.status, b.status]).toEqual([200, 200]);
    for (const instance of [0, 1]) {
      const refused = await open(instance);
      expect(refused.status).toBe(429);
      const problem = (await refused.json()) as { code: string; detail: string };
      expect(problem.code).toBe("quota_exceeded");
      expect(problem.detail).toMatch(/has 2 event streams open.*quotas.streams/);
    }
    // A stream closed on the first instance makes room on the second.
    await a.body!.cancel();
    let again = await open(1);
    for (let i = 0; again.status === 429 && i < 50; i++) {
      await again.body?.cancel();
      await new Promise((r) => setTimeout(r, 50));
      again = await open(1);
    }
    expect(again.status).toBe(200);
    await again.body!.cancel();
    await b.body!.cancel();
  });
});

// The lease stores themselves, on each backend this suite has (Postgres always, Redis when configured).
const leasesOn = (kind: "redis" | "postgres", prefix: string, ttlMs: number): StreamLeaseStore =>
  kind === "redis"
    ? new StreamLeases(ctx.redis, prefix, ttlMs)
    : new PgStreamLeases(ctx.db.sql, prefix, ttlMs);

describe.each(TEST_STORES === "redis" ? (["redis", "postgres"] as const) : (["postgres"] as const))(
  "stream leases on %s",
  (kind) => {
    it("stops counting a dead process's streams once their leases expire", async () => {
      const prefix = `${ctx.config.redis.prefix}:dead:${kind}`;
      const dead = leasesOn(kind, prefix, 1500);
      const alive = leasesOn(kind, prefix, 60_000);
      expect((await dead.acquire("t", 1)).ok).toBe(true);
      // The dead process never releases nor renews: its stream holds the place until the lease ends.
      expect(await alive.acquire("t", 1)).toEqual({ ok: false, open: 1 });
      await new Promise((r) => setTimeout(r, 1600));
      expect((await alive.acquire("t", 1)).ok).toBe(true);
    });

    it("keeps a renewed lease counted past its first expiry", async () => {
      const prefix = `${ctx.config.redis.prefix}:renew:${kind}`;
      const leases = leasesOn(kind, prefix, 1500);
      const slot = await leases.acquire("t", 1);
      if (!slot.ok) throw new Error("not granted");
      // Renewed every 500 ms for 2 s: past the 1.5 s a lease lasts unrenewed.
      for (let i = 0; i < 4; i++) {
        await new Promise((r) => setTimeout(r, 500));
        await leases.renew("t", slot.lease);
      }
      expect(await leases.acquire("t", 1)).toEqual({ ok: false, open: 1 });
      await leases.release("t", slot.lease);
      expect((await leases.acquire("t", 1)).ok).toBe(true);
    });
  },
);
