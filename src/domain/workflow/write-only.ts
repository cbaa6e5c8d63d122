/**
 * Write-only fields (SPEC §12): what a read of a definition shows in place of values that may be
 * credentials. `notify[].secret` is always hidden. Header values of `http` executors and `env`
 * values of `command` executors are hidden when they hold literal text, which may be a token
 * pasted into the definition; a value made only of templates (`{{secrets.API_TOKEN}}`, or
 * `Bearer {{secrets.API_TOKEN}}` with an authentication scheme) is a reference and is shown, as
 * are a few headers that never carry credentials (`content-type`, `accept`, …).
 *
 * The stored definition is not changed, so its version and hash stay what the writer sent; a
 * client that reads a definition and sends it back must put the hidden values back first.
 */
import { REDACTED } from "../redaction.ts";
import type { Executor, WorkflowSpec } from "./spec.ts";
import { replaceTemplates } from "./templates.ts";

const publicHeaders: ReadonlySet<string> = new Set([
  "accept",
  "accept-encoding",
  "accept-language",
  "cache-control",
  "content-language",
  "content-type",
  "if-match",
  "if-none-match",
  "user-agent",
]);

/** A value with no literal text besides templates and an authentication scheme. */
const referenceOnly = /^\s*(?:(?:Bearer|Basic|Token|Bot|Digest)\s+)?$/i;

function shown(value: string): string {
  return value.includes("{{") && referenceOnly.test(replaceTemplates(value, "")) ? value : REDACTED;
}

function redactExecutor(executor: Executor): Executor {
  if (executor.type === "http" && executor.headers) {
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(executor.headers))
      headers[name] = publicHeaders.has(name.toLowerCase()) ? value : shown(value);
    return { ...executor, headers };
  }
  if (executor.type === "command" && executor.env) {
    const env: Record<string, string> = {};
    for (const [name, value] of Object.entries(executor.env)) env[name] = shown(value);
    return { ...executor, env };
  }
  return executor;
}

/** A copy of `spec` as reads show it; the input is not modified. */
export function writeOnlyView(spec: WorkflowSpec): WorkflowSpec {
  return {
    ...spec,
    ...(spec.notify
      ? {
          notify: spec.notify.map((n) => (n.secret === undefined ? n : { ...n, secret: REDACTED })),
        }
      : {}),
    steps: spec.steps.map((step) => ({
      ...step,
      run: redactExecutor(step.run),
      ...(step.compensate ? { compensate: redactExecutor(step.compensate) } : {}),
    })),
  };
}
