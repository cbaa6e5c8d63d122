import { ownValue } from "../../domain/records.ts";
import type { Executor } from "../../domain/workflow/spec.ts";
import { renderTemplates, TemplateError } from "../../domain/workflow/templates.ts";
import { runCommand } from "./command.ts";
import { runHttp } from "./http.ts";
import { abortableSleep, type ExecutionContext, ExecutionError } from "./types.ts";

export type { ExecutionContext } from "./types.ts";
export { ExecutionError } from "./types.ts";

/** Renders the executor's templates and runs it; resolves with the step output. */
export async function execute(executor: Executor, ctx: ExecutionContext): Promise<unknown> {
  let rendered: Executor;
  try {
    rendered = renderTemplates(executor, { params: ctx.params, steps: ctx.upstream }) as Executor;
  } catch (error) {
    if (error instanceof TemplateError) throw new ExecutionError(error.message, false, "template");
    throw error;
  }
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
