/**
 * Materializations, subgraphs, retries and backfills end to end (real Postgres, Redis, worker and
 * supervisor processes): only what is missing or stale runs; one run at a time materializes an
 * asset, and a run that lost its lock cannot record late; reused steps pass their outputs on; a
 * retry re-runs only what failed and what follows; a backfill respects the concurrency limit.
 */
import { writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSupervisor } from "../../src/jobs/supervisor/index.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import {
  engineSettings,
  eventsOf,
  putWorkflow,
  spawnSupervisor,
  spawnWorker,
  startRun,
  stopProcess,
  waitForRun,
} from "../helpers/engine.ts";
import { call, expectProblem } from "../helpers/http.ts";
import type { Spawned } from "../helpers/processes.ts";
import { loseAssetLock } from "../helpers/stores.ts";

let ctx: TestContext;
const processes: Spawned[] = [];
let supervisor: Awaited<ReturnType<typeof startSupervisor>> | undefined;

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...engineSettings(c),
    assets: { lockTtlSeconds: 3 },
    supervisor: { scheduleIntervalSeconds: 1, reconcileIntervalSeconds: 1 },
  }));
  processes.push(spawnWorker(ctx, ["--concurrency", "6"]));
});
afterAll(async () => {
  await supervisor?.close();
  for (const p of processes) {
    p.child.kill("SIGCONT");
    await stopProcess(p);
  }
  await ctx?.close();
});

const post = (url: string, body: unknown, key = ctx.rootKey) => call(ctx.app, "POST", url, { key, body });

async function materialize(body: unknown, query = "") {
  const res = await post(`/v1/materializations${query}`, body);
  if (res.statusCode !== 200 && res.statusCode !== 202) throw new Error(`${res.statusCode} ${res.body}`);
  return res.json();
}

async function finished(runs: Array<{ id: string }>) {
  return Promise.all(runs.map((r) => waitForRun(ctx, r.id, undefined, 60_000)));
}

const ran = (run: any) =>
  run.steps.filter((s: any) => s.status === "succeeded" && s.attempt > 0).map((s: any) => s.id);

async function countRows(table: "runs" | "materializations") {
  const [row] = await ctx.db.sql<{ n: string }[]>`select count(*) as n from ${ctx.db.sql(table)}`;
  return Number(row!.n);
}

