/**
 * The SSE contract of GET /v1/runs/{id}/events over a real socket: replay then live with no gap
 * and no duplicate, resumption, many clients, abrupt disconnects that leave nothing behind.
 */
import { once } from "node:events";
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cancelRun } from "../../src/engine/runs.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import {
  engineSettings,
  eventsOf,
  putWorkflow,
  spawnWorker,
  startRun,
  stopProcess,
  waitForRun,
} from "../helpers/engine.ts";
import { call } from "../helpers/http.ts";
import type { Spawned } from "../helpers/processes.ts";
import { eventFrames, readSse } from "../helpers/sse.ts";

let ctx: TestContext;
let worker: Spawned;
let base: string;

beforeAll(async () => {
  // The slow-client test needs every one of the spammer's 20,000 lines as events.
  ctx = await createTestContext(
    (c) => ({
      ...engineSettings(c),
      limits: { logLinesPerAttempt: 50_000 },
      // A queue that no worker of this file serves.
      queues: { default: {}, unserved: {} },
    }),
    {
      sseHeartbeatMs: 200,
    },
  );
  base = await ctx.app.listen({ host: "127.0.0.1", port: 0 });
  worker = spawnWorker(ctx);
  await worker.waitFor(/worker started/);
  const sleepy = (ms: number) => ({ type: "handler", name: "test.sleepy", input: { ms } });
  await putWorkflow(ctx, "chain", {
    steps: [
      { id: "one", run: sleepy(300) },
      { id: "two", needs: ["one"], run: sleepy(300) },
      { id: "three", needs: ["two"], run: sleepy(300) },
      { id: "four", needs: ["three"], run: { type: "command", command: "echo-args", args: ["done"] } },
    ],
  });
});
afterAll(async () => {
  if (worker) await stopProcess(worker);
  await ctx?.close();
});

const url = (runId: string) => `${base}/v1/runs/${runId}/events`;

