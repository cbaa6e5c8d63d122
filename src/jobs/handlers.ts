/**
 * `handler` steps run TypeScript functions registered by name in a module the worker loads
 * (`worker.handlersModule`, or FLOWLINE_HANDLERS):
 *
 *   import { defineHandlers } from "flowline/handlers";
 *   export default defineHandlers({ "reports.daily": async (ctx) => ({ rows: 42 }) });
 */

import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

export interface HandlerContext {
  runId: string;
  stepId: string;
  attempt: number;
  params: Record<string, unknown>;
  /** Outputs of upstream steps, by step id. */
  steps: Record<string, { output: unknown }>;
  /** The step's `input`, with templates rendered. */
  input: unknown;
  signal: AbortSignal;
  progress(pct: number, message?: string): void;
  log(line: string): void;
}

export type Handler = (ctx: HandlerContext) => Promise<unknown> | unknown;
export type HandlerRegistry = Readonly<Record<string, Handler>>;

export function defineHandlers<T extends Record<string, Handler>>(handlers: T): T {
  return handlers;
}

export async function loadHandlers(modulePath: string | undefined): Promise<HandlerRegistry | null> {
  if (!modulePath) return null;
  const mod = (await import(pathToFileURL(resolve(modulePath)).href)) as {
    default?: unknown;
    handlers?: unknown;
  };
  const registry = (mod.default ?? mod.handlers) as Record<string, unknown> | undefined;
  if (!registry || typeof registry !== "object") {
    throw new Error(`handlers module ${modulePath} must export default defineHandlers({...})`);
  }
  for (const [name, fn] of Object.entries(registry)) {
    if (typeof fn !== "function") throw new Error(`handler "${name}" in ${modulePath} is not a function`);
  }
  return registry as HandlerRegistry;
}
