/**
 * Validates a workflow definition: first its shape (spec.ts), then its meaning — the DAG, assets,
 * templates, schedules, the command allowlist and literal http hosts. Every problem is reported
 * with its path, all at once, so a user fixes a definition in one round trip.
 */
import { Cron } from "croner";
import type { z } from "zod";
import { buildGraph, findCycle, type Graph, upstreamClosure } from "../dag.ts";
import type { FieldIssue } from "../errors.ts";
import { type Executor, type WorkflowSpec, workflowSpecSchema } from "./spec.ts";
import { collectTemplateRefs } from "./templates.ts";

export interface ValidationContext {
  /** Names of the command allowlist. */
  commands: ReadonlySet<string>;
  /** `http.allowedHosts`: exact host names or IPs, or `*.example.com` for subdomains. */
  allowedHosts: readonly string[];
  maxSteps: number;
  now?: Date;
}

export type ValidationResult = { ok: true; spec: WorkflowSpec } | { ok: false; issues: FieldIssue[] };

type Path = (string | number)[];

function zodIssues(error: z.ZodError): FieldIssue[] {
  const issues: FieldIssue[] = [];
  for (const issue of error.issues) {
    const path = issue.path.map((p) => (typeof p === "symbol" ? String(p) : p));
    if (issue.code === "unrecognized_keys") {
      for (const key of issue.keys)
        issues.push({ location: "body", path: [...path, key], message: `unknown field "${key}"` });
    } else {
      issues.push({ location: "body", path, message: issue.message.replace(/^Invalid input: /, "") });
    }
  }
  return issues;
}

/** The step graph with `needs` plus the implicit edges from `requires` to the providing step. */
export function stepGraph(spec: WorkflowSpec): Graph {
  const provider = new Map<string, string>();
  for (const step of spec.steps)
    for (const asset of step.provides) if (!provider.has(asset)) provider.set(asset, step.id);
  const byId = new Map(spec.steps.map((s) => [s.id, s]));
  return buildGraph(
    spec.steps.map((s) => s.id),
    (id) => {
      const step = byId.get(id)!;
      const implicit = step.requires
        .map((a) => provider.get(a))
        .filter((p): p is string => p !== undefined && p !== id);
      return [...step.needs, ...implicit];
    },
  );
}

export function isValidTimeZone(timezone: string): boolean {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: timezone });
    return true;
  } catch {
    return false;
  }
}

/** null when the cron is usable, else why not. Never loops: croner bounds its own search. */
export function cronProblem(expression: string, timezone: string, now: Date): string | null {
  const fields = expression.trim().split(/\s+/);
  if (!expression.trim().startsWith("@") && fields.length !== 5 && fields.length !== 6) {
    return `cron "${expression}" must have 5 fields (minute hour day month weekday) or 6 with seconds first`;
  }
  let next: Date | null | undefined;
  try {
    next = new Cron(expression, { timezone, paused: true }).nextRun(now);
  } catch (error) {
    return `invalid cron "${expression}": ${(error as Error).message.replace(/^CronPattern: /, "")}`;
  }
  return next ? null : `cron "${expression}" never fires`;
}

export function hostAllowed(hostname: string, allowedHosts: readonly string[]): boolean {
  const host = hostname.toLowerCase().replace(/^\[|\]$/g, "");
  return allowedHosts.some((entry) => {
    const e = entry.toLowerCase();
    if (e.startsWith("*.")) return host.endsWith(e.slice(1)) && host.length > e.length - 1;
    return host === e.replace(/^\[|\]$/g, "");
  });
}

