/**
 * `npm run bench`: Flowline against raw BullMQ on the same machine, the same Postgres and one
 * redis-server of its own, in one process run. Prints every figure beside its raw BullMQ baseline
 * (measured in the same run), the ratio and its goal, marked met or NOT met, then what each step
 * costs (CPU, commits, row writes, statements, Redis commands), then the stores comparison
 * (bench/stores.ts). Asserts nothing. Uses its own
 * database and redis-server and removes both afterwards. BENCH_SCALE (default 1) scales the sizes.
 *
 * The API runs in this process (buildApp listening on 127.0.0.1:0), next to the worker
 * (startWorker) and the HTTP client, so that process.cpuUsage counts all three.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { pino } from "pino";
import postgres from "postgres";
import { definitionContext } from "../src/api/routes/workflows/index.ts";
import { encodeCursor } from "../src/api/schemas.ts";
import { parseConfig } from "../src/config/index.ts";
import { createDb } from "../src/db/client.ts";
import { runMigrations } from "../src/db/migrate.ts";
import { workflowsRepository } from "../src/db/repositories/workflows.ts";
import { validateWorkflowDefinition } from "../src/domain/workflow/validate.ts";
import { createEngineDeps } from "../src/engine/create.ts";
import { submitRun } from "../src/engine/runs.ts";
import { startWorker } from "../src/jobs/worker.ts";
import { BullStepDispatcher, fairShareOf } from "../src/queue/step-queue.ts";
import { RedisAssetLocks } from "../src/redis/asset-locks.ts";
import { createRedis } from "../src/redis/connection.ts";
import { RedisEventBus } from "../src/redis/event-bus.ts";
import { startPrivateRedis } from "../test/helpers/redis-server.ts";
import { FAIRNESS_QUEUES, fairnessBench } from "./fairness.ts";
import { getLatencies, replayEvents, startApi, submitOverHttp } from "./http.ts";
import { type Cost, createMeter } from "./measure.ts";
import { benchPlanner } from "./planner.ts";
import { profiled } from "./profile-summary.ts";
import { rawChain, rawDrain, rawFlow, rawInFlight } from "./raw.ts";
import { sseBenchmark } from "./sse.ts";
import { chainGaps, countRuns, seededRunId, seedRuns, stepGap, waitRuns } from "./store.ts";
import { tracingBenchmark } from "./tracing.ts";

const scale = Number(process.env.BENCH_SCALE ?? "1");
const WIDE = Math.max(2000, Math.round(5000 * scale));
const ONE_STEP = Math.max(200, Math.round(5000 * scale));
const IN_FLIGHT = 20;
const CHAIN = Math.max(100, Math.round(500 * scale));
const FAN = Math.max(100, Math.round(1000 * scale));
const STORED_SMALL = 10_000;
/** Stored runs for the second read point: 1M at scale 1; `BENCH_STORED_RUNS` sets it alone. */
const STORED_LARGE = Math.max(
  2 * STORED_SMALL,
  Number(process.env.BENCH_STORED_RUNS ?? Math.round(1_000_000 * scale)),
);
const GET_SAMPLES = 200;
const GET_BUDGET_MS = 5000;
const CONCURRENCY = 32;
const BACKLOG = Math.max(1000, Math.round(1000 * scale));
const FAIR_CONCURRENCY = 4;
/**
 * `BENCH_ONLY=fairness` runs the tenant fairness figures alone; `BENCH_ONLY=engine` everything but
 * the stores comparison; `BENCH_ONLY=tracing` the tracing comparison alone.
 */
const only = process.env.BENCH_ONLY;
const pgBase = process.env.FLOWLINE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

const id = randomBytes(3).toString("hex");
const dbUrl = new URL(pgBase);
dbUrl.pathname = `/flowline_bench_${id}`;
const prefix = `flbench:${id}`;
const log = pino({ level: "warn" });

const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
};
const num = (n: number, digits = 0) =>
  n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
