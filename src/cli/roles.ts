/**
 * The server roles of the `flowline` command: each loads the config (stopping with a message that
 * names the bad key) and runs one role until a signal stops it. Loaded only when a role starts, so
 * the client commands do not pay for the server's modules.
 */
import type { Logger } from "pino";
import { startApiServer } from "../api/server.ts";
import { type Config, ConfigError, loadConfig, parseConfig } from "../config/index.ts";
import { checkSchema, runMigrations } from "../db/migrate.ts";
import { SchemaMismatchError } from "../db/schema-version.ts";
import { ownValue } from "../domain/records.ts";
import { startAutoscaler } from "../jobs/autoscaler.ts";
import { KILL_GRACE_MS } from "../jobs/executors/command.ts";
import { startSupervisor } from "../jobs/supervisor/index.ts";
import { startWorker } from "../jobs/worker.ts";
import { createLogger as createProcessLogger } from "../observability/logger.ts";
import { installEngineMetrics } from "../observability/metrics.ts";
import { type MetricsServer, startMetricsServer } from "../observability/metrics-server.ts";
import { startTracing, type TracingHandle } from "../observability/tracing.ts";
import { type EmbeddedPostgres, startEmbeddedPostgres } from "../stores/embedded-postgres.ts";
import { describeStores, storeKind } from "../stores/index.ts";

const EXIT_CONFIG = 78;
/** The database schema is one this release cannot run against (migrate, or upgrade the process). */
const EXIT_SCHEMA = 65;

function loadConfigOrExit(): Config {
  try {
    return loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`flowline: invalid configuration\n${error.message}\n`);
      process.exit(EXIT_CONFIG);
    }
    throw error;
  }
}

/** Refuses to go on against a schema this release does not understand, saying what to do. */
async function checkSchemaOrExit(config: Config, log: Logger): Promise<void> {
  try {
    const note = await checkSchema(config.database.url);
    if (note) log.warn(note);
  } catch (error) {
    exitOnSchemaMismatch(error);
    throw error;
  }
}

function exitOnSchemaMismatch(error: unknown): void {
  if (error instanceof SchemaMismatchError) {
    process.stderr.write(`flowline: refusing to start: ${error.message}\n`);
    process.exit(EXIT_SCHEMA);
  }
}

/** Every role but `up` needs a database URL: only `up` starts an embedded Postgres. */
function loadServerConfigOrExit(role: string): Config {
  const config = loadConfigOrExit();
  if (!config.database.url) {
    process.stderr.write(
      `flowline ${role}: DATABASE_URL is not set. Only \`flowline up\` starts an embedded Postgres; ` +
        `set DATABASE_URL (database.url) to the Postgres this ${role} should use (\`flowline up\` prints ` +
        "the URL of its embedded one).\n",
    );
    process.exit(EXIT_CONFIG);
  }
  return config;
}

function createLogger(config: Config, role: string) {
  return createProcessLogger({ level: config.log.level, base: { role, pid: process.pid } });
}

/**
 * What every server role sets up before its work: engine metrics, and tracing when the OTEL_*
 * variables ask for it (its buffered spans are sent when the role stops).
 */
async function observe(role: string): Promise<TracingHandle> {
  installEngineMetrics();
  return startTracing(role);
}

/**
 * `/metrics` of a process without an HTTP server of its own. A port already taken is logged, not
 * fatal: the process does its work without serving metrics.
 */
async function serveMetrics(config: Config, log: Logger, port: number): Promise<MetricsServer | undefined> {
  if (!config.metrics.enabled) return undefined;
  try {
    const server = await startMetricsServer(config.metrics.host, port);
    log.info({ metricsUrl: server.url }, "metrics listening");
    return server;
  } catch (error) {
    log.error({ err: (error as Error).message }, "metrics not served");
    return undefined;
  }
}

/**
 * Runs until SIGTERM/SIGINT, then `stop()`; a second signal, or a stuck stop, exits at once.
 * Returns a function that starts the same shutdown for another reason.
 */
