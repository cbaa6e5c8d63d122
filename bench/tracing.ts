/**
 * What tracing costs: the same three-step runs submitted over HTTP to an API process and run by a
 * worker process, once with tracing off and once on (exporting OTLP/HTTP to a local sink that
 * drops the spans). Reports runs per second and CPU per run of the two processes (from their own
 * /metrics), and the spans exported per run.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { freePort } from "../test/helpers/processes.ts";
import { sample } from "../test/helpers/prometheus.ts";

const KEY = "flk_bench_root_key_0123456789abcdefghij";
const IN_FLIGHT = 20;

export interface TracingCost {
  runsPerSecond: number;
  cpuMsPerRun: number;
}

export interface TracingBenchResult {
  runs: number;
  off: TracingCost;
  on: TracingCost;
  spansPerRun: number;
}

async function cpuSeconds(url: string): Promise<number> {
  return sample(await (await fetch(url)).text(), "flowline_process_cpu_seconds_total");
}

async function waitFor(check: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    try {
      if (await check()) return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`bench: ${what} did not happen in 60 s`);
}

async function measure(
  opts: { dbUrl: string; redisUrl: string; prefix: string; runs: number; otlp?: string },
  workflow: string,
): Promise<TracingCost> {
  const bin = fileURLToPath(new URL("../bin/flowline.js", import.meta.url));
  const [apiPort, workerPort] = [await freePort(), await freePort()];
  const configFile = join(tmpdir(), `flowline-bench-tracing-${process.pid}.yaml`);
  writeFileSync(configFile, "queues: { default: { concurrency: 32 } }\n");
  const env = {
    PATH: process.env.PATH,
    FLOWLINE_CONFIG: configFile,
    DATABASE_URL: opts.dbUrl,
    REDIS_URL: opts.redisUrl,
    FLOWLINE_REDIS_PREFIX: opts.prefix,
    FLOWLINE_BOOTSTRAP_KEY: KEY,
    FLOWLINE_RATE_LIMIT_ENABLED: "false",
    LOG_LEVEL: "warn",
    ...(opts.otlp ? { OTEL_EXPORTER_OTLP_ENDPOINT: opts.otlp } : {}),
  };
  const children: ChildProcess[] = [
    spawn(process.execPath, [bin, "api"], {
      env: { ...env, PORT: String(apiPort) },
      stdio: ["ignore", "ignore", "inherit"],
    }),
    spawn(process.execPath, [bin, "worker", "--concurrency", "32", "--metrics-port", String(workerPort)], {
      env,
      stdio: ["ignore", "ignore", "inherit"],
    }),
  ];
  const base = `http://127.0.0.1:${apiPort}`;
  const metrics = [`${base}/metrics`, `http://127.0.0.1:${workerPort}/metrics`];
  const sql = postgres(opts.dbUrl, { max: 1, onnotice: () => {} });
  try {
    await waitFor(async () => (await fetch(`${base}/readyz`)).ok, "the API starting");
    await waitFor(async () => (await fetch(metrics[1]!)).ok, "the worker starting");
    const headers = { authorization: `Bearer ${KEY}`, "content-type": "application/json" };
    await fetch(`${base}/v1/workflows/${workflow}`, {
      method: "PUT",
      headers,
      body: JSON.stringify({
        steps: [
          { id: "a", run: { type: "noop" } },
          { id: "b", needs: ["a"], run: { type: "noop" } },
          { id: "c", needs: ["b"], run: { type: "noop" } },
        ],
      }),
    });
    const agent = new http.Agent({ keepAlive: true, maxSockets: IN_FLIGHT });
    const submit = (n: number) => {
      let next = 0;
      const lane = async () => {
        while (next < n) {
          next++;
          await new Promise<void>((resolve, reject) => {
            const req = http.request(
              `${base}/v1/workflows/${workflow}/runs`,
              { method: "POST", headers, agent },
              (res) => {
                res.resume();
                res.on("end", () =>
                  res.statusCode === 202 ? resolve() : reject(new Error(`POST: ${res.statusCode}`)),
                );
              },
            );
            req.on("error", reject);
            req.end("{}");
          });
        }
      };
      return Promise.all(Array.from({ length: IN_FLIGHT }, lane));
    };
    const finished = async () =>
      Number(
        (
          await sql`select count(*)::int as n from runs r join workflows w on w.id = r.workflow_id
            where w.name = ${workflow} and r.status = 'succeeded'`
        )[0]!.n,
      );
    const warmUp = 20;
    await submit(warmUp);
    await waitFor(async () => (await finished()) >= warmUp, "the warm-up runs finishing");
    const cpuBefore = (await Promise.all(metrics.map(cpuSeconds))).reduce((a, b) => a + b, 0);
    const started = performance.now();
    await submit(opts.runs);
    await waitFor(async () => (await finished()) >= warmUp + opts.runs, "the runs finishing");
    const seconds = (performance.now() - started) / 1000;
    const cpuAfter = (await Promise.all(metrics.map(cpuSeconds))).reduce((a, b) => a + b, 0);
    agent.destroy();
    return { runsPerSecond: opts.runs / seconds, cpuMsPerRun: ((cpuAfter - cpuBefore) * 1000) / opts.runs };
  } finally {
    for (const child of children) child.kill("SIGTERM");
    await Promise.all(children.map((c) => (c.exitCode === null ? once(c, "exit") : undefined)));
    await sql.end();
    rmSync(configFile, { force: true });
  }
}

export async function tracingBenchmark(opts: {
  dbUrl: string;
  redisUrl: string;
  prefix: string;
  runs: number;
}): Promise<TracingBenchResult> {
  let spans = 0;
  const sink = http.createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => {
      body += chunk;
    });
    req.on("end", () => {
      spans += (body.match(/"spanId"/g) ?? []).length;
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  sink.listen(0, "127.0.0.1");
  await once(sink, "listening");
  const otlp = `http://127.0.0.1:${(sink.address() as { port: number }).port}`;
  try {
    const off = await measure(opts, "bench-trace-off");
    const on = await measure({ ...opts, otlp }, "bench-trace-on");
    // Both processes flushed their spans when they stopped; warm-up runs included.
    return { runs: opts.runs, off, on, spansPerRun: spans / (opts.runs + 20) };
  } finally {
    sink.close();
  }
}
