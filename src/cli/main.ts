/**
 * The `flowline` command: the only place where configuration, clients and processes are wired
 * together. Each subcommand loads the config (stopping with a message that names the bad key)
 * and runs one role.
 */
import { Command, CommanderError } from "commander";
import { pino } from "pino";
import { startApiServer } from "../api/server.ts";
import { type Config, ConfigError, loadConfig } from "../config/index.ts";
import { runMigrations } from "../db/migrate.ts";

const EXIT_CONFIG = 78;
const EXIT_NOT_YET = 2;

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

function createLogger(config: Config, role: string) {
  return pino({ level: config.log.level, base: { role, pid: process.pid } });
}

/** Runs until SIGTERM/SIGINT, then `stop()`; a second signal, or a stuck stop, exits at once. */
function untilSignal(log: pino.Logger, graceSeconds: number, stop: () => Promise<void>): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, "shutting down");
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
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
}

async function runApi(role: string): Promise<void> {
  const config = loadConfigOrExit();
  const log = createLogger(config, role);
  process.on("unhandledRejection", (reason) => log.error({ err: reason }, "unhandled rejection"));
  const server = await startApiServer(config, {
    logger: log,
    onGeneratedRootKey: (key) => {
      process.stdout.write(
        `\nFlowline generated a root API key. It is shown only this once; store it now:\n\n    ${key}\n\n` +
          "Set FLOWLINE_BOOTSTRAP_KEY to choose the root key yourself.\n\n",
      );
    },
  });
  untilSignal(log, config.server.shutdownGraceSeconds, () => server.close());
}

function notYet(name: string): () => never {
  return () => {
    process.stderr.write(`flowline ${name}: not yet available\n`);
    process.exit(EXIT_NOT_YET);
  };
}

export function buildProgram(): Command {
  const program = new Command("flowline")
    .description("Self-hosted workflow orchestration server")
    .version("0.1.0")
    .showHelpAfterError();

  program
    .command("up")
    .description("Run the whole system on this machine (API; workers and supervisor as they land)")
    .action(() => runApi("up"));
  program
    .command("api")
    .description("Run the HTTP API")
    .action(() => runApi("api"));
  program
    .command("migrate")
    .description("Create the database if needed and apply pending migrations")
    .action(async () => {
      const config = loadConfigOrExit();
      const { createdDatabase } = await runMigrations(config.database.url);
      process.stdout.write(`migrations applied${createdDatabase ? " (database created)" : ""}\n`);
    });
  program.command("worker").description("Run a worker process").allowUnknownOption().action(notYet("worker"));
  program
    .command("workers")
    .description("Run autoscaled worker pools")
    .allowUnknownOption()
    .action(notYet("workers"));
  program
    .command("supervisor")
    .description("Run the supervisor (schedules, reconciler, retention)")
    .allowUnknownOption()
    .action(notYet("supervisor"));
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram().exitOverride();
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) process.exit(error.exitCode);
    process.stderr.write(`flowline: ${(error as Error).stack ?? String(error)}\n`);
    process.exit(1);
  }
}