const k = (n: number) => (n >= 1_000_000 ? `${n / 1_000_000}M` : n >= 1000 ? `${n / 1000}k` : String(n));

interface Row {
  measure: string;
  flowline: string;
  raw: string;
  ratio: string;
  goal: string;
  /** Undefined: no goal. */
  met?: boolean;
}
const rows: Row[] = [];
const started = performance.now();
const progress = (text: string) => console.log(`${num((performance.now() - started) / 1000, 1)} s: ${text}`);

async function bench(redisUrl: string) {
  await runMigrations(dbUrl.toString());
  const config = parseConfig({
    database: { url: dbUrl.toString(), poolMax: 20 },
    redis: { url: redisUrl, prefix },
    log: { level: "warn" },
    worker: { stallSeconds: 30 },
    rateLimit: { enabled: false },
    queues: { default: {}, ...FAIRNESS_QUEUES },
    // Submissions can outrun the worker: the bench measures throughput, not the quota's refusals.
    quotas: { activeRuns: 1_000_000, queuedSteps: 10_000_000 },
  });
  const db = createDb({ ...config.database, applicationName: "flowline-bench" });
  const redis = createRedis(redisUrl, "consumer");
  await redis.connect();
  const meter = await createMeter(db.sql, redis);
  const bus = new RedisEventBus(redis, null, prefix);
  const dispatcher = new BullStepDispatcher(
    { kind: "redis", redis, newConnection: () => createRedis(redisUrl, "consumer"), prefix },
    fairShareOf(config.queues),
  );
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
  const putFor = async (tenantId: string, name: string, steps: unknown[]) => {
    const result = validateWorkflowDefinition(
      { name, steps },
      { ...definitionContext(config, tenantId), maxSteps: 10_000 },
    );
    if (!result.ok) throw new Error(JSON.stringify(result.issues.slice(0, 2)));
    await workflows.put(tenantId, result.spec);
  };
  const put = (name: string, steps: unknown[]) => putFor("default", name, steps);
  const noop = { type: "noop" };
  const fairness = async () => {
    progress(`tenant fairness: a ${BACKLOG}-step backlog, then another tenant's one-step run`);
    const placed = await fairnessBench({
      engine,
      config,
      log,
      backlog: BACKLOG,
      concurrency: FAIR_CONCURRENCY,
      put: (tenantId, name, queue, steps) =>
        putFor(
          tenantId,
          name,
          Array.from({ length: steps }, (_, i) => ({ id: `s${i}`, queue, run: noop })),
        ),
    });
    for (const [queue, p] of Object.entries(placed))
      rows.push({
        measure: `tenant B's one-step run behind tenant A's ${num(BACKLOG)} queued steps, one worker × ${FAIR_CONCURRENCY} (fairShare ${queue === "fair" ? "on" : "off"}): A's steps started before B's / B submit → finish`,
        flowline: `${num(p.aBefore)} / ${num(p.latencyMs)} ms`,
        raw: "–",
        ratio: "–",
        goal: queue === "fair" ? `≤ ${FAIR_CONCURRENCY * 4} steps` : "–",
        ...(queue === "fair" ? { met: p.aBefore <= FAIR_CONCURRENCY * 4 } : {}),
      });
  };
  if (only === "fairness") {
    await fairness();
    printRows();
    await dispatcher.close();
    await redis.quit();
    await db.close();
    return;
  }
  await put(
    "wide",
    Array.from({ length: WIDE }, (_, i) => ({ id: `s${i}`, run: noop })),
  );
  await put("single", [{ id: "s", run: noop }]);
  await put(
    "chain",
    Array.from({ length: CHAIN }, (_, i) => ({
      id: `c${i}`,
      ...(i > 0 ? { needs: [`c${i - 1}`] } : {}),
      run: noop,
    })),
  );
  await put("fan", [
    { id: "root", run: noop },
    ...Array.from({ length: FAN }, (_, i) => ({ id: `f${i}`, needs: ["root"], run: noop })),
    { id: "join", needs: Array.from({ length: FAN }, (_, i) => `f${i}`), run: noop },
  ]);
  const measured = async <T>(work: () => Promise<T>): Promise<[T, Cost]> => {
    const before = await meter.snapshot();
    const result = await work();
    return [result, await meter.cost(before)];
  };

  // Raw BullMQ first, with no Flowline worker polling the same Redis.
  const raw = { redisUrl, prefix: `${prefix}:raw`, concurrency: CONCURRENCY };
  progress(
    `raw BullMQ: drain ${WIDE}, ${ONE_STEP} adds ${IN_FLIGHT} at a time, chain ${CHAIN}, flow of ${FAN}`,
  );
  const [rawWideRate, rawWideCost] = await measured(() => rawDrain(raw, WIDE));
  const [rawOneRate, rawOneCost] = await measured(() => rawInFlight(raw, ONE_STEP, IN_FLIGHT));
  const rawGaps = await rawChain(raw, CHAIN);
  const rawJoin = await rawFlow(raw, FAN);

  const worker = await startWorker({ config, queues: ["default"], concurrency: CONCURRENCY, log });

  progress(`Flowline: wide run of ${WIDE} steps`);
  const [wide, wideCost] = await measured(() =>
    profiled("wide-run", async () => {
      const t0 = Date.now();
      const { run } = await submitRun(engine, { tenantId: "default", workflow: "wide" });
      const last = await waitRuns(db.sql, [run.id], meter.own);
      return { id: run.id, rate: WIDE / ((last - t0) / 1000) };
    }),
  );

  progress(`Flowline: chain of ${CHAIN}, fan-out/join of ${FAN}`);
  const chain = await submitRun(engine, { tenantId: "default", workflow: "chain" });
  await waitRuns(db.sql, [chain.run.id]);
  const gaps = await chainGaps(db.sql, chain.run.id);
  const fan = await submitRun(engine, { tenantId: "default", workflow: "fan" });
  await waitRuns(db.sql, [fan.run.id]);
  const join = await stepGap(db.sql, fan.run.id, "root", "join");

  await fairness();

  const api = await startApi(config);
  progress(`Flowline: ${ONE_STEP} one-step runs over HTTP, ${IN_FLIGHT} requests in flight`);
  const [one, oneCost] = await measured(() =>
    profiled("one-step-runs", async () => {
      const t0 = Date.now();
      const ids = await submitOverHttp(api, "single", ONE_STEP, IN_FLIGHT);
      const last = await waitRuns(db.sql, ids, meter.own);
      return { ids, rate: ONE_STEP / ((last - t0) / 1000) };
    }),
  );

  progress(`event replay of the ${WIDE}-step run`);
  const replay = await replayEvents(api, wide.id);

  // Reads at 10k and at 1M stored runs: copies of a finished one-step run, seeded in SQL.
  interface Latency {
    p99: number;
    n: number;
  }
  const reads = new Map<number, { list: Latency; page: Latency; get: Latency; seedMs: number }>();
  let seeded = 0;
  for (const target of [STORED_SMALL, STORED_LARGE]) {
    const t = performance.now();
    const more = Math.max(0, target - (await countRuns(db.sql)));
    progress(`seeding ${num(more)} runs (to ${k(target)} stored)`);
    await seedRuns(db.sql, one.ids[0]!, seeded + 1, seeded + more);
    seeded += more;
    const seedMs = performance.now() - t;
    progress(`GET latencies at ${k(target)} stored runs`);
    const anySeeded = () => seededRunId(1 + Math.floor(Math.random() * seeded));
    // A cursor is a position in the list (creation time in µs and id), taken from random runs.
    const positions = (
      await db.sql<{ pos: string }[]>`
        select (extract(epoch from created_at) * 1000000)::bigint::text || ':' || id as pos
        from runs tablesample system (1) limit 200`
    ).map((r) => r.pos);
    if (positions.length === 0)
      positions.push(
        ...(
          await db.sql<{ pos: string }[]>`
            select (extract(epoch from created_at) * 1000000)::bigint::text || ':' || id as pos from runs limit 200`
        ).map((r) => r.pos),
      );
    const anyPosition = () => positions[Math.floor(Math.random() * positions.length)]!;
    const p99 = async (path: () => string) => {
      const latencies = await getLatencies(api, path, GET_SAMPLES, GET_BUDGET_MS);
      return { p99: percentile(latencies, 99), n: latencies.length };
    };
    reads.set(target, {
      list: await p99(() => "/v1/runs"),
      page: await p99(() => `/v1/runs?cursor=${encodeCursor(anyPosition())}`),
      get: await p99(() => `/v1/runs/${anySeeded()}`),
      seedMs,
    });
  }
  await api.close();
  await worker.close();

  const add = (row: Row) => rows.push(row);
  const atLeast = (fl: number, base: number, share: number, unit: string, measure: string) =>
    add({
      measure,
      flowline: `${num(fl)} ${unit}`,
      raw: `${num(base)} ${unit}`,
      ratio: `${num((fl / base) * 100)}% of raw`,
      goal: `≥ ${num(share * 100)}% of raw`,
      met: fl >= share * base,
    });
  const atMostTimes = (
    fl: number,
    base: number,
    times: number,
    unit: string,
    digits: number,
    measure: string,
  ) =>
    add({
      measure,
      flowline: `${num(fl, digits)} ${unit}`,
      raw: `${num(base, digits)} ${unit}`,
      ratio: `${num(fl / base, 2)}× raw`,
      goal: `≤ ${times}× raw`,
      met: fl <= times * base,
    });
  atLeast(
    wide.rate,
    rawWideRate,
    0.5,
    "steps/s",
    `wide run, ${num(WIDE)} no-op steps (raw: drain of ${num(WIDE)} jobs)`,
  );
  atLeast(
    one.rate,
    rawOneRate,
    0.33,
    "runs/s",
    `${num(ONE_STEP)} one-step runs over HTTP, ${IN_FLIGHT} in flight (raw: ${IN_FLIGHT} adds in flight)`,
  );
  for (const [p, goal] of [
    [50, 1],
    [99, 3],
  ] as const) {
    const fl = percentile(gaps, p);
    const base = percentile(rawGaps, p);
    add({
      measure: `chain hand-off p${p}, ${CHAIN} steps (raw: enqueue included)`,
      flowline: `${num(fl, 2)} ms`,
      raw: `${num(base, 2)} ms`,
      ratio: `${num(fl / base, 2)}× raw`,
      goal: `≤ ${goal} ms`,
      met: fl <= goal,
    });
  }
  atMostTimes(
    join,
    rawJoin,
    1.5,
    "ms",
    0,
    `fan-out/join of ${num(FAN)}: root's finish → join's start (raw: FlowProducer)`,
  );
  atMostTimes(wideCost.cpuMs / WIDE, rawWideCost.cpuMs / WIDE, 2, "ms", 3, "CPU per step, wide run");
  atMostTimes(
    oneCost.cpuMs / ONE_STEP,
    rawOneCost.cpuMs / ONE_STEP,
    2,
    "ms",
    3,
    "CPU per run, one-step runs over HTTP",
  );
  const small = reads.get(STORED_SMALL)!;
  const large = reads.get(STORED_LARGE)!;
  for (const [key, name] of [
    ["list", "GET /v1/runs (first page)"],
    ["page", "GET /v1/runs?cursor= (a random page)"],
    ["get", "GET /v1/runs/{id}"],
  ] as const) {
    const [a, b] = [small[key], large[key]];
    add({
      measure: `${name} p99, ${k(STORED_SMALL)} → ${k(STORED_LARGE)} stored runs (${a.n} / ${b.n} requests)`,
      flowline: `${num(a.p99, 1)} → ${num(b.p99, 1)} ms`,
      raw: "–",
      ratio: `${num(b.p99 / a.p99, 2)}×`,
      goal: "flat: ≤ 2×",
      met: b.p99 <= 2 * a.p99,
    });
  }
  add({
    measure: `event replay (SSE from after=0 to end), ${num(WIDE)}-step run, ${num(replay.events)} events`,
    flowline: `${num(replay.ms)} ms`,
    raw: "–",
    ratio: "–",
    goal: "< 1,000 ms",
    met: replay.ms < 1000,
  });

  progress("SSE streams on an API process of its own");
  const sse = await sseBenchmark({
    dbUrl: dbUrl.toString(),
    redisUrl,
    prefix,
    streams: Math.max(100, Math.round(2000 * scale)),
  });
  add({
    measure: `SSE memory per idle stream (${num(sse.streams)} streams)`,
    flowline: `${num(sse.bytesPerStream / 1024, 1)} KB`,
    raw: "–",
    ratio: "–",
    goal: "≤ 50 KB",
    met: sse.bytesPerStream <= 50 * 1024,
  });
  add({
    measure: `SSE delivery p50 / p99 (${num(sse.delivered)} of ${num(sse.streams)} streams)`,
    flowline: `${num(sse.p50, 1)} / ${num(sse.p99, 1)} ms`,
    raw: "–",
    ratio: "–",
    goal: "–",
  });

  progress("tracing off vs on (API and worker processes of their own)");
  for (const row of await tracingRows(redisUrl)) add(row);

  printRows();

  console.log("\nPer step (per run for one-step runs; per job for raw BullMQ):\n");
  console.log(
    "| case | CPU ms: total (process + Redis + Postgres) | Postgres commits | Postgres row writes | Postgres statements sent (run inside them) | Redis commands (script calls) |\n|---|---|---|---|---|---|",
  );
  const breakdown = (name: string, cost: Cost, n: number) => {
    const per = (v: number | null, digits = 1) => (v === null ? "n/a" : num(v / n, digits));
    console.log(
      `| ${name} | ${per(cost.cpuMs, 3)} (${per(cost.processMs, 3)} + ${per(cost.redisMs, 3)} + ${per(cost.pgMs, 3)}) | ${per(cost.commits, 2)} | ${per(cost.rowWrites)} | ${per(cost.statements)} (${per(cost.nestedStatements)}) | ${per(cost.redisCommands)} (${per(cost.redisScripts)}) |`,
    );
  };
  breakdown(`Flowline wide run (${num(WIDE)} steps)`, wideCost, WIDE);
  breakdown(`raw BullMQ drain (${num(WIDE)} jobs)`, rawWideCost, WIDE);
  breakdown(`Flowline one-step runs over HTTP (${num(ONE_STEP)})`, oneCost, ONE_STEP);
  breakdown(`raw BullMQ, ${IN_FLIGHT} adds in flight (${num(ONE_STEP)} jobs)`, rawOneCost, ONE_STEP);
  console.log(`\n${meter.describe()}`);
  printStatements(`Flowline wide run (${num(WIDE)} steps)`, wideCost, WIDE, "step");
  printStatements(`Flowline one-step runs over HTTP (${num(ONE_STEP)} runs)`, oneCost, ONE_STEP, "run");
  console.log(
    `Seeding (SQL copies of a finished one-step run with its step row and events): ${num(small.seedMs / 1000, 1)} s to ${k(STORED_SMALL)}, ${num(large.seedMs / 1000, 1)} s to ${k(STORED_LARGE)}.\n`,
  );
  await benchPlanner();
  progress("done");

  await dispatcher.close();
  await redis.quit();
  await db.close();
}

