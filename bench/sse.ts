/**
 * SSE at scale: an API process of its own (so its memory is not mixed with the clients'), many
 * idle streams on one run, then one state change whose delivery time is measured on every stream.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { freePort } from "../test/helpers/processes.ts";

const KEY = "flk_bench_root_key_0123456789abcdefghij";

async function metric(base: string, name: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return Number(line?.split(" ")[1] ?? Number.NaN);
}

export async function sseBenchmark(opts: {
  dbUrl: string;
  redisUrl: string;
  prefix: string;
  streams: number;
}) {
  const port = await freePort();
  const bin = fileURLToPath(new URL("../bin/flowline.js", import.meta.url));
  // Every stream belongs to one tenant: its quota of open streams must admit them all.
  const configFile = join(tmpdir(), `flowline-bench-sse-${process.pid}.yaml`);
  writeFileSync(configFile, `quotas: { streams: ${opts.streams + 10} }\n`);
  const api = spawn(process.execPath, ["--expose-gc", bin, "api"], {
    env: {
      PATH: process.env.PATH,
      FLOWLINE_CONFIG: configFile,
      DATABASE_URL: opts.dbUrl,
      REDIS_URL: opts.redisUrl,
      FLOWLINE_REDIS_PREFIX: opts.prefix,
      FLOWLINE_BOOTSTRAP_KEY: KEY,
      FLOWLINE_RATE_LIMIT_ENABLED: "false",
      PORT: String(port),
      LOG_LEVEL: "warn",
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const base = `http://127.0.0.1:${port}`;
  try {
    for (let i = 0; ; i++) {
      try {
        if ((await fetch(`${base}/readyz`)).ok) break;
      } catch {
        if (i > 200) throw new Error("API did not start");
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const headers = { authorization: `Bearer ${KEY}`, "content-type": "application/json" };
    await fetch(`${base}/v1/workflows/parked`, {
      method: "PUT",
      headers,
      // Only the API runs: nothing serves the default queue, so the run stays active.
      body: JSON.stringify({ steps: [{ id: "wait", run: { type: "noop" } }] }),
    });
    const run = (await (
      await fetch(`${base}/v1/workflows/parked/runs`, { method: "POST", headers, body: "{}" })
    ).json()) as {
      id: string;
    };
    await new Promise((r) => setTimeout(r, 500));
    const rssBefore = await metric(base, "flowline_process_resident_memory_bytes");

    const agent = new http.Agent({ keepAlive: false, maxSockets: Number.POSITIVE_INFINITY });
    const arrivals: number[] = [];
    const ready: Promise<void>[] = [];
    const requests: http.ClientRequest[] = [];
    for (let i = 0; i < opts.streams; i++) {
      ready.push(
        new Promise((resolve, reject) => {
          const req = http.get(
            `${base}/v1/runs/${run.id}/events`,
            { agent, headers: { authorization: `Bearer ${KEY}`, accept: "text/event-stream" } },
            (res) => {
              let buffer = "";
              let replayed = false;
              res.setEncoding("utf8");
              res.on("data", (chunk: string) => {
                buffer += chunk;
                if (!replayed && buffer.includes("event: step.queued")) {
                  replayed = true;
                  resolve();
                }
                if (buffer.includes("event: run.cancelled")) {
                  arrivals.push(performance.now());
                  buffer = "";
                  req.destroy();
                }
              });
            },
          );
          req.on("error", reject);
          requests.push(req);
        }),
      );
    }
    await Promise.all(ready);
    await new Promise((r) => setTimeout(r, 1000));
    const rssAfter = await metric(base, "flowline_process_resident_memory_bytes");

    const t0 = performance.now();
    await fetch(`${base}/v1/runs/${run.id}/cancel`, {
      method: "POST",
      headers: { authorization: `Bearer ${KEY}` },
    });
    const deadline = Date.now() + 30_000;
    while (arrivals.length < opts.streams && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 10));
    const latencies = arrivals.map((a) => a - t0).sort((a, b) => a - b);
    for (const r of requests) r.destroy();
    agent.destroy();
    return {
      streams: opts.streams,
      delivered: arrivals.length,
      bytesPerStream: (rssAfter - rssBefore) / opts.streams,
      p50: latencies[Math.floor(latencies.length * 0.5)] ?? Number.NaN,
      p99: latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * 0.99))] ?? Number.NaN,
    };
  } finally {
    api.kill("SIGTERM");
    rmSync(configFile, { force: true });
    await once(api, "exit");
  }
}
