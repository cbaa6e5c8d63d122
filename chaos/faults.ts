/**
 * Faults, one at a time on a seeded schedule, each followed by a recovery measurement: from the
 * moment the fault was injected until every run that was active when it was healed has committed
 * a new event (or ended). Killed processes are restarted by the system a second later.
 */
import { Redis } from "ioredis";
import postgres from "postgres";
import type { Rng } from "./rng.ts";
import { PG_MAX_CONNECTIONS, type Stores } from "./stores.ts";
import type { Kind, System } from "./system.ts";

export const FAULT_KINDS = [
  "kill -9 api",
  "kill -9 supervisor",
  "kill -9 worker",
  "kill -9 pool worker",
  "kill -9 workers (pool parent)",
  "SIGSTOP api 3 s",
  "SIGSTOP supervisor past lease",
  "SIGSTOP worker past lease",
  "SIGSTOP pool worker past lease",
  "api restart mid-stream",
  "redis FLUSHALL",
  "redis loses queue lists",
  "redis CLIENT PAUSE",
  "redis restart",
  "postgres restart",
  "pg_terminate_backend",
  "postgres connection exhaustion",
  "delay to postgres",
  "delay to redis",
  "cut postgres connections",
  "cut redis connections",
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface FaultRecord {
  kind: FaultKind;
  target: string;
  injectedAt: number;
  healedAt: number;
  /** Runs active at heal time that had to progress. */
  affectedRuns: number;
  /** ms from injection until they all progressed; null when they did not within the bound. */
  recoveryMs: number | null;
}

export const RECOVERY_BOUND_MS = 60_000;
/** A run counts as affected by a fault when it had an event this long before it. */
const PROGRESS_WINDOW_MS = 15_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface FaultInjector {
  faults: FaultRecord[];
  stop(): Promise<void>;
}

export function startFaults(options: {
  system: System;
  stores: Stores;
  rng: Rng;
  /** Seconds between the end of one recovery and the next fault. */
  gapSeconds: number;
  /** Only these kinds (default: all). */
  kinds?: readonly FaultKind[];
  log: (line: string) => void;
}): FaultInjector {
  const { system, stores, rng, log } = options;
  const sql = postgres(stores.pg.url, { max: 2, onnotice: () => {}, connect_timeout: 3 });
  const redis = new Redis(stores.redis.url, {
    maxRetriesPerRequest: 1,
    lazyConnect: true,
    retryStrategy: (n) => Math.min(n * 200, 1000),
  });
  redis.on("error", () => {});
  const faults: FaultRecord[] = [];
  let stopping = false;

  const pick = (kind: Kind) => {
    const candidates = system.processes.filter((p) => p.kind === kind && p.pid() !== undefined);
    return candidates.length ? candidates[rng.int(candidates.length)]! : undefined;
  };
  const signal = (kind: Kind, sig: NodeJS.Signals): string => {
    const p = pick(kind);
    const pid = p?.pid();
    if (!p || !pid) return "none alive";
    process.kill(pid, sig);
    return `${p.name} (${pid})`;
  };
  const poolChild = () => {
    const pids = system.poolChildren();
    return pids.length ? pids[rng.int(pids.length)] : undefined;
  };
  const stopFor = async (pid: number | undefined, ms: number) => {
    if (!pid) return;
    try {
      process.kill(pid, "SIGSTOP");
      await sleep(ms);
    } finally {
      try {
        process.kill(pid, "SIGCONT");
      } catch {}
    }
  };

  /** Injects one fault; resolves once it is healed, with a description of its target. */
  const inject = async (kind: FaultKind): Promise<string> => {
    // The checker's own Redis client gave up while Redis was down: connect it again.
    if (kind.startsWith("redis") && redis.status === "end") await redis.connect();
    switch (kind) {
      case "kill -9 api":
        return signal("api", "SIGKILL");
      case "kill -9 supervisor":
        return signal("supervisor", "SIGKILL");
      case "kill -9 worker":
        return signal("worker", "SIGKILL");
      case "kill -9 workers (pool parent)":
        return signal("workers", "SIGKILL");
      case "kill -9 pool worker": {
        const pid = poolChild();
        if (pid) process.kill(pid, "SIGKILL");
        return `pool child ${pid ?? "none"}`;
      }
      case "api restart mid-stream":
        return signal("api", "SIGTERM");
      case "SIGSTOP api 3 s": {
        const p = pick("api");
        await stopFor(p?.pid(), 3000);
        return p?.name ?? "none";
      }
      case "SIGSTOP supervisor past lease": {
        const p = pick("supervisor");
        await stopFor(p?.pid(), 7000);
        return p?.name ?? "none";
      }
      case "SIGSTOP worker past lease": {
        const p = pick("worker");
        await stopFor(p?.pid(), 7000);
        return p?.name ?? "none";
      }
      case "SIGSTOP pool worker past lease": {
        const pid = poolChild();
        await stopFor(pid, 7000);
        return `pool child ${pid ?? "none"}`;
      }
      case "redis FLUSHALL":
        await redis.flushall();
        return "redis";
      case "redis loses queue lists": {
        // Part of the data is gone (a failover that lost the last writes): job hashes stay, but
        // the lists that say which jobs wait are lost, so those jobs are in no list at all.
        const lists = (await redis.keys("*:q:*")).filter((k) =>
          /:(wait|prioritized|delayed|paused)$/.test(k),
        );
        if (lists.length) await redis.del(...lists);
        return lists.join(", ") || "no lists";
      }
      case "redis CLIENT PAUSE":
        await redis.call("CLIENT", "PAUSE", "3000", "ALL");
        await sleep(3000);
        return "redis";
      case "redis restart":
        await stores.redis.down();
        await sleep(1500);
        await stores.redis.up();
        return "redis";
      case "postgres restart":
        await stores.pg.restart();
        return "postgres";
      case "pg_terminate_backend": {
        const rows = await sql`
          select pg_terminate_backend(pid) from pg_stat_activity
          where pid <> pg_backend_pid() and datname = 'flowline'`;
        return `${rows.length} sessions`;
      }
      case "postgres connection exhaustion": {
        const hogs: postgres.Sql[] = [];
        let held = 0;
        try {
          for (let i = 0; i < PG_MAX_CONNECTIONS; i++) {
            const hog = postgres(stores.pg.url, { max: 1, onnotice: () => {}, connect_timeout: 2 });
            hogs.push(hog);
            try {
              await hog`select 1`;
              held++;
            } catch {
              break;
            }
          }
          await sleep(5000);
        } finally {
          await Promise.all(hogs.map((h) => h.end({ timeout: 1 }).catch(() => {})));
        }
        return `${held} connections held 5 s`;
      }
      case "delay to postgres":
      case "delay to redis": {
        const proxy = kind === "delay to postgres" ? stores.pgProxy : stores.redisProxy;
        const ms = 150 + rng.int(350);
        proxy.setDelay(ms);
        await sleep(5000);
        proxy.setDelay(0);
        return `${ms} ms for 5 s`;
      }
      case "cut postgres connections":
        stores.pgProxy.cut();
        return "postgres proxy";
      case "cut redis connections":
        stores.redisProxy.cut();
        return "redis proxy";
    }
  };

  /**
   * Runs active at heal time that were progressing before the fault (an event in the 15 s before
   * it): a run a previous fault left stuck is that fault's failure, not this one's.
   */
  const activeRuns = async (injectedAt: number): Promise<string[]> => {
    for (let i = 0; i < 40; i++) {
      try {
        const rows = await sql<{ id: string }[]>`
          select r.id from runs r
          where r.status in ('running', 'rolling_back')
            and exists (select 1 from events e where e.run_id = r.id
                        and e.created_at > ${new Date(injectedAt - PROGRESS_WINDOW_MS)})`;
        return rows.map((r) => r.id);
      } catch {
        await sleep(250);
      }
    }
    return [];
  };
  const progressed = async (runs: string[], since: number): Promise<boolean> => {
    if (runs.length === 0) return true;
    try {
      const [row] = await sql<{ waiting: number }[]>`
        select count(*)::int as waiting from runs r
        where r.id = any(${runs}::uuid[])
          and r.status in ('running', 'rolling_back')
          and not exists (select 1 from events e where e.run_id = r.id and e.created_at > ${new Date(since)})`;
      return row!.waiting === 0;
    } catch {
      return false;
    }
  };

  const loop = (async () => {
    await redis.connect().catch(() => {});
    let order: FaultKind[] = [];
    while (!stopping) {
      if (order.length === 0) order = rng.shuffle([...(options.kinds ?? FAULT_KINDS)]);
      const kind = order.shift()!;
      const injectedAt = Date.now();
      let target: string;
      try {
        target = await inject(kind);
      } catch (error) {
        // Not a fault of the system: not counted, not measured.
        log(`fault ${kind} could not be injected: ${(error as Error).message}`);
        await sleep(1000);
        continue;
      }
      const healedAt = Date.now();
      const runs = await activeRuns(injectedAt);
      let recoveryMs: number | null = null;
      while (Date.now() - injectedAt < RECOVERY_BOUND_MS) {
        if (await progressed(runs, healedAt)) {
          recoveryMs = Date.now() - injectedAt;
          break;
        }
        await sleep(250);
      }
      const record = { kind, target, injectedAt, healedAt, affectedRuns: runs.length, recoveryMs };
      faults.push(record);
      log(`fault ${kind} → ${target}; ${runs.length} runs recovered in ${recoveryMs ?? "> bound"} ms`);
      for (let waited = 0; waited < options.gapSeconds * 1000 && !stopping; waited += 250) await sleep(250);
    }
  })();

  return {
    faults,
    stop: async () => {
      stopping = true;
      await loop;
      redis.disconnect();
      await sql.end({ timeout: 1 });
    },
  };
}
