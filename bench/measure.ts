/**
 * What one benchmark window costs, read from outside the code under test: CPU time of this process
 * and of the Redis server and the Postgres backends serving the bench's database, Postgres commits
 * and row writes of that database, statements (when pg_stat_statements is loaded) and Redis
 * commands. `snapshot()` before and `cost(before)` after a window give the deltas.
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import type { Redis } from "ioredis";
import type postgres from "postgres";

const clockTicks = (() => {
  const out = spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" });
  return Number(out.stdout?.trim()) || 100;
})();

/** utime + stime of a process in ms, from /proc (Linux); null when it cannot be read. */
function processCpuMs(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name, which may hold spaces: state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicks;
  } catch {
    return null;
  }
}

interface Snapshot {
  own: number;
  processMs: number;
  redisMs: number | null;
  /** Backend pid → its CPU ms, for every connection to the bench database. */
  pgBackends: Map<number, number | null>;
  commits: number;
  rowWrites: number;
  statements: Statements | null;
  redisCommands: number;
  redisScripts: number;
}

/** pg_stat_statements of the bench database: calls by statement. */
interface Statements {
  /** Sent by a client: one round trip each (BEGIN and COMMIT included). */
  top: number;
  /** Run by another statement: foreign-key checks, triggers. */
  nested: number;
  /** Top-level calls by statement text (normalised by Postgres). */
  byQuery: Map<string, number>;
}

export interface Cost {
  /** Bench process + Redis server + Postgres backends of the bench database, in ms. */
  cpuMs: number;
  processMs: number;
  redisMs: number | null;
  pgMs: number | null;
  commits: number;
  rowWrites: number;
  /** Statements clients sent (round trips), when pg_stat_statements is loaded. */
  statements: number | null;
  /** Statements run inside others (foreign-key checks), when it is loaded with `track = all`. */
  nestedStatements: number | null;
  /** The window's top-level statements by text, most called first. */
  statementsByQuery: Array<{ query: string; calls: number }>;
  /** Every command Redis ran, those run by Lua scripts included. */
  redisCommands: number;
  /** Script calls (EVAL, EVALSHA, FCALL): each is one round trip running several commands. */
  redisScripts: number;
}

export interface Meter {
  /** Records one query of the bench's own (one commit), left out of the window's counts. */
  own(): void;
  snapshot(): Promise<Snapshot>;
  cost(before: Snapshot): Promise<Cost>;
  /** One line saying what the CPU and statement figures count, for the report. */
  describe(): string;
}

