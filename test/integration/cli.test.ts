import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import postgres from "postgres";
import { afterAll, describe, expect, inject, it } from "vitest";
import { deleteByPattern } from "../../src/redis/connection.ts";
import { cleanEnv, freePort, isAlive, spawnFlowline } from "../helpers/processes.ts";
import { databaseUrl, TEST_PG_URL, TEST_REDIS_URL } from "../helpers/services.ts";

// A database that does not exist yet: `api` and `migrate` must create it. The global teardown
// drops it with the rest of this run's databases.
const dbName = `flowline_t_${inject("runId")}_cli${randomBytes(3).toString("hex")}`;
const prefix = `fltest:cli${randomBytes(3).toString("hex")}`;
const baseEnv = {
  DATABASE_URL: databaseUrl(dbName),
  REDIS_URL: TEST_REDIS_URL,
  FLOWLINE_REDIS_PREFIX: prefix,
};

afterAll(async () => {
  const redis = new Redis(TEST_REDIS_URL);
  await deleteByPattern(redis, `${prefix}:*`);
  await redis.quit();
});

describe("flowline CLI", () => {
  it("api: creates the database, prints a root key once, serves the API and docs, and stops on SIGTERM", async () => {
    const port = await freePort();
    const env = cleanEnv({ ...baseEnv, PORT: String(port), HOST: "127.0.0.1", LOG_LEVEL: "info" });
    const api = spawnFlowline(["api"], env);
    const [, key] = await api.waitFor(/\n\s+(flk_[A-Za-z0-9_-]+)\n/);
    await api.waitFor(/api listening/);
    const base = `http://127.0.0.1:${port}`;
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    const docs = await fetch(`${base}/docs/`);
    expect(docs.status).toBe(200);
    expect(await docs.text()).toMatch(/swagger/i);
    const list = await fetch(`${base}/v1/workflows`, { headers: { authorization: `Bearer ${key}` } });
    expect(list.status).toBe(200);
    // Logs are JSON lines with a request id.
    const logLine = api
      .stdout()
      .split("\n")
      .find((l) => l.includes('"reqId"'));
    expect(logLine && JSON.parse(logLine).reqId).toBeTruthy();
    expect(api.stdout()).not.toContain("authorization");

    api.child.kill("SIGTERM");
    expect(await api.exited).toEqual({ code: 0, signal: null });

    const again = spawnFlowline(["up"], env);
    await again.waitFor(/api listening/);
    expect(again.stdout()).not.toMatch(/flk_/);
    const stillValid = await fetch(`${base}/v1/workflows`, { headers: { authorization: `Bearer ${key}` } });
    expect(stillValid.status).toBe(200);
    again.child.kill("SIGTERM");
    expect((await again.exited).code).toBe(0);

    const sql = postgres(TEST_PG_URL, { max: 1 });
    const rows = await sql`select 1 from pg_database where datname = ${dbName}`;
    await sql.end();
    expect(rows).toHaveLength(1);
  });

  it("up: runs a workflow end to end with its own worker processes, and stops them all on SIGTERM", async () => {
    const port = await freePort();
    const key = "flk_cli_up_test_key_0123456789abcdef";
    const env = cleanEnv({
      ...baseEnv,
      PORT: String(port),
      HOST: "127.0.0.1",
      FLOWLINE_BOOTSTRAP_KEY: key,
      // Any free port for the pool's worker processes: tests run side by side.
      FLOWLINE_METRICS_WORKER_PORT: "0",
    });
    const up = spawnFlowline(["up"], env);
    await up.waitFor(/api listening/);
    await up.waitFor(/worker started/);
    await up.waitFor(/supervisor is now active/);
    const base = `http://127.0.0.1:${port}`;
    const headers = { authorization: `Bearer ${key}`, "content-type": "application/json" };
    const put = await fetch(`${base}/v1/workflows/up-demo`, {
      method: "PUT",
      headers,
      body: JSON.stringify({
        steps: [
          { id: "a", run: { type: "noop", output: { ok: 1 } } },
          { id: "b", needs: ["a"], run: { type: "sleep", seconds: 0.2 } },
        ],
      }),
    });
    expect(put.status).toBe(201);
    const run = (await (
      await fetch(`${base}/v1/workflows/up-demo/runs`, { method: "POST", headers, body: "{}" })
    ).json()) as { id: string };
    let status = "running";
    const deadline = Date.now() + 20_000;
    while (status === "running" && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      status = ((await (await fetch(`${base}/v1/runs/${run.id}`, { headers })).json()) as { status: string })
        .status;
    }
    expect(status, `${up.stdout()}\n${up.stderr()}`.slice(-4000)).toBe("succeeded");
    // The API's /metrics carries the supervisor it runs; the pool's worker serves its own.
    expect(await (await fetch(`${base}/metrics`)).text()).toMatch(/^flowline_supervisor_active 1$/m);
    const [, workerMetrics] = await up.waitFor(/"metricsUrl":"([^"]+)"/);
    expect(await (await fetch(workerMetrics!)).text()).toMatch(
      /^flowline_step_attempts_total\{queue="default",kind="noop",outcome="succeeded"\} 1$/m,
    );

    // An open event stream must not keep the API from stopping.
    await fetch(`${base}/v1/workflows/parked`, {
      method: "PUT",
      headers,
      // Still sleeping when the API is told to stop; the worker finishes it within its grace period.
      body: JSON.stringify({ steps: [{ id: "w", run: { type: "sleep", seconds: 3 } }] }),
    });
    const parked = (await (
      await fetch(`${base}/v1/workflows/parked/runs`, { method: "POST", headers, body: "{}" })
    ).json()) as {
      id: string;
    };
    const stream = await fetch(`${base}/v1/runs/${parked.id}/events`, {
      headers: { authorization: `Bearer ${key}`, accept: "text/event-stream" },
    });
    expect(stream.status).toBe(200);
    const reader = stream.body!.getReader();
    let received = "";
    while (!received.includes("event: step.queued")) {
      const { value, done } = await reader.read();
      if (done) break;
      received += new TextDecoder().decode(value);
    }
    expect(received).toMatch(/event: step.queued/);

    up.child.kill("SIGTERM");
    const { code } = await up.exited;
    const output = `${up.stdout()}\n${up.stderr()}`.slice(-4000);
    expect(code, output).toBe(0);
    expect(up.stdout(), output).toMatch(/worker stopped/);
    expect(up.stdout(), output).toMatch(/supervisor stopped/);
    expect(workerPids(up.stdout()).filter(isAlive), output).toEqual([]);
    // The stream was ended by the server, not left hanging.
    for (;;) {
      const { done } = await reader.read().catch(() => ({ done: true }));
      if (done) break;
    }
  });

  it("stops with exit code 78 and a message naming the key for bad configuration", async () => {
    const bad = spawnFlowline(["api"], cleanEnv({ ...baseEnv, PORT: "not-a-port" }));
    const { code } = await bad.exited;
    expect(code).toBe(78);
    expect(bad.stderr()).toMatch(/server\.port/);
    expect(bad.stderr()).toMatch(/PORT/);

    const typo = spawnFlowline(["api"], cleanEnv({ ...baseEnv, FLOWLINE_PROT: "1" }));
    expect((await typo.exited).code).toBe(78);
    expect(typo.stderr()).toMatch(/FLOWLINE_PROT/);
  });

  it("migrate is idempotent; supervisor and workers start and stop cleanly on SIGTERM", async () => {
    const first = spawnFlowline(["migrate"], cleanEnv(baseEnv));
    expect((await first.exited).code).toBe(0);
    expect(first.stdout()).toMatch(/migrations applied/);
    const supervisor = spawnFlowline(["supervisor"], cleanEnv({ ...baseEnv, LOG_LEVEL: "info" }));
    await supervisor.waitFor(/supervisor started/);
    const workers = spawnFlowline(["workers"], cleanEnv({ ...baseEnv, LOG_LEVEL: "info" }));
    await workers.waitFor(/worker started/);
    supervisor.child.kill("SIGTERM");
    workers.child.kill("SIGTERM");
    expect((await supervisor.exited).code, supervisor.stdout()).toBe(0);
    expect((await workers.exited).code, workers.stdout()).toBe(0);
    expect(workerPids(workers.stdout()).length).toBeGreaterThanOrEqual(1);
    expect(workerPids(workers.stdout()).filter(isAlive)).toEqual([]);
  });
});

/** Pids of the worker processes whose "worker started" line appears in `output`. */
function workerPids(output: string): number[] {
  return output
    .split("\n")
    .filter((line) => line.includes('"worker started"'))
    .map((line) => JSON.parse(line).pid as number);
}
