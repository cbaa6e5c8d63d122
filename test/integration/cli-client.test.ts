/**
 * The `flowline` client commands as a user runs them: real processes (an API, a worker, the CLI)
 * on a database and key prefix of this file's own. The CLI's environment holds FLOWLINE_URL and
 * FLOWLINE_KEY, and so does the servers' (a server must ignore them).
 */
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { deleteByPattern } from "../../src/redis/connection.ts";
import { cleanEnv, FLOWLINE_BIN, freePort, type Spawned, spawnFlowline } from "../helpers/processes.ts";
import { databaseUrl, TEST_REDIS_URL } from "../helpers/services.ts";

const dbName = `flowline_t_${inject("runId")}_cliclient${randomBytes(3).toString("hex")}`;
const prefix = `fltest:clic${randomBytes(3).toString("hex")}`;
const key = "flk_cli_client_test_key_0123456789abcdef";
const handlers = fileURLToPath(new URL("../fixtures/handlers.ts", import.meta.url));

let port: number;
let base: string;
let serverEnv: NodeJS.ProcessEnv;
let clientEnv: NodeJS.ProcessEnv;
let api: Spawned;
let worker: Spawned;
let dir: string;
/** What `flowline apply -f DIR --format json` answered in the set-up. */
let created: Array<{ name: string; version: number; created: boolean }>;

async function startApi(): Promise<Spawned> {
  const started = spawnFlowline(["api"], serverEnv);
  await started.waitFor(/api listening/);
  return started;
}

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `flowline args…` as a user would, to its end. */
function flowline(args: string[], env: NodeJS.ProcessEnv = clientEnv): Promise<Result> {
  return new Promise((resolve) => {
    execFile(process.execPath, [FLOWLINE_BIN, ...args], { env, timeout: 60_000 }, (error, stdout, stderr) =>
      resolve({ code: error ? ((error as { code?: number }).code ?? null) : 0, stdout, stderr }),
    );
  });
}

