/**
 * Validates a workflow definition: first its shape (spec.ts), then its meaning — the DAG, assets,
 * templates, schedules, the command allowlist and literal http hosts. Every problem is reported
 * with its path, all at once, so a user fixes a definition in one round trip. Semantic checks
 * build the step graph once and stay in the milliseconds for 5,000 steps.
 */
import { Cron } from "croner";
import type { z } from "zod";
import { buildGraph, buildUpstreamIndex, findCycle, type Graph, type UpstreamIndex } from "../dag.ts";
import type { FieldIssue } from "../errors.ts";
import { jsonBytes } from "../limits.ts";
import { resolveStep } from "./resolve.ts";
import { type Executor, type WorkflowSpec, workflowSpecSchema } from "./spec.ts";
import { collectTemplateRefs, type FoundRef, replaceTemplates } from "./templates.ts";

export interface ValidationContext {
  /** Names of the command allowlist. */
  commands: ReadonlySet<string>;
  /** `http.allowedHosts`: exact host names or IPs, or `*.example.com` for subdomains. */
  allowedHosts: readonly string[];
  maxSteps: number;
  /** Names of the configured queues (worker pools): the only queues a step may use. */
  queues: ReadonlySet<string>;
  /** Config `tags`: tag → queue. */
  tagRoutes: Readonly<Record<string, string>>;
  /** The highest priority the submitting tenant may use (`quotas.maxPriority`). */
  maxPriority: number;
  /** `limits.maxSleepSeconds`, `limits.maxTimeoutSeconds`, `limits.maxRunParamsBytes`. */
  maxSleepSeconds: number;
  maxTimeoutSeconds: number;
  maxParamsBytes: number;
  /** The instant schedules are checked from; defaults to the current time. */
  now?: Date;
}

export type ValidationResult = { ok: true; spec: WorkflowSpec } | { ok: false; issues: FieldIssue[] };

type Path = (string | number)[];

class Issues {
  readonly list: FieldIssue[] = [];
  add(path: Path, message: string): void {
    this.list.push({ location: "body", path, message });
  }
}

function describeInput(input: unknown): string {
  if (input === null) return "null";
  if (Array.isArray(input)) return "an array";
  if (typeof input === "object") return "an object";
  return `a ${typeof input}`;
}

const expectedNames: Record<string, string> = {
  int: "an integer",
  array: "an array",
  object: "an object",
  record: "an object",
};

/** Messages for zod's generic issues; schema-specific messages (patterns, executor types) win over these. */
function shapeMessage(issue: z.core.$ZodRawIssue): string | undefined {
  switch (issue.code) {
    case "invalid_type": {
      if (issue.input === undefined) return "required";
      if (issue.expected === "int" && typeof issue.input === "number") return "must be an integer";
      const expected = expectedNames[issue.expected] ?? `a ${issue.expected}`;
      return `expected ${expected}, got ${describeInput(issue.input)}`;
    }
    case "too_small": {
      const min = Number(issue.minimum);
      if (issue.origin === "string")
        return min <= 1 ? "must not be empty" : `must be at least ${min} characters long`;
      if (issue.origin === "array") return min <= 1 ? "must not be empty" : `must have at least ${min} items`;
      return issue.inclusive === false ? `must be greater than ${min}` : `must be at least ${min}`;
    }
    case "too_big": {
      const max = Number(issue.maximum);
      if (issue.origin === "string") return `must be at most ${max} characters long`;
      if (issue.origin === "array") return `must have at most ${max} items`;
      return issue.inclusive === false ? `must be less than ${max}` : `must be at most ${max}`;
    }
    case "invalid_value":
      return `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}`;
    default:
      return undefined;
  }
}

function shapeIssues(error: z.ZodError, issues: Issues): void {
  for (const issue of error.issues) {
    const path = issue.path.map((p) => (typeof p === "symbol" ? String(p) : p));
    if (issue.code === "unrecognized_keys") {
      for (const key of issue.keys) issues.add([...path, key], `unknown field "${key}"`);
    } else if (issue.code === "invalid_key") {
      const key = path.at(-1);
      const why = issue.issues.map((i) => i.message).join("; ");
      issues.add(path, `invalid key ${JSON.stringify(key)}: ${why}`);
    } else {
      issues.add(path, issue.message.replace(/^Invalid input: /, ""));
    }
  }
}

