/**
 * Regression tests for holes in the attempt lifecycle (SPEC §8.2, §8.5):
 * - a job delivered again while its attempt runs under a valid lease (the queue lost its lock)
 *   must not take the live attempt over;
 * - a finished attempt's result is kept when Postgres is unreachable for a while as it reports;
 * - a batch of starts judges each job against what earlier ones in the batch changed;
 * - a command printing an endless line cannot exhaust the worker's memory.
 */
import { createServer, type Server, Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startAttempts } from "../../src/engine/attempts.ts";
import { submitRun } from "../../src/engine/runs.ts";
import { redisKeys } from "../../src/redis/keys.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import {
  configFileFor,
  engineSettings,
  eventsOf,
  putWorkflow,
  spawnWorker,
  startRun,
  stopProcess,
  testCommands,
  waitForRun,
} from "../helpers/engine.ts";
import { cleanEnv, type Spawned, spawnFlowline } from "../helpers/processes.ts";

let ctx: TestContext;
const processes: Spawned[] = [];

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...engineSettings(c),
    // `nowhere`: a queue no worker of this file serves, where the test plays the worker.
    queues: { default: {}, nowhere: {} },
    commands: {
      ...testCommands,
      // One 200 MB line with no newline, then a short one: readline would hold all of it.
      endless: {
        argv: [
          process.execPath,
          "-e",
          "const mb = 'x'.repeat(1 << 20); let n = 0; const w = () => { while (n < 200) { n++; if (!process.stdout.write(mb)) return process.stdout.once('drain', w); } process.stdout.write('\\n{\"done\":true}\\n'); }; w();",
        ],
      },
    },
  }));
});
afterAll(async () => {
  for (const p of processes) await stopProcess(p);
  await ctx?.close();
});

const stepRow = async (runId: string, stepId: string) =>
  (
    await ctx.db.sql<{ status: string; attempt: number; job_id: string }[]>`
    select status, attempt, job_id from step_runs where run_id = ${runId} and step_id = ${stepId} and phase = 'execute'`
  )[0]!;

describe("a job delivered again while its attempt is alive", () => {
  it("does not take over the attempt when the queue loses the job's lock (SPEC §8.5)", async () => {
    const worker = spawnWorker(ctx);
    processes.push(worker);
    await worker.waitFor(/worker started/);
    await putWorkflow(ctx, "healthy", {
      steps: [{ id: "long", run: { type: "handler", name: "test.sleepy", input: { ms: 7000 } } }],
    });
    const run = await startRun(ctx, "healthy");
    await waitForRun(ctx, run.id, (r) => r.steps[0].status === "running");
    const { job_id } = await stepRow(run.id, "long");
    // What a Redis failover can do: the running job's lock is gone. BullMQ's stalled-job check
    // then hands the job out again while the first delivery is still executing it.
    const lockKey = `${redisKeys(ctx.config.redis.prefix).queuePrefix()}:default:${job_id}:lock`;
    expect(await ctx.redis.del(lockKey)).toBe(1);
    await worker.waitFor(/lease_valid/, 15_000);

    const done = await waitForRun(ctx, run.id, undefined, 30_000);
    expect(done.status).toBe("succeeded");
    expect(done.steps[0].attempt).toBe(1);
    const types = (await eventsOf(ctx, run.id)).map((e) => e.type);
    expect(types.filter((t) => t === "step.started")).toHaveLength(1);
    expect(types).not.toContain("step.retrying");
    await stopProcess(worker);
  }, 60_000);
});

