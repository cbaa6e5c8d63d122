import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { signSession, signStreamToken } from "../../src/domain/browser-auth.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { call, expectProblem } from "../helpers/http.ts";

const SECRET = "test-session-secret-0123456789abcdefghij";
const ALLOWED = "http://app.example.test:8080";

let ctx: TestContext;
let runId: string;
let otherRunId: string;
let reader: { id: string; key: string };

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...c,
    auth: { ...(c.auth as object), sessionSecret: SECRET },
    server: { trustProxy: true },
    http: { cors: { allowedOrigins: [ALLOWED] } },
  }));
  const put = await call(ctx.app, "PUT", "/v1/workflows/browser", {
    key: ctx.rootKey,
    body: { steps: [{ id: "a", queue: "default", run: { type: "noop" } }] },
  });
  expect(put.statusCode).toBe(201);
  runId = (await call(ctx.app, "POST", "/v1/workflows/browser/runs", { key: ctx.rootKey, body: {} })).json()
    .id;
  otherRunId = (
    await call(ctx.app, "POST", "/v1/workflows/browser/runs", { key: ctx.rootKey, body: {} })
  ).json().id;
  reader = (await call(ctx.app, "POST", "/v1/keys", { key: ctx.rootKey, body: { scopes: ["read"] } })).json();
});
afterAll(() => ctx?.close());

async function login(key: string, headers: Record<string, string> = {}) {
  const res = await call(ctx.app, "POST", "/v1/session", { body: { key }, headers });
  const setCookie = String(res.headers["set-cookie"] ?? "");
  const cookie = setCookie.split(";")[0]!;
  return { res, setCookie, cookie, csrf: res.statusCode === 200 ? (res.json().csrfToken as string) : "" };
}

describe("browser sessions", () => {
  it("exchanges a key for an HttpOnly, SameSite cookie, Secure only over HTTPS", async () => {
    const { res, setCookie } = await login(ctx.rootKey);
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ tenant: "default", scopes: ["admin"], root: true });
    expect(Date.parse(res.json().expiresAt)).toBeGreaterThan(Date.now() + 3600_000);
    expect(setCookie).toMatch(/^flowline_session=s1\./);
    expect(setCookie).toMatch(/HttpOnly/);
    expect(setCookie).toMatch(/SameSite=Strict/);
    expect(setCookie).toMatch(/Path=\//);
    expect(setCookie).not.toMatch(/Secure/);
    const https = await login(ctx.rootKey, { "x-forwarded-proto": "https" });
    expect(https.setCookie).toMatch(/Secure/);
  });

  it("refuses an unknown key with 401 and sets no cookie", async () => {
    const { res } = await login("flk_not_a_key");
    expectProblem(res, 401);
    expect(res.headers["set-cookie"]).toBeUndefined();
    expectProblem(await call(ctx.app, "POST", "/v1/session", { body: {} }), 400);
  });

  it("authenticates reads with the cookie, and unsafe methods only with the session's CSRF token", async () => {
    const { res: loggedIn, cookie, csrf } = await login(ctx.rootKey);
    const read = await call(ctx.app, "GET", "/v1/workflows", { headers: { cookie } });
    expect(read.statusCode).toBe(200);
    const me = await call(ctx.app, "GET", "/v1/session", { headers: { cookie } });
    expect(me.json()).toEqual(loggedIn.json());
    // With a bearer key there is no session to describe.
    const bearer = await call(ctx.app, "GET", "/v1/session", { key: ctx.rootKey });
    expect(bearer.json()).toMatchObject({ root: true, csrfToken: null, expiresAt: null });

    const body = { steps: [{ id: "a", run: { type: "noop" } }] };
    const noToken = await call(ctx.app, "PUT", "/v1/workflows/csrf", { body, headers: { cookie } });
    expect(expectProblem(noToken, 403).detail).toMatch(/x-csrf-token/);
    const wrong = await call(ctx.app, "PUT", "/v1/workflows/csrf", {
      body,
      headers: { cookie, "x-csrf-token": `${csrf.slice(0, -2)}xx` },
    });
    expectProblem(wrong, 403);
    // Another session's token does not fit this one.
    const other = await login(reader.key);
    expectProblem(
      await call(ctx.app, "PUT", "/v1/workflows/csrf", {
        body,
        headers: { cookie, "x-csrf-token": other.csrf },
      }),
      403,
    );
    expect((await call(ctx.app, "GET", "/v1/workflows/csrf", { key: ctx.rootKey })).statusCode).toBe(404);

    const ok = await call(ctx.app, "PUT", "/v1/workflows/csrf", {
      body,
      headers: { cookie, "x-csrf-token": csrf },
    });
    expect(ok.statusCode).toBe(201);
  });

  it("keeps the key's scopes", async () => {
    const { cookie, csrf } = await login(reader.key);
    const put = await call(ctx.app, "PUT", "/v1/workflows/nope", {
      body: { steps: [{ id: "a", run: { type: "noop" } }] },
      headers: { cookie, "x-csrf-token": csrf },
    });
    expectProblem(put, 403);
  });

  it("refuses tampered and expired cookies, and dies with its key", async () => {
    const created = (
      await call(ctx.app, "POST", "/v1/keys", { key: ctx.rootKey, body: { scopes: ["read"] } })
    ).json();
    const { cookie } = await login(created.key);
    expect((await call(ctx.app, "GET", "/v1/runs", { headers: { cookie } })).statusCode).toBe(200);

    const tampered = cookie.replace(/\.(\d+)\./, (_m, exp) => `.${Number(exp) + 1000}.`);
    expectProblem(await call(ctx.app, "GET", "/v1/runs", { headers: { cookie: tampered } }), 401);
    const expired = `flowline_session=${signSession(SECRET, { keyId: created.id, expiresAt: Math.floor(Date.now() / 1000) - 1 })}`;
    expect(
      expectProblem(await call(ctx.app, "GET", "/v1/runs", { headers: { cookie: expired } }), 401).detail,
    ).toMatch(/expired/);

    expect((await call(ctx.app, "DELETE", `/v1/keys/${created.id}`, { key: ctx.rootKey })).statusCode).toBe(
      204,
    );
    expectProblem(await call(ctx.app, "GET", "/v1/runs", { headers: { cookie } }), 401);
  });

  it("logs out by clearing the cookie", async () => {
    const res = await call(ctx.app, "DELETE", "/v1/session");
    expect(res.statusCode).toBe(204);
    expect(String(res.headers["set-cookie"])).toMatch(
      /^flowline_session=;.*(Max-Age=0|Expires=Thu, 01 Jan 1970)/,
    );
  });
});