/** The step graph: `needs` plus the implicit edge from each `requires` to the step providing that asset. */
export function stepGraph(spec: WorkflowSpec): Graph {
  const provider = new Map<string, string>();
  for (const step of spec.steps)
    for (const asset of step.provides) if (!provider.has(asset)) provider.set(asset, step.id);
  const byId = new Map(spec.steps.map((s) => [s.id, s]));
  return buildGraph(
    spec.steps.map((s) => s.id),
    (id) => {
      const step = byId.get(id)!;
      if (step.requires.length === 0) return step.needs;
      const parents = [...step.needs];
      for (const asset of step.requires) {
        const p = provider.get(asset);
        if (p !== undefined && p !== id) parents.push(p);
      }
      return parents;
    },
  );
}

function checkSteps(spec: WorkflowSpec, ctx: ValidationContext, issues: Issues): Map<string, number> {
  if (spec.steps.length > ctx.maxSteps)
    issues.add(
      ["steps"],
      `at most ${ctx.maxSteps} steps are allowed (limits.maxSteps), got ${spec.steps.length}`,
    );

  const firstIndex = new Map<string, number>();
  spec.steps.forEach((step, i) => {
    const first = firstIndex.get(step.id);
    if (first === undefined) firstIndex.set(step.id, i);
    else issues.add(["steps", i, "id"], `duplicate step id "${step.id}" (first used by steps[${first}])`);
  });

  spec.steps.forEach((step, i) => {
    step.needs.forEach((need, j) => {
      if (need === step.id) issues.add(["steps", i, "needs", j], `step "${step.id}" cannot need itself`);
      else if (!firstIndex.has(need))
        issues.add(["steps", i, "needs", j], `unknown step "${need}" in needs of "${step.id}"`);
    });
  });
  return firstIndex;
}

function checkAssets(spec: WorkflowSpec, issues: Issues): void {
  const provider = new Map<string, string>();
  spec.steps.forEach((step, i) => {
    step.provides.forEach((asset, j) => {
      const other = provider.get(asset);
      if (other === undefined) provider.set(asset, step.id);
      else if (other !== step.id) {
        issues.add(
          ["steps", i, "provides", j],
          `asset "${asset}" is provided by two steps: "${other}" and "${step.id}"`,
        );
      }
    });
  });
  spec.steps.forEach((step, i) => {
    step.requires.forEach((asset, j) => {
      const p = provider.get(asset);
      if (p === undefined)
        issues.add(["steps", i, "requires", j], `asset "${asset}" is required but no step provides it`);
      else if (p === step.id)
        issues.add(
          ["steps", i, "requires", j],
          `step "${step.id}" requires asset "${asset}" it provides itself`,
        );
    });
  });
  for (const asset of Object.keys(spec.assets ?? {})) {
    if (!provider.has(asset))
      issues.add(["assets", asset], `asset "${asset}" has a policy but no step provides it`);
  }
}

export function isValidTimeZone(timezone: string): boolean {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: timezone });
    return true;
  } catch {
    return false;
  }
}

/**
 * A paused croner instance with Flowline's cron dialect: 5 fields (minute first) or 6 (second
 * first), nicknames such as @daily, day-of-month OR day-of-week as in Vixie cron. Throws on an
 * invalid pattern or time zone. The supervisor fires schedules through the same function.
 */
export function scheduleCron(expression: string, timezone: string): Cron {
  return new Cron(expression.trim(), { timezone, paused: true, mode: "5-or-6-parts" });
}

const cronHorizonYears = 5;

/**
 * null when the cron is usable, else why not. A schedule must fire within five years of `now`,
 * which refuses `0 0 30 2 *`. Bounded: croner's search stops at a fixed year (a few ms at worst).
 */
