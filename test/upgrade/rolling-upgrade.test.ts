/**
 * A rolling upgrade from the previous release (releases.json) to this checkout with runs in
 * flight. The previous release runs as separate processes — API, supervisor, two workers — on a
 * database and Redis prefix of its own; runs of every shape are submitted (chains, fan-out/join,
 * retries, a rollback, two materializations contending for one asset lock, a cron schedule) and
 * followed by SSE clients. Then, one process at a time: `migrate --check`, `migrate`, a new API
 * beside the old one (the old one stopped, its SSE clients reconnecting to the new one), a new
 * supervisor (the old one stopped), and each worker replaced. More runs are submitted between
 * the steps, so old workers run jobs of the new API and new workers jobs of the old one.
 *
 * Asserts that every run ends as it would have without the upgrade, every step succeeded exactly
 * once, no BullMQ job failed, every cron slot fired exactly once with no gap, and every SSE client
 * saw exactly the run's events, in order, with no gap or duplicate.
 */

import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, inject, it, onTestFailed } from "vitest";
import { stringify } from "yaml";
import { release } from "../../src/config/release.ts";
import { BullStepDispatcher } from "../../src/queue/step-queue.ts";
import { createRedis, deleteByPattern } from "../../src/redis/connection.ts";
import { redisKeys } from "../../src/redis/keys.ts";
import { type PreparedRelease, preparePreviousRelease } from "../helpers/previous-release.ts";
import { cleanEnv, freePort, type Spawned, spawnFlowline } from "../helpers/processes.ts";
import { databaseUrl, TEST_PG_URL, TEST_REDIS_URL } from "../helpers/services.ts";
import { readSse, type SseFrame } from "../helpers/sse.ts";

const ROOT_KEY = "flk_upgrade_root_key_0123456789abcdefghijklmn";
const CRON_SECONDS = 5;
const label = (n: number) => String(n).padStart(4, "0");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Handlers both releases load: plain JavaScript, no imports. */
const HANDLERS = `
const sleep = (ms, signal) => new Promise((resolve, reject) => {
  const t = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(t); reject(signal.reason); });
});
export default {
  "u.work": async (ctx) => { await sleep(ctx.input.ms, ctx.signal); return { step: ctx.stepId }; },
  "u.flaky": async (ctx) => { if (ctx.attempt < 2) throw new Error("flaky on attempt " + ctx.attempt); return { attempt: ctx.attempt }; },
  "u.fail": async () => { throw new Error("planned failure"); },
  "u.undo": async (ctx) => ({ undone: ctx.stepId }),
};
`;

const work = (ms: number) => ({ type: "handler", name: "u.work", input: { ms } });
const WORKFLOWS: Record<string, unknown> = {
  chain: {
    steps: [
      { id: "a", run: work(1500) },
      { id: "b", needs: ["a"], run: work(1500) },
      { id: "c", needs: ["b"], run: work(1500) },
      { id: "d", needs: ["c"], run: work(1500) },
    ],
  },
  fan: {
    steps: [
      { id: "root", run: work(1000) },
      ...[1, 2, 3, 4, 5].map((n) => ({ id: `f${n}`, needs: ["root"], run: work(2000) })),
      { id: "join", needs: ["f1", "f2", "f3", "f4", "f5"], run: work(500) },
    ],
  },
  flaky: {
    steps: [
      {
        id: "s",
        retry: { maxAttempts: 3, backoff: "fixed", delaySeconds: 1 },
        run: { type: "handler", name: "u.flaky", input: {} },
      },
      { id: "after", needs: ["s"], run: work(1000) },
    ],
  },
  saga: {
    steps: [
      { id: "a", run: work(1000), compensate: { type: "handler", name: "u.undo", input: {} } },
      { id: "b", needs: ["a"], run: work(1000), compensate: { type: "handler", name: "u.undo", input: {} } },
      { id: "c", needs: ["b"], onFailure: "rollback", run: { type: "handler", name: "u.fail", input: {} } },
    ],
  },
  maker: {
    assets: { upgrade_asset: {} },
    steps: [{ id: "make", provides: ["upgrade_asset"], run: work(10_000) }],
  },
  tick: {
    schedules: [{ cron: `*/${CRON_SECONDS} * * * * *`, timezone: "UTC" }],
    steps: [{ id: "s", run: { type: "noop" } }],
  },
};

