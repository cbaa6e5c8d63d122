/**
 * Executors look user-given names up as own properties only, and bound what a step may render
 * and return.
 */
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/index.ts";
import { type ExecutionContext, ExecutionError, execute } from "../../src/jobs/executors/index.ts";

function context(
  overrides: Partial<ExecutionContext> = {},
  config: Record<string, unknown> = {},
): ExecutionContext {
  return {
    runId: "r",
    stepId: "s",
    attempt: 1,
    params: {},
    upstream: {},
    signal: new AbortController().signal,
    log: () => true,
    logDrained: async () => {},
    maxLineBytes: 8192,
    progress: () => {},
    config: parseConfig({ commands: { echo: { argv: ["echo"] } }, ...config }),
    handlers: { "reports.daily": async () => ({ ok: true }) },
    ...overrides,
  };
}

async function failure(promise: Promise<unknown>): Promise<ExecutionError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ExecutionError);
  return error as ExecutionError;
}

describe("executors and inherited property names", () => {
  it.each(["constructor", "toString", "hasOwnProperty", "__proto__"])(
    "has no handler named %s",
    async (name) => {
      const error = await failure(execute({ type: "handler", name }, context()));
      expect(error.code).toBe("handler_missing");
      expect(error.retryable).toBe(false);
    },
  );

  it.each(["constructor", "toString", "valueOf"])("has no command named %s", async (command) => {
    const error = await failure(execute({ type: "command", command, args: [] }, context()));
    expect(error.code).toBe("command_not_allowed");
  });
});

describe("what one attempt may make the system hold", () => {
  const small = {
    limits: { renderedInputBytes: 10_000, outputBytes: 2000, logLineBytes: 100, logLinesPerAttempt: 3 },
  };

  it("fails an output over limits.outputBytes with output_too_large, not retryable", async () => {
    const big = "x".repeat(3000);
    const error = await failure(
      execute({ type: "noop", output: { v: "{{params.p}}" } }, context({ params: { p: big } }, small)),
    );
    expect(error.code).toBe("output_too_large");
    expect(error.retryable).toBe(false);
    expect(error.message).toMatch(/is 30\d\d bytes as JSON; the limit is 2000 \(limits.outputBytes\)/);
    const handler = await failure(
      execute({ type: "handler", name: "big" }, context({ handlers: { big: () => ({ rows: big }) } }, small)),
    );
    expect(handler.code).toBe("output_too_large");
    expect(
      await execute({ type: "noop", output: { v: "{{params.p}}" } }, context({ params: { p: "ok" } }, small)),
    ).toEqual({
      v: "ok",
    });
  });

  it("stops rendering as soon as the input passes limits.renderedInputBytes", async () => {
    // 100 copies of a 60 KB param would render 6 MB; rendering stops after the first.
    const output = Array.from({ length: 100 }, () => "{{params.p}}");
    const error = await failure(
      execute({ type: "noop", output }, context({ params: { p: "y".repeat(60_000) } }, small)),
    );
    expect(error.code).toBe("input_too_large");
    expect(error.retryable).toBe(false);
    expect(error.message).toMatch(/limits.renderedInputBytes/);
    // Stopped while rendering: the full size was never known (a full render would report it).
    expect(error.details).not.toHaveProperty("bytes");
    expect(error.message).toMatch(/more than that/);
  });
});
