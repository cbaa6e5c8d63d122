/**
 * GET /v1/assets and /v1/assets/{key} on a real Postgres. History is simulated by inserting runs
 * and materializations with SQL, so every freshness state and page boundary is set up exactly.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { call, expectProblem } from "../helpers/http.ts";

let ctx: TestContext;
let otherKey: string;
let readKey: string;

const market = {
  steps: [
    { id: "extract", run: { type: "noop" }, provides: ["market_data", "prices"] },
    { id: "report", needs: ["extract"], run: { type: "noop" }, provides: ["report"] },
  ],
  assets: {
    market_data: { maxAgeSeconds: 3600, autoMaterialize: true, description: "Daily quotes" },
    report: { maxAgeSeconds: 60 },
  },
};
// Also provides `prices`, with a policy; it sorts before `market`, so its policy wins.
const alpha = {
  steps: [{ id: "load", run: { type: "noop" }, provides: ["prices"] }],
  assets: { prices: { maxAgeSeconds: 120 } },
};

async function put(name: string, body: unknown, key = ctx.rootKey) {
  const res = await call(ctx.app, "PUT", `/v1/workflows/${name}`, { key, body });
  expect(res.statusCode, res.body).toBeLessThan(300);
}

/** A run row of the tenant's workflow, for materializations to point at. */
async function insertRun(tenant: string, workflow: string): Promise<string> {
  const [row] = await ctx.db.sql<{ id: string }[]>`
    insert into runs (tenant_id, workflow_id, workflow_version, kind, status)
    select ${tenant}, id, latest_version, 'materialization', 'succeeded' from workflows
    where tenant_id = ${tenant} and name = ${workflow}
    returning id`;
  if (!row) throw new Error(`no workflow ${tenant}/${workflow}`);
  return row.id;
}

interface Materialize {
  tenant?: string;
  asset: string;
  runId: string;
  step?: string;
  partition?: string | null;
  /** Seconds before now. */
  ageSeconds?: number;
  /** An exact timestamp instead of an age. */
  at?: string;
  token?: number;
  metadata?: unknown;
}

async function materialize(m: Materialize): Promise<number> {
  const createdAt = m.at ?? new Date(Date.now() - (m.ageSeconds ?? 0) * 1000).toISOString();
  const [row] = await ctx.db.sql<{ id: string }[]>`
    insert into materializations
      (tenant_id, asset_key, run_id, step_id, partition_key, fencing_token, metadata, created_at)
    values (${m.tenant ?? "default"}, ${m.asset}, ${m.runId}, ${m.step ?? "extract"}, ${m.partition ?? null},
      ${m.token ?? 1}, ${m.metadata === undefined ? null : ctx.db.sql.json(m.metadata as never)},
      ${createdAt}::timestamptz)
    returning id`;
  return Number(row!.id);
}

const get = (url: string, key = ctx.rootKey) => call(ctx.app, "GET", url, { key });

async function list(query = "", key = ctx.rootKey): Promise<any[]> {
  const res = await get(`/v1/assets${query}`, key);
  expect(res.statusCode, res.body).toBe(200);
  return res.json().items;
}

async function detail(key: string, query = "", apiKey = ctx.rootKey): Promise<any> {
  const res = await get(`/v1/assets/${key}${query}`, apiKey);
  expect(res.statusCode, res.body).toBe(200);
  return res.json();
}

const byKey = (items: any[]) => Object.fromEntries(items.map((i) => [i.key, i]));

beforeAll(async () => {
  ctx = await createTestContext();
  const makeKey = async (body: unknown) => {
    const res = await call(ctx.app, "POST", "/v1/keys", { key: ctx.rootKey, body });
    expect(res.statusCode, res.body).toBe(201);
    return res.json().key as string;
  };
  otherKey = await makeKey({ tenant: "other", scopes: ["write"] });
  readKey = await makeKey({ scopes: ["read"] });
});
afterAll(() => ctx?.close());