/** How each shape ends without an upgrade: the run's status and the steps that succeed. */
const EXPECTED: Record<string, { status: string; succeeded: string[]; compensated: string[] }> = {
  chain: { status: "succeeded", succeeded: ["a", "b", "c", "d"], compensated: [] },
  fan: { status: "succeeded", succeeded: ["f1", "f2", "f3", "f4", "f5", "join", "root"], compensated: [] },
  flaky: { status: "succeeded", succeeded: ["after", "s"], compensated: [] },
  saga: { status: "rolled_back", succeeded: ["a", "b"], compensated: ["a", "b"] },
  maker: { status: "succeeded", succeeded: ["make"], compensated: [] },
};
const SHAPES = ["chain", "fan", "chain", "flaky", "fan", "chain", "saga", "fan"];

let previous: PreparedRelease;
let prepareMs = 0;
let database: string;
let prefix: string;
let configFile: string;
const processes: Spawned[] = [];

beforeAll(async () => {
  const started = Date.now();
  previous = preparePreviousRelease();
  prepareMs = Date.now() - started;
  database = `flowline_t_${inject("runId")}_upgrade_${randomBytes(3).toString("hex")}`;
  prefix = `flupgrade:${randomBytes(4).toString("hex")}`;
  // An empty database, as an operator's would be (the previous release's API and supervisor,
  // started together, migrate it; 0.1.0 could not create it concurrently).
  const admin = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database "${database}"`);
  await admin.end();
  const dir = tmpdir();
  const handlers = join(dir, `flowline-upgrade-handlers-${prefix.replace(/\W/g, "")}.mjs`);
  writeFileSync(handlers, HANDLERS);
  configFile = join(dir, `flowline-upgrade-${prefix.replace(/\W/g, "")}.yaml`);
  // Only settings both releases know.
  writeFileSync(
    configFile,
    stringify({
      database: { url: databaseUrl(database), poolMax: 3 },
      redis: { url: TEST_REDIS_URL, prefix },
      auth: { bootstrapKey: ROOT_KEY },
      rateLimit: { enabled: false },
      queues: { default: { concurrency: 24 } },
      worker: { handlersModule: handlers, stallSeconds: 10, graceSeconds: 20 },
      supervisor: { leaseSeconds: 3, scheduleIntervalSeconds: 1, reconcileIntervalSeconds: 1 },
      log: { level: "info" },
    }),
  );
}, 300_000);

afterAll(async () => {
  await Promise.all(
    processes.map(async (p) => {
      if (p.child.exitCode === null && p.child.signalCode === null) {
        p.child.kill("SIGKILL");
        await p.exited;
      }
    }),
  );
  const sql = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} });
  await sql.unsafe(`drop database if exists "${database}" with (force)`).catch(() => {});
  await sql.end();
  const redis = createRedis(TEST_REDIS_URL, "consumer");
  await redis.connect();
  await deleteByPattern(redis, redisKeys(prefix).all());
  redis.disconnect();
});

function start(bin: string | undefined, args: string[], env: Record<string, string> = {}): Spawned {
  const p = spawnFlowline(args, cleanEnv({ FLOWLINE_CONFIG: configFile, ...env }), bin);
  processes.push(p);
  return p;
}
const startOld = (args: string[], env?: Record<string, string>) => start(previous.bin, args, env);
const startNew = (args: string[], env?: Record<string, string>) => start(undefined, args, env);

async function stop(p: Spawned): Promise<void> {
  p.child.kill("SIGTERM");
  const { code } = await p.exited;
  expect(code, `${p.stdout()}\n${p.stderr()}`).toBe(0);
}

describe(`rolling upgrade from the previous release`, () => {
  it("replaces API, supervisor and workers one at a time; every run ends as it would have", async () => {
    // On failure, the processes' last words (which process, which release, what it logged).
    onTestFailed(() => {
      for (const p of processes) {
        const tail = (p.stdout() + p.stderr()).split("\n").slice(-15).join("\n");
        console.error(`--- ${p.child.spawnargs.slice(1).join(" ")} (pid ${p.child.pid})\n${tail}`);
      }
    });
    let api = "";
    const http = async (
      method: string,
      path: string,
      body?: unknown,
      headers: Record<string, string> = {},
    ) => {
      const res = await fetch(`${api}${path}`, {
        method,
        headers: { authorization: `Bearer ${ROOT_KEY}`, "content-type": "application/json", ...headers },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      const text = await res.text();
      if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${text}`);
      return JSON.parse(text);
    };
    const runs: Array<{ id: string; shape: string }> = [];
    /** Submits a run to the current API; an API stopping under the request is retried on the next. */
    const submit = async (shape: string) => {
      const key = `upgrade-${runs.length}-${randomBytes(4).toString("hex")}`;
      for (let n = 1; ; n++) {
        try {
          const run = await http("POST", `/v1/workflows/${shape}/runs`, {}, { "idempotency-key": key });
          runs.push({ id: run.id, shape });
          return run.id as string;
        } catch (error) {
          if (n >= 20) throw error;
          await sleep(250);
        }
      }
    };
    const wave = async (n: number) => {
      for (let i = 0; i < n; i += 10)
        await Promise.all(
          Array.from({ length: Math.min(10, n - i) }, (_, k) => submit(SHAPES[(i + k) % SHAPES.length]!)),
        );
    };
    // Runs keep arriving while processes are replaced, so every step of the upgrade meets work in
    // flight that older and newer processes share.
    let upgrading = true;
    const trickle = async () => {
      while (upgrading) {
        // About twenty at all times, however slow the machine makes the upgrade.
        if ((await inFlight()) < 20) await submit(SHAPES[runs.length % SHAPES.length]!);
        await sleep(250);
      }
    };

    // SSE clients: each follows one run until its `end` frame, reconnecting with Last-Event-ID to
    // whichever API is current when its stream closes.
    const followed = new Map<string, number[]>();
    const follow = (runId: string) => {
      const ids: number[] = [];
      followed.set(runId, ids);
      return (async () => {
        for (;;) {
          let ended = false;
          try {
            await readSse(`${api}/v1/runs/${runId}/events`, {
              key: ROOT_KEY,
              ...(ids.length > 0 ? { lastEventId: String(ids.at(-1)) } : {}),
              onFrame: (f: SseFrame) => {
                if (f.id !== undefined) ids.push(Number(f.id));
                if (f.event === "end") ended = true;
              },
            });
          } catch {
            // The API went away mid-stream: reconnect.
          }
          if (ended) return;
          await sleep(200);
        }
      })();
    };

    const db = postgres(databaseUrl(database), { max: 1, onnotice: () => {} });
    /** Runs not finished right now: each replacement must happen with work in flight. */
    const inFlight = async () =>
      Number(
        (
          await db<{ n: string }[]>`
            select count(*) as n from runs where status in ('queued', 'running', 'rolling_back')`
        )[0]!.n,
      );
    const inFlightAt: Record<string, number> = {};
    const t0 = Date.now();
    /** Seconds since the start at which each step of the upgrade began (reported at the end). */
    const marks: Record<string, number> = {};
    const mark = (name: string) => {
      marks[name] = Math.round((Date.now() - t0) / 100) / 10;
    };

    // --- the previous release, running --------------------------------------------------------
    const portOld = await freePort();
    // All at once (the supervisor migrates too; migrators take turns): start-up is the slow part.
    const oldApi = startOld(["api"], { PORT: String(portOld) });
    const oldSupervisor = startOld(["supervisor"]);
    const oldWorkers = [
      startOld(["worker", "--queues", "default"]),
      startOld(["worker", "--queues", "default"]),
    ];
    await oldApi.waitFor(/api listening/, 60_000);
    api = `http://127.0.0.1:${portOld}`;
    for (const [name, definition] of Object.entries(WORKFLOWS))
      await http("PUT", `/v1/workflows/${name}`, definition);
    await oldSupervisor.waitFor(/now active/, 60_000);
    for (const w of oldWorkers) await w.waitFor(/worker started/, 60_000);

    const materializations = [
      (await http("POST", "/v1/materializations", { assets: ["upgrade_asset"] })).runs[0].id as string,
      (await http("POST", "/v1/materializations", { assets: ["upgrade_asset"], force: true })).runs[0]
        .id as string,
    ];
    for (const id of materializations) runs.push({ id, shape: "maker" });
    // The first materialization holds the asset lock (through the migration and the API's
    // replacement); the second waits for it.
    expect((await http("GET", `/v1/runs/${materializations[1]}`)).status).toBe("queued");
    await wave(100);
    const submitting = trickle();
    const streams = [materializations[0]!, ...runs.slice(2, 12).map((r) => r.id)].map(follow);

    // --- 1. check, then migrate (the old processes keep running) -------------------------------
    mark("check");
    inFlightAt.migrate = await inFlight();
    const check = startNew(["migrate", "--check"]);
    expect((await check.exited).code, check.stdout() + check.stderr()).toBe(0);
    expect(check.stdout()).toContain(`database schema: ${label(previous.schema)}`);
    expect(check.stdout().match(/ok\s+worker\s+\S+\s+0\.1\.0 \(unannounced\)/g)).toHaveLength(2);
    expect(check.stdout()).toMatch(/ok\s+supervisor\s+\S+\s+0\.1\.0 \(unannounced\)/);
    mark("migrate");
    const migrate = startNew(["migrate"]);
    expect((await migrate.exited).code, migrate.stderr()).toBe(0);

    // --- 2. the API: a new one beside the old one, then the old one stops ----------------------
    mark("api");
    const portNew = await freePort();
    const newApi = startNew(["api"], { PORT: String(portNew) });
    await newApi.waitFor(/api listening/, 60_000);
    api = `http://127.0.0.1:${portNew}`;
    const ready = await (await fetch(`${api}/readyz`)).json();
    expect(ready).toMatchObject({ version: release.version, schema: { database: label(release.schema) } });
    inFlightAt.api = await inFlight();
    await stop(oldApi);

    // --- 3. the supervisor ---------------------------------------------------------------------
    mark("supervisor");
    const newSupervisor = startNew(["supervisor"]);
    await newSupervisor.waitFor(/supervisor started/, 60_000);
    inFlightAt.supervisor = await inFlight();
    await stop(oldSupervisor);
    await newSupervisor.waitFor(/now active/, 30_000);

    // --- 4. the workers, one at a time ---------------------------------------------------------
    const newWorkers: Spawned[] = [];
    for (const [n, old] of oldWorkers.entries()) {
      mark(`worker${n + 1}`);
      const replacement = startNew(["worker", "--queues", "default"]);
      newWorkers.push(replacement);
      await replacement.waitFor(/worker started/, 60_000);
      inFlightAt[`worker${n + 1}`] = await inFlight();
      // Jobs of this release wait behind the previous release's (its plain priorities sort before
      // fair-share tags) until the old workers have drained those: let them get that far first.
      if (n === 0) {
        const until = Date.now() + 30_000;
        while ((await crossedJobs(oldWorkers, newWorkers)).newJobsOnOldWorkers === 0 && Date.now() < until)
          await sleep(500);
      }
      await stop(old);
    }
    mark("replaced");
    upgrading = false;
    await submitting;
    await wave(10);

    // --- every run ends as it would have -------------------------------------------------------
    const deadline = Date.now() + 120_000;
    const finals = new Map<string, any>();
    while (finals.size < runs.length && Date.now() < deadline) {
      for (const r of runs) {
        if (finals.has(r.id)) continue;
        const run = await http("GET", `/v1/runs/${r.id}`);
        if (["succeeded", "failed", "cancelled", "rolled_back"].includes(run.status)) finals.set(r.id, run);
      }
      if (finals.size < runs.length) await sleep(500);
    }
    mark("finished");
    expect(runs.length).toBeGreaterThanOrEqual(100);
    const unfinished = runs.filter((r) => !finals.has(r.id));
    expect(unfinished, "runs that did not finish").toEqual([]);

    for (const r of runs) {
      const expected = EXPECTED[r.shape]!;
      const run = finals.get(r.id);
      expect(run.status, `${r.shape} run ${r.id}`).toBe(expected.status);
      const events = (await http("GET", `/v1/runs/${r.id}/events?limit=1000`)).items as any[];
      const succeeded = (phase: string | undefined) =>
        events
          .filter((e) => e.type === "step.succeeded" && (e.data?.phase ?? undefined) === phase)
          .map((e) => e.stepId)
          .sort();
      // Every step that succeeds did so exactly once (a duplicate would appear twice).
      expect(succeeded(undefined), `${r.shape} run ${r.id} steps`).toEqual(expected.succeeded);
      expect(succeeded("compensate"), `${r.shape} run ${r.id} compensations`).toEqual(expected.compensated);
      // SSE clients saw exactly the run's events, in order: no gap, no duplicate.
      const seen = followed.get(r.id);
      if (seen) expect(seen, `SSE of ${r.shape} run ${r.id}`).toEqual(events.map((e) => e.id));
    }
    await Promise.all(streams);
    expect(followed.size).toBe(11);

    // The lock: the second materialization started only once the first had finished.
    const [first, second] = materializations.map((id) => finals.get(id));
    expect(Date.parse(second.steps[0].startedAt)).toBeGreaterThanOrEqual(
      Date.parse(first.steps[0].finishedAt),
    );

    expect(
      Object.entries(inFlightAt).filter(([, n]) => n === 0),
      "steps of the upgrade taken with no run in flight",
    ).toEqual([]);

    // No job failed in the queue (an old worker never fails a job it cannot read). Jobs written
    // by the previous release (no format) ran on new workers, and jobs of this release on old ones.
    const crossed = await crossedJobs(oldWorkers, newWorkers, { failedJobs: true });
    expect(crossed.oldJobsOnNewWorkers, "jobs of the previous release run by new workers").toBeGreaterThan(0);
    expect(crossed.newJobsOnOldWorkers, "jobs of this release run by old workers").toBeGreaterThan(0);

    // Every cron slot from the first fire to the last fired exactly once, each with its run.
    const sql = postgres(databaseUrl(database), { max: 1, onnotice: () => {} });
    try {
      const fires = await sql<{ fire_at: Date; run_id: string | null }[]>`
        select fire_at, run_id from schedule_fires order by fire_at`;
      const scheduled = await sql<{ n: string }[]>`select count(*) as n from runs where trigger = 'schedule'`;
      expect(fires.length).toBeGreaterThanOrEqual(4);
      const gaps = fires.slice(1).map((f, i) => (f.fire_at.getTime() - fires[i]!.fire_at.getTime()) / 1000);
      expect(
        gaps.every((g) => g === CRON_SECONDS),
        `gaps between fired slots: ${gaps}`,
      ).toBe(true);
      expect(fires.every((f) => f.run_id !== null)).toBe(true);
      expect(Number(scheduled[0]!.n)).toBe(fires.length);
      const states = await sql<{ status: string; n: string }[]>`
        select status, count(*) as n from runs where trigger = 'schedule' group by status`;
      expect(
        states.filter((s) => s.status !== "succeeded" && s.status !== "running" && s.status !== "queued"),
      ).toEqual([]);
    } finally {
      await sql.end();
    }
    await db.end();
    console.log(
      `rolling upgrade ${previous.version} → ${release.version}: ${runs.length} runs, steps at (s) ` +
        `${JSON.stringify(marks)}, in flight at each ` +
        `step ${JSON.stringify(inFlightAt)}, crossed jobs ${JSON.stringify(crossed)}, previous release ` +
        `prepared in ${prepareMs} ms (dependencies ${previous.modules})`,
    );
  }, 300_000);
});

