/**
 * Bad input of every kind answers a 4xx problem+json, never a 500, and writes nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../../src/api/app.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { call, expectProblem } from "../helpers/http.ts";

let ctx: TestContext;
beforeAll(async () => {
  ctx = await createTestContext((c) => ({ ...c, server: { bodyLimitBytes: 1_048_576, maxJsonDepth: 64 } }));
});
afterAll(() => ctx?.close());

const valid = { steps: [{ id: "a", run: { type: "noop" } }] };
const deep = (n: number, open: string, close: string) => `${open.repeat(n)}${close.repeat(n)}`;

type Case = {
  name: string;
  method?: "PUT" | "POST" | "GET" | "DELETE";
  url?: string;
  body?: unknown;
  raw?: string | Buffer;
  contentType?: string;
  headers?: Record<string, string>;
  status: number;
  /** A field path the problem must name. */
  path?: string;
};

const cases: Case[] = [
  { name: "body is a string", body: "just a string", status: 400 },
  { name: "body is null", raw: "null", status: 400 },
  { name: "body is an array", body: [valid], status: 400 },
  { name: "body is a number", raw: "42", status: 400 },
  { name: "empty JSON body", raw: "", status: 400 },
  { name: "steps is an object", body: { steps: { a: 1 } }, status: 400, path: "steps" },
  { name: "steps is null", body: { steps: null }, status: 400, path: "steps" },
  { name: "steps is empty", body: { steps: [] }, status: 400, path: "steps" },
  { name: "step is an array", body: { steps: [["a"]] }, status: 400, path: "steps[0]" },
  {
    name: "step id is a number",
    body: { steps: [{ id: 7, run: { type: "noop" } }] },
    status: 400,
    path: "steps[0].id",
  },
  {
    name: "needs is a string",
    body: { steps: [{ id: "a", needs: "b", run: { type: "noop" } }] },
    status: 400,
    path: "steps[0].needs",
  },
  { name: "run is null", body: { steps: [{ id: "a", run: null }] }, status: 400, path: "steps[0].run" },
  {
    name: "run.type missing",
    body: { steps: [{ id: "a", run: {} }] },
    status: 400,
    path: "steps[0].run.type",
  },
  {
    name: "sleep seconds is a string",
    body: { steps: [{ id: "a", run: { type: "sleep", seconds: "5" } }] },
    status: 400,
    path: "steps[0].run.seconds",
  },
  {
    name: "negative sleep",
    body: { steps: [{ id: "a", run: { type: "sleep", seconds: -1 } }] },
    status: 400,
    path: "steps[0].run.seconds",
  },
  {
    name: "priority out of range",
    body: { steps: [{ id: "a", priority: 11, run: { type: "noop" } }] },
    status: 400,
    path: "steps[0].priority",
  },
  {
    name: "retry attempts is a float",
    body: { steps: [{ id: "a", retry: { maxAttempts: 1.5 }, run: { type: "noop" } }] },
    status: 400,
    path: "steps[0].retry.maxAttempts",
  },
  { name: "unknown top-level field", body: { ...valid, stpes: [] }, status: 400 },
  {
    name: "concurrency limit zero",
    body: { ...valid, concurrency: { limit: 0 } },
    status: 400,
    path: "concurrency.limit",
  },
  {
    name: "description is an object",
    body: { ...valid, description: { text: "x" } },
    status: 400,
    path: "description",
  },
  { name: "invalid JSON", raw: '{"steps": [', status: 400 },
  { name: "trailing garbage", raw: '{"steps": []} xyz', status: 400 },
  {
    name: "invalid UTF-8",
    raw: Buffer.from([0x7b, 0x22, 0x64, 0x22, 0x3a, 0x22, 0xc3, 0x28, 0x22, 0x7d]),
    status: 400,
  },
  {
    name: "__proto__ key",
    raw: '{"steps":[{"id":"a","run":{"type":"noop"}}],"__proto__":{"polluted":true}}',
    status: 400,
  },
  {
    name: "nested __proto__ key",
    raw: '{"params":{"__proto__":{"x":1}},"steps":[{"id":"a","run":{"type":"noop"}}]}',
    status: 400,
  },
  {
    name: "constructor.prototype",
    raw: '{"params":{"constructor":{"prototype":{"x":1}}},"steps":[]}',
    status: 400,
  },
  { name: "100,000-deep arrays", raw: `{"params":{"x":${deep(100_000, "[", "]")}}}`, status: 400 },
  {
    name: "100,000-deep objects",
    raw: `{"params":${'{"a":'.repeat(100_000)}1${"}".repeat(100_000)}}`,
    status: 400,
  },
  {
    name: "65-deep params",
    raw: `{"params":{"x":${deep(65, "[", "]")}},"steps":[{"id":"a","run":{"type":"noop"}}]}`,
    status: 400,
  },
  { name: "10 MB body", raw: `{"description":"${"x".repeat(10 * 1024 * 1024)}"}`, status: 413 },
  { name: "text/plain", raw: JSON.stringify(valid), contentType: "text/plain", status: 415 },
  { name: "form encoding", raw: "steps=1", contentType: "application/x-www-form-urlencoded", status: 415 },
  { name: "multipart", raw: "--x\r\n\r\n--x--", contentType: "multipart/form-data; boundary=x", status: 415 },
  { name: "invalid YAML", raw: "steps: [\n  - id: a", contentType: "application/yaml", status: 400 },
  {
    name: "YAML alias bomb",
    raw: `a: &a ["x","x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n`,
    contentType: "application/yaml",
    status: 400,
  },
  {
    name: "YAML duplicate keys",
    raw: "steps: []\nsteps: []\n",
    contentType: "application/yaml",
    status: 400,
  },
  {
    name: "YAML __proto__ key",
    raw: "__proto__: { x: 1 }\nsteps: [{ id: a, run: { type: noop } }]\n",
    contentType: "application/yaml",
    status: 400,
  },
  { name: "YAML scalar document", raw: "just text", contentType: "application/yaml", status: 400 },
  {
    name: "name with unicode look-alike",
    url: "/v1/workflows/w%D0%BErkflow",
    body: valid,
    status: 400,
    path: "name",
  },
  {
    name: "name with path traversal",
    url: "/v1/workflows/..%2F..%2Fetc",
    body: valid,
    status: 400,
    path: "name",
  },
  { name: "name too long", url: `/v1/workflows/${"a".repeat(64)}`, body: valid, status: 400, path: "name" },
  { name: "uppercase name", url: "/v1/workflows/Hello", body: valid, status: 400, path: "name" },
  {
    name: "list limit not a number",
    method: "GET",
    url: "/v1/workflows?limit=lots",
    status: 400,
    path: "limit",
  },
  {
    name: "list limit too large",
    method: "GET",
    url: "/v1/workflows?limit=100000",
    status: 400,
    path: "limit",
  },
  { name: "unknown query parameter", method: "GET", url: "/v1/workflows?limt=5", status: 400 },
  {
    name: "version not a number",
    method: "GET",
    url: "/v1/workflows/abc?version=latest",
    status: 400,
    path: "version",
  },
  { name: "key id not a uuid", method: "DELETE", url: "/v1/keys/not-a-uuid", status: 400, path: "id" },
  {
    name: "key scopes null",
    method: "POST",
    url: "/v1/keys",
    body: { scopes: null },
    status: 400,
    path: "scopes",
  },
  {
    name: "key scopes unknown",
    method: "POST",
    url: "/v1/keys",
    body: { scopes: ["root"] },
    status: 400,
    path: "scopes[0]",
  },
  {
    name: "key scopes empty",
    method: "POST",
    url: "/v1/keys",
    body: { scopes: [] },
    status: 400,
    path: "scopes",
  },
  {
    name: "key tenant with unicode",
    method: "POST",
    url: "/v1/keys",
    body: { tenant: "tеnant", scopes: ["read"] },
    status: 400,
    path: "tenant",
  },
  {
    name: "key body with unknown field",
    method: "POST",
    url: "/v1/keys",
    body: { scopes: ["read"], admin: true },
    status: 400,
  },
];