function untilSignal(
  log: Logger,
  graceSeconds: number,
  stop: () => Promise<void>,
  options: { ignoreSigint?: boolean } = {},
): (reason: string) => void {
  let stopping = false;
  const shutdown = (reason: string) => {
    if (stopping) {
      log.warn({ reason }, "second signal: exiting now");
      process.exit(1);
    }
    stopping = true;
    log.info({ reason }, "shutting down");
    const deadline = setTimeout(
      () => {
        log.error("shutdown did not finish in time: exiting");
        process.exit(1);
      },
      (graceSeconds + 5) * 1000,
    );
    deadline.unref();
    stop().then(
      () => process.exit(0),
      (error) => {
        log.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => {
    if (options.ignoreSigint) log.info("SIGINT ignored: the supervising process stops this one");
    else shutdown("SIGINT");
  });
  return shutdown;
}

export async function runApi(role: string): Promise<void> {
  const config = loadServerConfigOrExit(role);
  const log = createLogger(config, role);
  process.on("unhandledRejection", (reason) => log.error({ err: reason }, "unhandled rejection"));
  const tracing = await observe(role);
  const server = await startApiServer(config, { logger: log, onGeneratedRootKey: printRootKey }).catch(
    (error) => {
      exitOnSchemaMismatch(error);
      throw error;
    },
  );
  printDashboard(server.url);
  untilSignal(log, config.server.shutdownGraceSeconds, async () => {
    await server.close();
    await tracing.shutdown();
  });
}

/**
 * `up`: the whole system on one machine — the API and a supervisor in this process, and the
 * autoscaled worker pools as child processes. Ctrl-C / SIGTERM stops everything: the pools drain
 * their workers, the supervisor hands its lease over, the API closes its streams.
 */
export async function runUp(): Promise<void> {
  let config = loadConfigOrExit();
  const log = createLogger(config, "up");
  process.on("unhandledRejection", (reason) => log.error({ err: reason }, "unhandled rejection"));
  const tracing = await observe("up");
  // No DATABASE_URL: an embedded Postgres in the data directory, for this process and the worker
  // processes it starts (they inherit DATABASE_URL).
  let embedded: EmbeddedPostgres | null = null;
  if (!config.database.url) {
    embedded = await startEmbeddedPostgres({
      dataDir: config.database.dataDir,
      onLog: (message) => log.debug({ component: "embedded-postgres" }, message.trim()),
    });
    if (embedded.recovered)
      log.warn({ dataDir: embedded.dataDir }, `embedded Postgres: ${embedded.recovered}`);
    log.info(
      { dataDir: embedded.dataDir, port: embedded.port, created: embedded.created },
      "embedded Postgres started",
    );
    config = parseConfig({ ...config, database: { ...config.database, url: embedded.url } });
    process.env.DATABASE_URL = embedded.url;
  }
  const stopEmbedded = async () => {
    await embedded?.stop();
  };
  try {
    // The API first: it applies migrations before any worker touches the database.
    let generatedKey: string | undefined;
    const server = await startApiServer(config, {
      logger: log,
      onGeneratedRootKey: (key) => {
        generatedKey = key;
      },
    }).catch((error) => {
      exitOnSchemaMismatch(error);
      throw error;
    });
    const supervisor = await startSupervisor({ config, log: log.child({ role: "supervisor" }) });
    const autoscaler = await startAutoscaler({ config, log: log.child({ role: "workers" }) });
    printBanner(config, server.url, embedded, generatedKey);
    untilSignal(log, workerStopSeconds(config) + 20, async () => {
      await Promise.all([autoscaler.close(), supervisor.close(), server.close()]);
      await tracing.shutdown();
      await stopEmbedded();
    });
  } catch (error) {
    await stopEmbedded();
    throw error;
  }
}

/** What `up` runs on, where its data lives and whether it persists; the root key once. */
function printBanner(config: Config, url: string, embedded: EmbeddedPostgres | null, rootKey?: string): void {
  const database = new URL(config.database.url!);
  const where = embedded
    ? `${embedded.dataDir} (embedded Postgres on 127.0.0.1:${embedded.port}; kept across restarts, delete the directory to start over)`
    : `the Postgres at ${database.host}${database.pathname} (DATABASE_URL; persists with that server)`;
  const lines = [
    "",
    "Flowline is up.",
    `  API:        ${url}/v1  (docs: ${url}/docs)`,
    `  Dashboard:  ${url}/ui/  (log in with an API key)`,
    `  Stores:     ${describeStores(config)}${embedded ? ", embedded" : ""}`,
    storeKind(config) === "postgres"
      ? "              no Redis is used; set REDIS_URL to run queues and fan-out on Redis"
      : `              Redis at ${new URL(config.redis.url!).host}`,
    `  Data:       ${where}`,
    ...(embedded
      ? [
          `  Database:   ${embedded.url.replace(/:[^:@/]+@/, ":***@")} (password in ${embedded.dataDir}/embedded-postgres.json)`,
        ]
      : []),
    "",
  ];
  process.stdout.write(`${lines.join("\n")}\n`);
  if (rootKey) printRootKey(rootKey);
}

/** How long a worker may take to stop: its grace, then a command's kill grace, then hand-backs. */
const workerStopSeconds = (config: Config) => config.worker.graceSeconds + KILL_GRACE_MS / 1000 + 5;

function printDashboard(url: string): void {
  process.stdout.write(`\nDashboard: ${url}/ui/ (log in with an API key)\n\n`);
}

function printRootKey(key: string): void {
  process.stdout.write(
    `\nFlowline generated a root API key. It is shown only this once; store it now:\n\n    ${key}\n\n` +
      "Set FLOWLINE_BOOTSTRAP_KEY to choose the root key yourself.\n\n",
  );
}

export async function runMigrate(opts: { check?: boolean } = {}): Promise<void> {
  const config = loadServerConfigOrExit("migrate");
  if (opts.check) {
    const { checkMigration, renderMigrateCheck } = await import("./migrate-check.ts");
    const check = await checkMigration(config);
    process.stdout.write(renderMigrateCheck(check));
    process.exit(check.compatible ? 0 : 1);
  }
  const { createdDatabase } = await runMigrations(config.database.url, {
    queues: storeKind(config) === "postgres",
  });
  process.stdout.write(`migrations applied${createdDatabase ? " (database created)" : ""}\n`);
}

export async function runWorker(opts: {
  queues: string;
  concurrency?: string;
  supervised?: boolean;
  metricsPort?: string;
}): Promise<void> {
  const config = loadServerConfigOrExit("worker");
  const queues = opts.queues
    .split(",")
    .map((q) => q.trim())
    .filter(Boolean);
  const concurrency =
    opts.concurrency === undefined
      ? (ownValue(config.queues, queues[0]!)?.concurrency ?? 8)
      : Number(opts.concurrency);
  const metricsPort = opts.metricsPort === undefined ? config.metrics.workerPort : Number(opts.metricsPort);
  if (
    queues.length === 0 ||
    !Number.isInteger(concurrency) ||
    concurrency < 1 ||
    !Number.isInteger(metricsPort) ||
    metricsPort < 0 ||
    metricsPort > 65535
  ) {
    process.stderr.write(
      "flowline worker: --queues needs at least one name, --concurrency a positive integer and --metrics-port a port (0–65535)\n",
    );
    process.exit(2);
  }
  const log = createLogger(config, "worker");
  process.on("unhandledRejection", (reason) => log.error({ err: reason }, "unhandled rejection"));
  await checkSchemaOrExit(config, log);
  const tracing = await observe("worker");
  const metrics = await serveMetrics(config, log, metricsPort);
  const worker = await startWorker({
    config,
    queues,
    concurrency,
    log,
    ...(metrics ? { metricsUrl: metrics.url } : {}),
  });
  // Aborted commands get KILL_GRACE_MS after SIGTERM before SIGKILL; hand-backs follow that.
  const stop = untilSignal(
    log,
    workerStopSeconds(config),
    async () => {
      await worker.close();
      await Promise.all([metrics?.close(), tracing.shutdown()]);
    },
    { ignoreSigint: opts.supervised === true },
  );
  if (opts.supervised) {
    process.stdin.on("end", () => stop("parent gone"));
    process.stdin.on("error", () => stop("parent gone"));
    process.stdin.resume();
  }
}

export async function runWorkers(): Promise<void> {
  const config = loadServerConfigOrExit("workers");
  const log = createLogger(config, "workers");
  process.on("unhandledRejection", (reason) => log.error({ err: reason }, "unhandled rejection"));
  await checkSchemaOrExit(config, log);
  const autoscaler = await startAutoscaler({ config, log });
  untilSignal(log, workerStopSeconds(config) + 20, () => autoscaler.close());
}

export async function runSupervisorRole(): Promise<void> {
  const config = loadServerConfigOrExit("supervisor");
  const log = createLogger(config, "supervisor");
  process.on("unhandledRejection", (reason) => log.error({ err: reason }, "unhandled rejection"));
  const tracing = await observe("supervisor");
  await runMigrations(config.database.url, { queues: storeKind(config) === "postgres" });
  await checkSchemaOrExit(config, log);
  const supervisor = await startSupervisor({ config, log });
  const metrics = await serveMetrics(config, log, config.metrics.supervisorPort);
  untilSignal(log, 10, async () => {
    await supervisor.close();
    await Promise.all([metrics?.close(), tracing.shutdown()]);
  });
}
