/**
 * `flowline up` with neither DATABASE_URL nor REDIS_URL: an embedded Postgres in the data
 * directory, everything else on it. A workflow runs and is followed over SSE; after the process is
 * killed (its Postgres left running) and started again, the workflow, the run and its events are
 * still there; no process of the system ever holds a connection to a Redis port.
 */
import { once } from "node:events";
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { cleanEnv, freePort, isAlive, type Spawned, spawnFlowline } from "../helpers/processes.ts";
import { TEST_PG_URL, TEST_REDIS_URL } from "../helpers/services.ts";
import { eventFrames, readSse } from "../helpers/sse.ts";

const dataDir = mkdtempSync(join(tmpdir(), "flowline-zero-"));
// The embedded Postgres runs as the postgres system user when the tests run as root.
chmodSync(dataDir, 0o755);
const spawned: Spawned[] = [];

afterAll(async () => {
  for (const p of spawned) {
    if (p.child.exitCode === null && p.child.signalCode === null) {
      p.child.kill("SIGTERM");
      await p.exited;
    }
  }
  const pidFile = join(dataDir, "postgres", "postmaster.pid");
  if (existsSync(pidFile)) {
    const pid = Number(readFileSync(pidFile, "utf8").split("\n")[0]);
    if (isAlive(pid)) process.kill(pid, "SIGINT");
  }
  rmSync(dataDir, { recursive: true, force: true });
});

/** The pid and every descendant of it. */
function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
    } catch {
      // Gone meanwhile.
    }
  }
  const tree = [root];
  for (let i = 0; i < tree.length; i++) tree.push(...(children.get(tree[i]!) ?? []));
  return tree;
}

/** Remote ports of the TCP connections these processes hold. */
function remotePorts(pids: number[]): number[] {
  const inodes = new Set<string>();
  for (const pid of pids) {
    try {
      for (const fd of readdirSync(`/proc/${pid}/fd`)) {
        const target = readlinkSync(`/proc/${pid}/fd/${fd}`, { encoding: "utf8" });
        const m = /^socket:\[(\d+)\]$/.exec(target);
        if (m) inodes.add(m[1]!);
      }
    } catch {
      // Gone meanwhile.
    }
  }
  const ports: number[] = [];
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of readFileSync(table, "utf8").split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 10 || !inodes.has(fields[9]!)) continue;
      ports.push(Number.parseInt(fields[2]!.split(":")[1]!, 16));
    }
  }
  return ports;
}

const redisPort = Number(new URL(TEST_REDIS_URL).port || 6379);
/** The machine's own Postgres: with no DATABASE_URL nothing may use it either. */
const machinePostgresPort = Number(new URL(TEST_PG_URL).port || 5432);

async function startUp(port: number): Promise<{ up: Spawned; key?: string }> {
  const up = spawnFlowline(
    ["up"],
    cleanEnv({ PORT: String(port), HOST: "127.0.0.1", FLOWLINE_DATA_DIR: dataDir, LOG_LEVEL: "info" }),
  );
  spawned.push(up);
  await up.waitFor(/Flowline is up\.[\s\S]*Data: .*\n/, 60_000);
  // The root key, on first start only, follows the banner at once.
  await new Promise((r) => setTimeout(r, 200));
  const key = /\n\s+(flk_[A-Za-z0-9_-]+)\n/.exec(up.stdout())?.[1];
  return { up, ...(key ? { key } : {}) };
}