describe("materializations", () => {
  beforeAll(async () => {
    await putWorkflow(ctx, "abc", {
      assets: { asset_a: {}, asset_b: {}, asset_c: { maxAgeSeconds: 2 } },
      steps: [
        { id: "a", provides: ["asset_a"], run: { type: "noop", output: { rows: 1 } } },
        {
          id: "b",
          needs: ["a"],
          provides: ["asset_b"],
          run: { type: "noop", output: { rows: "{{steps.a.output.rows}}" } },
        },
        {
          id: "c",
          needs: ["b"],
          provides: ["asset_c"],
          run: { type: "noop", output: { fromB: "{{steps.b.output.rows}}" } },
        },
      ],
    });
  });

  it("runs everything missing, then nothing; force runs all; a stale asset reruns only its part", async () => {
    const first = await materialize({ assets: ["asset_c"] });
    expect(first.runs).toHaveLength(1);
    expect(first.plans[0].steps.map((s: any) => [s.stepId, s.action, s.reason])).toEqual([
      ["a", "run", "missing"],
      ["b", "run", "missing"],
      ["c", "run", "missing"],
    ]);
    const [done] = await finished(first.runs);
    expect(done.status).toBe("succeeded");
    expect(done.kind).toBe("materialization");
    const events = await eventsOf(ctx, done.id);
    expect(events.filter((e) => e.type === "asset.materialized").map((e) => e.data.asset)).toEqual([
      "asset_a",
      "asset_b",
      "asset_c",
    ]);

    const again = await post("/v1/materializations", { assets: ["asset_c"] });
    expect(again.statusCode).toBe(200);
    expect(again.json().runs).toEqual([]);
    expect(again.json().plans[0].toRun).toBe(0);

    const forced = await materialize({ assets: ["asset_c"], force: true });
    expect(forced.plans[0].steps.map((s: any) => s.reason)).toEqual(["forced", "forced", "forced"]);
    const [forcedDone] = await finished(forced.runs);
    expect(ran(forcedDone)).toEqual(["a", "b", "c"]);

    // asset_c goes stale after 2 s; a and b never do.
    await new Promise((r) => setTimeout(r, 2500));
    const dry = await materialize({ assets: ["asset_c"], dryRun: true });
    expect(dry.runs).toEqual([]);
    expect(dry.plans[0].steps.map((s: any) => [s.stepId, s.action, s.reason])).toEqual([
      ["a", "skip", "fresh"],
      ["b", "skip", "fresh"],
      ["c", "run", "stale"],
    ]);
    const before = await countRows("runs");
    const stale = await materialize({ assets: ["asset_c"] });
    expect(await countRows("runs")).toBe(before + 1);
    const [staleDone] = await finished(stale.runs);
    expect(staleDone.status).toBe("succeeded");
    expect(ran(staleDone)).toEqual(["c"]);
    // c read b's output from b's last materialization.
    expect(staleDone.steps.find((s: any) => s.id === "c").output).toEqual({ fromB: 1 });
  });

  it("two materializations of one asset never overlap; ifBusy=reject gets 409", async () => {
    await putWorkflow(ctx, "slow-asset", {
      steps: [{ id: "make", provides: ["slow_asset"], run: { type: "sleep", seconds: 1 } }],
    });
    const [one, two] = await Promise.all([
      materialize({ assets: ["slow_asset"], force: true }),
      materialize({ assets: ["slow_asset"], force: true }),
    ]);
    const statuses = [one.runs[0].status, two.runs[0].status].sort();
    expect(statuses).toEqual(["queued", "running"]);
    const busy = expectProblem(
      await post("/v1/materializations?ifBusy=reject", { assets: ["slow_asset"], force: true }),
      409,
    );
    expect(busy.detail).toMatch(/busy/);
    const [a, b] = await finished([one.runs[0], two.runs[0]]);
    expect([a.status, b.status]).toEqual(["succeeded", "succeeded"]);
    const [first, second] = [a, b].sort((x, y) => Date.parse(x.startedAt) - Date.parse(y.startedAt));
    expect(Date.parse(second.steps[0].startedAt)).toBeGreaterThanOrEqual(
      Date.parse(first.steps[0].finishedAt),
    );
    const tokens = await ctx.db.sql<{ fencing_token: string }[]>`
      select fencing_token from materializations where asset_key = 'slow_asset' order by id`;
    expect(tokens.map((t) => Number(t.fencing_token))).toEqual([1, 2]);
  });

  it("a frozen lock renewer does not hand the asset to another run while its holder runs", async () => {
    await putWorkflow(ctx, "frozen-asset", {
      steps: [
        {
          id: "make",
          provides: ["contested"],
          run: { type: "handler", name: "test.sleepy", input: { ms: 5000, v: "first" } },
        },
      ],
    });
    // The supervisor renews active runs' asset locks (TTL 3 s here).
    const renewer = spawnSupervisor(ctx, { assets: { lockTtlSeconds: 3 } });
    processes.push(renewer);
    await renewer.waitFor(/now active/);
    const first = (await materialize({ assets: ["contested"] })).runs[0];
    await waitForRun(ctx, first.id, (r) => r.steps[0].status === "running");
    renewer.child.kill("SIGSTOP");
    // Past the lease the lock store has forgotten the lock, but Postgres records that the first
    // run holds it: another request waits (SPEC §8.6) instead of materializing at the same time.
    await new Promise((r) => setTimeout(r, 3500));
    await putWorkflow(ctx, "frozen-asset", {
      steps: [{ id: "make", provides: ["contested"], run: { type: "noop", output: { v: "second" } } }],
    });
    const second = (await materialize({ assets: ["contested"], force: true })).runs[0];
    expect(second.status).toBe("queued");
    renewer.child.kill("SIGCONT");
    const [firstDone, secondDone] = await finished([first, second]);
    expect([firstDone.status, secondDone.status]).toEqual(["succeeded", "succeeded"]);
    expect(Date.parse(secondDone.steps[0].startedAt)).toBeGreaterThanOrEqual(
      Date.parse(firstDone.steps[0].finishedAt),
    );
    const rows = await ctx.db.sql<{ run_id: string; fencing_token: string }[]>`
      select run_id, fencing_token from materializations where asset_key = 'contested' order by id`;
    expect(rows.map((r) => r.run_id)).toEqual([first.id, second.id]);
    expect(Number(rows[1]!.fencing_token)).toBeGreaterThan(Number(rows[0]!.fencing_token));
    await stopProcess(renewer);
  });
});

