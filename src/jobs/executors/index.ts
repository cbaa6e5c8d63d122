import { jsonBytes, unstorableAt } from "../../domain/limits.ts";
import { ownValue } from "../../domain/records.ts";
import type { Executor } from "../../domain/workflow/spec.ts";
import { RenderTooLargeError, renderTemplates, TemplateError } from "../../domain/workflow/templates.ts";
import { runCommand } from "./command.ts";
import { runHttp } from "./http.ts";
import { abortableSleep, type ExecutionContext, ExecutionError } from "./types.ts";

export type { ExecutionContext } from "./types.ts";
export { ExecutionError } from "./types.ts";

/**
 * Renders the executor's templates and runs it; resolves with the step output. Bounds what an
 * attempt may make the system hold (SPEC §13): the rendered input (`input_too_large`), the output
 * (`output_too_large`); text Postgres cannot store in the output (`output_invalid`). None of these is retried: the next attempt would render and produce the
 * same. (Log lines are bounded where they are buffered: jobs/attempt-log.ts.)
 */
export async function execute(executor: Executor, ctx: ExecutionContext): Promise<unknown> {
  const { limits } = ctx.config;
  let rendered: Executor;
  try {
    rendered = renderTemplates(
      executor,
      { params: ctx.params, steps: ctx.upstream },
      { maxSize: limits.renderedInputBytes },
    ) as Executor;
  } catch (error) {
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
