import type { Config } from "../../config/index.ts";
import { jsonBytes, unstorableAt } from "../../domain/limits.ts";
import { ownValue } from "../../domain/records.ts";
import { Redactor } from "../../domain/redaction.ts";
import type { Executor } from "../../domain/workflow/spec.ts";
import {
  RenderTooLargeError,
  renderTemplates,
  SecretMissingError,
  secretNames,
  TemplateError,
} from "../../domain/workflow/templates.ts";
import { runCommand } from "./command.ts";
import { runHttp } from "./http.ts";
import { type SecretProvider, secretProvider } from "./secrets.ts";
import { abortableSleep, type ExecutionContext, ExecutionError } from "./types.ts";

export type { ExecutionContext } from "./types.ts";
export { ExecutionError } from "./types.ts";

/**
 * Renders the executor's templates and runs it; resolves with the step output. Bounds what an
 * attempt may make the system hold (SPEC §13): the rendered input (`input_too_large`), the output
 * (`output_too_large`); text Postgres cannot store in the output (`output_invalid`). None of these is retried: the next attempt would render and produce the
 * same. (Log lines are bounded where they are buffered: jobs/attempt-log.ts.)
 *
 * `{{secrets.NAME}}` references are resolved here, from the configured provider, and only for the
 * attempt: a missing one fails it with `secret_missing`. When an executor uses secrets, every log
 * line, progress message, the output and the error pass through a redactor first, so a value the
 * program or the remote end echoes back is stored as `***` (SPEC §12).
 */
export async function execute(executor: Executor, ctx: ExecutionContext): Promise<unknown> {
  const secrets = await resolveSecrets(executor, ctx.config);
  if (!secrets) return executeWith(executor, ctx, undefined);
  // Whatever the attempt produces passes through the redactor before it leaves this function.
  const redactor = new Redactor(Object.values(secrets));
  const redacted: ExecutionContext = {
    ...ctx,
    log: (line, stream) => ctx.log(redactor.text(line), stream),
    progress: (pct, message) => ctx.progress(pct, message === undefined ? undefined : redactor.text(message)),
  };
  try {
    return redactor.value(await executeWith(executor, redacted, secrets));
  } catch (error) {
    throw redactError(error, redactor);
  }
}

async function executeWith(
  executor: Executor,
  ctx: ExecutionContext,
  secrets: Record<string, string> | undefined,
): Promise<unknown> {
  const { limits } = ctx.config;
  let rendered: Executor;
  try {
    rendered = renderTemplates(
      executor,
      { params: ctx.params, steps: ctx.upstream, ...(secrets ? { secrets } : {}) },
      { maxSize: limits.renderedInputBytes },
    ) as Executor;
  } catch (error) {
    if (error instanceof SecretMissingError) throw secretMissing(error.secret, ctx.config);
    if (error instanceof TemplateError) throw new ExecutionError(error.message, false, "template");
    if (error instanceof RenderTooLargeError) throw inputTooLarge(null, limits.renderedInputBytes);
    throw error;
  }
  const inputBytes = jsonBytes(rendered);
  if (inputBytes > limits.renderedInputBytes) throw inputTooLarge(inputBytes, limits.renderedInputBytes);
  const output = await run(rendered, ctx);
  const outputBytes = jsonBytes(output ?? null);
  if (outputBytes > limits.outputBytes) {
    throw new ExecutionError(
      `the step output is ${outputBytes} bytes as JSON; the limit is ${limits.outputBytes} (limits.outputBytes)`,
      false,
      "output_too_large",
      { bytes: outputBytes, limit: limits.outputBytes },
    );
  }
  const unstorable = unstorableAt(output);
  if (unstorable) {
    throw new ExecutionError(
      `the step output holds text that cannot be stored (a NUL character or an unpaired UTF-16 surrogate) at ${unstorable}; remove it or encode the data (base64, say)`,
      false,
      "output_invalid",
      { path: unstorable },
    );
  }
  return output;
}

/** The values of the secrets the executor refers to, or undefined when it refers to none. */
async function resolveSecrets(
  executor: Executor,
  config: Config,
): Promise<Record<string, string> | undefined> {
  const names = secretNames(executor);
  if (names.length === 0) return undefined;
  const provider = providerFor(config);
  const values: Record<string, string> = {};
  for (const name of names) {
    let value: string | undefined;
    try {
      value = await provider.get(name);
    } catch (error) {
      throw new ExecutionError(
        `secret "${name}" could not be read from ${provider.describe(name)}: ${(error as NodeJS.ErrnoException).code ?? "error"}`,
        true,
        "secret_unreadable",
        { secret: name },
      );
    }
    if (value === undefined) throw secretMissing(name, config);
    values[name] = value;
  }
  return values;
}

/** Not retried: the next attempt would find the same configuration. */
function secretMissing(name: string, config: Config): ExecutionError {
  return new ExecutionError(
    `secret "${name}" is not set: the worker looked for ${providerFor(config).describe(name)}`,
    false,
    "secret_missing",
    { secret: name },
  );
}

const providers = new WeakMap<Config["secrets"], SecretProvider>();
function providerFor(config: Config): SecretProvider {
  let provider = providers.get(config.secrets);
  if (!provider) {
    provider = secretProvider(config.secrets);
    providers.set(config.secrets, provider);
  }
  return provider;
}

/**
 * The same failure with secret values hidden. An ExecutionError keeps its code and retry decision;
 * anything else stays a plain Error, so the worker still recognises an abort by its signal's reason.
 */
function redactError(error: unknown, redactor: Redactor): unknown {
  if (error instanceof ExecutionError) {
    return new ExecutionError(
      redactor.text(error.message),
      error.retryable,
      error.code,
      redactor.value(error.details) as Record<string, unknown>,
    );
  }
  if (error instanceof Error) {
    const message = redactor.text(error.message);
    return message === error.message ? error : new Error(message);
  }
  return new Error(redactor.text(String(error)));
}

function inputTooLarge(bytes: number | null, limit: number): ExecutionError {
  const size = bytes === null ? "more than that" : `${bytes} bytes as JSON`;
  return new ExecutionError(
    `the executor with its templates rendered is ${size}; the limit is ${limit} bytes (limits.renderedInputBytes)`,
    false,
    "input_too_large",
    { ...(bytes === null ? {} : { bytes }), limit },
  );
}

/** Runs a rendered executor. */
async function run(rendered: Executor, ctx: ExecutionContext): Promise<unknown> {
  switch (rendered.type) {
    case "noop":
      return rendered.output ?? null;
    case "sleep":
      await abortableSleep(rendered.seconds * 1000, ctx.signal);
      return { sleptSeconds: rendered.seconds };
    case "command":
      return runCommand(rendered, ctx);
    case "http":
      return runHttp(rendered, ctx);
    case "handler": {
      const handler = ownValue(ctx.handlers, rendered.name);
      if (!handler) {
        throw new ExecutionError(
          ctx.handlers
            ? `no handler named "${rendered.name}"`
            : "this worker has no handlers module (worker.handlersModule)",
          false,
          "handler_missing",
        );
      }
      return await handler({
        runId: ctx.runId,
        stepId: ctx.stepId,
        attempt: ctx.attempt,
        params: ctx.params,
        steps: ctx.upstream,
        input: rendered.input ?? null,
        signal: ctx.signal,
        progress: ctx.progress,
        log: (line) => ctx.log(line, "log"),
      });
    }
  }
}
