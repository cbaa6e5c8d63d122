/**
 * The shape of a workflow definition (SPEC §2). Every object is strict, so a typo such as
 * `retyr` is an error rather than a silently ignored field. Semantic rules (the DAG, assets,
 * templates, crons, allowlists) live in validate.ts.
 */
import { z } from "zod";
import { eventTypes } from "../status.ts";

const slug = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const slugMessage =
  "must be 1–63 characters of lowercase ASCII letters, digits, _ and -, starting with a letter or digit";

/** Object keys that would reach the prototype chain when assigned; refused wherever keys are free. */
const reservedKeys: ReadonlySet<string> = new Set(["__proto__", "constructor", "prototype"]);
const notReserved = (key: string) => !reservedKeys.has(key);
const reservedMessage = "is a reserved name (__proto__, constructor, prototype)";

export const workflowName = z.string().regex(slug, slugMessage);
export const stepId = z.string().regex(slug, slugMessage);
export const queueName = z.string().regex(slug, slugMessage);
/** Same rule as tag names in the config (`tags:` maps a tag to a queue), so every tag there is usable here. */
export const tagName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/, "must be 1–64 characters of letters, digits, _ . : -");
export const assetKey = z
  .string()
  .regex(/^[a-z0-9][a-z0-9_.-]{0,127}$/, "must be 1–128 characters of lowercase ASCII letters, digits, _ . -")
  .refine((k) => !k.includes(".."), "must not contain '..'");

const nulMessage = "must not contain the NUL character (\\u0000), which cannot be stored";

/**
 * Why `value` is not plain JSON (undefined, NaN, Infinity, a Date or class instance, a cycle), or
 * null. Iterative, and linear in the distinct objects: a value shared through YAML aliases is
 * checked once, and one that contains itself is refused rather than walked forever.
 */
export function jsonValueProblem(value: unknown): string | null {
  const done = new Set<object>();
  const onPath = new Set<object>();
  // An object appears twice on the stack: to enter it, then (as `leave`) once its members are done.
  const stack: Array<{ value: unknown; leave: boolean }> = [{ value, leave: false }];
  while (stack.length > 0) {
    const { value: v, leave } = stack.pop()!;
    if (typeof v === "string") {
      if (v.includes("\u0000")) return nulMessage;
      continue;
    }
    if (v === null || typeof v === "boolean") continue;
    if (typeof v === "number") {
      if (!Number.isFinite(v)) return `must be JSON: ${v} is not a finite number`;
      continue;
    }
    if (typeof v !== "object")
      return `must be JSON: found ${v === undefined ? "undefined" : `a ${typeof v}`}`;
    if (leave) {
      onPath.delete(v);
      done.add(v);
      continue;
    }
    if (onPath.has(v)) return "must be JSON: the value contains itself";
    if (done.has(v)) continue;
    const prototype = Object.getPrototypeOf(v);
    if (!Array.isArray(v) && prototype !== Object.prototype && prototype !== null) {
      return "must be JSON: found a non-plain object";
    }
    onPath.add(v);
    stack.push({ value: v, leave: true });
    // for…of yields undefined for array holes, which is then refused.
    if (Array.isArray(v)) for (const item of v) stack.push({ value: item, leave: false });
    else
      for (const key of Object.keys(v)) {
        if (key.includes("\u0000")) return nulMessage;
        stack.push({ value: (v as Record<string, unknown>)[key], leave: false });
      }
  }
  return null;
}

/**
 * Any JSON value. The JSON Schema stays `{}` (OpenAPI clients see "any"); the refinement refuses
 * what JSON cannot carry, such as YAML's `.inf`, which would otherwise hash and store as null.
 */
export const jsonValue: z.ZodType<unknown> = z
  .unknown()
  .refine((v) => jsonValueProblem(v) === null, { error: (issue) => jsonValueProblem(issue.input) ?? "" });