describe("run events over SSE", () => {
  it("streams the whole run live, exactly once and in order, then `end`", async () => {
    const run = await startRun(ctx, "chain");
    const { frames, status, headers } = await readSse(url(run.id), { key: ctx.rootKey });
    expect(status).toBe(200);
    expect(headers.get("content-type")).toMatch(/^text\/event-stream/);
    expect(headers.get("x-accel-buffering")).toBe("no");
    expect(frames[0]!.retry).toMatch(/^\d+$/);
    expect(frames.some((f) => f.comment === "heartbeat")).toBe(true);
    expect(frames.at(-1)!.event).toBe("end");

    const streamed = eventFrames(frames);
    const stored = await eventsOf(ctx, run.id);
    expect(streamed.map((f) => Number(f.id))).toEqual(stored.map((e) => e.id));
    expect(streamed.map((f) => f.event)).toEqual(stored.map((e) => e.type));
    expect(streamed.at(-1)!.event).toBe("run.succeeded");
    const data = JSON.parse(streamed.find((f) => f.event === "step.started")!.data!);
    expect(data).toMatchObject({ runId: run.id, stepId: "one", attempt: 1 });
  });

  it("resumes after Last-Event-ID (or ?after=) with exactly the rest", async () => {
    const run = await startRun(ctx, "chain");
    await waitForRun(ctx, run.id);
    const stored = await eventsOf(ctx, run.id);
    const middle = stored[Math.floor(stored.length / 2)]!;
    const rest = stored.filter((e) => e.id > middle.id).map((e) => e.id);

    const resumed = await readSse(url(run.id), { key: ctx.rootKey, lastEventId: String(middle.id) });
    expect(eventFrames(resumed.frames).map((f) => Number(f.id))).toEqual(rest);
    expect(resumed.frames.at(-1)!.event).toBe("end");
    const viaQuery = await readSse(`${url(run.id)}?after=${middle.id}`, { key: ctx.rootKey });
    expect(eventFrames(viaQuery.frames).map((f) => Number(f.id))).toEqual(rest);
    // Resuming after the very end of a finished run ends at once.
    const atEnd = await readSse(url(run.id), { key: ctx.rootKey, lastEventId: String(stored.at(-1)!.id) });
    expect(eventFrames(atEnd.frames)).toEqual([]);
    expect(atEnd.frames.at(-1)!.event).toBe("end");
  });

  it("gives 200 concurrent clients of one run the full sequence", async () => {
    const run = await startRun(ctx, "chain");
    const clients = await Promise.all(
      Array.from({ length: 200 }, () => readSse(url(run.id), { key: ctx.rootKey })),
    );
    const stored = (await eventsOf(ctx, run.id)).map((e) => e.id);
    for (const client of clients) expect(eventFrames(client.frames).map((f) => Number(f.id))).toEqual(stored);
    expect(ctx.app.flowline.hub.streams.size).toBe(0);
  });

  it("releases every listener after 500 abrupt disconnects and stays responsive", async () => {
    const run = await startRun(ctx, "chain");
    const aborts = Array.from({ length: 500 }, () => new AbortController());
    await Promise.all(
      aborts.map(
        (controller) =>
          new Promise<void>((resolve) => {
            readSse(url(run.id), {
              key: ctx.rootKey,
              signal: controller.signal,
              onFrame: () => {
                controller.abort();
                resolve();
              },
            }).catch(() => resolve());
          }),
      ),
    );
    const deadline = Date.now() + 10_000;
    while (ctx.app.flowline.hub.streams.size > 0 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    expect(ctx.app.flowline.hub.streams.size).toBe(0);
    expect(ctx.app.flowline.hub.bus.stats().runListeners).toBe(0);
    expect((await call(ctx.app, "GET", "/healthz")).statusCode).toBe(200);
    await waitForRun(ctx, run.id);
  });

  it("follows logs as SSE: only step.log events, then end", async () => {
    const run = await startRun(ctx, "chain");
    const { frames } = await readSse(`${base}/v1/runs/${run.id}/logs?follow=true`, { key: ctx.rootKey });
    const logs = eventFrames(frames);
    expect(logs.map((f) => f.event)).toEqual(["step.log", "step.log", "step.log", "step.log"]);
    expect(JSON.parse(logs[0]!.data!)).toMatchObject({ stepId: "one", line: "sleeping 300 ms" });
    expect(frames.at(-1)!.event).toBe("end");
  });

  it("resumes a logs stream after Last-Event-ID with exactly the lines after it", async () => {
    const run = await startRun(ctx, "chain");
    await waitForRun(ctx, run.id);
    const logsUrl = `${base}/v1/runs/${run.id}/logs?follow=true`;
    const all = eventFrames((await readSse(logsUrl, { key: ctx.rootKey })).frames).map((f) => Number(f.id));
    expect(all).toHaveLength(4);
    const resumed = await readSse(logsUrl, { key: ctx.rootKey, lastEventId: String(all[1]) });
    expect(eventFrames(resumed.frames).map((f) => Number(f.id))).toEqual(all.slice(2));
    expect(resumed.frames.at(-1)!.event).toBe("end");
  });

  it("ends a stream whose run's last notification was lost", async () => {
    // No worker serves this queue: nothing but the cancel below writes events for the run.
    await putWorkflow(ctx, "parked", { steps: [{ id: "p", queue: "unserved", run: { type: "noop" } }] });
    const run = await startRun(ctx, "parked");
    const [row] = await ctx.db.sql<{ tenant_id: string }[]>`select tenant_id from runs where id = ${run.id}`;
    const silent = { ...ctx.app.flowline.engine, notifier: { notify: async () => {} } };
    const { frames } = await readSse(url(run.id), {
      key: ctx.rootKey,
      onFrame: (f) => {
        if (f.event === "step.queued") void cancelRun(silent, row!.tenant_id, run.id);
      },
    });
    expect(eventFrames(frames).at(-1)!.event).toBe("run.cancelled");
    expect(frames.at(-1)!.event).toBe("end");
  });

  it("goes on through a rollback that begins as a finished run's stream connects", async () => {
    await putWorkflow(ctx, "undoable", {
      steps: [
        {
          id: "a",
          run: { type: "noop" },
          compensate: { type: "handler", name: "test.sleepy", input: { ms: 100 } },
        },
      ],
    });
    const run = await startRun(ctx, "undoable");
    expect((await waitForRun(ctx, run.id)).status).toBe("succeeded");
    // The stream sees the run succeeded; the rollback commits before its first page is read.
    const hub = ctx.app.flowline.hub;
    const readPage = hub.readPage;
    hub.readPage = async (runId, afterId, limit) => {
      hub.readPage = readPage;
      const started = await call(ctx.app, "POST", `/v1/runs/${run.id}/rollback`, { key: ctx.rootKey });
      expect(started.statusCode).toBe(202);
      return readPage(runId, afterId, limit);
    };
    const { frames } = await readSse(url(run.id), { key: ctx.rootKey });
    const types = eventFrames(frames).map((f) => f.event!);
    expect(types.filter((t) => t.startsWith("run.")).slice(-3)).toEqual([
      "run.succeeded",
      "run.rolling_back",
      "run.rolled_back",
    ]);
    expect(frames.at(-1)!.event).toBe("end");
  });

  it("bounds what a client that stops reading costs the server", async () => {
    await putWorkflow(ctx, "chatty", {
      steps: [{ id: "spam", run: { type: "command", command: "spammer" } }],
    });
    const run = await startRun(ctx, "chatty");
    // A client that sends its request and then never reads.
    const { port } = new URL(base);
    const socket = connect(Number(port), "127.0.0.1");
    await once(socket, "connect");
    socket.write(
      `GET /v1/runs/${run.id}/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer ${ctx.rootKey}\r\n\r\n`,
    );
    socket.pause();
    await waitForRun(ctx, run.id, undefined, 60_000);
    const total = (
      await ctx.db
        .sql`select coalesce(sum(length(data::text)), 0)::int as n from events where run_id = ${run.id}`
    )[0]!.n;
    await new Promise((r) => setTimeout(r, 500));
    const buffered = [...ctx.app.flowline.hub.streams.values()].map((b) => b());
    expect(buffered).toHaveLength(1);
    // Over 4 MB of events, of which at most about one page waits in the server's buffer.
    expect(total).toBeGreaterThan(4_000_000);
    expect(buffered[0]!).toBeLessThan(1_000_000);
    socket.destroy();
    const deadline = Date.now() + 10_000;
    while (ctx.app.flowline.hub.streams.size > 0 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    expect(ctx.app.flowline.hub.streams.size).toBe(0);
  });

  it("answers 404 problem+json (not a stream) for unknown runs, and JSON pages without the SSE header", async () => {
    const res = await fetch(url("00000000-0000-4000-8000-000000000000"), {
      headers: { accept: "text/event-stream", authorization: `Bearer ${ctx.rootKey}` },
    });
    expect(res.status).toBe(404);
    expect(res.headers.get("content-type")).toMatch(/problem\+json/);
    const bad = await fetch(url("00000000-0000-4000-8000-000000000000"), {
      headers: {
        accept: "text/event-stream",
        authorization: `Bearer ${ctx.rootKey}`,
        "last-event-id": "12; event: forged",
      },
    });
    expect(bad.status).toBe(400);
  });
});
