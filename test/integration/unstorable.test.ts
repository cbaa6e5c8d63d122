/**
 * Text Postgres cannot store (NUL, lone UTF-16 surrogates) coming out of a step: a command that
 * prints it in a log line or in its JSON output, an http endpoint that answers it. The attempt must
 * end — stored with the text replaced, or failed with a code that says why — never retry its
 * write forever while holding a worker slot (SPEC §8.5, §13).
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import {
  engineSettings,
  eventsOf,
  putWorkflow,
  spawnWorker,
  startRun,
  stopProcess,
  testCommands,
  waitForRun,
} from "../helpers/engine.ts";
import type { Spawned } from "../helpers/processes.ts";

let ctx: TestContext;
let worker: Spawned;
let target: Server;

const node = (code: string) => ({ argv: [process.execPath, "-e", code] });

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...engineSettings(c),
    commands: {
      ...testCommands,
      // A log line with a NUL byte and a lone surrogate, then a clean output.
      "nul-log": node(
        "process.stdout.write('before\\u0000after \\ud800 end\\n'); console.log(JSON.stringify({ ok: true }));",
      ),
      // An output whose string holds a NUL: valid JSON, not storable as jsonb.
      "nul-output": node("console.log(JSON.stringify({ text: 'a\\u0000b' }));"),
      "surrogate-output": node('console.log(\'{"text": "a\\\\ud800b"}\');'),
    },
  }));
  target = createServer((_req, res) => {
    res.setHeader("content-type", "application/json");
    res.end('{"text":"x\\u0000y"}');
  });
  await new Promise<void>((r) => target.listen(0, "127.0.0.1", r));
  worker = spawnWorker(ctx);
  await worker.waitFor(/worker started/);
});
afterAll(async () => {
  if (worker) await stopProcess(worker);
  await new Promise((r) => target?.close(r));
  await ctx?.close();
});

describe("text Postgres cannot store", () => {
  it("in a log line is kept with the character replaced, and the step succeeds", async () => {
    await putWorkflow(ctx, "nul-log", {
      steps: [{ id: "print", run: { type: "command", command: "nul-log" } }],
    });
    const run = await startRun(ctx, "nul-log");
    const done = await waitForRun(ctx, run.id, undefined, 30_000);
    expect(done.status).toBe("succeeded");
    const lines = (await eventsOf(ctx, run.id)).filter((e) => e.type === "step.log");
    expect(lines.map((e) => (e.data as { line: string }).line)).toContain("before\uFFFDafter \uFFFD end");
  });

  for (const command of ["nul-output", "surrogate-output"]) {
    it(`in a command's output (${command}) fails the attempt with output_invalid, not retried`, async () => {
      await putWorkflow(ctx, command, {
        steps: [
          { id: "emit", retry: { maxAttempts: 3, delaySeconds: 0 }, run: { type: "command", command } },
        ],
      });
      const run = await startRun(ctx, command);
      const done = await waitForRun(ctx, run.id, undefined, 30_000);
      expect(done.status).toBe("failed");
      expect(done.steps[0]).toMatchObject({ status: "failed", attempt: 1 });
      expect(done.steps[0].error).toMatchObject({ code: "output_invalid" });
      expect(done.steps[0].error.message).toMatch(/\$\.text/);
    });
  }

  it("in a handler's progress message and error is kept with the character replaced", async () => {
    await putWorkflow(ctx, "nul-error", {
      steps: [{ id: "h", run: { type: "handler", name: "test.failUnstorable" } }],
    });
    const run = await startRun(ctx, "nul-error");
    const done = await waitForRun(ctx, run.id, undefined, 30_000);
    expect(done.status).toBe("failed");
    expect(done.steps[0].error.message).toBe("bad\uFFFDbyte \uFFFD here");
  });

  it("in an http answer fails the attempt with output_invalid", async () => {
    const url = `http://127.0.0.1:${(target.address() as AddressInfo).port}/`;
    await putWorkflow(ctx, "nul-http", { steps: [{ id: "get", run: { type: "http", url } }] });
    const run = await startRun(ctx, "nul-http");
    const done = await waitForRun(ctx, run.id, undefined, 30_000);
    expect(done.status).toBe("failed");
    expect(done.steps[0].error).toMatchObject({ code: "output_invalid" });
  });
});