describe("an asset lock the lock store lost", () => {
  it("is granted to no other run while its holder runs; both record, in turn", async () => {
    await putWorkflow(ctx, "race-asset", {
      steps: [
        {
          id: "make",
          provides: ["raced"],
          run: { type: "handler", name: "test.sleepy", input: { ms: "{{params.ms}}" } },
        },
      ],
    });
    const first = (await materialize({ assets: ["raced"], params: { ms: 1500 } })).runs[0];
    await waitForRun(ctx, first.id, (r) => r.steps[0].status === "running");
    // The lock store loses the lock (a lease running out, a failover): the key is gone now.
    await loseAssetLock(ctx, "default", "raced");
    const second = (await materialize({ assets: ["raced"], force: true, params: { ms: 100 } })).runs[0];
    expect(second.status).toBe("queued");
    const firstDone = await waitForRun(ctx, first.id);
    expect(firstDone.status).toBe("succeeded");
    const secondDone = await waitForRun(ctx, second.id);
    expect(secondDone.status).toBe("succeeded");
    const rows = await ctx.db.sql<{ run_id: string }[]>`
      select run_id from materializations where asset_key = 'raced' order by id`;
    expect(rows.map((r) => r.run_id)).toEqual([first.id, second.id]);
  });
});

describe("subgraphs and retries", () => {
  const gate = join(tmpdir(), `flowline-gate-${Date.now()}-${Math.random().toString(36).slice(2)}`);

  beforeAll(async () => {
    supervisor = await startSupervisor({ config: ctx.config, log: pino({ level: "silent" }) });
    await putWorkflow(ctx, "chain", {
      params: { seed: 1 },
      steps: [
        { id: "extract", run: { type: "noop", output: { n: "{{params.seed}}" } } },
        {
          id: "transform",
          needs: ["extract"],
          run: { type: "noop", output: { n: "{{steps.extract.output.n}}" } },
        },
        {
          id: "load",
          needs: ["transform"],
          run: { type: "noop", output: { n: "{{steps.transform.output.n}}" } },
        },
        { id: "side", run: { type: "noop" } },
      ],
    });
  });

  it("runs a selection with its upstream or downstream closure", async () => {
    const up = (
      await post("/v1/subgraphs", { workflow: "chain", steps: ["transform"], upstream: true })
    ).json();
    const upDone = await waitForRun(ctx, up.run.id);
    expect(upDone.kind).toBe("subgraph");
    expect(upDone.steps.map((s: any) => [s.id, s.status])).toEqual([
      ["extract", "succeeded"],
      ["transform", "succeeded"],
      ["load", "skipped"],
      ["side", "skipped"],
    ]);
    expect(upDone.status).toBe("succeeded");
    const downRes = await post("/v1/subgraphs", {
      workflow: "chain",
      steps: ["transform"],
      upstream: true,
      downstream: true,
      dryRun: true,
    });
    expect(downRes.statusCode, downRes.body).toBe(200);
    const down = downRes.json();
    expect(down.run).toBeNull();
    expect(down.plan.steps.map((s: any) => s.reason)).toEqual([
      "upstream-of-selection",
      "selected",
      "downstream-of-selection",
      "not-selected",
    ]);
  });

  it("without a parent, runs a selection that needs its left-out ancestors only for order", async () => {
    await putWorkflow(ctx, "ordered", {
      steps: [
        { id: "prepare", run: { type: "noop", output: { ok: true } } },
        { id: "middle", needs: ["prepare"], run: { type: "noop", output: { n: "{{params.n}}" } } },
        { id: "after", needs: ["middle"], run: { type: "noop" } },
        { id: "reader", needs: ["middle"], run: { type: "noop", output: "{{steps.prepare.output.ok}}" } },
      ],
      params: { n: 3 },
    });
    const res = await post("/v1/subgraphs", { workflow: "ordered", steps: ["middle", "after"] });
    expect(res.statusCode, res.body).toBe(202);
    const done = await waitForRun(ctx, res.json().run.id);
    expect(done.status).toBe("succeeded");
    expect(done.steps.map((s: any) => [s.id, s.status])).toEqual([
      ["prepare", "skipped"],
      ["middle", "succeeded"],
      ["after", "succeeded"],
      ["reader", "skipped"],
    ]);
    expect(done.steps[1].output).toEqual({ n: 3 });
    // A step that reads an output nothing in the plan provides is refused, naming it and the template.
    const refused = await post("/v1/subgraphs", { workflow: "ordered", steps: ["reader"] });
    const problem = expectProblem(refused, 400);
    expect(problem.detail).toMatch(
      /step "reader" reads \{\{steps.prepare.output.ok\}\} \(at steps\[3\].run.output\), but "prepare" neither runs/,
    );
  });

  it("with parentRunId, reuses the parent's outputs, which reach downstream templates", async () => {
    const parent = await startRun(ctx, "chain", { params: { seed: 7 } });
    expect((await waitForRun(ctx, parent.id)).status).toBe("succeeded");
    const res = await post("/v1/subgraphs", { workflow: "chain", steps: ["load"], parentRunId: parent.id });
    expect(res.statusCode).toBe(202);
    const done = await waitForRun(ctx, res.json().run.id);
    expect(done.parentRunId).toBe(parent.id);
    expect(done.steps.map((s: any) => [s.id, s.status])).toEqual([
      ["extract", "reused"],
      ["transform", "reused"],
      ["load", "succeeded"],
      ["side", "reused"],
    ]);
    expect(done.steps.find((s: any) => s.id === "load").output).toEqual({ n: 7 });
    const events = await eventsOf(ctx, done.id);
    expect(events.filter((e) => e.type === "step.reused").map((e) => e.stepId)).toEqual([
      "extract",
      "transform",
      "side",
    ]);
    expect(events.filter((e) => e.type === "step.started").map((e) => e.stepId)).toEqual(["load"]);
  });

  it("retry of a failed run re-executes only what failed and what follows", async () => {
    await putWorkflow(ctx, "fragile", {
      steps: [
        { id: "first", run: { type: "noop", output: { ok: true } } },
        { id: "other", run: { type: "noop" } },
        {
          id: "flaky",
          // Both before it: "other" has succeeded when "flaky" fails, whatever runs first.
          needs: ["first", "other"],
          retry: { maxAttempts: 1 },
          run: {
            type: "handler",
            name: "test.failUnlessFile",
            input: { path: gate, v: "{{steps.first.output.ok}}" },
          },
        },
        { id: "last", needs: ["flaky"], run: { type: "noop" } },
      ],
    });
    const failed = await waitForRun(ctx, (await startRun(ctx, "fragile")).id);
    expect(failed.status).toBe("failed");
    expectProblem(await post(`/v1/runs/${(await startRun(ctx, "chain")).id}/retry`, {}), 409); // still running or done
    writeFileSync(gate, "fixed");
    const res = await post(`/v1/runs/${failed.id}/retry`, {});
    expect(res.statusCode).toBe(202);
    const retried = await waitForRun(ctx, res.json().run.id);
    expect(retried.status).toBe("succeeded");
    expect(retried.trigger).toBe("retry");
    expect(retried.steps.map((s: any) => [s.id, s.status])).toEqual([
      ["first", "reused"],
      ["other", "reused"],
      ["flaky", "succeeded"],
      ["last", "succeeded"],
    ]);
    expect(retried.steps.find((s: any) => s.id === "flaky").output).toEqual({ v: true });
    // A succeeded run has nothing to retry.
    expectProblem(await post(`/v1/runs/${retried.id}/retry`, {}), 409);
  });
});

