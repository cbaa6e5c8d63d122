/**
 * The client commands of `flowline` (SPEC §11): each talks to a server at `--url`/`FLOWLINE_URL`
 * with `--key`/`FLOWLINE_KEY` through the typed client, prints `--format table|json|yaml`, and
 * exits 0, 1 (the run failed or was cancelled), 2 (usage or request error) or 3 (unreachable).
 */
import { readdir, readFile, stat } from "node:fs/promises";
import { basename, extname, join } from "node:path";
import { type Command, Option } from "commander";
import { parse as parseYaml } from "yaml";
import {
  type ClientOptions,
  createFlowlineClient,
  type FlowlineClient,
  type Run,
  type Schemas,
  unwrap,
} from "../../client/index.ts";
import { graphStyles, renderGraph } from "./graph.ts";
import { EXIT, type Format, formats, print, reportError, table } from "./output.ts";
import { followRun, percent } from "./watch.ts";

export const DEFAULT_URL = "http://127.0.0.1:3000";

interface CommonOptions {
  url?: string;
  key?: string;
  format: Format;
}

interface Context {
  client: ClientOptions;
  api: FlowlineClient;
  format: Format;
  /** Live views only on a terminal, and only for the human format. */
  tty: boolean;
}

/** A client command: `--url`, `--key` and `--format` on each, errors turned into exit codes. */
function clientCommand(parent: Command, nameAndArgs: string, description: string): Command {
  return parent
    .command(nameAndArgs)
    .description(description)
    .addOption(new Option("--url <url>", "server address").env("FLOWLINE_URL").default(DEFAULT_URL))
    .addOption(new Option("--key <key>", "API key").env("FLOWLINE_KEY"))
    .addOption(new Option("--format <format>", "output format").choices(formats).default("table"));
}

/** Runs a command body and exits with its code; request failures print the server's problem. */
function act(
  body: (ctx: Context, args: string[], options: Record<string, unknown>, command: Command) => Promise<number>,
) {
  return async (...received: unknown[]) => {
    const command = received.at(-1) as Command;
    const options = command.opts() as CommonOptions & Record<string, unknown>;
    const args = command.args;
    const client = { url: options.url ?? DEFAULT_URL, key: options.key };
    let code: number;
    try {
      if (!/^https?:\/\/[^\s/]+/.test(client.url))
        command.error(`--url must be an http(s) URL, got "${client.url}"`);
      const ctx: Context = {
        client,
        api: createFlowlineClient(client),
        format: options.format,
        // A terminal of no size (a bare pseudo-terminal) could show nothing of a live view.
        tty:
          process.stdout.isTTY === true &&
          (process.stdout.columns ?? 0) > 0 &&
          (process.stdout.rows ?? 0) > 0,
      };
      code = await body(ctx, args, options, command);
    } catch (error) {
      code = reportError(error);
    }
    process.exitCode = code;
  };
}

const usageError = (command: Command, message: string): never =>
  command.error(`error: ${message}`, { exitCode: EXIT.usage, code: "flowline.usage" });

function positiveInt(command: Command, name: string, value: unknown): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1)
    usageError(command, `${name} must be a positive integer, got "${value}"`);
  return n;
}

/** `-p k=v` values: JSON when they parse as JSON (numbers, booleans, objects), else strings. */
function parseParams(command: Command, pairs: string[] = []): Record<string, unknown> | undefined {
  if (pairs.length === 0) return undefined;
  const params: Record<string, unknown> = {};
  for (const pair of pairs) {
    const at = pair.indexOf("=");
    if (at < 1) usageError(command, `-p expects key=value, got "${pair}"`);
    const raw = pair.slice(at + 1);
    let value: unknown = raw;
    try {
      value = JSON.parse(raw);
    } catch {}
    Object.defineProperty(params, pair.slice(0, at), { value, enumerable: true, writable: true });
  }
  return params;
}

