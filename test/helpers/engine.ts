import { writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";
import type { TestContext } from "./context.ts";
import { call } from "./http.ts";
import { cleanEnv, type Spawned, spawnFlowline } from "./processes.ts";

export const HANDLERS = fileURLToPath(new URL("../fixtures/handlers.ts", import.meta.url));

/** Commands the test workers may run: small node programs, no shell anywhere. */
export const testCommands = {
  "echo-args": {
    argv: [process.execPath, "-e", "console.log(JSON.stringify({ args: process.argv.slice(1) }))"],
  },
  spammer: {
    argv: [
      process.execPath,
      "-e",
      "const line = 'x'.repeat(200); for (let i = 0; i < 20000; i++) console.log(i + ' ' + line);",
    ],
  },
  sleeper: {
    argv: [
      process.execPath,
      "-e",
      "console.log(JSON.stringify({ pid: process.pid })); setInterval(() => console.log('tick'), 200);",
    ],
  },
};

/** Settings shared by the in-process API and the worker processes of an engine test. */
export function engineSettings(base: Record<string, unknown>): Record<string, unknown> {
  return {
    ...base,
    commands: testCommands,
    http: { allowedHosts: ["127.0.0.1"], allowPrivateNetworks: false },
    worker: { handlersModule: HANDLERS, stallSeconds: 2, graceSeconds: 5 },
  };
}

/** Writes a config file with the test's database, Redis prefix and engine settings, plus `extra`. */
export function configFileFor(ctx: TestContext, extra: Record<string, unknown> = {}): string {
  const file = join(
    tmpdir(),
    `flowline-test-${ctx.config.redis.prefix.replace(/\W/g, "")}-${Math.random().toString(36).slice(2)}.yaml`,
  );
  const { database, redis, commands, http, queues, tags, worker, supervisor, autoscaler, webhooks, limits } =
    ctx.config;
  writeFileSync(
    file,
    stringify({
      database: { url: database.url, poolMax: 5 },
      redis,
      commands,
      http,
      worker,
      queues,
      tags,
      supervisor,
      autoscaler,
      webhooks,
      limits,
      log: { level: "info" },
      // Test processes run side by side: each takes a free port for its /metrics (and logs it).
      metrics: { workerPort: 0, supervisorPort: 0 },
      ...extra,
    }),
  );
  return file;
}

/** Starts a real worker process with the same configuration as the test's API. */
export function spawnWorker(
  ctx: TestContext,
  args: string[] = [],
  workerOverrides: Record<string, unknown> = {},
): Spawned {
  const file = configFileFor(ctx, { worker: { ...ctx.config.worker, ...workerOverrides } });
  return spawnFlowline(
    ["worker", "--queues", "default", "--concurrency", "4", ...args],
    cleanEnv({ FLOWLINE_CONFIG: file }),
  );
}

/** The `/metrics` address a process logged when it started listening. */
export async function metricsUrlOf(p: Spawned): Promise<string> {
  const [, url] = await p.waitFor(/"metricsUrl":"([^"]+)"/);
  return url!;
}

/** Starts a real supervisor process with the same configuration as the test's API. */
export function spawnSupervisor(ctx: TestContext, extra: Record<string, unknown> = {}): Spawned {
  return spawnFlowline(["supervisor"], cleanEnv({ FLOWLINE_CONFIG: configFileFor(ctx, extra) }));
}

export async function stopProcess(p: Spawned): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill("SIGTERM");
  await p.exited;
}

export async function putWorkflow(ctx: TestContext, name: string, definition: unknown) {
  const res = await call(ctx.app, "PUT", `/v1/workflows/${name}`, { key: ctx.rootKey, body: definition });
  if (res.statusCode >= 300) throw new Error(`PUT ${name}: ${res.body}`);
  return res.json();
}

export async function startRun(ctx: TestContext, name: string, body: unknown = {}) {
  const res = await call(ctx.app, "POST", `/v1/workflows/${name}/runs`, { key: ctx.rootKey, body });
  if (res.statusCode !== 202) throw new Error(`POST runs: ${res.statusCode} ${res.body}`);
  return res.json();
}

const terminal = new Set(["succeeded", "failed", "cancelled", "rolled_back"]);

/** Polls the run until `until` holds (default: terminal); fails after `timeoutMs`. */
export async function waitForRun(
  ctx: TestContext,
  runId: string,
  until: (run: any) => boolean = (r) => terminal.has(r.status),
  timeoutMs = 30_000,
  key = ctx.rootKey,
): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  let last: any;
  while (Date.now() < deadline) {
    last = (await call(ctx.app, "GET", `/v1/runs/${runId}`, { key })).json();
    if (until(last)) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`run ${runId} did not reach the expected state: ${JSON.stringify(last)}`);
}

export async function eventsOf(ctx: TestContext, runId: string): Promise<any[]> {
  const res = await call(ctx.app, "GET", `/v1/runs/${runId}/events?limit=1000`, { key: ctx.rootKey });
  return res.json().items;
}