describe("malformed requests", () => {
  it(`answers ${cases.length} kinds of bad input with 4xx problem+json and writes nothing`, async () => {
    expect(cases.length).toBeGreaterThanOrEqual(30);
    const count = async () =>
      (
        await ctx.db
          .sql`select (select count(*) from workflows)::int as w, (select count(*) from workflow_versions)::int as v,
                         (select count(*) from api_keys)::int as k, (select count(*) from tenants)::int as t`
      )[0];
    const before = await count();
    const failures: string[] = [];
    for (const c of cases) {
      const res = await call(ctx.app, c.method ?? "PUT", c.url ?? "/v1/workflows/target", {
        key: ctx.rootKey,
        ...(c.raw !== undefined ? { raw: c.raw } : c.body !== undefined ? { body: c.body } : {}),
        ...(c.contentType ? { contentType: c.contentType } : {}),
        ...(c.headers ? { headers: c.headers } : {}),
      });
      try {
        const problem = expectProblem(res, c.status);
        if (c.path) {
          const paths = (problem.errors ?? []).map((e: { path: string }) => e.path);
          if (!paths.includes(c.path))
            throw new Error(`no error at ${c.path}: ${JSON.stringify(problem.errors)}`);
        }
      } catch (error) {
        failures.push(`${c.name}: ${(error as Error).message}`);
      }
    }
    expect(failures).toEqual([]);
    expect(await count()).toEqual(before);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    // The server is still healthy after all of it.
    expect((await call(ctx.app, "GET", "/healthz")).statusCode).toBe(200);
  });

  it("answers 500 without internals, and 503 with Retry-After when Postgres is gone", async () => {
    const app = await buildApp({ config: ctx.config, db: ctx.db, stores: ctx.stores });
    app.get("/boom", { config: { public: true } }, async () => {
      throw new Error("secret detail at /srv/flowline/src/x.ts:12 password=hunter2");
    });
    const res = await app.inject({ method: "GET", url: "/boom" });
    const problem = expectProblem(res, 500);
    expect(res.body).not.toMatch(/hunter2|secret detail|\.ts/);
    expect(problem.instance).toBe(res.headers["x-request-id"]);
    await app.close();

    const broken = await createTestContext();
    await broken.db.close();
    const down = await call(broken.app, "GET", "/v1/workflows", { key: broken.rootKey });
    expectProblem(down, 503);
    expect(Number(down.headers["retry-after"])).toBeGreaterThan(0);
    expectProblem(await call(broken.app, "GET", "/readyz"), 503);
    await broken.app.close();
    await broken.stores.close();
    await broken.database.drop();
  });
});
