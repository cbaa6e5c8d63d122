/**
 * `npm run bench:stores`: the same Flowline workload on the Redis deployment, on the Postgres-only
 * one (no REDIS_URL) and on the zero-service mode (an embedded Postgres, as `flowline up` starts
 * with nothing configured), in one process run, each beside raw BullMQ on the same backend:
 *
 *   - one-step runs/s: ONE_STEP runs of a one-step workflow submitted over HTTP, 20 in flight;
 *   - wide steps/s: one run of WIDE independent steps;
 *   - hand-off: ms from a step's end to its child's start in a chain (p50);
 *   - SSE delivery: ms from a step's event to its arrival on an open stream (p50/p99 of a chain);
 *   - raw BullMQ: no-op jobs added in bulk and drained (jobs/s), same concurrency.
 *
 * Each mode gets a database of its own (dropped afterwards); Redis mode uses the machine's Redis
 * under a prefix of its own. BENCH_SCALE (default 1) scales the sizes. Asserts nothing.
 */
import { randomBytes } from "node:crypto";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createPostgresBackend, type Processor, Queue, Worker } from "bullmq";
import { pino } from "pino";
import postgres from "postgres";
import { definitionContext } from "../src/api/routes/workflows/index.ts";
import { parseConfig } from "../src/config/index.ts";
import { createDb } from "../src/db/client.ts";
import { runMigrations } from "../src/db/migrate.ts";
import { workflowsRepository } from "../src/db/repositories/workflows.ts";
import { validateWorkflowDefinition } from "../src/domain/workflow/validate.ts";
import { startWorker } from "../src/jobs/worker.ts";
import { createRedis, deleteByPattern } from "../src/redis/connection.ts";
import { startEmbeddedPostgres } from "../src/stores/embedded-postgres.ts";
import { startApi, submitOverHttp } from "./http.ts";
import { chainGaps, waitRuns } from "./store.ts";

const scale = Number(process.env.BENCH_SCALE ?? "1");
const ONE_STEP = Math.max(200, Math.round(2000 * scale));
const WIDE = Math.max(500, Math.round(2000 * scale));
const CHAIN = 50;
const IN_FLIGHT = 20;
const CONCURRENCY = 32;
const machinePg = process.env.FLOWLINE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const redisUrl = process.env.FLOWLINE_TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
const log = pino({ level: "warn" });
const id = randomBytes(3).toString("hex");

const num = (n: number) => n.toLocaleString("en-US", { maximumFractionDigits: 0 });
const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
};

interface Figures {
  oneStep: number;
  wide: number;
  handOffP50: number;
  sseP50: number;
  sseP99: number;
  raw: number;
}

async function rawDrain(
  kind: "redis" | "postgres",
  dbUrl: string,
  prefix: string,
  n: number,
): Promise<number> {
  const processor: Processor = async () => null;
  const redis = kind === "redis" ? createRedis(redisUrl, "consumer") : null;
  const queue =
    kind === "redis"
      ? new Queue("rawdrain", { connection: redis!, prefix })
      : new Queue(
          "rawdrain",
          { connection: { connectionString: dbUrl, max: 4 }, prefix },
          createPostgresBackend,
        );
  const worker =
    kind === "redis"
      ? new Worker("rawdrain", processor, {
          connection: createRedis(redisUrl, "consumer"),
          prefix,
          concurrency: CONCURRENCY,
        })
      : new Worker(
          "rawdrain",
          processor,
          { connection: { connectionString: dbUrl, max: 8 }, prefix, concurrency: CONCURRENCY },
          createPostgresBackend,
        );
  let done = 0;
  let finished: () => void = () => {};
  const all = new Promise<void>((r) => {
    finished = r;
  });
  worker.on("completed", () => {
    if (++done === n) finished();
  });
  await worker.waitUntilReady();
  const t0 = performance.now();
  for (let i = 0; i < n; i += 500) {
    await queue.addBulk(
      Array.from({ length: Math.min(500, n - i) }, (_, k) => ({ name: "noop", data: { k } })),
    );
  }
  await all;
  const rate = n / ((performance.now() - t0) / 1000);
  await worker.close();
  await queue.close();
  redis?.disconnect();
  return rate;
}

/** Step commit → event received on an open stream, per step of a chain (ms). */
async function sseDelivery(base: string, key: string, runId: string): Promise<number[]> {
  const res = await fetch(`${base}/v1/runs/${runId}/events`, {
    headers: { accept: "text/event-stream", authorization: `Bearer ${key}` },
  });
  const latencies: number[] = [];
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    const now = Date.now();
    buffer += decoder.decode(chunk, { stream: true });
    let cut = buffer.indexOf("\n\n");
    while (cut >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (/^event: end$/m.test(block)) return latencies;
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (data && /^event: step\.succeeded$/m.test(block)) {
        const at = Date.parse((JSON.parse(data) as { at?: string; createdAt?: string }).at ?? "");
        if (Number.isFinite(at)) latencies.push(now - at);
      }
      cut = buffer.indexOf("\n\n");
    }
  }
  return latencies;
}