async function api$(path: string, init: RequestInit = {}): Promise<any> {
  const response = await fetch(`${base}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json", ...init.headers },
  });
  return response.status === 204 ? null : response.json();
}

const jsonLines = (text: string) =>
  text
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l));

beforeAll(async () => {
  port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const stores = {
    DATABASE_URL: databaseUrl(dbName),
    REDIS_URL: TEST_REDIS_URL,
    FLOWLINE_REDIS_PREFIX: prefix,
  };
  clientEnv = cleanEnv({ FLOWLINE_URL: base, FLOWLINE_KEY: key });
  serverEnv = cleanEnv({
    ...stores,
    PORT: String(port),
    HOST: "127.0.0.1",
    FLOWLINE_BOOTSTRAP_KEY: key,
    FLOWLINE_HANDLERS: handlers,
    // The README's shell: the client's variables are set where the server starts.
    FLOWLINE_URL: base,
    FLOWLINE_KEY: key,
  });
  api = await startApi();
  worker = spawnFlowline(["worker", "--queues", "default", "--concurrency", "4"], serverEnv);
  await worker.waitFor(/worker started/);

  dir = await mkdtemp(join(tmpdir(), "flowline-cli-"));
  await writeFile(
    join(dir, "chain.yaml"),
    [
      "name: chain",
      "steps:",
      "  - id: extract",
      "    run: { type: noop, output: { rows: 3 } }",
      "  - id: transform",
      "    needs: [extract]",
      "    run: { type: handler, name: test.sleepy, input: { ms: 300 } }",
      "  - id: load",
      "    needs: [transform]",
      "    run: { type: noop }",
      "",
    ].join("\n"),
  );
  await writeFile(
    join(dir, "broken.json"),
    JSON.stringify({
      name: "broken",
      steps: [{ id: "boom", run: { type: "handler", name: "test.fail" }, retry: { maxAttempts: 1 } }],
    }),
  );
  await writeFile(
    join(dir, "slow.yaml"),
    [
      "name: slow",
      "steps:",
      ...[1, 2, 3, 4].flatMap((i) => [
        `  - id: s${i}`,
        ...(i > 1 ? [`    needs: [s${i - 1}]`] : []),
        "    run: { type: handler, name: test.sleepy, input: { ms: 1200 } }",
      ]),
      "",
    ].join("\n"),
  );
  await writeFile(
    join(dir, "sales.yaml"),
    [
      "name: sales",
      "assets: { raw_sales: { maxAgeSeconds: 86400 }, sales_report: {} }",
      "steps:",
      "  - { id: extract, provides: [raw_sales], run: { type: noop, output: { rows: 42 } } }",
      "  - { id: report, needs: [extract], provides: [sales_report], run: { type: noop } }",
      "",
    ].join("\n"),
  );
  const applied = await flowline(["apply", "-f", dir, "--format", "json"]);
  expect(applied.code, applied.stderr).toBe(0);
  created = JSON.parse(applied.stdout);
});

afterAll(async () => {
  for (const child of [api, worker]) {
    if (child && child.child.exitCode === null) {
      child.child.kill("SIGTERM");
      await child.exited;
    }
  }
  if (dir) await rm(dir, { recursive: true, force: true });
  const redis = new Redis(TEST_REDIS_URL);
  await deleteByPattern(redis, `${prefix}:*`);
  await redis.quit();
});

describe("flowline client commands", () => {
  it("unknown commands and bad arguments exit 2 with a usage message", async () => {
    for (const args of [
      ["bogus"],
      ["run"],
      ["run", "chain", "--priority", "high"],
      ["run", "chain", "-p", "novalue"],
      ["runs", "--format", "xml"],
      ["keys"],
      ["graph", "chain", "--as", "png"],
    ]) {
      const result = await flowline(args);
      expect(result.code, args.join(" ")).toBe(2);
      expect(result.stderr, args.join(" ")).toMatch(/error|Usage/);
    }
    expect((await flowline(["bogus"])).stderr).toMatch(/Usage: flowline/);
    expect((await flowline(["--help"])).code).toBe(0);
  });

  it("apply creates workflows from a directory; --format json is the API's answer", async () => {
    expect(created.map((r) => [r.name, r.version, r.created])).toEqual([
      ["broken", 1, true],
      ["chain", 1, true],
      ["sales", 1, true],
      ["slow", 1, true],
    ]);
    const again = await flowline(["apply", "-f", join(dir, "chain.yaml")]);
    expect(again.stdout).toMatch(/chain\s+1\s+unchanged/);
    const read = await api$("/v1/workflows/chain");
    expect(read.definition.steps.map((s: { id: string }) => s.id)).toEqual(["extract", "transform", "load"]);
  });

  it("errors print the server's problem detail and field paths, not a stack trace", async () => {
    const missing = await flowline(["run", "nope"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/flowline: .*nope.*\(HTTP 404 not_found\)/);
    expect(missing.stderr).not.toMatch(/\bat .*\.ts:\d+/);

    const bad = join(dir, "bad", "invalid.yaml");
    await import("node:fs/promises").then((fs) => fs.mkdir(join(dir, "bad"), { recursive: true }));
    await writeFile(bad, "name: invalid\nsteps:\n  - id: a\n    run: { type: sleep, seconds: -1 }\n");
    const refused = await flowline(["apply", "-f", bad]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/steps\[0\]\.run/);

    const noFile = await flowline(["apply", "-f", join(dir, "missing.yaml")]);
    expect(noFile.code).toBe(2);
    expect(noFile.stderr).toMatch(/^flowline: ENOENT: no such file or directory, stat '.*missing\.yaml'\n$/);

    const unreachable = await flowline(["runs", "--url", `http://127.0.0.1:${await freePort()}`]);
    expect(unreachable.code).toBe(3);
    expect(unreachable.stderr).toMatch(/cannot reach/);

    const noKey = await flowline(["runs"], cleanEnv({ FLOWLINE_URL: base }));
    expect(noKey.code).toBe(2);
    expect(noKey.stderr).toMatch(/HTTP 401/);
  });

  it("run --dry-run prints the plan with reasons and starts nothing", async () => {
    const plan = await flowline(["run", "chain", "--dry-run"]);
    expect(plan.code, plan.stderr).toBe(0);
    expect(plan.stdout).toMatch(/plan for chain v1/);
    expect(plan.stdout).toMatch(/extract\s+run\s+\S+/);
    const json = JSON.parse((await flowline(["run", "chain", "--dry-run", "--format", "json"])).stdout);
    expect(json.dryRun).toBe(true);
    expect(json.steps.map((s: { stepId: string }) => s.stepId)).toEqual(["extract", "transform", "load"]);
    expect((await api$("/v1/runs?workflow=chain")).items).toEqual([]);
  });

  it("run --watch exits 0 when the run succeeds and 1 when it fails", async () => {
    const ok = await flowline(["run", "chain", "-p", "day=2024-01-01", "--watch"]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/step\.progress transform 50% half way/);
    expect(ok.stdout).toMatch(/step\.log transform \[\w+\] sleeping 300 ms/);
    expect(ok.stdout).toMatch(/run\.succeeded/);
    expect(ok.stdout.trim().split("\n").at(-1)).toMatch(/^run [0-9a-f-]{36} succeeded$/);

    const failed = await flowline(["run", "broken", "--watch"]);
    expect(failed.code, failed.stderr).toBe(1);
    expect(failed.stdout).toMatch(/step\.failed boom.*always fails/);
    expect(failed.stdout.trim().split("\n").at(-1)).toMatch(/failed$/);
  });

  it("status and runs in --format json match the API; status --follow ends at the terminal event", async () => {
    const started = JSON.parse((await flowline(["run", "chain", "--format", "json"])).stdout);
    expect(started).toMatchObject({ kind: "workflow", workflow: { name: "chain", version: 1 } });

    const follow = await flowline(["status", started.id, "--follow", "--format", "json"]);
    expect(follow.code, follow.stderr).toBe(0);
    const events = jsonLines(follow.stdout);
    expect(events.at(-1).type).toBe("run.succeeded");
    expect(events.map((e) => e.id)).toEqual(
      (await api$(`/v1/runs/${started.id}/events`)).items.map((e: any) => e.id),
    );

    const status = await flowline(["status", started.id, "--format", "json"]);
    expect(JSON.parse(status.stdout)).toEqual(await api$(`/v1/runs/${started.id}`));
    const yaml = await flowline(["status", started.id, "--format", "yaml"]);
    expect(yaml.stdout).toMatch(new RegExp(`^id: ${started.id}$`, "m"));

    const runs = await flowline(["runs", "--workflow", "chain", "--format", "json"]);
    expect(JSON.parse(runs.stdout)).toEqual(await api$("/v1/runs?workflow=chain"));

    const logs = await flowline(["logs", started.id, "--step", "transform"]);
    expect(logs.stdout).toMatch(/transform \[\w+\] sleeping 300 ms/);
    const followed = await flowline(["logs", started.id, "--follow", "--format", "json"]);
    expect(followed.code, followed.stderr).toBe(0);
    const lines = jsonLines(followed.stdout);
    expect(lines.map((l) => [l.type, l.stepId, l.line])).toEqual([
      ["step.log", "transform", "sleeping 300 ms"],
    ]);
    // Eight CLI processes one after the other: each starts Node, which a busy machine slows.
  }, 120_000);

  it("materialize --dry-run plans, --watch follows the run; a second request has nothing to run", async () => {
    const plan = await flowline(["materialize", "sales_report", "--dry-run"]);
    expect(plan.stdout).toMatch(/extract\s+run\s+missing/);
    const watched = await flowline(["materialize", "sales_report", "--watch", "--format", "json"]);
    expect(watched.code, watched.stderr).toBe(0);
    const events = jsonLines(watched.stdout);
    expect(events.filter((e) => e.type === "asset.materialized").map((e) => e.asset)).toEqual([
      "raw_sales",
      "sales_report",
    ]);
    // The JSON page of the same events carries the same ids (and serializes every event type seen).
    const page = await api$(`/v1/runs/${events[0].runId}/events`);
    expect(page.items.map((e: { id: number }) => e.id)).toEqual(events.map((e) => e.id));
    const again = await flowline(["materialize", "sales_report"]);
    expect(again.stdout).toMatch(/extract\s+skip\s+fresh/);
    expect((await flowline(["assets", "sales_report", "--format", "json"])).stdout).toMatch(
      /"freshness": "fresh"/,
    );
  });

  it("graph draws the DAG as text, Mermaid and DOT", async () => {
    expect((await flowline(["graph", "chain"])).stdout).toBe(
      "extract\n  transform  ← extract\n    load  ← transform\n",
    );
    const mermaid = (await flowline(["graph", "chain", "--as", "mermaid"])).stdout;
    expect(mermaid).toMatch(/^flowchart LR\n/);
    expect(mermaid).toMatch(/s0\["extract"\] --> s1\["transform"\]/);
    const dot = (await flowline(["graph", "chain", "--as", "dot"])).stdout;
    expect(dot).toMatch(/"transform" -> "load";/);
  });

  it("keys create, list and revoke; audit; webhook-secret", async () => {
    const created = JSON.parse(
      (await flowline(["keys", "create", "--scopes", "read", "--format", "json"])).stdout,
    );
    expect(created.key).toMatch(/^flk_/);
    const listed = JSON.parse((await flowline(["keys", "list", "--format", "json"])).stdout);
    expect(listed.items.map((k: { id: string }) => k.id)).toContain(created.id);
    expect((await flowline(["keys", "revoke", created.id])).code).toBe(0);
    const reader = await flowline(["runs"], cleanEnv({ FLOWLINE_URL: base, FLOWLINE_KEY: created.key }));
    expect(reader.code).toBe(2);

    const expiring = JSON.parse(
      (await flowline(["keys", "create", "--scopes", "read", "--expires-in", "3600", "--format", "json"]))
        .stdout,
    );
    expect(Date.parse(expiring.expiresAt) - Date.now()).toBeGreaterThan(3_500_000);
    const audit = JSON.parse(
      (await flowline(["audit", "--action", "key.revoke", "--format", "json"])).stdout,
    );
    expect(audit.items[0]).toMatchObject({
      action: "key.revoke",
      target: `key:${created.id}`,
      outcome: "ok",
    });
    const secret = JSON.parse((await flowline(["webhook-secret", "--format", "json"])).stdout);
    expect(secret.secret).toMatch(/^whsec_/);
    const rotated = JSON.parse((await flowline(["webhook-secret", "--rotate", "--format", "json"])).stdout);
    expect(rotated.secret).not.toBe(secret.secret);
    expect(rotated.previousExpiresAt).not.toBeNull();
  });

  it("--watch survives the API being killed and restarted: every event once, in order", async () => {
    const watch = spawn(process.execPath, [FLOWLINE_BIN, "run", "slow", "--watch", "--format", "json"], {
      env: clientEnv,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    watch.stdout.on("data", (d) => {
      out += d;
    });
    watch.stderr.on("data", (d) => {
      err += d;
    });
    const exited = new Promise<number | null>((resolve) => watch.on("exit", (code) => resolve(code)));
    const until = async (pattern: RegExp) => {
      for (let i = 0; i < 600 && !pattern.test(out); i++) await new Promise((r) => setTimeout(r, 50));
      expect(out, err).toMatch(pattern);
    };
    await until(
      /"type":"step\.succeeded","runId":"[^"]+","stepId":"s1"|"step\.succeeded"[^\n]*"stepId":"s1"/,
    );
    api.child.kill("SIGKILL");
    await api.exited;
    // The worker goes on while the API is down: those events must reach the watcher later.
    await new Promise((r) => setTimeout(r, 1500));
    api = await startApi();
    const code = await exited;
    expect(code, err).toBe(0);
    expect(err).toMatch(/resuming after event \d+/);

    const seen = jsonLines(out);
    const runId = seen[0].runId as string;
    const all = (await api$(`/v1/runs/${runId}/events?limit=1000`)).items as Array<{
      id: number;
      type: string;
    }>;
    expect(seen.map((e) => e.id)).toEqual(all.map((e) => e.id));
    expect(seen.at(-1).type).toBe("run.succeeded");
  });

  it("on a terminal, --watch shows live per-step progress (under a real pseudo-terminal)", async () => {
    // A pseudo-terminal with no terminal around it has no size: give it one, as a terminal would.
    const argv = [process.execPath, FLOWLINE_BIN, "run", "chain", "--watch"].map((a) => `'${a}'`).join(" ");
    const command = `stty cols 120 rows 40; ${argv}`;
    const result = await new Promise<Result>((resolve) => {
      execFile(
        "script",
        ["-qefc", command, "/dev/null"],
        { env: { ...clientEnv, COLUMNS: "120", LINES: "40", TERM: "xterm" }, timeout: 60_000 },
        (error, stdout, stderr) =>
          resolve({ code: error ? ((error as { code?: number }).code ?? null) : 0, stdout, stderr }),
      );
    });
    expect(result.code, result.stdout + result.stderr).toBe(0);
    // A live view redraws in place (erase-line sequences), and its last frame shows every step done.
    const eraseLine = "\u001b[2K";
    expect(result.stdout).toContain(eraseLine);
    const finalFrame = result.stdout.slice(
      result.stdout.lastIndexOf("run ", result.stdout.lastIndexOf("extract")),
    );
    expect(finalFrame).toMatch(/chain v1\s+succeeded\s+3\/3 steps/);
    for (const step of ["extract", "transform", "load"])
      expect(finalFrame).toMatch(new RegExp(`✔ ${step}\\s+succeeded`));
    // Plain event lines are for pipes, not terminals.
    expect(result.stdout).not.toMatch(/step\.started/);
  });
});
