/**
 * `npm run bench`: Flowline against raw BullMQ on the same machine and the same Redis, in one run.
 * Prints figures and ratios; asserts nothing. Uses its own database and Redis key prefix and
 * removes both afterwards. BENCH_SCALE (default 1) scales the sizes down for a quick look.
 */
import { randomBytes } from "node:crypto";
import { FlowProducer, Queue, Worker } from "bullmq";
import { pino } from "pino";
import postgres from "postgres";
import { definitionContext } from "../src/api/routes/workflows/index.ts";
import { parseConfig } from "../src/config/index.ts";
import { createDb } from "../src/db/client.ts";
import { runMigrations } from "../src/db/migrate.ts";
import { workflowsRepository } from "../src/db/repositories/workflows.ts";
import { validateWorkflowDefinition } from "../src/domain/workflow/validate.ts";
import { createEngineDeps } from "../src/engine/create.ts";
import { submitRun } from "../src/engine/runs.ts";
import { startWorker } from "../src/jobs/worker.ts";
import { RedisAssetLocks } from "../src/redis/asset-locks.ts";
import { createRedis, deleteByPattern } from "../src/redis/connection.ts";
import { RedisEventBus } from "../src/redis/event-bus.ts";
import { BullStepDispatcher } from "../src/redis/step-queue.ts";
import { benchPlanner } from "./planner.ts";
import { sseBenchmark } from "./sse.ts";

const scale = Number(process.env.BENCH_SCALE ?? "1");
const N = Math.max(50, Math.round(5000 * scale));
const CHAIN = Math.max(20, Math.round(200 * scale));
const FAN = Math.max(50, Math.round(1000 * scale));
const CONCURRENCY = 32;
const pgBase = process.env.FLOWLINE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const redisUrl = process.env.FLOWLINE_TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

const id = randomBytes(3).toString("hex");
const dbUrl = new URL(pgBase);
dbUrl.pathname = `/flowline_bench_${id}`;
const prefix = `flbench:${id}`;
const log = pino({ level: "warn" });

const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
};
const fmt = (n: number, digits = 1) => n.toFixed(digits);
const rows: Array<[string, string, string, string]> = [];
const report = (name: string, flowline: number, raw: number, unit: string, higherIsBetter: boolean) => {
  const ratio = higherIsBetter ? flowline / raw : raw / flowline;
  rows.push([name, `${fmt(flowline)} ${unit}`, `${fmt(raw)} ${unit}`, `${fmt(ratio * 100, 0)}%`]);
  console.log(`${name}: flowline ${fmt(flowline)} ${unit}, raw BullMQ ${fmt(raw)} ${unit}`);
};