describe("auto-materialization", () => {
  it("the supervisor refreshes an asset whose policy asks for it whenever it is missing or stale", async () => {
    await putWorkflow(ctx, "auto", {
      assets: { auto_asset: { maxAgeSeconds: 1, autoMaterialize: true }, manual_asset: { maxAgeSeconds: 1 } },
      steps: [
        { id: "auto", provides: ["auto_asset"], run: { type: "noop", output: { at: "now" } } },
        { id: "manual", provides: ["manual_asset"], run: { type: "noop" } },
      ],
    });
    const runsOf = async () =>
      ctx.db.sql<{ id: string; status: string }[]>`
        select r.id, r.status from runs r join workflows w on w.id = r.workflow_id
        where w.name = 'auto' and r.trigger = 'auto-materialize' order by r.created_at`;
    const deadline = Date.now() + 30_000;
    while ((await runsOf()).filter((r) => r.status === "succeeded").length < 2) {
      if (Date.now() > deadline) throw new Error("auto-materialization did not run twice");
      await new Promise((r) => setTimeout(r, 200));
    }
    const materialized = await ctx.db.sql<{ asset_key: string }[]>`
      select distinct asset_key from materializations m join runs r on r.id = m.run_id
      where r.trigger = 'auto-materialize' and asset_key in ('auto_asset', 'manual_asset')`;
    expect(materialized.map((m) => m.asset_key)).toEqual(["auto_asset"]);
    // Never two at once: each refresh started after the previous one ended.
    const runs = await runsOf();
    expect(runs.filter((r) => r.status !== "succeeded").length).toBeLessThanOrEqual(1);
    // Archived, the workflow stops refreshing (later tests count runs); a refresh already started ends.
    expect((await call(ctx.app, "DELETE", "/v1/workflows/auto", { key: ctx.rootKey })).statusCode).toBe(204);
    const ending = Date.now() + 30_000;
    while ((await runsOf()).some((r) => !["succeeded", "failed", "cancelled"].includes(r.status))) {
      if (Date.now() > ending) throw new Error("the last auto-materialization did not end");
      await new Promise((r) => setTimeout(r, 100));
    }
  });
});