export function cronProblem(expression: string, timezone: string, now: Date): string | null {
  const trimmed = expression.trim();
  const fields = trimmed.split(/\s+/);
  if (!trimmed.startsWith("@") && fields.length !== 5 && fields.length !== 6) {
    return `cron "${expression}" must have 5 fields (minute hour day month weekday) or 6 with seconds first`;
  }
  let next: Date | null;
  try {
    next = scheduleCron(trimmed, timezone).nextRun(now);
  } catch (error) {
    return `invalid cron "${expression}": ${(error as Error).message.replace(/^CronPattern: /, "")}`;
  }
  if (next === null) return `cron "${expression}" never fires`;
  const horizon = new Date(now);
  horizon.setUTCFullYear(horizon.getUTCFullYear() + cronHorizonYears);
  if (next > horizon) {
    return `cron "${expression}" does not fire within ${cronHorizonYears} years (next: ${next.toISOString()})`;
  }
  return null;
}

function checkSchedules(spec: WorkflowSpec, now: Date, issues: Issues): void {
  spec.schedules.forEach((schedule, i) => {
    let timezone = schedule.timezone;
    if (!isValidTimeZone(timezone)) {
      issues.add(
        ["schedules", i, "timezone"],
        `unknown time zone "${timezone}"; use an IANA name such as Europe/Paris`,
      );
      // Still check the cron itself, so both mistakes surface in one round trip.
      timezone = "UTC";
    }
    const problem = cronProblem(schedule.cron, timezone, now);
    if (problem) issues.add(["schedules", i, "cron"], problem);
  });
}

/** `*.example.com` matches subdomains only; other entries match the host name or IP exactly. */
export function hostAllowed(hostname: string, allowedHosts: readonly string[]): boolean {
  const host = hostname.toLowerCase().replace(/^\[|\]$/g, "");
  return allowedHosts.some((entry) => {
    const e = entry.toLowerCase().replace(/^\[|\]$/g, "");
    if (e.startsWith("*.")) return host.length > e.length - 1 && host.endsWith(e.slice(1));
    return host === e;
  });
}

/** Why a concrete (template-free) URL may not be called, or null. */
export function httpUrlProblem(url: URL, allowedHosts: readonly string[]): string | null {
  if (url.protocol !== "http:" && url.protocol !== "https:") return "only http and https URLs are allowed";
  if (url.username || url.password)
    return "URLs with credentials (user:pass@host) are not allowed; use headers";
  if (allowedHosts.length === 0) {
    return `host "${url.hostname}" is not allowed: http.allowedHosts is empty, so no literal host is allowed`;
  }
  if (!hostAllowed(url.hostname, allowedHosts)) {
    return `host "${url.hostname}" is not in http.allowedHosts (${allowedHosts.join(", ")})`;
  }
  return null;
}

function parseUrl(text: string): URL | null {
  try {
    return new URL(text);
  } catch {
    return null;
  }
}

/**
 * Checks the literal part of an executor URL. Templates are replaced by two different
 * placeholders: when that changes the scheme, host or port, the host comes from data and is
 * checked by the worker on the resolved address at execution time.
 */
function literalUrlProblem(url: string, allowedHosts: readonly string[]): string | null {
  const invalid = `"${url.length > 200 ? `${url.slice(0, 200)}…` : url}" is not a valid URL`;
  if (!url.includes("{{")) {
    const parsed = parseUrl(url);
    return parsed ? httpUrlProblem(parsed, allowedHosts) : invalid;
  }
  const one = parseUrl(replaceTemplates(url, "1"));
  const two = parseUrl(replaceTemplates(url, "2"));
  if (!one || !two) return url.trimStart().startsWith("{{") ? null : invalid;
  if (one.protocol !== two.protocol || one.host !== two.host) return null;
  return httpUrlProblem(one, allowedHosts);
}