const collect = (value: string, previous: string[] = []) => [...previous, value];
const list = (value: string) =>
  value
    .split(",")
    .map((v) => v.trim())
    .filter(Boolean);

// ---------------------------------------------------------------------------------------------
// Presenting

function runLine(run: Run): string {
  return table(
    ["RUN", "WORKFLOW", "KIND", "STATUS", "CREATED"],
    [[run.id, `${run.workflow.name} v${run.workflow.version}`, run.kind, run.status, run.createdAt]],
  );
}

function planTable(plan: Schemas["Plan"] | Schemas["RunPlan"]): string {
  const head = `plan for ${plan.workflow.name} v${plan.workflow.version}`;
  const rows = plan.steps.map((s) => [s.stepId, s.action, s.reason, s.queue, s.needs.join(",")]);
  return `${head}\n${table(["STEP", "ACTION", "REASON", "QUEUE", "NEEDS"], rows)}`;
}

const changeOf = (r: Schemas["WorkflowPutResult"]) =>
  !r.created ? "unchanged" : r.version === 1 ? "created" : "new version";

/** A value on one table cell: compact JSON, cut at 60 characters (json/yaml show it whole). */
function brief(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  const text = JSON.stringify(value);
  return text.length > 60 ? `${text.slice(0, 59)}…` : text;
}

function assetTable(assets: Array<Schemas["Asset"]>): string {
  return table(
    ["ASSET", "FRESHNESS", "LAST MATERIALIZED", "WORKFLOWS"],
    assets.map((a) => [a.key, a.freshness, a.lastMaterializedAt, a.workflows.join(",")]),
  );
}

/** After a submission: print it, and with `--watch` follow the run to its end. */
async function submitted(ctx: Context, run: Run | null, watch: boolean, data: unknown): Promise<number> {
  if (!watch || !run) {
    print(ctx.format, data, () => (run ? runLine(run) : "nothing to run: everything is up to date"));
    return EXIT.ok;
  }
  if (ctx.format === "table") process.stdout.write(`run ${run.id} ${run.status}\n`);
  return followRun(ctx.client, run.id, { format: ctx.format, tty: ctx.tty });
}

/** A retry's or subgraph's answer: the plan on `--dry-run` or when nothing runs, else the run. */
async function planned(
  ctx: Context,
  result: Schemas["PlannedRunResponse"],
  options: Record<string, unknown>,
): Promise<number> {
  if (options.dryRun || !result.run) {
    print(ctx.format, result, () => planTable(result.plan));
    return EXIT.ok;
  }
  return submitted(ctx, result.run, !!options.watch, result);
}

// ---------------------------------------------------------------------------------------------

async function definitionFiles(path: string): Promise<string[]> {
  const info = await stat(path);
  if (!info.isDirectory()) return [path];
  const names = (await readdir(path)).filter((n) => [".yaml", ".yml", ".json"].includes(extname(n))).sort();
  return names.map((n) => join(path, n));
}