function checkHttpUrl(url: string, ctx: ValidationContext): string | null {
  const authority = /^[^:/?#]*:\/\/([^/?#]*)/.exec(url)?.[1];
  const schemeAndHost = url.slice(
    0,
    (url.indexOf("://") >= 0 ? url.indexOf("://") + 3 : 0) + (authority?.length ?? 0),
  );
  // A templated host is checked by the worker on the resolved address at execution time.
  if (schemeAndHost.includes("{{") || (authority === undefined && url.startsWith("{{"))) return null;
  let parsed: URL;
  try {
    parsed = new URL(url.replace(/\{\{[^{}]*\}\}/g, "x"));
  } catch {
    return `"${url.slice(0, 200)}" is not a valid URL`;
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:")
    return "only http and https URLs are allowed";
  if (parsed.username || parsed.password)
    return "URLs with credentials (user:pass@host) are not allowed; use headers";
  if (ctx.allowedHosts.length === 0) {
    return `host "${parsed.hostname}" is not allowed: http.allowedHosts is empty, so no literal host is allowed`;
  }
  if (!hostAllowed(parsed.hostname, ctx.allowedHosts)) {
    return `host "${parsed.hostname}" is not in http.allowedHosts (${ctx.allowedHosts.join(", ")})`;
  }
  return null;
}

function checkExecutor(executor: Executor, path: Path, ctx: ValidationContext, issues: FieldIssue[]): void {
  if (executor.type === "command" && !ctx.commands.has(executor.command)) {
    const allowed =
      ctx.commands.size > 0 ? `allowed: ${[...ctx.commands].join(", ")}` : "the allowlist is empty";
    issues.push({
      location: "body",
      path: [...path, "command"],
      message: `command "${executor.command}" is not in the allowlist (${allowed})`,
    });
  }
  if (executor.type === "http") {
    const problem = checkHttpUrl(executor.url, ctx);
    if (problem) issues.push({ location: "body", path: [...path, "url"], message: problem });
  }
}

export function validateWorkflowDefinition(input: unknown, ctx: ValidationContext): ValidationResult {
  const parsed = workflowSpecSchema.safeParse(input);
  if (!parsed.success) return { ok: false, issues: zodIssues(parsed.error) };
  const spec = parsed.data;
  const issues: FieldIssue[] = [];
  const add = (path: Path, message: string) => issues.push({ location: "body", path, message });

  if (spec.steps.length > ctx.maxSteps)
    add(["steps"], `at most ${ctx.maxSteps} steps are allowed, got ${spec.steps.length}`);

  const firstIndex = new Map<string, number>();
  spec.steps.forEach((step, i) => {
    const first = firstIndex.get(step.id);
    if (first === undefined) firstIndex.set(step.id, i);
    else add(["steps", i, "id"], `duplicate step id "${step.id}" (first used by steps[${first}])`);
  });

  spec.steps.forEach((step, i) => {
    step.needs.forEach((need, j) => {
      if (need === step.id) add(["steps", i, "needs", j], `step "${step.id}" cannot need itself`);
      else if (!firstIndex.has(need))
        add(["steps", i, "needs", j], `unknown step "${need}" in needs of "${step.id}"`);
    });
  });

  const provider = new Map<string, string>();
  spec.steps.forEach((step, i) => {
    step.provides.forEach((asset, j) => {
      const other = provider.get(asset);
      if (other !== undefined && other !== step.id) {
        add(
          ["steps", i, "provides", j],
          `asset "${asset}" is provided by two steps: "${other}" and "${step.id}"`,
        );
      } else provider.set(asset, step.id);
    });
  });
  spec.steps.forEach((step, i) => {
    step.requires.forEach((asset, j) => {
      if (!provider.has(asset))
        add(["steps", i, "requires", j], `asset "${asset}" is required but no step provides it`);
    });
  });
  for (const asset of Object.keys(spec.assets ?? {})) {
    if (!provider.has(asset)) add(["assets", asset], `asset "${asset}" has a policy but no step provides it`);
  }

  // The DAG checks need unique ids; with duplicates the graph would be ambiguous.
  const uniqueIds = firstIndex.size === spec.steps.length;
  const graph = uniqueIds ? stepGraph(spec) : undefined;
  const cycle = graph ? findCycle(graph) : null;
  if (cycle) add(["steps"], `cycle: ${cycle.join(" → ")}`);

  const now = ctx.now ?? new Date();
  spec.schedules.forEach((schedule, i) => {
    let timezone = schedule.timezone;
    if (!isValidTimeZone(timezone)) {
      add(
        ["schedules", i, "timezone"],
        `unknown time zone "${timezone}"; use an IANA name such as Europe/Paris`,
      );
      timezone = "UTC";
    }
    const problem = cronProblem(schedule.cron, timezone, now);
    if (problem) add(["schedules", i, "cron"], problem);
  });

  // Templates may read outputs only of steps that are certain to have finished: transitive upstreams.
  const upstreamCache = new Map<string, Set<string>>();
  const upstreamOf = (id: string): Set<string> => {
    let set = upstreamCache.get(id);
    if (!set) {
      set = graph && !cycle ? upstreamClosure(graph, [id]) : new Set([id]);
      upstreamCache.set(id, set);
    }
    return set;
  };
  spec.steps.forEach((step, i) => {
    checkExecutor(step.run, ["steps", i, "run"], ctx, issues);
    if (step.compensate) checkExecutor(step.compensate, ["steps", i, "compensate"], ctx, issues);
    const refs = [
      ...collectTemplateRefs(step.run, ["steps", i, "run"]).map((r) => ({ ...r, compensating: false })),
      ...(step.compensate
        ? collectTemplateRefs(step.compensate, ["steps", i, "compensate"]).map((r) => ({
            ...r,
            compensating: true,
          }))
        : []),
    ];
    for (const found of refs) {
      if (found.error) {
        add(found.path, found.error);
        continue;
      }
      const ref = found.ref!;
      if (ref.kind !== "step") continue;
      if (!firstIndex.has(ref.stepId)) {
        add(found.path, `template refers to unknown step "${ref.stepId}"`);
      } else if (ref.stepId === step.id ? !found.compensating : !upstreamOf(step.id).has(ref.stepId)) {
        add(
          found.path,
          `step "${ref.stepId}" is not upstream of "${step.id}"; its output is not available there (add it to needs)`,
        );
      }
    }
  });
  if (spec.concurrency?.key) {
    for (const found of collectTemplateRefs(spec.concurrency.key, ["concurrency", "key"])) {
      if (found.error) add(found.path, found.error);
      else if (found.ref?.kind === "step")
        add(found.path, "concurrency.key may use only {{params.…}} templates");
    }
  }

  return issues.length > 0 ? { ok: false, issues } : { ok: true, spec };
}