const paramName = z
  .string()
  .regex(/^[A-Za-z_][A-Za-z0-9_-]{0,127}$/, "must be 1–128 characters of letters, digits, _ and -")
  .refine(notReserved, reservedMessage);
const jsonRecord = z.record(paramName, jsonValue);

/** Params of a request (a run, materialization or subgraph): any JSON object that can be stored. */
export const requestParams = z
  .record(z.string(), z.unknown())
  .refine((v) => jsonValueProblem(v) === null, { error: (issue) => jsonValueProblem(issue.input) ?? "" });

export const backoffKinds = ["fixed", "exponential", "linear"] as const;

/** Consumers treat an absent policy as one attempt; a present one must say how many. */
export const retryPolicySchema = z.strictObject({
  maxAttempts: z.number().int().min(1).max(100),
  backoff: z.enum(backoffKinds).default("exponential"),
  delaySeconds: z.number().min(0).max(86_400).default(5),
  maxDelaySeconds: z.number().min(0).max(604_800).default(300),
});
export type RetryPolicy = z.output<typeof retryPolicySchema>;

export const executorTypes = ["http", "command", "handler", "sleep", "noop"] as const;
export type ExecutorType = (typeof executorTypes)[number];

export const httpMethods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] as const;

const statusCode = z.number().int().min(100).max(599);

const httpExecutor = z.strictObject({
  type: z.literal("http"),
  method: z.enum(httpMethods).default("GET"),
  url: z.string().min(1).max(4096),
  headers: z
    .record(
      z
        .string()
        .regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$/, "must be an HTTP header name")
        .refine(notReserved, reservedMessage),
      // No line breaks (request splitting); values produced by templates need the same check once rendered.
      z
        .string()
        .max(8192)
        .refine(
          (v) => !v.includes("\r") && !v.includes("\n") && !v.includes("\0"),
          "must not contain line breaks or NUL",
        ),
    )
    .optional(),
  body: jsonValue.optional(),
  expectStatus: z
    .union([statusCode, z.array(statusCode).min(1).max(100)], {
      error: "must be a status code 100–599 or a non-empty list of them",
    })
    .optional(),
  timeoutSeconds: z.number().positive().max(86_400).optional(),
});

/** Variables through which a step could run other code than its allowlisted program. */
const loaderVariable =
  /^(PATH|IFS|ENV|BASH_ENV|SHELLOPTS|PS4|PROMPT_COMMAND|LD_.*|DYLD_.*|NODE_OPTIONS|NODE_PATH|PYTHON.*|PERL5.*|PERLLIB|RUBYOPT|RUBYLIB|JAVA_TOOL_OPTIONS|_JAVA_OPTIONS|GIT_.*|HOME)$/i;

const commandExecutor = z.strictObject({
  type: z.literal("command"),
  command: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/, "must name an entry of the command allowlist"),
  args: z.array(z.string().max(65_536)).max(1000).default([]),
  env: z
    .record(
      z
        .string()
        .regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, "must be an environment variable name")
        .refine(notReserved, reservedMessage)
        .refine(
          (name) => !loaderVariable.test(name),
          "may not set a variable that changes which code runs (PATH, LD_*, NODE_OPTIONS, PYTHON*, …)",
        ),
      z.string().max(65_536),
    )
    .optional(),
});

const handlerExecutor = z.strictObject({
  type: z.literal("handler"),
  name: z
    .string()
    .max(200)
    .regex(/^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*$/, "must be a dotted handler name such as reports.daily"),
  input: jsonValue.optional(),
});

const sleepExecutor = z.strictObject({ type: z.literal("sleep"), seconds: z.number().min(0).max(86_400) });
const noopExecutor = z.strictObject({ type: z.literal("noop"), output: jsonValue.optional() });

const expectedTypes = `expected one of ${executorTypes.join(", ")}`;

function executorTypeMessage(input: unknown): string {
  const type = input !== null && typeof input === "object" ? (input as { type?: unknown }).type : undefined;
  if (type === undefined) return `executor type is required; ${expectedTypes}`;
  return `unknown executor type ${JSON.stringify(type)}; ${expectedTypes}`;
}

