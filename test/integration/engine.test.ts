/**
 * The execution engine end to end: the API in this process, steps executed by real worker
 * processes, state in a real Postgres and Redis.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BullStepDispatcher } from "../../src/queue/step-queue.ts";
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
import { call, expectProblem } from "../helpers/http.ts";
import type { Spawned } from "../helpers/processes.ts";

let ctx: TestContext;
let worker: Spawned;

beforeAll(async () => {
  ctx = await createTestContext(engineSettings);
  worker = spawnWorker(ctx);
  await worker.waitFor(/worker started/);
});
afterAll(async () => {
  if (worker) await stopProcess(worker);
  await ctx?.close();
});

const handler = (name: string, input: unknown) => ({ type: "handler", name, input });

describe("execution engine", () => {
  it("runs a diamond with the middle steps in parallel and outputs flowing through templates", async () => {
    await putWorkflow(ctx, "diamond", {
      params: { tag: "x" },
      steps: [
        { id: "a", run: { type: "noop", output: { rows: 3, tag: "{{params.tag}}" } } },
        { id: "b", needs: ["a"], run: handler("test.sleepy", { ms: 800, v: "{{steps.a.output.rows}}" }) },
        { id: "c", needs: ["a"], run: handler("test.sleepy", { ms: 800, v: "{{steps.a.output.tag}}-c" }) },
        {
          id: "d",
          needs: ["b", "c"],
          run: {
            type: "command",
            command: "echo-args",
            args: ["{{steps.b.output.v}}", "{{steps.c.output.v}}", "{{params.tag}}"],
          },
        },
      ],
    });
    const run = await startRun(ctx, "diamond", { params: { tag: "y" } });
    expect(run).toMatchObject({
      status: "running",
      kind: "workflow",
      workflow: { name: "diamond", version: 1 },
    });
    const done = await waitForRun(ctx, run.id);
    expect(done.status).toBe("succeeded");
    const step = (id: string) => done.steps.find((s: { id: string }) => s.id === id);
    expect(step("a").output).toEqual({ rows: 3, tag: "y" });
    expect(step("b").output.v).toBe(3);
    expect(step("c").output.v).toBe("y-c");
    expect(step("d").output).toEqual({ args: ["3", "y-c", "y"] });
    // b and c overlapped in time.
    const [b, c] = [step("b").output, step("c").output];
    expect(b.started < c.ended && c.started < b.ended).toBe(true);

    const events = await eventsOf(ctx, run.id);
    const types = events.map((e) => e.type);
    expect(types[0]).toBe("run.queued");
    expect(types.at(-1)).toBe("run.succeeded");
    expect(types.filter((t) => t === "step.succeeded")).toHaveLength(4);
    // d was queued exactly once although b and c finished close together.
    expect(events.filter((e) => e.type === "step.queued" && e.stepId === "d")).toHaveLength(1);
    expect(events.some((e) => e.type === "step.log" && e.stepId === "b")).toBe(true);
    const ids = events.map((e) => e.id);
    expect(ids).toEqual([...ids].sort((x, y) => x - y));

    const logsB = (await call(ctx.app, "GET", `/v1/runs/${run.id}/logs?step=b`, { key: ctx.rootKey })).json();
    expect(logsB.items.map((l: { line: string }) => l.line)).toEqual(["sleeping 800 ms"]);
    const logsD = (await call(ctx.app, "GET", `/v1/runs/${run.id}/logs?step=d`, { key: ctx.rootKey })).json();
    expect(logsD.items).toEqual([
      expect.objectContaining({ stepId: "d", stream: "stdout", line: '{"args":["3","y-c","y"]}' }),
    ]);
    const all = (await call(ctx.app, "GET", `/v1/runs/${run.id}/logs`, { key: ctx.rootKey })).json();
    expect(all.items.map((l: { stepId: string }) => l.stepId).sort()).toEqual(["b", "c", "d"]);
    expect(
      (await call(ctx.app, "GET", `/v1/runs/${run.id}/logs?follow=maybe`, { key: ctx.rootKey })).statusCode,
    ).toBe(400);
  });

  it("retries with backoff until success, and fails the run when attempts run out", async () => {
    await putWorkflow(ctx, "flaky", {
      steps: [
        {
          id: "f",
          retry: { maxAttempts: 3, backoff: "exponential", delaySeconds: 0.2, maxDelaySeconds: 1 },
          run: handler("test.flaky", { succeedOn: 3 }),
        },
      ],
    });
    const ok = await waitForRun(ctx, (await startRun(ctx, "flaky")).id);
    expect(ok.status).toBe("succeeded");
    expect(ok.steps[0]).toMatchObject({ status: "succeeded", attempt: 3, output: { attempt: 3 } });
    const retrying = (await eventsOf(ctx, ok.id)).filter((e) => e.type === "step.retrying");
    expect(retrying.map((e) => e.data.delayMs)).toEqual([200, 400]);

    await putWorkflow(ctx, "hopeless", {
      steps: [
        { id: "x", retry: { maxAttempts: 2, delaySeconds: 0.1 }, run: handler("test.fail", {}) },
        { id: "after", needs: ["x"], run: { type: "noop" } },
      ],
    });
    const failed = await waitForRun(ctx, (await startRun(ctx, "hopeless")).id);
    expect(failed.status).toBe("failed");
    expect(failed.steps[0]).toMatchObject({
      status: "failed",
      attempt: 2,
      error: { message: "always fails" },
    });
    expect(failed.steps[1].status).toBe("cancelled");
    expect(failed.error).toMatchObject({ stepId: "x" });
  });

  it("aborts an attempt that exceeds its timeout", async () => {
    await putWorkflow(ctx, "slow", {
      steps: [{ id: "s", timeoutSeconds: 1, run: { type: "sleep", seconds: 30 } }],
    });
    const run = await waitForRun(ctx, (await startRun(ctx, "slow")).id);
    expect(run.status).toBe("failed");
    expect(run.steps[0].error).toMatchObject({ code: "timeout" });
  });

  it("with onFailure: continue, skips only the failed step's descendants", async () => {
    await putWorkflow(ctx, "partial", {
      steps: [
        { id: "bad", onFailure: "continue", run: handler("test.fail", {}) },
        { id: "child", needs: ["bad"], run: { type: "noop" } },
        { id: "grandchild", needs: ["child"], run: { type: "noop" } },
        { id: "good", run: handler("test.sleepy", { ms: 300 }) },
        { id: "good-child", needs: ["good"], run: { type: "noop" } },
      ],
    });
    const run = await waitForRun(ctx, (await startRun(ctx, "partial")).id);
    expect(run.status).toBe("failed");
    const statuses = Object.fromEntries(
      run.steps.map((s: { id: string; status: string }) => [s.id, s.status]),
    );
    expect(statuses).toEqual({
      bad: "failed",
      child: "skipped",
      grandchild: "skipped",
      good: "succeeded",
      "good-child": "succeeded",
    });
  });

  it("cancel stops a running command and its process is gone", async () => {
    await putWorkflow(ctx, "cancellable", {
      steps: [{ id: "long", run: { type: "command", command: "sleeper" } }],
    });
    const run = await startRun(ctx, "cancellable");
    const pidEvent = await (async () => {
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline) {
        const found = (await eventsOf(ctx, run.id)).find(
          (e) => e.type === "step.log" && e.data.line.includes("pid"),
        );
        if (found) return found;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error("the command never logged its pid");
    })();
    const pid = JSON.parse(pidEvent.data.line).pid as number;
    expect(() => process.kill(pid, 0)).not.toThrow();

    const cancelled = await call(ctx.app, "POST", `/v1/runs/${run.id}/cancel`, { key: ctx.rootKey });
    expect(cancelled.statusCode).toBe(200);
    expect(cancelled.json().status).toBe("cancelled");
    const again = await call(ctx.app, "POST", `/v1/runs/${run.id}/cancel`, { key: ctx.rootKey });
    expect(again.json().status).toBe("cancelled");
    const done = await waitForRun(ctx, run.id);
    expect(done.steps[0].status).toBe("cancelled");
    // The attempt's history is closed with it, not left `running`.
    const history = await ctx.db.sql<{ status: string; worker_id: string | null }[]>`
      select status, worker_id from step_attempts where run_id = ${run.id}`;
    expect(history).toEqual([
      { status: "cancelled", worker_id: done.steps[0].workerId ?? expect.any(String) },
    ]);
    const deadline = Date.now() + 15_000;
    let alive = true;
    while (alive && Date.now() < deadline) {
      try {
        process.kill(pid, 0);
        await new Promise((r) => setTimeout(r, 100));
      } catch {
        alive = false;
      }
    }
    expect(alive).toBe(false);
  });

  it("passes command arguments literally, never through a shell", async () => {
    const hostile = ["; rm -rf /", "$(touch /tmp/flowline-pwned)", "`id`", "a b", "&& echo hi"];
    await putWorkflow(ctx, "literal", {
      params: { evil: "| cat /etc/passwd" },
      steps: [
        { id: "e", run: { type: "command", command: "echo-args", args: [...hostile, "{{params.evil}}"] } },
      ],
    });
    const run = await waitForRun(ctx, (await startRun(ctx, "literal")).id);
    expect(run.steps[0].output).toEqual({ args: [...hostile, "| cat /etc/passwd"] });
  });

  it("refuses http steps to hosts outside the allowlist and to metadata addresses", async () => {
    await putWorkflow(ctx, "ssrf", {
      params: { host: "127.0.0.1" },
      steps: [{ id: "h", run: { type: "http", url: "http://{{params.host}}/latest/meta-data" } }],
    });
    for (const host of ["169.254.169.254", "[::ffff:a9fe:a9fe]", "evil.example.com", "0x7f.1.2"]) {
      const run = await waitForRun(ctx, (await startRun(ctx, "ssrf", { params: { host } })).id);
      expect(run.status, host).toBe("failed");
      expect(run.steps[0].error.code, host).toMatch(/ssrf_refused|invalid_url/);
      expect(run.steps[0].attempt).toBe(1);
    }
  });
});

describe("continue in the worker", () => {
  it("runs a chain's next step on the same worker without a queue round trip, visibly and fenced", async () => {
    await putWorkflow(ctx, "chained", {
      steps: [
        { id: "a", run: { type: "noop", output: { n: 1 } } },
        { id: "b", needs: ["a"], run: { type: "noop", output: { n: "{{steps.a.output.n}}" } } },
        { id: "c", needs: ["b"], run: { type: "noop" } },
      ],
    });
    const run = await startRun(ctx, "chained");
    const done = await waitForRun(ctx, run.id);
    expect(done.status).toBe("succeeded");
    expect(done.steps[1].output).toEqual({ n: 1 });
    expect(new Set(done.steps.map((s: { workerId: string }) => s.workerId)).size).toBe(1);
    // Every step went through queued, started and succeeded, with its attempt, as ever.
    const events = await eventsOf(ctx, run.id);
    for (const id of ["a", "b", "c"])
      expect(events.filter((e) => e.stepId === id).map((e) => e.type)).toEqual([
        "step.queued",
        "step.started",
        "step.succeeded",
      ]);
    // One queue job carried the whole chain.
    const jobs = await (ctx.app.flowline.engine.dispatcher as BullStepDispatcher)
      .queue("default")
      .getJobs(["completed", "active", "wait", "prioritized", "delayed"]);
    expect(jobs.filter((j) => j.data.runId === run.id)).toHaveLength(1);
  });
});

describe("submission", () => {
  it("collapses 50 concurrent submissions with one Idempotency-Key into one run; another body is 409", async () => {
    await putWorkflow(ctx, "idem", { steps: [{ id: "n", run: { type: "noop" } }] });
    const send = (body: unknown) =>
      call(ctx.app, "POST", "/v1/workflows/idem/runs", {
        key: ctx.rootKey,
        body,
        headers: { "idempotency-key": "same-key-1" },
      });
    const responses = await Promise.all(Array.from({ length: 50 }, () => send({ params: { a: 1 } })));
    const ids = new Set(responses.map((r) => r.json().id));
    expect(ids.size).toBe(1);
    expect(responses.filter((r) => r.statusCode === 202)).toHaveLength(1);
    expect(responses.filter((r) => r.statusCode === 200)).toHaveLength(49);
    const count = await ctx.db
      .sql`select count(*)::int as n from runs r join workflows w on w.id = r.workflow_id where w.name = 'idem'`;
    expect(count[0]!.n).toBe(1);
    const conflict = await send({ params: { a: 2 } });
    expect(expectProblem(conflict, 409).code).toBe("idempotency_conflict");
  });

  it("refuses client Idempotency-Keys in the namespace of schedule slots (400, nothing written)", async () => {
    await putWorkflow(ctx, "reserved", { steps: [{ id: "n", run: { type: "noop" } }] });
    const res = await call(ctx.app, "POST", "/v1/workflows/reserved/runs", {
      key: ctx.rootKey,
      body: {},
      headers: { "idempotency-key": "flowline:schedule:any-workflow:0:2030-01-01T00:00:00.000Z" },
    });
    const problem = expectProblem(res, 400);
    expect(problem.errors).toEqual([
      expect.objectContaining({
        location: "headers",
        path: "idempotency-key",
        message: expect.stringMatching(/reserved/),
      }),
    ]);
    const [row] = await ctx.db.sql<{ runs: number; keys: number }[]>`
      select (select count(*)::int from runs r join workflows w on w.id = r.workflow_id
              where w.name = 'reserved') as runs,
             (select count(*)::int from idempotency_keys where key like 'flowline:%') as keys`;
    expect(row).toEqual({ runs: 0, keys: 0 });
  });

  it("lists runs newest first with filters and cursor pagination, per tenant", async () => {
    await putWorkflow(ctx, "listed", { steps: [{ id: "n", run: { type: "noop" } }] });
    const started: string[] = [];
    for (let i = 0; i < 5; i++) started.push((await startRun(ctx, "listed")).id);
    for (const id of started) await waitForRun(ctx, id);
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const res = await call(
        ctx.app,
        "GET",
        `/v1/runs?workflow=listed&limit=2${cursor ? `&cursor=${cursor}` : ""}`,
        {
          key: ctx.rootKey,
        },
      );
      expect(res.statusCode).toBe(200);
      seen.push(...res.json().items.map((r: { id: string }) => r.id));
      cursor = res.json().nextCursor;
    } while (cursor);
    expect(seen).toEqual([...started].reverse());
    const succeeded = (
      await call(ctx.app, "GET", "/v1/runs?workflow=listed&status=succeeded&kind=workflow&limit=200", {
        key: ctx.rootKey,
      })
    ).json();
    expect(succeeded.items).toHaveLength(5);
    expect(
      (await call(ctx.app, "GET", "/v1/runs?workflow=listed&status=failed", { key: ctx.rootKey })).json()
        .items,
    ).toEqual([]);
    const other = (
      await call(ctx.app, "POST", "/v1/keys", {
        key: ctx.rootKey,
        body: { tenant: "elsewhere", scopes: ["read"] },
      })
    ).json().key;
    expect((await call(ctx.app, "GET", "/v1/runs", { key: other })).json().items).toEqual([]);
    expectProblem(await call(ctx.app, "GET", `/v1/runs/${started[0]}`, { key: other }), 404);
    expectProblem(await call(ctx.app, "GET", `/v1/runs/${started[0]}/events`, { key: other }), 404);
    expectProblem(await call(ctx.app, "GET", "/v1/runs?cursor=bogus", { key: ctx.rootKey }), 400);
  });

  it("keeps paging when retention deletes the run a cursor ends at", async () => {
    await putWorkflow(ctx, "pruned", { steps: [{ id: "n", run: { type: "noop" } }] });
    const started: string[] = [];
    for (let i = 0; i < 5; i++) started.push((await startRun(ctx, "pruned")).id);
    for (const id of started) await waitForRun(ctx, id);
    const first = (
      await call(ctx.app, "GET", "/v1/runs?workflow=pruned&limit=2", { key: ctx.rootKey })
    ).json();
    expect(first.items.map((r: { id: string }) => r.id)).toEqual([started[4], started[3]]);
    await ctx.db.sql`delete from runs where id = ${started[3]!}`;
    const next = (
      await call(ctx.app, "GET", `/v1/runs?workflow=pruned&limit=2&cursor=${first.nextCursor}`, {
        key: ctx.rootKey,
      })
    ).json();
    expect(next.items.map((r: { id: string }) => r.id)).toEqual([started[2], started[1]]);
  });

  it("answers a dry run with the plan and writes nothing; refuses bad input", async () => {
    await putWorkflow(ctx, "planned", {
      steps: [
        { id: "a", run: { type: "noop" } },
        { id: "b", needs: ["a"], tags: ["heavy"], run: { type: "noop" } },
      ],
    });
    const before = await ctx.db.sql`select count(*)::int as n from runs`;
    const plan = await call(ctx.app, "POST", "/v1/workflows/planned/runs", {
      key: ctx.rootKey,
      body: { dryRun: true },
    });
    expect(plan.statusCode).toBe(200);
    expect(plan.json()).toMatchObject({
      dryRun: true,
      workflow: { name: "planned", version: 1 },
      queues: ["default"],
    });
    expect(plan.json().steps.map((s: { stepId: string }) => s.stepId)).toEqual(["a", "b"]);
    expectProblem(
      await call(ctx.app, "POST", "/v1/workflows/nope/runs", { key: ctx.rootKey, body: {} }),
      404,
    );
    expectProblem(
      await call(ctx.app, "POST", "/v1/workflows/planned/runs", { key: ctx.rootKey, body: { priority: 11 } }),
      400,
    );
    expectProblem(
      await call(ctx.app, "POST", "/v1/workflows/planned/runs", { key: ctx.rootKey, body: { params: [] } }),
      400,
    );
    expectProblem(
      await call(ctx.app, "POST", "/v1/workflows/planned/runs", { key: ctx.rootKey, body: { prams: {} } }),
      400,
    );
    expectProblem(await call(ctx.app, "GET", "/v1/runs/not-a-uuid", { key: ctx.rootKey }), 400);
    expectProblem(
      await call(ctx.app, "GET", "/v1/runs/00000000-0000-4000-8000-000000000000", { key: ctx.rootKey }),
      404,
    );
    expectProblem(await call(ctx.app, "GET", "/v1/runs?status=bogus", { key: ctx.rootKey }), 400);
    expectProblem(
      await call(ctx.app, "POST", "/v1/runs/00000000-0000-4000-8000-000000000000/cancel", {
        key: ctx.rootKey,
      }),
      404,
    );
    const after = await ctx.db.sql`select count(*)::int as n from runs`;
    expect(after[0]!.n).toBe(before[0]!.n);
  });
});
