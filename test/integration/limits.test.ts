/**
 * What one attempt may make the system hold, through real worker processes (SPEC §13): an output
 * over limits.outputBytes fails the step with `output_too_large` and is not retried; log lines
 * past limits.logLinesPerAttempt are dropped and summarised in one line.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import {
  engineSettings,
  putWorkflow,
  spawnWorker,
  startRun,
  stopProcess,
  waitForRun,
} from "../helpers/engine.ts";
import { call } from "../helpers/http.ts";
import type { Spawned } from "../helpers/processes.ts";

let ctx: TestContext;
let worker: Spawned;

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...engineSettings(c),
    limits: { outputBytes: 10_000, logLinesPerAttempt: 50, inlineOutputBytes: 200 },
  }));
  worker = spawnWorker(ctx);
  await worker.waitFor(/worker started/);
});
afterAll(async () => {
  if (worker) await stopProcess(worker);
  await ctx?.close();
});

describe("limits on an attempt", () => {
  it("fails a step whose output is too large with output_too_large, without retrying it", async () => {
    await putWorkflow(ctx, "blowup", {
      params: { p: "x".repeat(1000) },
      steps: [
        {
          id: "big",
          retry: { maxAttempts: 3, delaySeconds: 0 },
          run: { type: "noop", output: Array.from({ length: 20 }, () => "{{params.p}}") },
        },
      ],
    });
    const run = await startRun(ctx, "blowup");
    const done = await waitForRun(ctx, run.id);
    expect(done.status).toBe("failed");
    expect(done.steps[0]).toMatchObject({ status: "failed", attempt: 1, output: null });
    expect(done.steps[0].error).toMatchObject({ code: "output_too_large", limit: 10_000 });
    expect(done.steps[0].error.message).toMatch(/limits.outputBytes/);
  });

  it("keeps at most limits.logLinesPerAttempt lines and says how many were dropped", async () => {
    await putWorkflow(ctx, "chatty", {
      steps: [{ id: "spam", run: { type: "command", command: "spammer" } }],
    });
    const run = await startRun(ctx, "chatty");
    expect((await waitForRun(ctx, run.id)).status).toBe("succeeded");
    const logs = (
      await call(ctx.app, "GET", `/v1/runs/${run.id}/logs?limit=5000`, { key: ctx.rootKey })
    ).json().items;
    expect(logs).toHaveLength(51);
    expect(logs.at(-1).line).toMatch(/19950 more log lines dropped; at most 50 are kept per attempt/);
  });

  it("leaves large outputs out of run details, and serves one whole on its own", async () => {
    await putWorkflow(ctx, "sizes", {
      steps: [
        { id: "small", run: { type: "noop", output: { n: 1 } } },
        { id: "large", run: { type: "noop", output: { data: "d".repeat(500) } } },
      ],
    });
    const run = await startRun(ctx, "sizes");
    const done = await waitForRun(ctx, run.id);
    expect(done.steps.map((s: any) => [s.id, s.output, s.outputTruncated, s.outputBytes])).toEqual([
      ["small", { n: 1 }, false, 7],
      ["large", null, true, 511],
    ]);
    const whole = await call(ctx.app, "GET", `/v1/runs/${run.id}/steps/large/output`, { key: ctx.rootKey });
    expect(whole.json()).toEqual({ output: { data: "d".repeat(500) } });
    const missing = await call(ctx.app, "GET", `/v1/runs/${run.id}/steps/nope/output`, { key: ctx.rootKey });
    expect(missing.statusCode).toBe(404);
  });
});