export async function createMeter(sql: postgres.Sql, redis: Redis): Promise<Meter> {
  const database = (await sql<{ db: string }[]>`select current_database() as db`)[0]!.db;
  const redisPid = Number(/process_id:(\d+)/.exec(await redis.info("server"))?.[1]);
  const redisReadable = processCpuMs(redisPid) !== null;
  // Only read, never installed: the view exists where the extension was created and preloaded.
  const [pss] = await sql<{ loaded: boolean; created: boolean }[]>`
    select current_setting('shared_preload_libraries') ~ 'pg_stat_statements' as loaded,
           exists (select 1 from pg_extension where extname = 'pg_stat_statements') as created`;
  const statementsAvailable = Boolean(pss?.loaded && pss.created);
  let pgReadable = true;
  let own = 0;

  const statements = async (): Promise<Statements | null> => {
    if (!statementsAvailable) return null;
    const rows = await sql<{ toplevel: boolean; query: string; calls: string }[]>`
      select toplevel, query, sum(calls)::text as calls from pg_stat_statements
      where dbid = (select oid from pg_database where datname = current_database())
      group by toplevel, query`;
    const out: Statements = { top: 0, nested: 0, byQuery: new Map() };
    for (const r of rows) {
      const calls = Number(r.calls);
      // The meter's own reads of the statistics views are not the workload's.
      if (r.query.includes("pg_stat_")) continue;
      if (!r.toplevel) {
        out.nested += calls;
        continue;
      }
      out.top += calls;
      const query = r.query.replace(/\s+/g, " ").trim();
      out.byQuery.set(query, (out.byQuery.get(query) ?? 0) + calls);
    }
    return out;
  };

  const cpu = async () => {
    const usage = process.cpuUsage();
    const backends = await sql<{ pid: number }[]>`
      select pid from pg_stat_activity where datname = current_database() and backend_type = 'client backend'`;
    const pgBackends = new Map(backends.map((b) => [b.pid, processCpuMs(b.pid)]));
    if ([...pgBackends.values()].some((v) => v === null)) pgReadable = false;
    return {
      own,
      processMs: (usage.user + usage.system) / 1000,
      redisMs: redisReadable ? processCpuMs(redisPid) : null,
      pgBackends,
    };
  };
  const counters = async () => {
    // Backends publish their counters when idle, at most once a second: wait that long first.
    await new Promise((r) => setTimeout(r, 1100));
    await sql`select pg_stat_clear_snapshot()`;
    const [db] = await sql<{ commits: string; writes: string }[]>`
      select xact_commit::text as commits, (tup_inserted + tup_updated + tup_deleted)::text as writes
      from pg_stat_database where datname = ${database}`;
    const commandStats = await redis.info("commandstats");
    let redisCommands = 0;
    let redisScripts = 0;
    for (const m of commandStats.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
      redisCommands += Number(m[2]);
      if (/^(eval|evalsha|eval_ro|evalsha_ro|fcall|fcall_ro)$/.test(m[1]!)) redisScripts += Number(m[2]);
    }
    return {
      commits: Number(db!.commits),
      rowWrites: Number(db!.writes),
      statements: await statements(),
      redisCommands,
      redisScripts,
    };
  };

  return {
    own: () => {
      own++;
    },
    // Counters settle before the window's CPU is read, and after its CPU is read.
    snapshot: async () => {
      const settled = await counters();
      return { ...settled, ...(await cpu()) };
    },
    cost: async (before) => {
      const used = await cpu();
      const after = { ...used, ...(await counters()) };
      let pgMs = 0;
      for (const [pid, ms] of after.pgBackends) {
        // A backend that connected during the window counts whole; one that left is lost.
        pgMs += (ms ?? 0) - (before.pgBackends.get(pid) ?? 0);
      }
      const processMs = after.processMs - before.processMs;
      const redisMs =
        after.redisMs !== null && before.redisMs !== null ? after.redisMs - before.redisMs : null;
      return {
        cpuMs: processMs + (redisMs ?? 0) + (pgReadable ? pgMs : 0),
        processMs,
        redisMs,
        pgMs: pgReadable ? pgMs : null,
        commits: after.commits - before.commits - (after.own - before.own),
        rowWrites: after.rowWrites - before.rowWrites,
        ...statementsDelta(before.statements, after.statements, after.own - before.own),
        redisCommands: after.redisCommands - before.redisCommands,
        redisScripts: after.redisScripts - before.redisScripts,
      };
    },
    describe: () =>
      [
        `CPU = this process (process.cpuUsage: bench client, in-process API and worker)`,
        redisReadable ? `+ redis-server pid ${redisPid} (/proc)` : "(redis-server CPU not readable)",
        pgReadable
          ? `+ Postgres client backends of database ${database} (/proc; WAL writer, checkpointer and other databases not counted)`
          : "(Postgres backend CPU not readable)",
        `at ${clockTicks} ticks/s.`,
        statementsAvailable
          ? "Statements from pg_stat_statements: those clients sent (one round trip each, BEGIN and COMMIT included) and, in brackets, those run inside them (foreign-key checks)."
          : `pg_stat_statements is not ${pss?.loaded ? "created in this database" : "loaded (shared_preload_libraries)"}: statements per step not measured.`,
        "Commits and row writes from pg_stat_database; Redis commands from INFO commandstats of the bench's own redis-server: all commands, those run inside Lua scripts included, and in brackets the script calls among them.",
      ].join(" "),
  };
}

function statementsDelta(
  before: Statements | null,
  after: Statements | null,
  own: number,
): Pick<Cost, "statements" | "nestedStatements" | "statementsByQuery"> {
  if (!before || !after) return { statements: null, nestedStatements: null, statementsByQuery: [] };
  const statementsByQuery = [...after.byQuery]
    .map(([query, calls]) => ({ query, calls: calls - (before.byQuery.get(query) ?? 0) }))
    .filter((q) => q.calls > 0)
    .sort((a, b) => b.calls - a.calls);
  return {
    // The meter's own reads are statements too (one per `own()`), and so are its snapshots' reads.
    statements: after.top - before.top - own,
    nestedStatements: after.nested - before.nested,
    statementsByQuery,
  };
}