describe("flowline up with neither DATABASE_URL nor REDIS_URL", () => {
  it("runs a workflow on an embedded Postgres, keeps it across a crash and restart, and never uses Redis", async () => {
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const first = await startUp(port);
    const banner = first.up.stdout();
    expect(banner).toMatch(/Stores: +Postgres only .*embedded/);
    expect(banner).toMatch(/no Redis is used/);
    expect(banner).toContain(`Data:       ${dataDir} (embedded Postgres on 127.0.0.1:`);
    expect(banner).toMatch(/kept across restarts/);
    expect(first.key).toBeDefined();
    const auth = { authorization: `Bearer ${first.key}`, "content-type": "application/json" };

    const put = await fetch(`${base}/v1/workflows/hello`, {
      method: "PUT",
      headers: auth,
      body: JSON.stringify({
        steps: [
          { id: "a", run: { type: "noop" } },
          { id: "b", needs: ["a"], run: { type: "noop" } },
        ],
      }),
    });
    expect(put.status).toBe(201);
    const submitted = await fetch(`${base}/v1/workflows/hello/runs`, {
      method: "POST",
      headers: auth,
      body: "{}",
    });
    expect(submitted.status).toBe(202);
    const run = (await submitted.json()) as { id: string };
    const stream = await readSse(`${base}/v1/runs/${run.id}/events`, { key: first.key! });
    expect(stream.status).toBe(200);
    const seen = eventFrames(stream.frames);
    expect(seen.map((f) => f.event)).toContain("run.succeeded");
    expect(seen.filter((f) => f.event === "step.succeeded")).toHaveLength(2);

    // The API, the supervisor and the worker processes hold connections, none of them to Redis.
    const tree = processTree(first.up.child.pid!);
    expect(tree.length).toBeGreaterThan(1);
    const ports = remotePorts(tree);
    expect(ports.length).toBeGreaterThan(0);
    expect(ports).not.toContain(redisPort);
    expect(ports).not.toContain(machinePostgresPort);

    // A crash: the process dies at once, its Postgres is left running.
    first.up.child.kill("SIGKILL");
    await first.up.exited;
    const second = await startUp(port);
    expect(second.up.stdout() + second.up.stderr()).toMatch(/left running by an earlier start/);
    expect(second.key).toBeUndefined();
    const headers = { authorization: `Bearer ${first.key}` };
    expect((await fetch(`${base}/v1/workflows/hello`, { headers })).status).toBe(200);
    const after = (await (await fetch(`${base}/v1/runs/${run.id}`, { headers })).json()) as {
      status: string;
    };
    expect(after.status).toBe("succeeded");
    const replay = await readSse(`${base}/v1/runs/${run.id}/events`, { key: first.key! });
    expect(eventFrames(replay.frames).map((f) => [f.id, f.event])).toEqual(seen.map((f) => [f.id, f.event]));
    const portsAfter = remotePorts(processTree(second.up.child.pid!));
    expect(portsAfter).not.toContain(redisPort);
    expect(portsAfter).not.toContain(machinePostgresPort);

    second.up.child.kill("SIGTERM");
    expect(await second.up.exited).toEqual({ code: 0, signal: null });
    // Stopped with the system: no server left behind.
    expect(existsSync(join(dataDir, "postgres", "postmaster.pid"))).toBe(false);

    // What a crash of the whole machine leaves: a pid file naming a process that is gone; and
    // meanwhile another program took the port.
    const { port: pgPort } = JSON.parse(readFileSync(join(dataDir, "embedded-postgres.json"), "utf8"));
    writeFileSync(join(dataDir, "postgres", "postmaster.pid"), `${2 ** 22 + 17}\n${dataDir}\n0\n${pgPort}\n`);
    const squatter = createServer().listen(pgPort, "127.0.0.1");
    await once(squatter, "listening");
    try {
      const third = await startUp(port);
      const said = third.up.stdout() + third.up.stderr();
      expect(said).toMatch(/removed a stale postmaster\.pid/);
      expect(said).toMatch(new RegExp(`port ${pgPort} is taken by another program`));
      expect(said).not.toMatch(new RegExp(`embedded Postgres on 127\\.0\\.0\\.1:${pgPort};`));
      expect((await fetch(`${base}/v1/runs/${run.id}`, { headers })).status).toBe(200);
      third.up.child.kill("SIGTERM");
      expect(await third.up.exited).toEqual({ code: 0, signal: null });
    } finally {
      squatter.close();
    }
  }, 120_000);

  it("other roles refuse to start without DATABASE_URL, saying that only up embeds Postgres", async () => {
    for (const role of ["api", "worker", "supervisor", "migrate"]) {
      const p = spawnFlowline([role], cleanEnv({ FLOWLINE_DATA_DIR: dataDir }));
      expect(await p.exited, role).toEqual({ code: 78, signal: null });
      expect(p.stderr()).toMatch(/DATABASE_URL is not set\. Only `flowline up` starts an embedded Postgres/);
    }
  });
});
