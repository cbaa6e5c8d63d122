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
    log: () => {},
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