/**
 * Jobs that crossed releases: written by the previous release (no `format`) and run by a worker of
 * this one, and the other way round; with `failedJobs`, also asserts that no job failed.
 */
async function crossedJobs(
  oldWorkers: readonly Spawned[],
  newWorkers: readonly Spawned[],
  options: { failedJobs?: boolean } = {},
) {
  const redis = createRedis(TEST_REDIS_URL, "consumer");
  await redis.connect();
  const dispatcher = new BullStepDispatcher(
    { kind: "redis", redis, newConnection: () => redis.duplicate(), prefix },
    () => true,
  );
  const db = postgres(databaseUrl(database), { max: 1, onnotice: () => {} });
  const crossed = { oldJobsOnNewWorkers: 0, newJobsOnOldWorkers: 0 };
  try {
    const queue = dispatcher.queue("default");
    if (options.failedJobs) expect(await queue.getJobCounts("failed")).toEqual({ failed: 0 });
    const jobs = await queue.getJobs(["completed"], 0, -1);
    const attempts = await db<
      { run_id: string; step_id: string; phase: string; attempt: number; worker_id: string }[]
    >`
      select run_id, step_id, phase, attempt, worker_id from step_attempts where status = 'succeeded'`;
    const pidOf = (workerId: string) => Number(workerId.split(":")[1]);
    const byJob = new Map(
      attempts.map((a) => [
        `${a.run_id}.${a.step_id}.${a.phase === "compensate" ? "c" : ""}${a.attempt}`,
        pidOf(a.worker_id),
      ]),
    );
    const oldPids = new Set(oldWorkers.map((w) => w.child.pid));
    const newPids = new Set(newWorkers.map((w) => w.child.pid));
    for (const job of jobs) {
      const pid = byJob.get(String(job.id));
      if (pid === undefined) continue;
      if (job.data.format === undefined && newPids.has(pid)) crossed.oldJobsOnNewWorkers++;
      if (job.data.format !== undefined && oldPids.has(pid)) crossed.newJobsOnOldWorkers++;
    }
  } finally {
    await dispatcher.close();
    redis.disconnect();
    await db.end({ timeout: 5 });
  }
  return crossed;
}
