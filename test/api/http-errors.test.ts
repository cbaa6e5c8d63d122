/**
 * Every error the HTTP layer produces is problem+json (SPEC §13): malformed and over-long URLs,
 * unknown routes, wrong methods, media types, bodies too large, and requests too slow to arrive.
 * The socket timeouts do not cut event streams.
 */
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { call, expectProblem } from "../helpers/http.ts";
import { readSse } from "../helpers/sse.ts";

let ctx: TestContext;
let base: string;
beforeAll(async () => {
  ctx = await createTestContext(
    (c) => ({
      ...c,
      server: { bodyLimitBytes: 4096, requestTimeoutMs: 600, headersTimeoutMs: 400 },
    }),
    { sseHeartbeatMs: 100 },
  );
  base = await ctx.app.listen({ host: "127.0.0.1", port: 0 });
});
afterAll(() => ctx?.close());

/** Sends raw bytes and answers everything the server writes until it closes the connection. */
function rawExchange(text: string, options: { keepOpenMs?: number } = {}): Promise<string> {
  const { port } = new URL(base);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), "127.0.0.1");
    let received = "";
    socket.on("data", (chunk) => {
      received += chunk.toString("utf8");
    });
    socket.on("error", (error) => (received ? resolve(received) : reject(error)));
    socket.on("close", () => resolve(received));
    socket.write(text);
    if (options.keepOpenMs === undefined) return;
    setTimeout(() => socket.destroy(), options.keepOpenMs).unref();
  });
}

function parseRaw(response: string): { status: number; contentType: string; body: any } {
  const [head, body] = response.split("\r\n\r\n");
  const status = Number(head!.split(" ")[1]);
  const contentType = /content-type: ([^\r\n]+)/i.exec(head!)?.[1] ?? "";
  return { status, contentType, body: JSON.parse(body!) };
}

describe("errors of the HTTP layer", () => {
  it("answers malformed URLs, unknown routes, wrong methods and media types with problem+json", async () => {
    const badUrl = expectProblem(await call(ctx.app, "GET", "/v1/runs/%00%ff", { key: ctx.rootKey }), 400);
    expect(badUrl.code).toBe("validation_failed");

    const long = expectProblem(await call(ctx.app, "GET", `/v1/runs/${"a".repeat(300)}`), 414);
    expect(long.code).toBe("uri_too_long");

    expectProblem(await call(ctx.app, "GET", "/v1/nothing-here", { key: ctx.rootKey }), 404);

    const wrongMethod = await call(ctx.app, "DELETE", "/v1/runs", { key: ctx.rootKey });
    expect(expectProblem(wrongMethod, 405).code).toBe("method_not_allowed");
    expect(wrongMethod.headers.allow).toMatch(/GET/);
    const wrongOnParam = await call(ctx.app, "PATCH", "/v1/workflows/abc", { key: ctx.rootKey, body: {} });
    expect(wrongOnParam.headers.allow).toMatch(/PUT/);
    expectProblem(wrongOnParam, 405);

    expectProblem(
      await call(ctx.app, "PUT", "/v1/workflows/abc", {
        key: ctx.rootKey,
        raw: "x",
        contentType: "text/csv",
      }),
      415,
    );
    expectProblem(
      await call(ctx.app, "PUT", "/v1/workflows/abc", {
        key: ctx.rootKey,
        raw: JSON.stringify({ description: "x".repeat(5000) }),
      }),
      413,
    );
  });

  it("answers headers that never finish and bodies that never arrive with 408 problem+json", async () => {
    const headers = parseRaw(await rawExchange("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n"));
    expect(headers.status).toBe(408);
    expect(headers.contentType).toMatch(/^application\/problem\+json/);
    expect(headers.body.code).toBe("request_timeout");

    const body = parseRaw(
      await rawExchange(
        `PUT /v1/workflows/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ctx.rootKey}\r\n` +
          'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"steps":',
      ),
    );
    expect(body.status).toBe(408);
    expect(body.contentType).toMatch(/^application\/problem\+json/);
  });

  it("answers an over-long request line and oversized headers with problem+json", async () => {
    const huge = parseRaw(
      await rawExchange(`GET /v1/runs/${"a".repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`),
    );
    expect(huge.status).toBe(431);
    expect(huge.contentType).toMatch(/^application\/problem\+json/);
    const garbage = parseRaw(await rawExchange("NOT HTTP AT ALL\r\n\r\n"));
    expect(garbage.status).toBe(400);
    expect(garbage.contentType).toMatch(/^application\/problem\+json/);
  });

  it("keeps an event stream open far beyond the request timeout", async () => {
    expect(
      (
        await call(ctx.app, "PUT", "/v1/workflows/waits", {
          key: ctx.rootKey,
          body: { steps: [{ id: "a", run: { type: "noop" } }] },
        })
      ).statusCode,
    ).toBe(201);
    const run = (
      await call(ctx.app, "POST", "/v1/workflows/waits/runs", { key: ctx.rootKey, body: {} })
    ).json();
    const controller = new AbortController();
    let heartbeats = 0;
    const stream = readSse(`${base}/v1/runs/${run.id}/events`, {
      key: ctx.rootKey,
      signal: controller.signal,
      onFrame: (f) => {
        if (f.comment !== undefined) heartbeats++;
      },
    }).catch((error: Error) => error);
    // Three request timeouts: nothing runs the step, so the stream only carries heartbeats.
    await new Promise((r) => setTimeout(r, 1800));
    expect(heartbeats).toBeGreaterThan(5);
    controller.abort();
    expect(await stream).toBeInstanceOf(Error);
  });
});
