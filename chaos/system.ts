/**
 * The Flowline processes under test, as real processes: two APIs on their own ports, two
 * supervisors, an autoscaled pool (`flowline workers`) and a plain `flowline worker`. Each talks
 * to the stores through the proxies. A process that dies (a fault killed it) is started again
 * after a second, the way an orchestrator would.
 */
import { spawn } from "node:child_process";
import { createWriteStream, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify } from "yaml";
import { cleanEnv, FLOWLINE_BIN, freePort, isAlive } from "../test/helpers/processes.ts";

export const ROOT_KEY = "flk_chaos_root_key_0123456789abcdefghijklmnop";

export type Kind = "api" | "supervisor" | "workers" | "worker";

export interface Managed {
  name: string;
  kind: Kind;
  /** The current process id (changes on every restart). */
  pid(): number | undefined;
  /** API base URL, for kind `api`. */
  url?: string;
  restarts: number;
}

export interface System {
  processes: Managed[];
  apis: string[];
  configFile: string;
  /** Process ids of the worker children of `flowline workers`. */
  poolChildren(): number[];
  stop(): Promise<void>;
}

export interface SystemOptions {
  dir: string;
  databaseUrl: string;
  redisUrl: string;
  /** Direct URL for migrations, before any proxy fault. */
  migrateUrl: string;
}

/** Short leases and intervals, so recovery from a fault is measured in seconds. */
export function chaosConfig(databaseUrl: string, redisUrl: string): Record<string, unknown> {
  return {
    database: { url: databaseUrl, poolMax: 5, connectTimeoutSeconds: 3, statementTimeoutMs: 15_000 },
    redis: { url: redisUrl, prefix: "chaos" },
    auth: { bootstrapKey: ROOT_KEY },
    rateLimit: { enabled: false },
    http: { allowedHosts: ["127.0.0.1"] },
    queues: { default: { concurrency: 4, min: 1, max: 2 } },
    worker: { stallSeconds: 4, graceSeconds: 2 },
    supervisor: { leaseSeconds: 4, reconcileIntervalSeconds: 2, scheduleIntervalSeconds: 2 },
    autoscaler: { intervalSeconds: 2, cooldownSeconds: 20, maxRestartDelaySeconds: 4 },
    assets: { lockTtlSeconds: 6 },
    server: { shutdownGraceSeconds: 3 },
    log: { level: "warn" },
  };
}

async function waitHealthy(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(1000) });
      if (res.ok) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`API ${url} did not become healthy`);
}

export async function startSystem(options: SystemOptions): Promise<System> {
  const configFile = join(options.dir, "flowline.yaml");
  writeFileSync(configFile, stringify(chaosConfig(options.databaseUrl, options.redisUrl)));
  const migrateFile = join(options.dir, "migrate.yaml");
  writeFileSync(migrateFile, stringify(chaosConfig(options.migrateUrl, options.redisUrl)));
  const migrate = spawn(process.execPath, [FLOWLINE_BIN, "migrate"], {
    env: cleanEnv({ FLOWLINE_CONFIG: migrateFile }),
    stdio: "inherit",
  });
  const code = await new Promise<number | null>((resolve) => migrate.on("exit", (c) => resolve(c)));
  if (code !== 0) throw new Error(`flowline migrate exited ${code}`);

  let stopping = false;
  const children = new Map<string, ReturnType<typeof spawn>>();
  const processes: Managed[] = [];
  const launch = (managed: Managed, args: string[], env: Record<string, string>) => {
    const log = createWriteStream(join(options.dir, `${managed.name}.log`), { flags: "a" });
    const child = spawn(process.execPath, [FLOWLINE_BIN, ...args], {
      env: cleanEnv({ FLOWLINE_CONFIG: configFile, ...env }),
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout!.pipe(log, { end: false });
    child.stderr!.pipe(log, { end: false });
    children.set(managed.name, child);
    child.on("exit", () => {
      if (stopping) return;
      managed.restarts++;
      setTimeout(() => {
        if (!stopping) launch(managed, args, env);
      }, 1000);
    });
  };
  const add = (name: string, kind: Kind, args: string[], env: Record<string, string> = {}, url?: string) => {
    const managed: Managed = {
      name,
      kind,
      restarts: 0,
      pid: () => {
        const c = children.get(name);
        return c && c.exitCode === null && c.signalCode === null ? c.pid : undefined;
      },
      ...(url ? { url } : {}),
    };
    processes.push(managed);
    launch(managed, args, env);
    return managed;
  };

  const apis: string[] = [];
  for (const n of [1, 2]) {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    apis.push(url);
    add(`api-${n}`, "api", ["api"], { PORT: String(port) }, url);
  }
  await Promise.all(apis.map((u) => waitHealthy(u, 60_000)));
  add("supervisor-1", "supervisor", ["supervisor"]);
  add("supervisor-2", "supervisor", ["supervisor"]);
  add("workers", "workers", ["workers"]);
  add("worker", "worker", ["worker", "--queues", "default", "--concurrency", "4"]);

  return {
    processes,
    apis,
    configFile,
    poolChildren: () => {
      const pid = processes.find((p) => p.kind === "workers")?.pid();
      if (!pid) return [];
      try {
        return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
          .trim()
          .split(/\s+/)
          .filter(Boolean)
          .map(Number);
      } catch {
        return [];
      }
    },
    stop: async () => {
      stopping = true;
      const all = [...children.values()].filter((c) => c.exitCode === null && c.signalCode === null);
      for (const c of all) {
        c.kill("SIGCONT");
        c.kill("SIGTERM");
      }
      const deadline = Date.now() + 20_000;
      while (all.some((c) => c.exitCode === null && c.signalCode === null) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
      }
      for (const c of all) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
      // Pool children stop by themselves when their parent dies; make sure of it.
      await new Promise((r) => setTimeout(r, 500));
      for (const c of all) if (c.pid && isAlive(c.pid)) c.kill("SIGKILL");
    },
  };
}
