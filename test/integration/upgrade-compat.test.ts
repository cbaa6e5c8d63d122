/**
 * Upgrades, piece by piece: `/readyz` and `--version` name the release and schema; a worker
 * refuses a schema it does not understand and says which version it needs; `flowline migrate
 * --check` judges the running processes; a worker hands back a job of a newer format instead of
 * failing it, and the job runs once a worker that reads it takes it.
 */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Queue } from "bullmq";
import type { Redis } from "ioredis";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { release } from "../../src/config/release.ts";
import { ensureDatabase, migrationsFolder, runMigrations } from "../../src/db/migrate.ts";
import { FORMATS } from "../../src/domain/versions.ts";
import { startAttempt } from "../../src/engine/attempts.ts";
import { reconcile } from "../../src/engine/reconcile.ts";
import { submitRun } from "../../src/engine/runs.ts";
import { BullStepDispatcher, fairShareOf } from "../../src/queue/step-queue.ts";
import { createRedis } from "../../src/redis/connection.ts";
import { redisKeys } from "../../src/redis/keys.ts";
import { WorkerRegistry } from "../../src/redis/registry.ts";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import {
  configFileFor,
  engineSettings,
  putWorkflow,
  spawnWorker,
  startRun,
  stopProcess,
  waitForRun,
} from "../helpers/engine.ts";
import { call } from "../helpers/http.ts";
import { cleanEnv, type Spawned, spawnFlowline } from "../helpers/processes.ts";
import { databaseUrl, TEST_PG_URL } from "../helpers/services.ts";

let ctx: TestContext;
let redis: Redis;
let dispatcher: BullStepDispatcher;
const spawned: Spawned[] = [];
const label = (n: number) => String(n).padStart(4, "0");

beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...engineSettings(c),
    queues: { default: {}, nowhere: { min: 0 } },
  }));
  redis = createRedis(ctx.config.redis.url!, "consumer");
  await redis.connect();
  dispatcher = new BullStepDispatcher(
    { kind: "redis", redis, newConnection: () => redis.duplicate(), prefix: ctx.config.redis.prefix },
    fairShareOf(ctx.config.queues),
  );
});
afterAll(async () => {
  for (const p of spawned) await stopProcess(p);
  await dispatcher?.close();
  redis?.disconnect();
  await ctx?.close();
});

const run = (args: string[], extra: Record<string, string> = {}) => {
  const p = spawnFlowline(args, cleanEnv({ FLOWLINE_CONFIG: configFileFor(ctx), ...extra }));
  spawned.push(p);
  return p;
};

describe("release information", () => {
  it("/readyz names the version, the image tag and both schema versions", async () => {
    const ready = (await call(ctx.app, "GET", "/readyz")).json();
    expect(ready).toMatchObject({
      status: "ready",
      version: release.version,
      imageTag: null,
      schema: { release: label(release.schema), database: label(release.schema) },
    });
  });

  it("flowline --version prints the version, the image tag and the schema", async () => {
    const p = run(["--version"], { FLOWLINE_IMAGE_TAG: "registry.example/flowline:9.9.9" });
    expect(await p.exited).toMatchObject({ code: 0 });
    expect(p.stdout()).toBe(
      `flowline ${release.version}\nimage: registry.example/flowline:9.9.9\nschema: ${label(release.schema)}\n`,
    );
  });
});