/** A TCP proxy in front of Postgres that can cut every connection and refuse new ones. */
async function postgresProxy(target: { host: string; port: number }) {
  const sockets = new Set<Socket>();
  let blocked = false;
  const server: Server = createServer((client) => {
    if (blocked) return client.destroy();
    const upstream = new Socket();
    upstream.connect(target.port, target.host);
    sockets.add(client).add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as { port: number }).port,
    block() {
      blocked = true;
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    unblock() {
      blocked = false;
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

describe("Postgres unreachable while an attempt reports its result", () => {
  it("keeps retrying the fenced completion, and the finished work counts (attempt 1)", async () => {
    const url = new URL(ctx.config.database.url!);
    const proxy = await postgresProxy({ host: url.hostname, port: Number(url.port || 5432) });
    url.port = String(proxy.port);
    const file = configFileFor(ctx, { database: { url: url.toString(), poolMax: 5 } });
    const worker = spawnFlowline(
      ["worker", "--queues", "default", "--concurrency", "2"],
      cleanEnv({ FLOWLINE_CONFIG: file }),
    );
    processes.push(worker);
    await worker.waitFor(/worker started/);
    await putWorkflow(ctx, "outage", {
      steps: [{ id: "work", run: { type: "handler", name: "test.sleepy", input: { ms: 1500 } } }],
    });
    const run = await startRun(ctx, "outage");
    await waitForRun(ctx, run.id, (r) => r.steps[0].status === "running");
    proxy.block();
    // The step finishes meanwhile; its result cannot be written for 10 s.
    await worker.waitFor(/recording the result failed; retrying/, 15_000);
    await new Promise((r) => setTimeout(r, 10_000));
    proxy.unblock();

    const done = await waitForRun(ctx, run.id, undefined, 30_000);
    expect(done.status).toBe("succeeded");
    expect(done.steps[0].attempt).toBe(1);
    expect(done.steps[0].output).toMatchObject({ pid: worker.child.pid });
    await stopProcess(worker);
    await proxy.close();
  }, 90_000);
});

describe("a batch of starts", () => {
  it("judges each job against what an earlier abandonment in the batch changed", async () => {
    await putWorkflow(ctx, "pair", {
      steps: [
        { id: "a", queue: "nowhere", run: { type: "noop" } },
        { id: "b", queue: "nowhere", run: { type: "noop" } },
      ],
    });
    const engine = ctx.app.flowline.engine;
    const { run } = await submitRun(engine, { tenantId: "default", workflow: "pair" });
    const worker = { id: "gone", leaseSeconds: 30 };
    const jobs = ["a", "b"].map((stepId) => ({ runId: run.id, stepId, attempt: 1 }));
    const first = await startAttempts(engine, run.id, jobs, worker);
    expect(first.map((r) => r.accepted)).toEqual([true, true]);
    // The worker running both vanished; both jobs are redelivered together, after their leases.
    await ctx.db
      .sql`update step_runs set lease_expires_at = now() - interval '1 second' where run_id = ${run.id}`;
    await startAttempts(engine, run.id, jobs, { id: "next", leaseSeconds: 30 });

    // The first abandonment (no attempts left) failed the run and cancelled b: b is not
    // abandoned a second time from a stale read.
    const done = await waitForRun(ctx, run.id);
    expect(done.status).toBe("failed");
    const events = await eventsOf(ctx, run.id);
    expect(events.filter((e) => e.type === "run.failed")).toHaveLength(1);
    expect(events.filter((e) => e.type === "step.failed")).toHaveLength(1);
    expect(done.steps.map((s: { status: string }) => s.status).sort()).toEqual(["cancelled", "failed"]);
    const [counts] = await ctx.db.sql<{ pending_steps: number }[]>`
      select pending_steps from runs where id = ${run.id}`;
    expect(counts!.pending_steps).toBeGreaterThanOrEqual(0);
  });
});

describe("a step that prints an endless line", () => {
  it("is cut to the line limit; the worker's memory stays bounded and the step succeeds", async () => {
    // A small heap: holding the 200 MB line, as line-by-line reading would, kills this worker.
    const worker = spawnFlowline(
      ["worker", "--queues", "default", "--concurrency", "2"],
      cleanEnv({ FLOWLINE_CONFIG: configFileFor(ctx), NODE_OPTIONS: "--max-old-space-size=96" }),
    );
    processes.push(worker);
    await worker.waitFor(/worker started/);
    await putWorkflow(ctx, "endless", {
      steps: [{ id: "print", run: { type: "command", command: "endless" } }],
    });
    const run = await startRun(ctx, "endless");
    const done = await waitForRun(ctx, run.id, undefined, 60_000);
    expect(done.status).toBe("succeeded");
    expect(done.steps[0]).toMatchObject({ attempt: 1, output: { done: true } });
    const logs = (await eventsOf(ctx, run.id)).filter((e) => e.type === "step.log");
    expect(logs[0].data.line).toMatch(/ … \[cut: \d+ more bytes \(limits.logLineBytes\)\]$/);
    expect(logs[0].data.line.length).toBeLessThan(9000);
    expect(worker.child.exitCode).toBeNull();
    await stopProcess(worker);
  }, 90_000);
});