export function registerClientCommands(program: Command): void {
  clientCommand(program, "apply", "Create or update workflow definitions from YAML/JSON files")
    .requiredOption("-f, --file <path...>", "a definition file, or a directory of them")
    .action(
      act(async (ctx, _args, options) => {
        const results: Array<Schemas["WorkflowPutResult"] & { file: string }> = [];
        for (const path of options.file as string[]) {
          for (const file of await definitionFiles(path)) {
            const text = await readFile(file, "utf8");
            const body = (extname(file) === ".json" ? JSON.parse(text) : parseYaml(text)) as Record<
              string,
              unknown
            >;
            const name = typeof body?.name === "string" ? body.name : basename(file, extname(file));
            const result = unwrap(
              await ctx.api.PUT("/v1/workflows/{name}", {
                params: { path: { name } },
                body: body as Schemas["WorkflowDefinitionInput"],
              }),
            );
            results.push({ ...result, file });
          }
        }
        print(ctx.format, results, () =>
          table(
            ["WORKFLOW", "VERSION", "CHANGE", "FILE"],
            results.map((r) => [r.name, r.version, changeOf(r), r.file]),
          ),
        );
        return EXIT.ok;
      }),
    );

  clientCommand(program, "run <workflow>", "Start a run of a workflow")
    .option("-p, --param <key=value>", "a run parameter (repeatable; JSON values allowed)", collect)
    .option("--priority <n>", "1-10, higher first")
    .option("--idempotency-key <key>", "the same key and body answer the original run")
    .option("--dry-run", "print the plan with reasons and start nothing")
    .option("-w, --watch", "follow the run to its end; exit 0 if it succeeded, 1 if not")
    .action(
      act(async (ctx, [workflow], options, command) => {
        const params = parseParams(command, options.param as string[] | undefined);
        const priority = positiveInt(command, "--priority", options.priority);
        const key = options.idempotencyKey as string | undefined;
        const result = unwrap(
          await ctx.api.POST("/v1/workflows/{name}/runs", {
            params: { path: { name: workflow! }, header: key ? { "idempotency-key": key } : {} },
            body: {
              ...(params ? { params } : {}),
              ...(priority ? { priority } : {}),
              dryRun: !!options.dryRun,
            },
          }),
        );
        if ("dryRun" in result) {
          print(ctx.format, result, () => planTable(result));
          return EXIT.ok;
        }
        return submitted(ctx, result, !!options.watch, result);
      }),
    );

  clientCommand(program, "status <run>", "Show a run and its steps")
    .option("-f, --follow", "follow the run's events to its end; exit 0 if it succeeded, 1 if not")
    .action(
      act(async (ctx, [id], options) => {
        if (options.follow) return followRun(ctx.client, id!, { format: ctx.format, tty: ctx.tty });
        const run = unwrap(await ctx.api.GET("/v1/runs/{id}", { params: { path: { id: id! } } }));
        print(ctx.format, run, () => {
          const steps = run.steps.map((s) => [
            s.id,
            s.status,
            s.attempt,
            s.progress === null ? null : percent(s.progress),
            s.planReason,
            brief(s.error ?? s.output),
          ]);
          const header = ["STEP", "STATUS", "ATTEMPT", "PROGRESS", "PLAN", "OUTPUT OR ERROR"];
          return `${runLine(run)}\n\n${table(header, steps)}`;
        });
        return EXIT.ok;
      }),
    );

  clientCommand(program, "logs <run>", "Print a run's step logs")
    .option("--step <id>", "only this step's lines")
    .option("-f, --follow", "keep printing new lines until the run ends")
    .action(
      act(async (ctx, [id], options) => {
        const step = options.step as string | undefined;
        if (options.follow)
          return followRun(ctx.client, id!, {
            format: ctx.format,
            tty: false,
            logsOf: step ? { step } : {},
          });
        const items: Schemas["LogPage"]["items"] = [];
        for (let after = 0; ; ) {
          const page = unwrap(
            await ctx.api.GET("/v1/runs/{id}/logs", {
              params: { path: { id: id! }, query: { after, limit: 5000, ...(step ? { step } : {}) } },
            }),
          ) as Schemas["LogPage"];
          items.push(...page.items);
          if (page.items.length < 5000) break;
          after = page.nextAfter;
        }
        print(ctx.format, items, () =>
          items.map((l) => `${l.at.slice(11, 23)} ${l.stepId ?? "-"} [${l.stream}] ${l.line}`).join("\n"),
        );
        return EXIT.ok;
      }),
    );

  for (const action of ["cancel", "pause", "resume"] as const) {
    clientCommand(program, `${action} <run>`, `${action[0]!.toUpperCase()}${action.slice(1)} a run`).action(
      act(async (ctx, [id]) => {
        const path = `/v1/runs/{id}/${action}` as const;
        const run = unwrap(await ctx.api.POST(path, { params: { path: { id: id! } } }));
        print(ctx.format, run, () => runLine(run));
        return EXIT.ok;
      }),
    );
  }

  clientCommand(program, "rollback <run>", "Roll back a finished run: compensations in reverse order")
    .option("-w, --watch", "follow the rollback to its end")
    .action(
      act(async (ctx, [id], options) => {
        const run = unwrap(await ctx.api.POST("/v1/runs/{id}/rollback", { params: { path: { id: id! } } }));
        if (!options.watch) {
          print(ctx.format, run, () => runLine(run));
          return EXIT.ok;
        }
        const code = await followRun(ctx.client, run.id, { format: ctx.format, tty: ctx.tty });
        // A rollback that completed is what was asked for.
        const final = unwrap(await ctx.api.GET("/v1/runs/{id}", { params: { path: { id: run.id } } }));
        return final.status === "rolled_back" ? EXIT.ok : code;
      }),
    );

  clientCommand(program, "retry <run>", "Retry a failed or cancelled run from where it failed")
    .option("--dry-run", "print the plan with reasons and start nothing")
    .option("-w, --watch", "follow the new run to its end")
    .action(
      act(async (ctx, [id], options) => {
        const result = unwrap(
          await ctx.api.POST("/v1/runs/{id}/retry", {
            params: { path: { id: id! } },
            body: { dryRun: !!options.dryRun },
          }),
        );
        return planned(ctx, result, options);
      }),
    );

  clientCommand(program, "materialize <asset...>", "Bring assets up to date (only what is missing or stale)")
    .option("--force", "recompute the assets and everything upstream of them")
    .option("-p, --param <key=value>", "a run parameter (repeatable)", collect)
    .option("--partition <key...>", "a backfill: one run per partition key")
    .option("--dry-run", "print the plan with reasons and start nothing")
    .option("-w, --watch", "follow the run to its end (one run only)")
    .action(
      act(async (ctx, assets, options, command) => {
        const params = parseParams(command, options.param as string[] | undefined);
        const partitions = options.partition as string[] | undefined;
        const result = unwrap(
          await ctx.api.POST("/v1/materializations", {
            body: {
              assets,
              force: !!options.force,
              dryRun: !!options.dryRun,
              ...(params ? { params } : {}),
              ...(partitions ? { partitions } : {}),
            },
          }),
        );
        if (options.dryRun || result.runs.length !== 1 || !options.watch) {
          if (options.watch && result.runs.length > 1)
            usageError(command, "--watch follows one run; a backfill starts many");
          print(
            ctx.format,
            result,
            () =>
              [...result.plans.map(planTable), ...result.runs.map(runLine)].join("\n\n") ||
              "nothing to run: everything is up to date",
          );
          return EXIT.ok;
        }
        return submitted(ctx, result.runs[0]!, true, result);
      }),
    );

  clientCommand(program, "subgraph <workflow>", "Run selected steps of a workflow")
    .requiredOption("--steps <ids>", "comma-separated step ids", list)
    .option("--upstream", "also run every step the selection depends on")
    .option("--downstream", "also run every step that depends on the selection")
    .option("--parent <run>", "reuse the outputs of steps that succeeded in this run")
    .option("-p, --param <key=value>", "a run parameter (repeatable)", collect)
    .option("--dry-run", "print the plan with reasons and start nothing")
    .option("-w, --watch", "follow the run to its end")
    .action(
      act(async (ctx, [workflow], options, command) => {
        const params = parseParams(command, options.param as string[] | undefined);
        const result = unwrap(
          await ctx.api.POST("/v1/subgraphs", {
            body: {
              workflow: workflow!,
              steps: options.steps as string[],
              upstream: !!options.upstream,
              downstream: !!options.downstream,
              dryRun: !!options.dryRun,
              ...(options.parent ? { parentRunId: options.parent as string } : {}),
              ...(params ? { params } : {}),
            },
          }),
        );
        return planned(ctx, result, options);
      }),
    );

  clientCommand(program, "runs", "List runs, newest first")
    .option("--workflow <name>", "only this workflow's runs")
    .option("--status <status>", "only runs in this status")
    .option("--kind <kind>", "workflow, materialization or subgraph")
    .option("--limit <n>", "at most this many", "50")
    .action(
      act(async (ctx, _args, options, command) => {
        const page = unwrap(
          await ctx.api.GET("/v1/runs", {
            params: {
              query: {
                limit: positiveInt(command, "--limit", options.limit) ?? 50,
                ...(options.workflow ? { workflow: options.workflow as string } : {}),
                ...(options.status ? { status: options.status as Run["status"] } : {}),
                ...(options.kind ? { kind: options.kind as Run["kind"] } : {}),
              },
            },
          }),
        );
        print(ctx.format, page, () =>
          table(
            ["RUN", "WORKFLOW", "KIND", "STATUS", "CREATED"],
            page.items.map((r) => [
              r.id,
              `${r.workflow.name} v${r.workflow.version}`,
              r.kind,
              r.status,
              r.createdAt,
            ]),
          ),
        );
        return EXIT.ok;
      }),
    );

  clientCommand(program, "assets [key]", "List assets with their freshness, or show one")
    .option("--workflow <name>", "only assets this workflow provides")
    .action(
      act(async (ctx, [key], options) => {
        if (key) {
          const asset = unwrap(await ctx.api.GET("/v1/assets/{key}", { params: { path: { key } } }));
          print(ctx.format, asset, () => assetTable([asset]));
          return EXIT.ok;
        }
        const page = unwrap(
          await ctx.api.GET("/v1/assets", {
            params: {
              query: { limit: 200, ...(options.workflow ? { workflow: options.workflow as string } : {}) },
            },
          }),
        );
        print(ctx.format, page, () => assetTable(page.items));
        return EXIT.ok;
      }),
    );

  clientCommand(program, "queues", "Queues: backlog, running steps, workers and the scaler's target").action(
    act(async (ctx) => {
      const queues = unwrap(await ctx.api.GET("/v1/queues"));
      print(ctx.format, queues, () =>
        table(
          ["QUEUE", "BACKLOG", "RUNNING", "RETRYING", "WORKERS", "TARGET", "WARNING"],
          queues.items.map((q) => [
            q.name,
            q.backlog,
            q.running,
            q.retryingLater,
            q.workers.length,
            q.scaler?.target,
            q.warning,
          ]),
        ),
      );
      return EXIT.ok;
    }),
  );

  clientCommand(program, "graph <workflow>", "Show a workflow's DAG as text, Mermaid or Graphviz DOT")
    .addOption(new Option("--as <style>", "how to draw it").choices(graphStyles).default("text"))
    .option("--version <n>", "a past version (default: the current one)")
    .option("--run <id>", "decorate each step with its status in this run")
    .action(
      act(async (ctx, [name], options, command) => {
        const version = positiveInt(command, "--version", options.version);
        const workflow = unwrap(
          await ctx.api.GET("/v1/workflows/{name}", {
            params: { path: { name: name! }, query: version ? { version } : {} },
          }),
        );
        const statuses = new Map<string, string>();
        if (options.run) {
          const run = unwrap(
            await ctx.api.GET("/v1/runs/{id}", { params: { path: { id: options.run as string } } }),
          );
          for (const step of run.steps) statuses.set(step.id, step.status);
        }
        const steps = workflow.definition.steps.map((s) => ({
          id: s.id,
          needs: s.needs,
          ...(statuses.has(s.id) ? { status: statuses.get(s.id)! } : {}),
        }));
        print(ctx.format, { name: workflow.name, version: workflow.version, steps }, () =>
          renderGraph(steps, options.as as (typeof graphStyles)[number]),
        );
        return EXIT.ok;
      }),
    );

  const keys = program.command("keys").description("API keys (admin): create, list, revoke");
  clientCommand(keys, "create", "Create a key; its secret is printed once")
    .requiredOption("--scopes <scopes>", "comma-separated: read, write, admin", list)
    .option("--tenant <tenant>", "the key's tenant (root keys only; default: yours)")
    .option("--name <name>", "a name to tell keys apart")
    .option("--expires-in <seconds>", "the key stops working this long after now (at least 60)")
    .action(
      act(async (ctx, _args, options, command) => {
        const expiresInSeconds = positiveInt(command, "--expires-in", options.expiresIn);
        const created = unwrap(
          await ctx.api.POST("/v1/keys", {
            body: {
              scopes: options.scopes as Array<"read" | "write" | "admin">,
              ...(options.tenant ? { tenant: options.tenant as string } : {}),
              ...(options.name ? { name: options.name as string } : {}),
              ...(expiresInSeconds === undefined ? {} : { expiresInSeconds }),
            },
          }),
        );
        print(
          ctx.format,
          created,
          () =>
            `${table(["ID", "TENANT", "SCOPES"], [[created.id, created.tenant, created.scopes.join(",")]])}\n\n` +
            `key (shown only now): ${created.key}`,
        );
        return EXIT.ok;
      }),
    );
  clientCommand(keys, "list", "List the active keys of a tenant")
    .option("--tenant <tenant>", "another tenant's keys (root keys only)")
    .action(
      act(async (ctx, _args, options) => {
        const page = unwrap(
          await ctx.api.GET("/v1/keys", {
            params: { query: options.tenant ? { tenant: options.tenant as string } : {} },
          }),
        );
        print(ctx.format, page, () =>
          table(
            ["ID", "TENANT", "NAME", "PREFIX", "SCOPES", "ROOT", "LAST USED", "EXPIRES"],
            page.items.map((k) => [
              k.id,
              k.tenant,
              k.name,
              k.prefix,
              k.scopes.join(","),
              String(k.root),
              k.lastUsedAt,
              k.expiresAt,
            ]),
          ),
        );
        return EXIT.ok;
      }),
    );
  clientCommand(keys, "revoke <id>", "Revoke a key").action(
    act(async (ctx, [id]) => {
      unwrap(await ctx.api.DELETE("/v1/keys/{id}", { params: { path: { id: id! } } }));
      print(ctx.format, { id, revoked: true }, () => `revoked ${id}`);
      return EXIT.ok;
    }),
  );

  clientCommand(program, "webhook-secret", "Show the tenant's webhook signing secret (admin)")
    .option("--rotate", "replace it; the old one keeps signing for 24 hours")
    .action(
      act(async (ctx, _args, options) => {
        const secret = unwrap(
          options.rotate
            ? await ctx.api.POST("/v1/webhooks/secret/rotate", {})
            : await ctx.api.GET("/v1/webhooks/secret", {}),
        );
        print(ctx.format, secret, () =>
          [
            secret.secret,
            ...(secret.previousExpiresAt
              ? [`(the previous secret also signs until ${secret.previousExpiresAt})`]
              : []),
          ].join("\n"),
        );
        return EXIT.ok;
      }),
    );

  clientCommand(program, "audit", "Who did what: the tenant's state-changing requests, newest first (admin)")
    .option("--action <action>", "only this action, e.g. workflow.put or key.revoke")
    .option("--target <target>", "only this target, e.g. workflow:daily or run:<id>")
    .option("--limit <n>", "at most this many entries (1-200)", "50")
    .action(
      act(async (ctx, _args, options, command) => {
        const limit = positiveInt(command, "--limit", options.limit) ?? 50;
        const page = unwrap(
          await ctx.api.GET("/v1/audit", {
            params: {
              query: {
                limit,
                ...(options.action ? { action: options.action as string } : {}),
                ...(options.target ? { target: options.target as string } : {}),
              },
            },
          }),
        );
        print(ctx.format, page, () =>
          table(
            ["TIME", "KEY", "ACTION", "TARGET", "OUTCOME"],
            page.items.map((e) => [e.time, e.keyPrefix, e.action, e.target, e.outcome]),
          ),
        );
        return EXIT.ok;
      }),
    );
}