/** Where a case's round trips to Postgres go: its top-level statements, most called first. */
function printStatements(name: string, cost: Cost, n: number, unit: "step" | "run") {
  if (cost.statementsByQuery.length === 0) return;
  console.log(`\n${name}: statements sent, per ${unit}\n\n| per ${unit} | statement |\n|---|---|`);
  for (const q of cost.statementsByQuery.slice(0, 20)) {
    const text = q.query.length > 140 ? `${q.query.slice(0, 140)}…` : q.query;
    console.log(`| ${num(q.calls / n, 2)} | \`${text.replaceAll("|", "\\|").replaceAll("`", "'")}\` |`);
  }
}

function printRows() {
  const marker = (r: Row) => (r.met === undefined ? "" : r.met ? "met" : "**NOT met**");
  console.log(`\nBENCH_SCALE=${scale}\n`);
  console.log("| measure | Flowline | raw BullMQ | ratio | goal | |\n|---|---|---|---|---|---|");
  for (const r of rows)
    console.log(`| ${r.measure} | ${r.flowline} | ${r.raw} | ${r.ratio} | ${r.goal} | ${marker(r)} |`);
  const goals = rows.filter((r) => r.met !== undefined);
  console.log(`\n${goals.filter((r) => r.met).length} of ${goals.length} goals met.`);
}

/** Three-step runs over HTTP with tracing off, then on: throughput and CPU per run. */
async function tracingRows(redisUrl: string): Promise<Row[]> {
  const t = await tracingBenchmark({
    dbUrl: dbUrl.toString(),
    redisUrl,
    prefix: `${prefix}:tracing`,
    runs: Math.max(200, Math.round(2000 * scale)),
  });
  const pct = (on: number, off: number) => `${on >= off ? "+" : ""}${num(((on - off) / off) * 100, 1)}%`;
  return [
    {
      measure: `3-step runs over HTTP, tracing on vs off (${num(t.runs)} runs, ${num(t.spansPerRun, 1)} spans a run)`,
      flowline: `${num(t.on.runsPerSecond, 1)} vs ${num(t.off.runsPerSecond, 1)} runs/s`,
      raw: "–",
      ratio: pct(t.on.runsPerSecond, t.off.runsPerSecond),
      goal: "–",
    },
    {
      measure: "CPU per 3-step run (API + worker processes), tracing on vs off",
      flowline: `${num(t.on.cpuMsPerRun, 2)} vs ${num(t.off.cpuMsPerRun, 2)} ms`,
      raw: "–",
      ratio: pct(t.on.cpuMsPerRun, t.off.cpuMsPerRun),
      goal: "–",
    },
  ];
}

/**
 * The same workload on the Redis deployment, Postgres-only and the embedded zero-service mode, each
 * beside raw BullMQ on its backend (bench/stores.ts, also `npm run bench:stores`). A process of its
 * own: it starts and stops an embedded Postgres and opens the stores of each mode.
 */
async function benchStores(): Promise<void> {
  progress("stores: Redis vs Postgres-only vs embedded (bench/stores.ts)");
  console.log("\nStores (the Postgres-only and zero-service modes against the Redis deployment):\n");
  const child = spawn(process.execPath, ["bin/run-ts.js", "bench/stores.ts"], { stdio: "inherit" });
  const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
  if (code !== 0) console.log(`(bench/stores.ts exited with ${code})`);
}

async function main() {
  if (only !== undefined && !["engine", "fairness", "tracing"].includes(only))
    throw new Error(`BENCH_ONLY=${only}: one of engine, fairness, tracing`);
  const redisServer = await startPrivateRedis();
  try {
    if (process.env.BENCH_ONLY === "tracing") {
      // `npm run bench:tracing`: only the tracing comparison.
      await runMigrations(dbUrl.toString());
      console.log("| measure | Flowline | raw BullMQ | ratio | goal |\n|---|---|---|---|---|");
      for (const r of await tracingRows(redisServer.url))
        console.log(`| ${r.measure} | ${r.flowline} | ${r.raw} | ${r.ratio} | ${r.goal} |`);
      return;
    }
    await bench(redisServer.url);
    if (only === undefined) await benchStores();
  } finally {
    const admin = postgres(pgBase, { max: 1, onnotice: () => {} });
    await admin.unsafe(`drop database if exists "flowline_bench_${id}" with (force)`);
    await admin.end();
    await redisServer.stop();
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