async function main() {
  await runMigrations(dbUrl.toString());
  const config = parseConfig({
    database: { url: dbUrl.toString(), poolMax: 20 },
    redis: { url: redisUrl, prefix },
    log: { level: "warn" },
    worker: { stallSeconds: 30 },
  });
  const db = createDb({ ...config.database, applicationName: "flowline-bench" });
  const redis = createRedis(redisUrl, "consumer");
  await redis.connect();
  const bus = new RedisEventBus(redis, null, prefix);
  const dispatcher = new BullStepDispatcher(redis, prefix);
  const engine = createEngineDeps({
    db,
    config,
    dispatcher,
    notifier: bus,
    control: bus,
    locks: new RedisAssetLocks(redis, prefix),
    log,
  });
  const workflows = workflowsRepository(db.db);
  await db.sql`insert into tenants (id) values ('default') on conflict do nothing`;
  const put = async (spec: unknown) => {
    const result = validateWorkflowDefinition(spec, {
      ...definitionContext(config, "default"),
      maxSteps: 10_000,
    });
    if (!result.ok) throw new Error(JSON.stringify(result.issues.slice(0, 2)));
    await workflows.put("default", result.spec);
  };
  const waitRuns = async (ids: string[]) => {
    for (;;) {
      const [row] = await db.sql<{ n: number }[]>`
        select count(*)::int as n from runs where id in ${db.sql(ids)} and status in ('succeeded', 'failed', 'cancelled')`;
      if (row!.n === ids.length) return;
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const worker = await startWorker({ config, queues: ["default"], concurrency: CONCURRENCY, log });

  // 1. Throughput: one wide workflow of N no-op steps, and N one-step runs.
  await put({
    name: "wide",
    steps: Array.from({ length: N }, (_, i) => ({ id: `s${i}`, run: { type: "noop" } })),
  });
  await put({ name: "single", steps: [{ id: "s", run: { type: "noop" } }] });
  let t = performance.now();
  const wide = await submitRun(engine, { tenantId: "default", workflow: "wide" });
  await waitRuns([wide.run.id]);
  const wideRate = N / ((performance.now() - t) / 1000);
  t = performance.now();
  const singles: string[] = [];
  for (let i = 0; i < N; i += 100) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(100, N - i) }, () =>
        submitRun(engine, { tenantId: "default", workflow: "single" }),
      ),
    );
    singles.push(...batch.map((b) => b.run.id));
  }
  await waitRuns(singles);
  const singleRate = N / ((performance.now() - t) / 1000);

  const rawQueue = new Queue("raw", { connection: redis, prefix: `${prefix}:raw` });
  let done = 0;
  let onDone: () => void = () => {};
  const rawWorker = new Worker("raw", async () => null, {
    connection: createRedis(redisUrl, "consumer"),
    prefix: `${prefix}:raw`,
    concurrency: CONCURRENCY,
  });
  rawWorker.on("completed", () => {
    done++;
    onDone();
  });
  const until = (n: number) =>
    new Promise<void>((resolve) => {
      onDone = () => done >= n && resolve();
      onDone();
    });
  t = performance.now();
  for (let i = 0; i < N; i += 1000) {
    await rawQueue.addBulk(
      Array.from({ length: Math.min(1000, N - i) }, (_, k) => ({ name: "noop", data: { k } })),
    );
  }
  await until(N);
  const rawRate = N / ((performance.now() - t) / 1000);
  report(`throughput, ${N} steps in one wide run`, wideRate, rawRate, "steps/s", true);
  report(`throughput, ${N} one-step runs`, singleRate, rawRate, "steps/s", true);

  // 2. Hand-off latency along a chain.
  await put({
    name: "chain",
    steps: Array.from({ length: CHAIN }, (_, i) => ({
      id: `c${i}`,
      ...(i > 0 ? { needs: [`c${i - 1}`] } : {}),
      run: { type: "noop" },
    })),
  });
  const chain = await submitRun(engine, { tenantId: "default", workflow: "chain" });
  await waitRuns([chain.run.id]);
  const steps = await db.sql<{ step_id: string; started_at: Date; finished_at: Date }[]>`
    select step_id, started_at, finished_at from step_runs where run_id = ${chain.run.id}`;
  const byIndex = new Map(steps.map((s) => [Number(s.step_id.slice(1)), s]));
  const flowlineHandoffs: number[] = [];
  for (let i = 1; i < CHAIN; i++) {
    flowlineHandoffs.push(byIndex.get(i)!.started_at.getTime() - byIndex.get(i - 1)!.finished_at.getTime());
  }
  // Postgres timestamps are in microseconds but read as ms Dates; good enough for ms percentiles.
  const rawHandoffs: number[] = [];
  const chainQueue = new Queue("rawchain", { connection: redis, prefix: `${prefix}:raw` });
  let previousEnd = 0;
  let finishChain: () => void = () => {};
  const chainDone = new Promise<void>((r) => {
    finishChain = r;
  });
  const chainWorker = new Worker(
    "rawchain",
    async (job) => {
      const start = performance.now();
      if (previousEnd) rawHandoffs.push(start - previousEnd);
      const k = job.data.k as number;
      previousEnd = performance.now();
      if (k + 1 < CHAIN) await chainQueue.add("step", { k: k + 1 });
      else finishChain();
      previousEnd = performance.now();
    },
    { connection: createRedis(redisUrl, "consumer"), prefix: `${prefix}:raw`, concurrency: 1 },
  );
  await chainQueue.add("step", { k: 0 });
  await chainDone;
  report("hand-off p50", percentile(flowlineHandoffs, 50), percentile(rawHandoffs, 50), "ms", false);
  report("hand-off p99", percentile(flowlineHandoffs, 99), percentile(rawHandoffs, 99), "ms", false);

  // 3. Fan-out to FAN steps joined by one.
  await put({
    name: "fan",
    steps: [
      { id: "root", run: { type: "noop" } },
      ...Array.from({ length: FAN }, (_, i) => ({ id: `f${i}`, needs: ["root"], run: { type: "noop" } })),
      { id: "join", needs: Array.from({ length: FAN }, (_, i) => `f${i}`), run: { type: "noop" } },
    ],
  });
  const fan = await submitRun(engine, { tenantId: "default", workflow: "fan" });
  await waitRuns([fan.run.id]);
  const [fanTimes] = await db.sql<{ root_end: Date; join_start: Date }[]>`
    select (select finished_at from step_runs where run_id = ${fan.run.id} and step_id = 'root') as root_end,
           (select started_at from step_runs where run_id = ${fan.run.id} and step_id = 'join') as join_start`;
  const flowlineJoin = fanTimes!.join_start.getTime() - fanTimes!.root_end.getTime();
  let parentStarted = 0;
  const parentWorker = new Worker(
    "rawparent",
    async () => {
      parentStarted = performance.now();
    },
    { connection: createRedis(redisUrl, "consumer"), prefix: `${prefix}:raw` },
  );
  const childWorker = new Worker("rawchild", async () => null, {
    connection: createRedis(redisUrl, "consumer"),
    prefix: `${prefix}:raw`,
    concurrency: CONCURRENCY,
  });
  const flow = new FlowProducer({ connection: redis, prefix: `${prefix}:raw` });
  t = performance.now();
  await flow.add({
    name: "join",
    queueName: "rawparent",
    children: Array.from({ length: FAN }, (_, i) => ({ name: "child", queueName: "rawchild", data: { i } })),
  });
  while (!parentStarted) await new Promise((r) => setTimeout(r, 5));
  const rawJoin = parentStarted - t;
  report(`fan-out/join of ${FAN}: until the join starts`, flowlineJoin, rawJoin, "ms", false);

  await Promise.all([rawWorker.close(), chainWorker.close(), parentWorker.close(), childWorker.close()]);
  await Promise.all([rawQueue.close(), chainQueue.close(), flow.close()]);
  await worker.close();

  // 4. SSE: memory per idle stream and delivery latency, on a separate API process.
  const sse = await sseBenchmark({
    dbUrl: dbUrl.toString(),
    redisUrl,
    prefix,
    streams: Math.max(100, Math.round(2000 * scale)),
  });
  rows.push([
    `SSE: memory per idle stream (${sse.streams} streams)`,
    `${fmt(sse.bytesPerStream / 1024)} KB`,
    "-",
    "-",
  ]);
  rows.push(["SSE: event delivery p50 / p99", `${fmt(sse.p50)} / ${fmt(sse.p99)} ms`, "-", "-"]);

  console.log("\n| measure | Flowline | raw BullMQ | Flowline vs raw |\n|---|---|---|---|");
  for (const r of rows) console.log(`| ${r.join(" | ")} |`);
  console.log("");
  await benchPlanner();

  await dispatcher.close();
  await deleteByPattern(redis, `${prefix}:*`);
  await redis.quit();
  await db.close();
  const admin = postgres(pgBase, { max: 1, onnotice: () => {} });
  await admin.unsafe(`drop database if exists "flowline_bench_${id}" with (force)`);
  await admin.end();
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