async function bench(kind: "redis" | "postgres", pgBase: string): Promise<Figures> {
  const dbUrl = new URL(pgBase);
  dbUrl.pathname = `/flowline_bench_${kind}_${id}`;
  const prefix = `flbench:${kind}:${id}`;
  await runMigrations(dbUrl.toString(), { queues: kind === "postgres" });
  const config = parseConfig({
    database: { url: dbUrl.toString(), poolMax: 6 },
    redis: kind === "redis" ? { url: redisUrl, prefix } : { prefix },
    log: { level: "warn" },
    worker: { stallSeconds: 30 },
    rateLimit: { enabled: false },
  });
  const db = createDb({ ...config.database, applicationName: "flowline-bench" });
  try {
    const raw = await rawDrain(kind, dbUrl.toString(), `${prefix}:raw`, ONE_STEP);
    await db.sql`insert into tenants (id) values ('default') on conflict do nothing`;
    const workflows = workflowsRepository(db.db);
    const put = async (name: string, steps: unknown[]) => {
      const result = validateWorkflowDefinition(
        { name, steps },
        { ...definitionContext(config, "default"), maxSteps: 10_000 },
      );
      if (!result.ok) throw new Error(JSON.stringify(result.issues.slice(0, 2)));
      await workflows.put("default", result.spec);
    };
    await put("single", [{ id: "s", run: { type: "noop" } }]);
    await put(
      "wide",
      Array.from({ length: WIDE }, (_, i) => ({ id: `s${i}`, run: { type: "noop" } })),
    );
    await put(
      "chain",
      Array.from({ length: CHAIN }, (_, i) => ({
        id: `c${i}`,
        ...(i > 0 ? { needs: [`c${i - 1}`] } : {}),
        run: { type: "noop" },
      })),
    );
    const worker = await startWorker({ config, queues: ["default"], concurrency: CONCURRENCY, log });
    const api = await startApi(config);
    try {
      let t0 = Date.now();
      const ids = await submitOverHttp(api, "single", ONE_STEP, IN_FLIGHT);
      const oneStep = ONE_STEP / (((await waitRuns(db.sql, ids)) - t0) / 1000);
      t0 = Date.now();
      const [wideRun] = await submitOverHttp(api, "wide", 1, 1);
      const wide = WIDE / (((await waitRuns(db.sql, [wideRun!])) - t0) / 1000);
      const [chainRun] = await submitOverHttp(api, "chain", 1, 1);
      const latencies = await sseDelivery(api.base, "flk_bench_http_key_0123456789abcdefghij", chainRun!);
      const handOffP50 = percentile(await chainGaps(db.sql, chainRun!), 50);
      return {
        oneStep,
        wide,
        handOffP50,
        sseP50: percentile(latencies, 50),
        sseP99: percentile(latencies, 99),
        raw,
      };
    } finally {
      await api.close();
      await worker.close();
    }
  } finally {
    await db.close();
    const admin = postgres(pgBase, { max: 1, onnotice: () => {} });
    await admin.unsafe(`drop database if exists "${dbUrl.pathname.slice(1)}" with (force)`);
    await admin.end();
    if (kind === "redis") {
      const redis = createRedis(redisUrl, "consumer");
      await redis.connect();
      await deleteByPattern(redis, `${prefix}:*`);
      await redis.quit();
    }
  }
}

const redis = await bench("redis", machinePg);
const postgresOnly = await bench("postgres", machinePg);
const embeddedDir = mkdtempSync(join(tmpdir(), "flowline-bench-"));
chmodSync(embeddedDir, 0o755);
const embedded = await startEmbeddedPostgres({ dataDir: embeddedDir });
let zero: Figures;
try {
  zero = await bench("postgres", embedded.url.replace(/\/flowline$/, "/postgres"));
} finally {
  await embedded.stop();
  rmSync(embeddedDir, { recursive: true, force: true });
}
const row = (measure: string, pick: (f: Figures) => number, unit: string, higherIsBetter = true) => {
  const r = pick(redis);
  const ratio = (f: Figures) => (higherIsBetter ? r / pick(f) : pick(f) / r);
  const cell = (f: Figures) =>
    `${num(pick(f))} ${unit} (${ratio(f).toFixed(2)}×${ratio(f) <= 2 ? "" : ", over 2×"})`;
  return `| ${measure} | ${num(r)} ${unit} | ${cell(postgresOnly)} | ${cell(zero)} |`;
};
console.log(
  [
    `one-step runs: ${ONE_STEP}, wide run: ${WIDE} steps, chain: ${CHAIN}, worker concurrency ${CONCURRENCY}`,
    "(×: how many times slower than the Redis deployment; goal: within 2×)",
    "",
    "| measure | Redis deployment | Postgres-only | embedded (zero-service) |",
    "| --- | --- | --- | --- |",
    row("one-step runs/s (HTTP, 20 in flight)", (f) => f.oneStep, "runs/s"),
    row("wide run, steps/s", (f) => f.wide, "steps/s"),
    row("hand-off p50 (chain)", (f) => f.handOffP50, "ms", false),
    row("SSE delivery p50", (f) => f.sseP50, "ms", false),
    row("SSE delivery p99", (f) => f.sseP99, "ms", false),
    row("raw BullMQ drain, jobs/s", (f) => f.raw, "jobs/s"),
  ].join("\n"),
);
process.exit(0);
