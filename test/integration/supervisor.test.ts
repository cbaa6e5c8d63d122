/**
 * The supervisor: the reconciler's repairs (called directly), and two real supervisor processes
 * sharing one lease — the standby takes over from a frozen leader, every cron slot fires once,
 * and the leader, once resumed, notices it lost the lease and fires nothing.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { completeAttempt, failAttempt, startAttempt, startAttempts } from "../../src/engine/attempts.ts";
import { pauseRun, resumeRun } from "../../src/engine/control.ts";
import { reconcile } from "../../src/engine/reconcile.ts";
import { cancelRun, submitRun } from "../../src/engine/runs.ts";
import { pruneOldData } from "../../src/jobs/supervisor/retention.ts";
import type { BullStepDispatcher } from "../../src/queue/step-queue.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import {
  engineSettings,
  eventsOf,
  putWorkflow,
  spawnSupervisor,
  stopProcess,
  waitForRun,
} from "../helpers/engine.ts";
import type { Spawned } from "../helpers/processes.ts";
import { loseJobPartially } from "../helpers/stores.ts";

let ctx: TestContext;
const processes: Spawned[] = [];

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...engineSettings(c),
    queues: { default: {}, nowhere: { min: 0 } },
  }));
  // A queue no worker serves: these tests play the workers themselves.
  await putWorkflow(ctx, "lonely", {
    steps: [{ id: "s", queue: "nowhere", retry: { maxAttempts: 2 }, run: { type: "noop" } }],
  });
});
afterAll(async () => {
  for (const p of processes) {
    if (p.child.signalCode === null && p.child.exitCode === null) p.child.kill("SIGCONT");
    await stopProcess(p);
  }
  await ctx?.close();
});

const engine = () => ctx.app.flowline.engine;
const dispatcher = () => engine().dispatcher as BullStepDispatcher;
const repairNow = { minAgeSeconds: 0, leaseGraceSeconds: 0 };

async function stepRow(runId: string) {
  const [row] = await ctx.db.sql<{ status: string; attempt: number; job_id: string }[]>`
    select status, attempt, job_id from step_runs where run_id = ${runId} and step_id = 's'`;
  return row!;
}

describe("reconciler", () => {
  it("enqueues again a queued step whose job vanished, and the old job id can no longer start it", async () => {
    const { run } = await submitRun(engine(), { tenantId: "default", workflow: "lonely" });
    const before = await stepRow(run.id);
    expect(before).toMatchObject({ status: "queued", job_id: `${run.id}.s.1` });
    expect(await reconcile(engine(), repairNow)).toMatchObject({ requeued: 0 });

    await dispatcher().queue("nowhere").remove(before.job_id);
    expect(await reconcile(engine(), repairNow)).toMatchObject({ requeued: 1 });
    const after = await stepRow(run.id);
    expect(after.job_id).toMatch(new RegExp(`^${run.id}\\.s\\.1\\.r\\d+$`));
    const live = await dispatcher().liveJobs([{ queue: "nowhere", jobId: after.job_id }]);
    expect(live.has(after.job_id)).toBe(true);
    expect(await reconcile(engine(), repairNow)).toMatchObject({ requeued: 0 });

    const stray = await startAttempt(
      engine(),
      { runId: run.id, stepId: "s", attempt: 1, jobId: before.job_id },
      { id: "w", leaseSeconds: 30 },
    );
    expect(stray).toMatchObject({ accepted: false });
    const current = await startAttempt(
      engine(),
      { runId: run.id, stepId: "s", attempt: 1, jobId: after.job_id },
      { id: "w", leaseSeconds: 30 },
    );
    expect(current.accepted).toBe(true);
  });

  it("enqueues again a queued step whose job hash survived a partial loss but sits in no list", async () => {
    const { run } = await submitRun(engine(), { tenantId: "default", workflow: "lonely" });
    const before = await stepRow(run.id);
    const queue = dispatcher().queue("nowhere");
    // What a partial loss can leave: the job's hash, in none of the lists a worker takes jobs from.
    await loseJobPartially(ctx, queue, before.job_id);
    expect(await reconcile(engine(), repairNow)).toMatchObject({ requeued: 1 });
    const after = await stepRow(run.id);
    expect(after.job_id).toMatch(new RegExp(`^${run.id}\\.s\\.1\\.r\\d+$`));
    expect(await queue.getJobState(after.job_id)).toBe("prioritized");
    await cancelRun(engine(), "default", run.id);
  });

  it("recovers a running step whose lease expired: next attempt queued, the old holder is refused", async () => {
    const { run } = await submitRun(engine(), { tenantId: "default", workflow: "lonely" });
    const started = await startAttempt(
      engine(),
      { runId: run.id, stepId: "s", attempt: 1 },
      { id: "vanished", leaseSeconds: 30 },
    );
    if (!started.accepted) throw new Error(started.reason);
    expect(await reconcile(engine(), repairNow)).toMatchObject({ abandoned: 0 });
    await ctx.db
      .sql`update step_runs set lease_expires_at = now() - interval '1 minute' where run_id = ${run.id}`;
    expect(await reconcile(engine(), repairNow)).toMatchObject({ abandoned: 1 });
    expect(await stepRow(run.id)).toMatchObject({ status: "queued", attempt: 2, job_id: `${run.id}.s.2` });
    const late = await completeAttempt(engine(), { ...started.attempt }, { late: true });
    expect(late).toMatchObject({ accepted: false });
    const events = await eventsOf(ctx, run.id);
    expect(events.find((e) => e.type === "step.retrying")?.data.reason).toBe("worker lost (lease expired)");

    // The last attempt's worker vanishes too: the step fails and so does the run.
    const second = await startAttempt(
      engine(),
      { runId: run.id, stepId: "s", attempt: 2 },
      { id: "vanished-too", leaseSeconds: 30 },
    );
    expect(second.accepted).toBe(true);
    await ctx.db
      .sql`update step_runs set lease_expires_at = now() - interval '1 minute' where run_id = ${run.id}`;
    expect(await reconcile(engine(), repairNow)).toMatchObject({ abandoned: 1 });
    const done = await waitForRun(ctx, run.id);
    expect(done.status).toBe("failed");
    expect(done.steps[0].error.message).toMatch(/worker lost during attempt 2/);
  });

  it("closes a run whose steps are all finished", async () => {
    const { run } = await submitRun(engine(), { tenantId: "default", workflow: "lonely" });
    // A crash between a step's last write and the run's: simulated by finishing the step alone.
    await ctx.db.sql`update step_runs set status = 'succeeded', finished_at = now() where run_id = ${run.id}`;
    expect(await reconcile(engine(), repairNow)).toMatchObject({ closed: 1 });
    const done = await waitForRun(ctx, run.id);
    expect(done.status).toBe("succeeded");
    expect((await eventsOf(ctx, run.id)).at(-1).type).toBe("run.succeeded");
    expect(await reconcile(engine(), repairNow)).toMatchObject({ closed: 0 });
  });
});

describe("batched starts and paused runs", () => {
  it("a job delivered twice in one batch starts once, with no attempt abandoned", async () => {
    const { run } = await submitRun(engine(), { tenantId: "default", workflow: "lonely" });
    const job = { runId: run.id, stepId: "s", attempt: 1, jobId: `${run.id}.s.1` };
    const [first, second] = await startAttempts(engine(), run.id, [job, job], { id: "w", leaseSeconds: 30 });
    expect(first!.accepted).toBe(true);
    expect(second).toMatchObject({ accepted: false, reason: expect.stringMatching(/duplicate/) });
    expect(await stepRow(run.id)).toMatchObject({ status: "running", attempt: 1 });
    expect((await eventsOf(ctx, run.id)).map((e) => e.type)).not.toContain("step.retrying");
    await cancelRun(engine(), "default", run.id);
  });

  it("resume keeps a retry's remaining delay by the database clock, whatever this process's clock says", async () => {
    await putWorkflow(ctx, "patient", {
      steps: [
        {
          id: "s",
          queue: "nowhere",
          retry: { maxAttempts: 2, backoff: "fixed", delaySeconds: 600 },
          run: { type: "noop" },
        },
      ],
    });
    const { run } = await submitRun(engine(), { tenantId: "default", workflow: "patient" });
    const started = await startAttempt(
      engine(),
      { runId: run.id, stepId: "s", attempt: 1 },
      { id: "w", leaseSeconds: 30 },
    );
    if (!started.accepted) throw new Error(started.reason);
    await failAttempt(engine(), started.attempt, { message: "try later" });
    await pauseRun(engine(), "default", run.id);
    vi.useFakeTimers({ toFake: ["Date"] });
    try {
      vi.setSystemTime(Date.now() + 3_600_000); // this process runs an hour ahead
      await resumeRun(engine(), "default", run.id);
    } finally {
      vi.useRealTimers();
    }
    const row = await stepRow(run.id);
    expect(row.status).toBe("retrying");
    expect(await dispatcher().queue("nowhere").getJobState(row.job_id)).toBe("delayed");
    await cancelRun(engine(), "default", run.id);
  });

  it("a paused run whose worker vanished continues after resume", async () => {
    const { run } = await submitRun(engine(), { tenantId: "default", workflow: "lonely" });
    const started = await startAttempt(
      engine(),
      { runId: run.id, stepId: "s", attempt: 1 },
      { id: "gone", leaseSeconds: 30 },
    );
    expect(started.accepted).toBe(true);
    await pauseRun(engine(), "default", run.id);
    await ctx.db
      .sql`update step_runs set lease_expires_at = now() - interval '1 minute' where run_id = ${run.id}`;
    expect(await reconcile(engine(), repairNow)).toMatchObject({ abandoned: 1 });
    expect(await stepRow(run.id)).toMatchObject({ status: "queued", attempt: 2 });
    await resumeRun(engine(), "default", run.id);
    const next = await startAttempt(
      engine(),
      { runId: run.id, stepId: "s", attempt: 2, jobId: (await stepRow(run.id)).job_id },
      { id: "w2", leaseSeconds: 30 },
    );
    if (!next.accepted) throw new Error(next.reason);
    expect(await completeAttempt(engine(), next.attempt, {})).toEqual({ accepted: true });
    expect((await waitForRun(ctx, run.id)).status).toBe("succeeded");
  });
});

describe("retention", () => {
  it("prunes finished runs and old events past their age, never those of runs still going", async () => {
    const old = await submitRun(engine(), { tenantId: "default", workflow: "lonely" });
    const recent = await submitRun(engine(), { tenantId: "default", workflow: "lonely" });
    const active = await submitRun(engine(), { tenantId: "default", workflow: "lonely" });
    for (const { run } of [old, recent]) {
      await ctx.db
        .sql`update step_runs set status = 'succeeded', finished_at = now() where run_id = ${run.id}`;
      await ctx.db
        .sql`update runs set status = 'succeeded', finished_at = now(), pending_steps = 0 where id = ${run.id}`;
    }
    // `old` finished 100 days ago; `recent` finished now but its events are 40 days old; `active`
    // is still running with events just as old.
    await ctx.db.sql`update runs set finished_at = now() - interval '100 days' where id = ${old.run.id}`;
    await ctx.db.sql`update events set created_at = now() - interval '40 days'
      where run_id in ${ctx.db.sql([recent.run.id, active.run.id])}`;
    const report = await pruneOldData(engine(), () => true);
    expect(report.runs).toBe(1);
    expect(report.events).toBeGreaterThan(0);
    const runs = await ctx.db.sql<{ id: string }[]>`
      select id from runs where id in ${ctx.db.sql([old.run.id, recent.run.id, active.run.id])}`;
    expect(runs.map((r) => r.id).sort()).toEqual([recent.run.id, active.run.id].sort());
    const events = await ctx.db.sql<{ run_id: string; n: string }[]>`
      select run_id, count(*) as n from events
      where run_id in ${ctx.db.sql([recent.run.id, active.run.id])} group by run_id`;
    expect(events.map((e) => e.run_id)).toEqual([active.run.id]);
    await cancelRun(engine(), "default", active.run.id);
  });
});

describe("retention and a rollback", () => {
  it("never deletes a finished run that enters rolling_back as retention judges it", async () => {
    const { run } = await submitRun(engine(), { tenantId: "default", workflow: "lonely" });
    await ctx.db.sql`update step_runs set status = 'succeeded', finished_at = now() where run_id = ${run.id}`;
    await ctx.db.sql`update runs set status = 'succeeded', finished_at = now() - interval '100 days',
      pending_steps = 0 where id = ${run.id}`;
    // A rollback's transaction: it locks the run and moves it to rolling_back, and commits only
    // once retention has looked at the run (waiting for the lock, or past it).
    let commit!: () => void;
    const committed = new Promise<void>((resolve) => {
      commit = resolve;
    });
    let locked!: () => void;
    const isLocked = new Promise<void>((resolve) => {
      locked = resolve;
    });
    const rollback = ctx.db.sql.begin(async (sql) => {
      await sql`select id from runs where id = ${run.id} for update`;
      await sql`update runs set status = 'rolling_back', finished_at = null where id = ${run.id}`;
      locked();
      await committed;
    });
    await isLocked;
    let settled = false;
    const pruning = pruneOldData(engine(), () => true).finally(() => {
      settled = true;
    });
    for (;;) {
      const [waiting] = await ctx.db.sql<{ n: number }[]>`
        select count(*)::int as n from pg_stat_activity
        where datname = current_database() and wait_event_type = 'Lock'`;
      if (settled || waiting!.n > 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    commit();
    await rollback;
    await pruning;
    const [row] = await ctx.db.sql<{ status: string }[]>`select status from runs where id = ${run.id}`;
    expect(row?.status).toBe("rolling_back");
  });
});

describe("two supervisors", () => {
  it("a standby takes over from a frozen leader; each slot fires once; the resumed leader fires nothing", async () => {
    await putWorkflow(ctx, "ticker", {
      schedules: [{ cron: "*/2 * * * * *", timezone: "UTC", params: { from: "cron" } }],
      steps: [{ id: "s", queue: "nowhere", run: { type: "noop" } }],
    });
    const settings = {
      supervisor: { leaseSeconds: 2, scheduleIntervalSeconds: 1, reconcileIntervalSeconds: 1 },
    };
    const first = spawnSupervisor(ctx, settings);
    processes.push(first);
    await first.waitFor(/now active/);
    const second = spawnSupervisor(ctx, settings);
    processes.push(second);
    await second.waitFor(/supervisor started/);
    await first.waitFor(/schedule fired/);

    first.child.kill("SIGSTOP");
    await second.waitFor(/now active/, 20_000);
    await second.waitFor(/schedule fired/, 20_000);
    const frozenOutput = first.stdout().length;
    first.child.kill("SIGCONT");
    await first.waitFor(/lease lost/, 20_000);
    // Let a few more slots pass under the new leader.
    const firedBySecond = () => (second.stdout().match(/schedule fired"/g) ?? []).length;
    const target = firedBySecond() + 2;
    while (firedBySecond() < target) await new Promise((r) => setTimeout(r, 200));

    expect(first.stdout().slice(frozenOutput)).not.toMatch(/schedule fired/);
    const fires = await ctx.db.sql<{ fire_at: Date; run_id: string | null }[]>`
      select fire_at, run_id from schedule_fires order by fire_at`;
    const runs = await ctx.db.sql<{ id: string; params: Record<string, unknown> }[]>`
      select id, params from runs where trigger = 'schedule'`;
    expect(fires.length).toBeGreaterThanOrEqual(4);
    expect(fires.every((f) => f.run_id !== null)).toBe(true);
    // Exactly one run per slot: as many runs as fires, each recorded by exactly one fire.
    expect(runs).toHaveLength(fires.length);
    expect(new Set(fires.map((f) => f.run_id)).size).toBe(fires.length);
    expect(runs.every((r) => r.params.from === "cron")).toBe(true);
    // Slots are whole even seconds of the schedule.
    expect(
      fires.every((f) => f.fire_at.getUTCSeconds() % 2 === 0 && f.fire_at.getUTCMilliseconds() === 0),
    ).toBe(true);
  });
});