function checkExecutor(executor: Executor, path: Path, ctx: ValidationContext, issues: Issues): void {
  if (executor.type === "sleep" && executor.seconds > ctx.maxSleepSeconds) {
    issues.add(
      [...path, "seconds"],
      `sleeps ${executor.seconds} s; the limit is ${ctx.maxSleepSeconds} s (limits.maxSleepSeconds)`,
    );
  }
  if (executor.type === "http" && executor.timeoutSeconds !== undefined)
    checkTimeout(executor.timeoutSeconds, [...path, "timeoutSeconds"], ctx, issues);
  if (executor.type === "command" && !ctx.commands.has(executor.command)) {
    const allowed =
      ctx.commands.size > 0 ? `allowed: ${[...ctx.commands].join(", ")}` : "the allowlist is empty";
    issues.add([...path, "command"], `command "${executor.command}" is not in the allowlist (${allowed})`);
  }
  if (executor.type === "http") {
    const problem = literalUrlProblem(executor.url, ctx.allowedHosts);
    if (problem) issues.add([...path, "url"], problem);
  }
}

/**
 * Executors whose input a secret may reach: their url, headers, body, args and env go to the
 * outside world, not into outputs the way a noop's output or a handler's input would.
 */
const secretExecutors: ReadonlySet<string> = new Set(["http", "command"]);

interface StepRefs {
  id: string;
  found: FoundRef[];
  /** Entries from this index on come from `compensate`. */
  compensateFrom: number;
}

/**
 * A template may read the output of a step only when that step is certain to have succeeded
 * first: a transitive upstream. A compensation may also read its own step's output.
 */
function checkTemplates(
  spec: WorkflowSpec,
  stepIds: ReadonlyMap<string, number>,
  upstreamFor: (ids: string[]) => UpstreamIndex | null,
  issues: Issues,
): void {
  const readers: StepRefs[] = [];
  spec.steps.forEach((step, i) => {
    const found = collectTemplateRefs(step.run, ["steps", i, "run"]);
    const compensateFrom = found.length;
    if (step.compensate) {
      for (const f of collectTemplateRefs(step.compensate, ["steps", i, "compensate"])) found.push(f);
    }
    let readsSteps = false;
    for (const [k, f] of found.entries()) {
      if (f.error !== undefined) issues.add(f.path, f.error);
      else if (f.ref?.kind === "step") readsSteps = true;
      else if (f.ref?.kind === "secret") {
        const type = (k < compensateFrom ? step.run : step.compensate!).type;
        if (!secretExecutors.has(type))
          issues.add(
            f.path,
            `{{secrets.${f.ref.name}}} may be used only in http and command steps, not ${type}`,
          );
      }
    }
    if (readsSteps) readers.push({ id: step.id, found, compensateFrom });
  });
  if (readers.length === 0) return;

  const upstream = upstreamFor(readers.map((r) => r.id));
  for (const reader of readers) {
    reader.found.forEach((f, k) => {
      if (f.ref?.kind !== "step") return;
      const source = f.ref.stepId;
      if (!stepIds.has(source)) {
        issues.add(f.path, `template refers to unknown step "${source}"`);
        return;
      }
      const available =
        source === reader.id
          ? k >= reader.compensateFrom
          : (upstream?.isUpstreamOf(source, reader.id) ?? true);
      if (!available) {
        issues.add(
          f.path,
          `step "${source}" is not upstream of "${reader.id}"; its output is not available (add it to needs)`,
        );
      }
    });
  }
}

function checkTimeout(seconds: number, path: Path, ctx: ValidationContext, issues: Issues): void {
  if (seconds > ctx.maxTimeoutSeconds) {
    issues.add(path, `is ${seconds} s; the limit is ${ctx.maxTimeoutSeconds} s (limits.maxTimeoutSeconds)`);
  }
}

function checkPriority(
  priority: number | undefined,
  path: Path,
  ctx: ValidationContext,
  issues: Issues,
): void {
  if (priority !== undefined && priority > ctx.maxPriority) {
    issues.add(
      path,
      `priority ${priority} is above this tenant's ceiling of ${ctx.maxPriority} (quotas.maxPriority)`,
    );
  }
}

/**
 * A step may only use a queue the configuration defines: no worker would ever serve another, and
 * its jobs would fill Redis. The queue comes from `queue`, `defaults.queue` or a routed tag.
 */