describe("assets", () => {
  let runId: string;

  it("lists the assets of live workflows as missing before any materialization", async () => {
    await put("market", market);
    await put("alpha", alpha);
    runId = await insertRun("default", "market");

    const items = await list("", readKey);
    expect(items.map((i) => i.key)).toEqual(["market_data", "prices", "report"]);
    const assets = byKey(items);
    expect(assets.market_data).toEqual({
      key: "market_data",
      workflows: ["market"],
      policy: { maxAgeSeconds: 3600, autoMaterialize: true, description: "Daily quotes" },
      freshness: "missing",
      lastMaterializedAt: null,
      lastMaterialization: null,
      materializations: 0,
    });
    expect(assets.prices.workflows).toEqual(["alpha", "market"]);
    expect(assets.prices.policy).toEqual({ maxAgeSeconds: 120, autoMaterialize: null, description: null });
    expect(assets.report.policy.maxAgeSeconds).toBe(60);

    const one = await detail("report");
    expect(one).toMatchObject({
      key: "report",
      workflows: ["market"],
      freshness: "missing",
      history: { items: [], nextCursor: null },
      partitions: [],
      partitionCount: 0,
    });
  });

  it("judges freshness: missing, then fresh, then stale once older than maxAgeSeconds", async () => {
    const id = await materialize({ asset: "report", runId, step: "report", metadata: { rows: 3 } });
    let report = await detail("report");
    expect(report.freshness).toBe("fresh");
    expect(report.materializations).toBe(1);
    expect(report.lastMaterialization).toMatchObject({ id, runId, stepId: "report", partitionKey: null });
    expect(report.lastMaterializedAt).toBe(report.lastMaterialization.createdAt);
    expect(report.history.items).toEqual([
      {
        id,
        runId,
        stepId: "report",
        partitionKey: null,
        fencingToken: 1,
        metadata: { rows: 3 },
        createdAt: report.lastMaterializedAt,
      },
    ]);

    // Time passes: the only materialization is now two hours old, beyond report's 60 s.
    await ctx.db.sql`update materializations set created_at = now() - interval '2 hours' where id = ${id}`;
    report = await detail("report");
    expect(report.freshness).toBe("stale");
    expect(Date.now() - Date.parse(report.lastMaterializedAt)).toBeGreaterThan(7_100_000);

    // An asset without maxAgeSeconds never goes stale once materialized.
    await materialize({ asset: "market_data", runId, ageSeconds: 30 * 86_400 });
    await put("market", { ...market, assets: { report: market.assets.report } });
    expect((await detail("market_data")).freshness).toBe("fresh");
    await put("market", market);
    expect((await detail("market_data")).freshness).toBe("stale");
    await materialize({ asset: "market_data", runId, ageSeconds: 10 });
    expect((await detail("market_data")).freshness).toBe("fresh");

    expect((await list("?freshness=stale")).map((i) => i.key)).toEqual(["report"]);
    expect((await list("?freshness=missing")).map((i) => i.key)).toEqual(["prices"]);
    expect((await list("?freshness=fresh")).map((i) => i.key)).toEqual(["market_data"]);
  });

  it("uses the assets table's last materialization time when the rows are gone", async () => {
    await ctx.db.sql`
      insert into assets (tenant_id, key, fencing_token, last_materialized_at)
      values ('default', 'prices', 4, now() - interval '10 seconds')`;
    const prices = await detail("prices");
    expect(prices).toMatchObject({ freshness: "fresh", materializations: 0, lastMaterialization: null });
    expect(prices.lastMaterializedAt).not.toBeNull();
    await ctx.db.sql`delete from assets where tenant_id = 'default' and key = 'prices'`;
    expect((await detail("prices")).freshness).toBe("missing");
  });

  it("keeps materialized assets no live workflow provides, and follows archiving", async () => {
    await materialize({ asset: "legacy.table", runId, step: "old-step", ageSeconds: 5 });
    const legacy = await detail("legacy.table");
    expect(legacy).toMatchObject({
      workflows: [],
      policy: { maxAgeSeconds: null, autoMaterialize: null, description: null },
      freshness: "fresh",
      materializations: 1,
    });

    expect((await call(ctx.app, "DELETE", "/v1/workflows/alpha", { key: ctx.rootKey })).statusCode).toBe(204);
    const prices = await detail("prices");
    expect(prices.workflows).toEqual(["market"]);
    expect(prices.policy.maxAgeSeconds).toBeNull();
    expect((await list("?workflow=alpha")).map((i) => i.key)).toEqual([]);
    await put("alpha", alpha);
    expect((await list("?workflow=alpha")).map((i) => i.key)).toEqual(["prices"]);
    expect((await list("?workflow=market")).map((i) => i.key)).toEqual(["market_data", "prices", "report"]);
    expect(await list("?workflow=ghost")).toEqual([]);
  });

  it("pages through assets by key, with and without filters", async () => {
    for (const key of ["a0", "a1", "a2", "a_3", "a.4", "a-5", "z9"]) {
      await materialize({ asset: key, runId, ageSeconds: 1 });
    }
    const all = (await list("?limit=200")).map((i) => i.key);
    expect(all).toEqual([...all].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
    expect(all).toHaveLength(11);

    for (const query of ["", "&freshness=fresh", "&workflow=market"]) {
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const res = await get(`/v1/assets?limit=2${query}${cursor ? `&cursor=${cursor}` : ""}`);
        expect(res.statusCode, res.body).toBe(200);
        const page = res.json();
        expect(page.items.length).toBeLessThanOrEqual(2);
        seen.push(...page.items.map((i: { key: string }) => i.key));
        cursor = page.nextCursor;
        pages++;
      } while (cursor && pages < 20);
      const expected = (await list(`?limit=200${query}`)).map((i) => i.key);
      expect(seen, query).toEqual(expected);
    }
  });

  it("pages a history newest first, filters by partition and lists the latest per partition", async () => {
    await put("daily", { steps: [{ id: "build", run: { type: "noop" }, provides: ["daily_sales"] }] });
    const run = await insertRun("default", "daily");
    const ids: number[] = [];
    // Two rows share a timestamp: the id breaks the tie, and a page may end between them.
    const rows: Array<[string | null, string]> = [
      ["2026-01-01", "2026-02-01T00:00:00.000001Z"],
      ["2026-01-02", "2026-02-01T00:00:00.000002Z"],
      ["2026-01-01", "2026-02-02T00:00:00Z"],
      ["2026-01-03", "2026-02-02T00:00:00Z"],
      [null, "2026-02-03T00:00:00Z"],
    ];
    for (const [partition, at] of rows) {
      ids.push(
        await materialize({
          asset: "daily_sales",
          runId: run,
          step: "build",
          partition,
          at,
          token: ids.length + 1,
        }),
      );
    }
    const newestFirst = [ids[4], ids[3], ids[2], ids[1], ids[0]];

    const first = await detail("daily_sales", "?limit=200");
    expect(first.history.items.map((m: { id: number }) => m.id)).toEqual(newestFirst);
    expect(first.history.nextCursor).toBeNull();
    expect(first.materializations).toBe(5);
    expect(first.lastMaterialization.id).toBe(ids[4]);
    expect(first.history.items[0].fencingToken).toBe(5);
    expect(first.partitionCount).toBe(3);
    expect(first.partitions.map((p: any) => [p.partitionKey, p.id])).toEqual([
      ["2026-01-03", ids[3]],
      ["2026-01-02", ids[1]],
      ["2026-01-01", ids[2]],
    ]);

    const seen: number[] = [];
    let cursor: string | null = null;
    do {
      const page = await detail("daily_sales", `?limit=2${cursor ? `&cursor=${cursor}` : ""}`);
      expect(page.history.items.length).toBeLessThanOrEqual(2);
      seen.push(...page.history.items.map((m: { id: number }) => m.id));
      cursor = page.history.nextCursor;
    } while (cursor && seen.length < 10);
    expect(seen).toEqual(newestFirst);

    const one = await detail("daily_sales", "?partition=2026-01-01&limit=1");
    expect(one.history.items.map((m: { id: number }) => m.id)).toEqual([ids[2]]);
    const rest = await detail("daily_sales", `?partition=2026-01-01&cursor=${one.history.nextCursor}`);
    expect(rest.history.items.map((m: { id: number }) => m.id)).toEqual([ids[0]]);
    expect(rest.history.nextCursor).toBeNull();
    // The partition filter narrows the history only.
    expect(rest.materializations).toBe(5);
    expect((await detail("daily_sales", "?partition=2030-01-01")).history.items).toEqual([]);
  });

  it("never shows one tenant's assets to another", async () => {
    await put("secret", { steps: [{ id: "s", run: { type: "noop" }, provides: ["secret_data"] }] }, otherKey);
    const otherRun = await insertRun("other", "secret");
    await materialize({ tenant: "other", asset: "secret_data", runId: otherRun, step: "s" });
    // The same key as one of the default tenant's assets, materialized by the other tenant.
    await materialize({ tenant: "other", asset: "market_data", runId: otherRun, step: "s" });

    expect((await list("?limit=200")).map((i) => i.key)).not.toContain("secret_data");
    expectProblem(await get("/v1/assets/secret_data"), 404);
    const mine = await detail("market_data");
    expect(mine.history.items.every((m: { runId: string }) => m.runId !== otherRun)).toBe(true);

    const theirs = await list("", otherKey);
    expect(theirs.map((i) => i.key)).toEqual(["market_data", "secret_data"]);
    expect(byKey(theirs).market_data).toMatchObject({ workflows: [], materializations: 1 });
    expect((await detail("secret_data", "", otherKey)).workflows).toEqual(["secret"]);
    expectProblem(await get("/v1/assets/report", otherKey), 404);
    expect(await list(`?workflow=market`, otherKey)).toEqual([]);
  });

  it("answers bad input with a problem naming the field", async () => {
    const historyCursor = (raw: string) => Buffer.from(raw).toString("base64url");
    const cases: Array<[string, number, string | null, RegExp?]> = [
      ["/v1/assets/Market_Data", 400, "key"],
      ["/v1/assets/a..b", 400, "key"],
      ["/v1/assets/-lead", 400, "key"],
      [`/v1/assets/${"a".repeat(129)}`, 400, "key"],
      ["/v1/assets/never_materialized", 404, null],
      ["/v1/assets?limt=5", 400, null, /limt/],
      ["/v1/assets/report?since=yesterday", 400, null, /since/],
      ["/v1/assets?limit=0", 400, "limit"],
      ["/v1/assets?limit=201", 400, "limit"],
      ["/v1/assets?limit=many", 400, "limit"],
      ["/v1/assets/report?limit=0", 400, "limit"],
      ["/v1/assets?freshness=rotten", 400, "freshness"],
      ["/v1/assets?workflow=Not_A_Name", 400, "workflow"],
      ["/v1/assets?cursor=not-a-cursor!", 400, "cursor"],
      [`/v1/assets?cursor=${historyCursor("Not A Key")}`, 400, "cursor"],
      ["/v1/assets/report?cursor=%%%", 400, null],
      [`/v1/assets/report?cursor=${historyCursor("report")}`, 400, "cursor"],
      [`/v1/assets/report?cursor=${historyCursor("2026-02-30T00:00:00.000000Z|5")}`, 400, "cursor"],
      [
        `/v1/assets/report?cursor=${historyCursor("2026-02-01T00:00:00.000000Z|99999999999999999999")}`,
        400,
        "cursor",
      ],
      ["/v1/assets/report?partition=bad%20key", 400, "partition"],
      ["/v1/assets/report?partition=a&partition=b", 400, "partition"],
    ];
    const failures: string[] = [];
    for (const [url, status, path, detail] of cases) {
      try {
        const problem = expectProblem(await get(url), status);
        if (path !== null) {
          const paths = (problem.errors ?? []).map((e: { path: string }) => e.path);
          if (!paths.includes(path)) throw new Error(`no error at ${path}: ${JSON.stringify(problem)}`);
        }
        if (detail && !detail.test(JSON.stringify(problem)))
          throw new Error(`not ${detail}: ${problem.detail}`);
      } catch (error) {
        failures.push(`${url}: ${(error as Error).message}`);
      }
    }
    expect(failures).toEqual([]);
    expectProblem(await call(ctx.app, "GET", "/v1/assets", { key: null }), 401);
  });

  it("documents both routes in the OpenAPI document", async () => {
    const doc = (await call(ctx.app, "GET", "/openapi.json")).json();
    expect(doc.paths["/v1/assets"].get).toBeDefined();
    expect(doc.paths["/v1/assets/{key}"].get).toBeDefined();
    expect(Object.keys(doc.components.schemas)).toEqual(
      expect.arrayContaining([
        "Asset",
        "AssetDetails",
        "AssetPolicy",
        "Materialization",
        "MaterializationRef",
      ]),
    );
  });
});