/**
 * One issue at `…run.type` for a missing or unknown type, instead of one per union member: the
 * discriminated union reports a non-matching discriminator as a single invalid_union.
 */
export const executorSchema = z.discriminatedUnion(
  "type",
  [httpExecutor, commandExecutor, handlerExecutor, sleepExecutor, noopExecutor],
  { error: (issue) => (issue.code === "invalid_union" ? executorTypeMessage(issue.input) : undefined) },
);
export type Executor = z.output<typeof executorSchema>;
export type HttpExecutor = Extract<Executor, { type: "http" }>;
export type CommandExecutor = Extract<Executor, { type: "command" }>;

const priority = z.number().int().min(1).max(10);
const timeoutSeconds = z.number().int().min(1).max(604_800);

export const failurePolicies = ["fail", "continue", "rollback"] as const;

export const stepSpecSchema = z.strictObject({
  id: stepId,
  description: z.string().max(2000).optional(),
  needs: z.array(stepId).max(5000).default([]),
  run: executorSchema,
  provides: z.array(assetKey).max(100).default([]),
  requires: z.array(assetKey).max(100).default([]),
  /** Dotted path into the output (keys or array indices) recorded as materialization metadata. */
  output: z
    .string()
    .max(500)
    .regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/, "must be a dotted path such as stats.rows or items.0")
    .optional(),
  retry: retryPolicySchema.optional(),
  timeoutSeconds: timeoutSeconds.optional(),
  onFailure: z.enum(failurePolicies).default("fail"),
  compensate: executorSchema.optional(),
  queue: queueName.optional(),
  tags: z.array(tagName).max(20).default([]),
  priority: priority.optional(),
});
export type StepSpec = z.output<typeof stepSpecSchema>;

export const notifiableEvents = eventTypes.filter((t) => t.startsWith("run."));

export const scheduleSchema = z.strictObject({
  cron: z.string().min(1).max(200),
  timezone: z.string().min(1).max(64).default("UTC"),
  params: jsonRecord.optional(),
  enabled: z.boolean().default(true),
});
export type ScheduleSpec = z.output<typeof scheduleSchema>;

export const workflowSpecSchema = z
  .strictObject({
    name: workflowName,
    description: z.string().max(2000).optional(),
    params: jsonRecord.default({}),
    schedules: z.array(scheduleSchema).max(50).default([]),
    concurrency: z
      .strictObject({
        limit: z.number().int().min(1).max(10_000),
        /** A template over params only, e.g. "{{params.account}}": one limit per distinct value. */
        key: z.string().min(1).max(500).optional(),
      })
      .optional(),
    defaults: z
      .strictObject({
        retry: retryPolicySchema.optional(),
        timeoutSeconds: timeoutSeconds.optional(),
        queue: queueName.optional(),
        priority: priority.optional(),
      })
      .optional(),
    assets: z
      .record(
        assetKey,
        z.strictObject({
          maxAgeSeconds: z.number().int().min(1).optional(),
          autoMaterialize: z.boolean().optional(),
          description: z.string().max(2000).optional(),
        }),
      )
      .optional(),
    notify: z
      .array(
        z.strictObject({
          on: z.array(z.enum(notifiableEvents as [string, ...string[]])).min(1),
          webhook: z.url({ protocol: /^https?$/, error: "must be an http(s) URL" }).max(4096),
          /**
           * Optional and write-only: adds the legacy `flowline-signature` header. Deliveries are
           * signed per Standard Webhooks with the tenant's own secret whether or not it is set.
           */
          secret: z.string().min(1).max(512).optional(),
        }),
      )
      .max(20)
      .optional(),
    steps: z.array(stepSpecSchema).min(1, "a workflow needs at least one step").max(5000),
  })
  .meta({ id: "WorkflowDefinition", description: "A workflow definition (SPEC §2)" });

export type WorkflowSpec = z.output<typeof workflowSpecSchema>;
