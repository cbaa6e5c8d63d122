/**
 * The checker's own Postgres cluster and Redis server, on free ports, each behind a TCP proxy that
 * the Flowline processes connect through. The shared 5432/6379 instances are never touched.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import { freePort } from "../test/helpers/processes.ts";
import { type PrivateRedis, startPrivateRedis } from "../test/helpers/redis-server.ts";
import { startProxy, type TcpProxy } from "./proxy.ts";

/**
 * Where `initdb` and `pg_ctl` are: `CHAOS_PG_BIN`, else `/usr/local/bin`, else the newest Debian
 * install under `/usr/lib/postgresql/<version>/bin`.
 */
function pgBinDir(): string {
  if (process.env.CHAOS_PG_BIN) return process.env.CHAOS_PG_BIN;
  if (existsSync("/usr/local/bin/initdb")) return "/usr/local/bin";
  const versions = existsSync("/usr/lib/postgresql")
    ? readdirSync("/usr/lib/postgresql")
        .filter((v) => existsSync(`/usr/lib/postgresql/${v}/bin/initdb`))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (versions[0]) return `/usr/lib/postgresql/${versions[0]}/bin`;
  throw new Error("initdb not found: set CHAOS_PG_BIN to the directory of the Postgres server binaries");
}
/** Room for every process's pool plus the connections the pool-exhaustion fault grabs. */
export const PG_MAX_CONNECTIONS = 120;

export interface PrivatePostgres {
  /** Direct URL (the checker's own reads and faults); Flowline gets the proxy's. */
  url: string;
  port: number;
  /** `pg_ctl restart -m immediate`: every session dies, no checkpoint. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

/** As root, Postgres binaries run as the `postgres` user; otherwise as ourselves. */
function pgCommand(args: string[]): [string, string[]] {
  return process.getuid?.() === 0
    ? ["runuser", ["-u", "postgres", "--", ...args]]
    : [args[0]!, args.slice(1)];
}

function run(args: string[]): void {
  const [cmd, argv] = pgCommand(args);
  const result = spawnSync(cmd, argv, { encoding: "utf8" });
  if (result.status !== 0) throw new Error(`${args.join(" ")} failed:\n${result.stdout}\n${result.stderr}`);
}

export async function startPrivatePostgres(): Promise<PrivatePostgres> {
  const PG_BIN = pgBinDir();
  const port = await freePort();
  const dir = mkdtempSync("/tmp/flowline-chaos-pg-");
  chmodSync(dir, 0o700);
  if (process.getuid?.() === 0) {
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
    chownSync(dir, uid, gid);
  }
  const data = join(dir, "data");
  run([`${PG_BIN}/initdb`, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
  const options = [
    `-p ${port}`,
    `-k ${dir}`,
    "-c listen_addresses=127.0.0.1",
    `-c max_connections=${PG_MAX_CONNECTIONS}`,
    // Safe against a crash of Postgres itself (the OS keeps what it was given), which is all the
    // faults do. `synchronous_commit` stays on: a commit acknowledged and then lost in a restart
    // would show up as a lost run that Flowline did not lose.
    "-c fsync=off",
    "-c full_page_writes=off",
  ].join(" ");
  const start = () =>
    run([`${PG_BIN}/pg_ctl`, "-D", data, "-o", options, "-l", join(dir, "log"), "-w", "start"]);
  start();
  const url = `postgres://postgres@127.0.0.1:${port}/flowline`;
  const admin = postgres(`postgres://postgres@127.0.0.1:${port}/postgres`, { max: 1, onnotice: () => {} });
  await admin.unsafe("create database flowline");
  await admin.end();
  return {
    url,
    port,
    restart: async () => {
      run([`${PG_BIN}/pg_ctl`, "-D", data, "-m", "immediate", "-w", "stop"]);
      start();
    },
    stop: async () => {
      try {
        run([`${PG_BIN}/pg_ctl`, "-D", data, "-m", "immediate", "-w", "stop"]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

export interface Stores {
  pg: PrivatePostgres;
  redis: PrivateRedis;
  pgProxy: TcpProxy;
  redisProxy: TcpProxy;
  /** What the Flowline processes use: both stores through their proxies. */
  databaseUrl: string;
  redisUrl: string;
  stop(): Promise<void>;
}

export async function startStores(): Promise<Stores> {
  const pg = await startPrivatePostgres();
  let redis: PrivateRedis;
  try {
    redis = await startPrivateRedis();
  } catch (error) {
    await pg.stop();
    throw error;
  }
  const pgProxy = await startProxy(pg.port);
  const redisProxy = await startProxy(Number(new URL(redis.url).port));
  return {
    pg,
    redis,
    pgProxy,
    redisProxy,
    databaseUrl: `postgres://postgres@127.0.0.1:${pgProxy.port}/flowline`,
    redisUrl: `redis://127.0.0.1:${redisProxy.port}`,
    stop: async () => {
      await pgProxy.close();
      await redisProxy.close();
      await redis.stop().catch(() => {});
      await pg.stop().catch(() => {});
    },
  };
}