describe("schema versions", () => {
  const latestWhen = async () =>
    (
      await ctx.db.sql<{ w: string }[]>`select max(created_at)::text as w from drizzle.__drizzle_migrations`
    )[0]!.w;

  it("a worker refuses a database that lacks its newest migration, naming the version it needs", async () => {
    const when = await latestWhen();
    await ctx.db.sql`delete from drizzle.__drizzle_migrations where created_at = ${when}`;
    await ctx.db.sql`delete from schema_versions where migration = ${release.schema}`;
    try {
      const p = run(["worker", "--queues", "default"]);
      expect(await p.exited).toMatchObject({ code: 65 });
      expect(p.stderr()).toContain(`needs ${label(release.schema)}`);
      expect(p.stderr()).toContain("run `flowline migrate`");
    } finally {
      await ctx.db
        .sql`insert into drizzle.__drizzle_migrations (hash, created_at) values ('restored', ${when})`;
      await ctx.db.sql`insert into schema_versions (migration, tag) values (${release.schema}, 'restored')`;
    }
  });

  it("runs against a newer expand-only schema, and refuses one whose contract step needs a newer release", async () => {
    const future = Date.now() + 86_400_000;
    const next = release.schema + 3;
    await ctx.db
      .sql`insert into drizzle.__drizzle_migrations (hash, created_at) values ('future', ${future})`;
    await ctx.db.sql`insert into schema_versions (migration, tag) values (${next}, 'future_expand')`;
    try {
      const ok = run(["worker", "--queues", "default"]);
      await ok.waitFor(/worker started/);
      expect(ok.stdout()).toContain("expand-only");
      await stopProcess(ok);

      await ctx.db.sql`update schema_versions set readers_from = ${next - 1}, readers_release = '0.9.0',
        reason = 'drops a column' where migration = ${next}`;
      // An API already running takes itself out of rotation, saying why.
      const notReady = await call(ctx.app, "GET", "/readyz");
      expect(notReady.statusCode).toBe(503);
      expect(notReady.json().detail).toContain(`needs processes that know migration ${label(next - 1)}`);
      const refused = run(["worker", "--queues", "default"]);
      expect(await refused.exited).toMatchObject({ code: 65 });
      expect(refused.stderr()).toContain(`needs processes that know migration ${label(next - 1)}`);
      expect(refused.stderr()).toContain("Flowline 0.9.0 or later");

      // migrate --check: the running processes (an announcing worker, one of the release before
      // announcements) cannot run against that schema.
      await new WorkerRegistry(redis, ctx.config.redis.prefix).announce(
        {
          id: "old-host:1:ab",
          pid: 1,
          host: "old-host",
          queues: ["default"],
          concurrency: 1,
          startedAt: "",
          steps: [],
        },
        60_000,
      );
      // An announcement without a release, as 0.1.0 writes it.
      await redis.set(
        redisKeys(ctx.config.redis.prefix).worker("legacy:2:cd"),
        JSON.stringify({
          id: "legacy:2:cd",
          pid: 2,
          host: "legacy",
          queues: ["default"],
          concurrency: 1,
          steps: [],
        }),
        "PX",
        60_000,
      );
      await redis.zadd(redisKeys(ctx.config.redis.prefix).workers(), Date.now() + 60_000, "legacy:2:cd");
      const blocked = run(["migrate", "--check"]);
      expect(await blocked.exited).toMatchObject({ code: 1 });
      expect(blocked.stdout()).toMatch(/BLOCKED\s+worker\s+legacy:2:cd\s+0\.1\.0 \(unannounced\)/);
      expect(blocked.stdout()).toContain("NOT compatible");

      await ctx.db.sql`update schema_versions set readers_from = null where migration = ${next}`;
      const fine = run(["migrate", "--check"]);
      expect(await fine.exited).toMatchObject({ code: 0 });
      expect(fine.stdout()).toMatch(
        new RegExp(`ok\\s+worker\\s+old-host:1:ab\\s+${release.version.replace(/\./g, "\\.")}`),
      );
      expect(fine.stdout()).toMatch(/ok\s+worker\s+legacy:2:cd/);
      expect(fine.stdout()).toContain("compatible: every running process");
    } finally {
      await ctx.db.sql`delete from drizzle.__drizzle_migrations where created_at = ${future}`;
      await ctx.db.sql`delete from schema_versions where migration = ${next}`;
    }
  });
});

describe("version skew", () => {
  it("a worker hands back a job of a newer format (never failing it) and runs it once it can read it", async () => {
    await putWorkflow(ctx, "skew", { steps: [{ id: "s", run: { type: "noop" } }] });
    const { id: runId } = await startRun(ctx, "skew");
    const queue: Queue = dispatcher.queue("default");
    const [row] = await ctx.db.sql<
      { job_id: string }[]
    >`select job_id from step_runs where run_id = ${runId}`;
    const job = (await queue.getJob(row!.job_id))!;
    expect(job.data).toMatchObject({ runId, stepId: "s", attempt: 1, format: 1 });
    await job.updateData({ ...job.data, format: 2 });

    const worker = spawnWorker(ctx);
    spawned.push(worker);
    await worker.waitFor(/job handed back/);
    await worker.waitFor(/job handed back[\s\S]*job handed back/, 15_000); // again after its delay
    expect(await queue.getJobState(row!.job_id)).toMatch(/delayed|waiting|active|prioritized/);
    const [step] = await ctx.db.sql<{ status: string; attempt: number }[]>`
      select status, attempt from step_runs where run_id = ${runId}`;
    expect(step).toEqual({ status: "queued", attempt: 1 });

    // A job that a worker reads (format 1, or none at all as releases before 0.2.0 wrote) runs.
    const { format: _, ...withoutFormat } = job.data;
    await (await queue.getJob(row!.job_id))!.updateData(withoutFormat);
    const done = await waitForRun(ctx, runId);
    expect(done.status).toBe("succeeded");
    expect(done.steps[0]).toMatchObject({ status: "succeeded", attempt: 1 });
  });
});