function checkQueues(spec: WorkflowSpec, ctx: ValidationContext, issues: Issues): void {
  const configured = `configured queues: ${[...ctx.queues].sort().join(", ")}`;
  const unknown = (queue: string) => !ctx.queues.has(queue);
  const defaultQueue = spec.defaults?.queue;
  if (defaultQueue !== undefined && unknown(defaultQueue))
    issues.add(["defaults", "queue"], `queue "${defaultQueue}" is not configured (${configured})`);
  spec.steps.forEach((step, i) => {
    if (step.queue !== undefined) {
      if (unknown(step.queue))
        issues.add(["steps", i, "queue"], `queue "${step.queue}" is not configured (${configured})`);
      return;
    }
    const queue = resolveStep(spec, step, ctx.tagRoutes).queue;
    if (unknown(queue) && queue !== defaultQueue)
      issues.add(
        ["steps", i, "tags"],
        `the tags route to queue "${queue}", which is not configured (${configured})`,
      );
  });
}

function checkCeilings(spec: WorkflowSpec, ctx: ValidationContext, issues: Issues): void {
  checkPriority(spec.defaults?.priority, ["defaults", "priority"], ctx, issues);
  if (spec.defaults?.timeoutSeconds !== undefined)
    checkTimeout(spec.defaults.timeoutSeconds, ["defaults", "timeoutSeconds"], ctx, issues);
  spec.steps.forEach((step, i) => {
    checkPriority(step.priority, ["steps", i, "priority"], ctx, issues);
    if (step.timeoutSeconds !== undefined)
      checkTimeout(step.timeoutSeconds, ["steps", i, "timeoutSeconds"], ctx, issues);
  });
  const paramsBytes = jsonBytes(spec.params);
  if (paramsBytes > ctx.maxParamsBytes) {
    issues.add(
      ["params"],
      `params are ${paramsBytes} bytes as JSON; the limit is ${ctx.maxParamsBytes} (limits.maxRunParamsBytes)`,
    );
  }
}

function checkConcurrencyKey(spec: WorkflowSpec, issues: Issues): void {
  const key = spec.concurrency?.key;
  if (key === undefined) return;
  for (const found of collectTemplateRefs(key, ["concurrency", "key"])) {
    if (found.error !== undefined) issues.add(found.path, found.error);
    else if (found.ref?.kind !== "params")
      issues.add(found.path, "concurrency.key may use only {{params.…}} templates");
  }
}

/** Shape first; semantic checks run only on a well-shaped definition, and all of them run. */
export function validateWorkflowDefinition(input: unknown, ctx: ValidationContext): ValidationResult {
  const issues = new Issues();
  const parsed = workflowSpecSchema.safeParse(input, { error: shapeMessage });
  if (!parsed.success) {
    shapeIssues(parsed.error, issues);
    return { ok: false, issues: issues.list };
  }
  const spec = parsed.data;

  const stepIds = checkSteps(spec, ctx, issues);
  checkAssets(spec, issues);

  // Duplicate ids are reported already; the graph keeps the first step of each id.
  const unique =
    stepIds.size === spec.steps.length
      ? spec
      : { ...spec, steps: spec.steps.filter((s, i) => stepIds.get(s.id) === i) };
  const graph = stepGraph(unique);
  const cycle = findCycle(graph);
  if (cycle) issues.add(["steps"], `cycle: ${cycle.join(" → ")}`);

  checkSchedules(spec, ctx.now ?? new Date(), issues);
  spec.steps.forEach((step, i) => {
    checkExecutor(step.run, ["steps", i, "run"], ctx, issues);
    if (step.compensate) checkExecutor(step.compensate, ["steps", i, "compensate"], ctx, issues);
  });
  // Upstream is meaningless in a cyclic graph: only unknown steps are reported then.
  const upstreamFor = (ids: string[]) => (cycle ? null : buildUpstreamIndex(graph, ids));
  checkTemplates(spec, stepIds, upstreamFor, issues);
  checkConcurrencyKey(spec, issues);
  checkQueues(spec, ctx, issues);
  checkCeilings(spec, ctx, issues);

  return issues.list.length > 0 ? { ok: false, issues: issues.list } : { ok: true, spec };
}