describe("backfills", () => {
  it("5 partitions with concurrency limit 2 never have more than 2 active runs", async () => {
    await putWorkflow(ctx, "daily", {
      concurrency: { limit: 2 },
      steps: [
        {
          id: "day",
          provides: ["daily_table"],
          run: { type: "handler", name: "test.sleepy", input: { ms: 600, v: "{{params.partition}}" } },
        },
      ],
    });
    const res = await materialize({
      assets: ["daily_table"],
      partitions: { from: "2026-01-01", to: "2026-01-05", step: "day" },
    });
    expect(res.backfillId).toBeTruthy();
    expect(res.runs.map((r: any) => r.partitionKey)).toEqual([
      "2026-01-01",
      "2026-01-02",
      "2026-01-03",
      "2026-01-04",
      "2026-01-05",
    ]);
    expect(res.runs.map((r: any) => r.status)).toEqual(["running", "running", "queued", "queued", "queued"]);
    const done = await finished(res.runs);
    expect(done.every((r) => r.status === "succeeded")).toBe(true);
    expect(done.map((r) => r.steps[0].output.v)).toEqual(res.runs.map((r: any) => r.partitionKey));
    // At no instant were more than two runs between start and finish.
    const edges = done.flatMap((r) => [
      { t: Date.parse(r.startedAt), d: 1 },
      { t: Date.parse(r.finishedAt), d: -1 },
    ]);
    edges.sort((x, y) => x.t - y.t || x.d - y.d);
    let active = 0;
    let peak = 0;
    for (const e of edges) {
      active += e.d;
      peak = Math.max(peak, active);
    }
    expect(peak).toBe(2);
    const partitions = await ctx.db.sql<{ partition_key: string }[]>`
      select partition_key from materializations where asset_key = 'daily_table' order by partition_key`;
    expect(partitions.map((p) => p.partition_key)).toHaveLength(5);
  });
});