describe("lease formats", () => {
  it("a start stamps this release's lease format, and the reconciler leaves a newer release's expired lease alone", async () => {
    await putWorkflow(ctx, "leased", { steps: [{ id: "s", queue: "nowhere", run: { type: "noop" } }] });
    const engine = ctx.app.flowline.engine;
    const { run } = await submitRun(engine, { tenantId: "default", workflow: "leased" });
    await ctx.db.sql`update step_runs set lease_format = 7 where run_id = ${run.id}`;
    const started = await startAttempt(
      engine,
      { runId: run.id, stepId: "s", attempt: 1 },
      { id: "w", leaseSeconds: 30 },
    );
    if (!started.accepted) throw new Error(started.reason);
    const [row] = await ctx.db.sql<
      { lease_format: number }[]
    >`select lease_format from step_runs where run_id = ${run.id}`;
    expect(row!.lease_format).toBe(FORMATS.lease);

    await ctx.db.sql`update step_runs set lease_expires_at = now() - interval '1 minute',
      lease_format = ${FORMATS.lease + 1} where run_id = ${run.id}`;
    const now = { minAgeSeconds: 0, leaseGraceSeconds: 0 };
    expect(await reconcile(engine, now)).toMatchObject({ abandoned: 0 });
    await ctx.db.sql`update step_runs set lease_format = ${FORMATS.lease} where run_id = ${run.id}`;
    expect(await reconcile(engine, now)).toMatchObject({ abandoned: 1 });
  });
});

describe("migrating under traffic", () => {
  it("gives up a table lock a live transaction holds, and migrates once it is free", async () => {
    // This release's migrations plus one more that alters step_runs.
    const folder = mkdtempSync(join(tmpdir(), "flowline-migrations-"));
    cpSync(migrationsFolder, folder, { recursive: true });
    const journalFile = join(folder, "meta", "_journal.json");
    const journal = JSON.parse(readFileSync(journalFile, "utf8"));
    journal.entries.push({ idx: 9999, version: "7", when: Date.now(), tag: "9999_test", breakpoints: true });
    writeFileSync(journalFile, JSON.stringify(journal));
    writeFileSync(
      join(folder, "9999_test.sql"),
      `ALTER TABLE "step_runs" ADD COLUMN "upgrade_test" integer;`,
    );
    const applied = async () =>
      (
        await ctx.db.sql<{ column_name: string }[]>`
          select column_name from information_schema.columns
          where table_name = 'step_runs' and column_name = 'upgrade_test'`
      ).length === 1;
    /** A transaction writing step_runs, as a worker's would, held open for `ms`. */
    const holdStepRuns = (ms: number) =>
      ctx.db.sql.begin(async (tx) => {
        await tx`lock table step_runs in row exclusive mode`;
        await new Promise((r) => setTimeout(r, ms));
      });
    try {
      const held = holdStepRuns(1500);
      await new Promise((r) => setTimeout(r, 100));
      // Without retries the migration gives up (lock_timeout), leaving nothing half-done…
      await expect(
        runMigrations(ctx.database.url, { folder, lockTimeoutMs: 100, attempts: 1 }),
      ).rejects.toThrow();
      expect(await applied()).toBe(false);
      // …with them it waits its turn without holding the table, then applies.
      await runMigrations(ctx.database.url, { folder, lockTimeoutMs: 100 });
      await held;
      expect(await applied()).toBe(true);
    } finally {
      await ctx.db.sql`alter table step_runs drop column if exists upgrade_test`;
      await ctx.db
        .sql`delete from drizzle.__drizzle_migrations where created_at = ${journal.entries.at(-1).when}`;
      rmSync(folder, { recursive: true, force: true });
    }
  });
});

describe("processes starting together", () => {
  it("several migrators creating the same database at once all succeed", async () => {
    const name = `flowline_t_${inject("runId")}_race_${Date.now().toString(36)}`;
    const url = databaseUrl(name);
    try {
      const results = await Promise.allSettled(Array.from({ length: 6 }, () => ensureDatabase(url)));
      expect(results.filter((r) => r.status === "rejected")).toEqual([]);
      expect(results.filter((r) => r.status === "fulfilled" && r.value.created)).toHaveLength(1);
    } finally {
      const admin = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} });
      await admin.unsafe(`drop database if exists "${name}" with (force)`);
      await admin.end();
    }
  });
});
