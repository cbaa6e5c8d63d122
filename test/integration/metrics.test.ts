import { once } from "node:events";
import { createServer, type Server } from "node:http";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import {
  engineSettings,
  metricsUrlOf,
  putWorkflow,
  spawnSupervisor,
  spawnWorker,
  startRun,
  stopProcess,
  waitForRun,
} from "../helpers/engine.ts";
import { call } from "../helpers/http.ts";
import type { Spawned } from "../helpers/processes.ts";
import { sample, scrape } from "../helpers/prometheus.ts";

let ctx: TestContext;
let worker: Spawned;
let supervisor: Spawned;
let receiver: Server;
let receiverBase: string;
let received = 0;

beforeAll(async () => {
  receiver = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      received++;
      res.writeHead(200).end("ok");
    });
  });
  receiver.listen(0, "127.0.0.1");
  await once(receiver, "listening");
  receiverBase = `http://127.0.0.1:${(receiver.address() as { port: number }).port}`;
  ctx = await createTestContext((base) => ({
    ...engineSettings(base),
    http: { allowedHosts: ["127.0.0.1"], allowPrivateNetworks: true },
    webhooks: { maxAttempts: 3, timeoutSeconds: 5, initialRetryDelayMs: 20 },
    supervisor: { leaseSeconds: 3, reconcileIntervalSeconds: 1, scheduleIntervalSeconds: 1 },
  }));
  worker = spawnWorker(ctx);
  supervisor = spawnSupervisor(ctx);
  await worker.waitFor(/worker started/);
  await supervisor.waitFor(/supervisor is now active/);
});

afterAll(async () => {
  await Promise.all([worker && stopProcess(worker), supervisor && stopProcess(supervisor)]);
  await ctx?.close();
  receiver?.closeAllConnections();
  receiver?.close();
});

describe("metrics on every process", () => {
  it("the API, a worker and the supervisor each serve /metrics whose counters move with runs", async () => {
    const workerUrl = await metricsUrlOf(worker);
    const supervisorUrl = await metricsUrlOf(supervisor);
    // GET /v1/queues lists where each worker serves its metrics.
    const queues = (await call(ctx.app, "GET", "/v1/queues", { key: ctx.rootKey })).json();
    const workers = queues.items.find((q: { name: string }) => q.name === "default").workers;
    expect(workers.map((w: { metricsUrl: string }) => w.metricsUrl)).toEqual([workerUrl]);
    const apiMetrics = async () => (await call(ctx.app, "GET", "/metrics")).body;
    const before = {
      api: await apiMetrics(),
      worker: await scrape(workerUrl),
      supervisor: await scrape(supervisorUrl),
    };

    await putWorkflow(ctx, "metered", {
      notify: [{ on: ["run.succeeded"], webhook: `${receiverBase}/hook` }],
      steps: [
        { id: "a", run: { type: "noop", output: { n: 1 } } },
        { id: "b", needs: ["a"], run: { type: "noop" } },
        { id: "c", needs: ["b"], run: { type: "noop" } },
      ],
    });
    const runs = [await startRun(ctx, "metered"), await startRun(ctx, "metered")];
    for (const run of runs) expect((await waitForRun(ctx, run.id)).status).toBe("succeeded");
    // The supervisor delivers the two run.succeeded webhooks.
    const deadline = Date.now() + 20_000;
    while (received < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(received).toBe(2);

    const scrapeAll = async () => ({
      api: await apiMetrics(),
      worker: await scrape(workerUrl),
      supervisor: await scrape(supervisorUrl),
    });
    let after = await scrapeAll();
    const moved = (side: keyof typeof after, name: string, labels: Record<string, string> = {}) =>
      sample(after[side], name, labels) - sample(before[side], name, labels);
    // A process counts what it did once its own call returns, which may be a moment after the
    // run (or the receiver) shows it: scrape until the last counters have caught up.
    await vi.waitFor(
      async () => {
        after = await scrapeAll();
        expect(moved("worker", "flowline_step_attempts_total")).toBe(6);
        expect(moved("supervisor", "flowline_webhook_deliveries_total", { outcome: "delivered" })).toBe(2);
      },
      { timeout: 10_000, interval: 100 },
    );

    // The API created the runs (and served its own requests).
    expect(moved("api", "flowline_runs_created_total", { kind: "workflow" })).toBe(2);
    expect(moved("api", "flowline_http_requests_total", { route: "/v1/workflows/:name/runs" })).toBe(2);
    expect(after.api).toMatch(/^flowline_sse_streams_open 0$/m);
    expect(after.api).toMatch(/^flowline_queue_backlog\{queue="default"\} 0$/m);

    // The worker ran every step and ended both runs.
    const attempt = { queue: "default", kind: "noop", outcome: "succeeded" };
    expect(moved("worker", "flowline_step_attempts_total", attempt)).toBe(6);
    expect(moved("worker", "flowline_step_duration_seconds_count", attempt)).toBe(6);
    expect(moved("worker", "flowline_steps_finished_total", { outcome: "succeeded" })).toBe(6);
    expect(moved("worker", "flowline_runs_finished_total", { outcome: "succeeded" })).toBe(2);
    // Each run's first step came through the queue (its children may continue in the worker).
    expect(
      moved("worker", "flowline_step_queue_wait_seconds_count", { queue: "default" }),
    ).toBeGreaterThanOrEqual(2);
    expect(
      moved("worker", "flowline_engine_batch_size_count", { operation: "finish" }),
    ).toBeGreaterThanOrEqual(1);
    expect(moved("worker", "flowline_engine_batch_size_sum", { operation: "finish" })).toBe(6);
    expect(
      moved("worker", "flowline_db_transaction_duration_seconds_count", { outcome: "commit" }),
    ).toBeGreaterThan(0);
    expect(sample(after.worker, "flowline_lease_losses_total")).toBe(0);

    // The supervisor is active, ran its duties and delivered the webhooks.
    expect(sample(after.supervisor, "flowline_supervisor_active")).toBe(1);
    expect(moved("supervisor", "flowline_webhook_deliveries_total", { outcome: "delivered" })).toBe(2);
    expect(
      moved("supervisor", "flowline_supervisor_duty_runs_total", { duty: "reconcile", outcome: "ok" }),
    ).toBeGreaterThan(0);
    // A failed attempt followed by a retry moves the retry counters.
    await putWorkflow(ctx, "retried", {
      steps: [
        {
          id: "f",
          retry: { maxAttempts: 2, backoff: "fixed", delaySeconds: 0.1 },
          run: { type: "handler", name: "test.flaky", input: { succeedOn: 2 } },
        },
      ],
    });
    expect((await waitForRun(ctx, (await startRun(ctx, "retried")).id)).status).toBe("succeeded");
    const retried = await vi.waitFor(
      async () => {
        const text = await scrape(workerUrl);
        expect(sample(text, "flowline_step_attempts_total", { kind: "handler", outcome: "succeeded" })).toBe(
          1,
        );
        return text;
      },
      { timeout: 10_000, interval: 100 },
    );
    const handler = (outcome: string) =>
      sample(retried, "flowline_step_attempts_total", { queue: "default", kind: "handler", outcome });
    expect([handler("retrying"), handler("succeeded")]).toEqual([1, 1]);
    expect(sample(retried, "flowline_step_retries_total", { cause: "failed", phase: "execute" })).toBe(1);

    // No run id, step id or tenant anywhere in a label.
    for (const text of Object.values(after))
      expect(text).not.toMatch(new RegExp(`${runs[0].id}|step_id=|tenant=`));
  });
});
