/**
 * The `flowline` command: server roles (`up`, `api`, `worker`, …, in roles.ts, loaded only when one
 * starts) and client commands that talk to a server over HTTP (client/commands.ts).
 *
 * Exit codes (SPEC §11): 0 success, 1 the run failed or was cancelled, 2 usage or request error,
 * 3 the server is unreachable; 78 invalid configuration for a server role.
 */
import { Command, CommanderError } from "commander";
import { release } from "../config/release.ts";
import { migrationLabel } from "../domain/versions.ts";
import { registerClientCommands } from "./client/commands.ts";
import { EXIT } from "./client/output.ts";

const roles = () => import("./roles.ts");

/** `flowline --version`: the release, the image it was built as, and the newest migration it carries. */
export function versionText(): string {
  return [
    `flowline ${release.version}`,
    `image: ${release.imageTag ?? "none (not built as an image)"}`,
    `schema: ${migrationLabel(release.schema)}`,
  ].join("\n");
}

export function buildProgram(): Command {
  const program = new Command("flowline")
    .description("Self-hosted workflow orchestration: run the server, or talk to one")
    .version(versionText(), "-V, --version", "print the version, image tag and schema (migration) version")
    .exitOverride()
    .showHelpAfterError();

  program.commandsGroup("Server:");
  program
    .command("up")
    .description("Run the whole system on this machine: API, supervisor and autoscaled worker pools")
    .action(async () => (await roles()).runUp());
  program
    .command("api")
    .description("Run the HTTP API")
    .action(async () => (await roles()).runApi("api"));
  program
    .command("migrate")
    .description("Create the database if needed and apply pending migrations")
    .option(
      "--check",
      "apply nothing: say whether the running processes can run against the schema this release migrates to",
    )
    .action(async (opts: { check?: boolean }) => (await roles()).runMigrate(opts));
  program
    .command("worker")
    .description("Run a worker process for one or more queues")
    .option("--queues <names>", "comma-separated queue names", "default")
    .option("--concurrency <n>", "attempts run at once (default: the first queue's configured concurrency)")
    .option("--supervised", "run under `flowline up`: ignore SIGINT, stop when stdin closes")
    .option(
      "--metrics-port <port>",
      "port of this process's /metrics (default: metrics.workerPort; 0: any free port)",
    )
    .action(
      async (opts: { queues: string; concurrency?: string; supervised?: boolean; metricsPort?: string }) =>
        (await roles()).runWorker(opts),
    );
  program
    .command("workers")
    .description("Run autoscaled worker pools: per configured queue, between its min and max processes")
    .action(async () => (await roles()).runWorkers());
  program
    .command("supervisor")
    .description(
      "Run a supervisor: schedules, reconciler, webhooks, retention (one is active at a time; others stand by)",
    )
    .action(async () => (await roles()).runSupervisorRole());

  program.commandsGroup("Client (FLOWLINE_URL, FLOWLINE_KEY):");
  registerClientCommands(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  // `flowline … | head`: a reader that went away ends the command, not with a stack trace.
  process.stdout.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code === "EPIPE") process.exit(EXIT.ok);
    throw error;
  });
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      // --help and --version exit 0; anything else commander refuses is a usage error.
      process.exit(error.exitCode === 0 ? EXIT.ok : EXIT.usage);
    }
    process.stderr.write(`flowline: ${(error as Error).stack ?? String(error)}\n`);
    process.exit(1);
  }
}