describe("stream tokens", () => {
  it("issues a token whose URL reads that run's events and logs and nothing else", async () => {
    const res = await call(ctx.app, "POST", `/v1/runs/${runId}/stream-token`, { key: reader.key });
    expect(res.statusCode).toBe(201);
    const { token, expiresAt, url } = res.json();
    expect(Date.parse(expiresAt) - Date.now()).toBeGreaterThan(3500_000);
    expect(url).toBe(`http://localhost:80/v1/runs/${runId}/events?token=${token}`);

    const events = await call(ctx.app, "GET", `/v1/runs/${runId}/events?token=${token}`);
    expect(events.statusCode).toBe(200);
    expect(events.json().items.length).toBeGreaterThan(0);
    expect((await call(ctx.app, "GET", `/v1/runs/${runId}/logs?token=${token}`)).statusCode).toBe(200);

    const foreign = await call(ctx.app, "GET", `/v1/runs/${otherRunId}/events?token=${token}`);
    expect(expectProblem(foreign, 403).detail).toMatch(/another run/);
    expectProblem(await call(ctx.app, "GET", `/v1/runs/${otherRunId}/logs?token=${token}`), 403);
    // Not a key: the token opens no other route.
    expectProblem(await call(ctx.app, "GET", `/v1/runs/${runId}?token=${token}`), 401);
    expectProblem(await call(ctx.app, "GET", `/v1/runs/${runId}/events?token=${token}x`), 401);
  });

  it("refuses expired tokens and tokens of revoked keys", async () => {
    const expired = signStreamToken(SECRET, {
      runId,
      keyId: reader.id,
      expiresAt: Math.floor(Date.now() / 1000) - 1,
    });
    expectProblem(await call(ctx.app, "GET", `/v1/runs/${runId}/events?token=${expired}`), 401);
    const created = (
      await call(ctx.app, "POST", "/v1/keys", { key: ctx.rootKey, body: { scopes: ["read"] } })
    ).json();
    const { token } = (
      await call(ctx.app, "POST", `/v1/runs/${runId}/stream-token`, { key: created.key })
    ).json();
    expect((await call(ctx.app, "GET", `/v1/runs/${runId}/events?token=${token}`)).statusCode).toBe(200);
    await call(ctx.app, "DELETE", `/v1/keys/${created.id}`, { key: ctx.rootKey });
    expectProblem(await call(ctx.app, "GET", `/v1/runs/${runId}/events?token=${token}`), 401);
  });

  it("answers 404 for a run of another tenant", async () => {
    const other = (
      await call(ctx.app, "POST", "/v1/keys", {
        key: ctx.rootKey,
        body: { tenant: "acme", scopes: ["read"] },
      })
    ).json();
    expectProblem(await call(ctx.app, "POST", `/v1/runs/${runId}/stream-token`, { key: other.key }), 404);
  });

  it("streams SSE to another origin with CORS headers", async () => {
    const address = await ctx.app.listen({ host: "127.0.0.1", port: 0 });
    const { token } = (
      await call(ctx.app, "POST", `/v1/runs/${runId}/stream-token`, { key: reader.key })
    ).json();
    const abort = new AbortController();
    const res = await fetch(`${address}/v1/runs/${runId}/events?token=${token}`, {
      headers: { accept: "text/event-stream", origin: ALLOWED },
      signal: abort.signal,
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/text\/event-stream/);
    expect(res.headers.get("access-control-allow-origin")).toBe(ALLOWED);
    abort.abort();
  });
});

describe("CORS", () => {
  it("answers preflights for allowed origins only", async () => {
    const preflight = (origin: string) =>
      ctx.app.inject({
        method: "OPTIONS",
        url: "/v1/workflows/x/runs",
        headers: {
          origin,
          "access-control-request-method": "POST",
          "access-control-request-headers": "authorization, content-type, idempotency-key",
        },
      });
    const ok = await preflight(ALLOWED);
    expect(ok.statusCode).toBe(204);
    expect(ok.headers["access-control-allow-origin"]).toBe(ALLOWED);
    expect(String(ok.headers["access-control-allow-methods"])).toMatch(/POST/);
    expect(String(ok.headers["access-control-allow-headers"])).toMatch(/authorization/);
    expect(ok.headers["access-control-allow-credentials"]).toBeUndefined();
    const refused = await preflight("http://evil.example.test");
    expect(refused.headers["access-control-allow-origin"]).toBeUndefined();
  });

  it("adds CORS headers to answers and refusals for allowed origins", async () => {
    const ok = await call(ctx.app, "GET", "/v1/runs", { key: ctx.rootKey, headers: { origin: ALLOWED } });
    expect(ok.headers["access-control-allow-origin"]).toBe(ALLOWED);
    expect(String(ok.headers["access-control-expose-headers"])).toMatch(/x-request-id/);
    const refused = await call(ctx.app, "GET", "/v1/runs", { headers: { origin: ALLOWED } });
    expectProblem(refused, 401);
    expect(refused.headers["access-control-allow-origin"]).toBe(ALLOWED);
    const other = await call(ctx.app, "GET", "/v1/runs", {
      key: ctx.rootKey,
      headers: { origin: "http://x.test" },
    });
    expect(other.headers["access-control-allow-origin"]).toBeUndefined();
  });
});

describe("dashboard files", () => {
  it("serves /ui/ and its pinned libraries without a key, and sends / there", async () => {
    const index = await call(ctx.app, "GET", "/ui/");
    expect(index.statusCode).toBe(200);
    expect(index.headers["content-type"]).toMatch(/text\/html/);
    expect(index.body).toContain('src="/ui/app.js"');
    for (const path of [
      "/ui/app.js",
      "/ui/run.js",
      "/ui/vendor/dagre/dagre.min.js",
      "/ui/vendor/croner/croner.umd.js",
    ]) {
      const res = await call(ctx.app, "GET", path);
      expect(res.statusCode, path).toBe(200);
      expect(res.headers["content-type"], path).toMatch(/javascript/);
    }
    const root = await call(ctx.app, "GET", "/");
    expect(root.statusCode).toBe(302);
    expect(root.headers.location).toBe("/ui/");
    expectProblem(await call(ctx.app, "GET", "/ui/nope.js"), 404);
  });
});

describe("OpenAPI", () => {
  it("documents sessions, stream tokens and their security schemes", async () => {
    const spec = (await call(ctx.app, "GET", "/openapi.json")).json();
    expect(Object.keys(spec.components.securitySchemes)).toEqual(["bearer", "session", "streamToken"]);
    expect(spec.paths["/v1/session"].post.responses["200"].content["application/json"].schema).toBeTruthy();
    expect(spec.paths["/v1/session"].post.security).toEqual([]);
    const tokenOp = spec.paths["/v1/runs/{id}/stream-token"].post;
    expect(tokenOp.responses["201"].content["application/json"].schema).toBeTruthy();
    expect(spec.paths["/v1/runs/{id}/events"].get.security).toContainEqual({ streamToken: [] });
  });
});

describe("logging in", () => {
  it("is rate limited per client address, unlike public reads", async () => {
    const limited = await createTestContext((c) => ({ ...c, rateLimit: { max: 3, windowSeconds: 60 } }));
    try {
      const statuses = [];
      for (let i = 0; i < 4; i++)
        statuses.push(
          (await call(limited.app, "POST", "/v1/session", { body: { key: `flk_guess_${i}` } })).statusCode,
        );
      expect(statuses).toEqual([401, 401, 401, 429]);
      for (let i = 0; i < 5; i++) expect((await call(limited.app, "GET", "/healthz")).statusCode).toBe(200);
    } finally {
      await limited.close();
    }
  });
});