describe("bad input writes nothing", () => {
  it("answers 4xx problem+json for unknown assets or steps, foreign parents, empty selections, bad ranges", async () => {
    const other = (
      await call(ctx.app, "POST", "/v1/keys", {
        key: ctx.rootKey,
        body: { tenant: "other", scopes: ["write"] },
      })
    ).json().key;
    const parent = await startRun(ctx, "chain");
    await waitForRun(ctx, parent.id);
    // The other tenant has a workflow of the same name: the parent run is still not theirs.
    const otherPut = await call(ctx.app, "PUT", "/v1/workflows/chain", {
      key: other,
      body: { steps: [{ id: "load", run: { type: "noop" } }] },
    });
    expect(otherPut.statusCode).toBe(201);
    const before = { runs: await countRows("runs"), materializations: await countRows("materializations") };
    const cases: Array<[string, unknown, number, RegExp, string?]> = [
      ["/v1/materializations", { assets: ["nope"] }, 400, /nope/],
      ["/v1/materializations", { assets: [] }, 400, /assets/],
      ["/v1/materializations", { assets: ["asset_c", "asset_c"] }, 400, /repeat/],
      ["/v1/materializations", { assets: ["asset_c", "daily_table"] }, 400, /different workflows/],
      [
        "/v1/materializations",
        { assets: ["daily_table"], partitions: { from: "2026-02-01", to: "2026-01-01", step: "day" } },
        400,
        /partitions/,
      ],
      [
        "/v1/materializations",
        { assets: ["daily_table"], partitions: { from: "2020-01-01", to: "2026-01-01", step: "day" } },
        400,
        /partitions/,
      ],
      ["/v1/materializations", { assets: ["asset_c"], typo: true }, 400, /typo/],
      ["/v1/subgraphs", { workflow: "chain", steps: ["ghost"] }, 400, /ghost/],
      ["/v1/subgraphs", { workflow: "chain", steps: [] }, 400, /steps/],
      // Downstream alone reads "extract", which nothing in the plan provides without a parent.
      [
        "/v1/subgraphs",
        { workflow: "chain", steps: ["transform"], downstream: true },
        400,
        /transform.{1,3} reads \{\{steps.extract.output.n\}\}/,
      ],
      ["/v1/subgraphs", { workflow: "missing", steps: ["a"] }, 404, /missing/],
      [
        "/v1/subgraphs",
        { workflow: "abc", steps: ["a"], parentRunId: parent.id },
        400,
        /another workflow|chain/,
      ],
      [
        "/v1/subgraphs",
        { workflow: "chain", steps: ["load"], parentRunId: parent.id },
        404,
        /Parent run/,
        other,
      ],
      ["/v1/runs/00000000-0000-4000-8000-000000000000/retry", {}, 404, /Run/],
      [`/v1/runs/${parent.id}/retry`, {}, 404, /Run/, other],
      ["/v1/runs/not-a-uuid/retry", {}, 400, /id/],
    ];
    for (const [url, body, status, pattern, key] of cases) {
      const problem = expectProblem(await post(url, body, key), status);
      expect(JSON.stringify(problem), `${url} ${JSON.stringify(body)}`).toMatch(pattern);
    }
    expect({ runs: await countRows("runs"), materializations: await countRows("materializations") }).toEqual(
      before,
    );
  });
});
