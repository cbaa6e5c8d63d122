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

export const workflowName = z.string().regex(slug, slugMessage);
export const stepId = z.string().regex(slug, slugMessage);
export const queueName = z.string().regex(slug, slugMessage);
export const tagName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/, "must be 1–64 characters of letters, digits, _ . : -");
export const assetKey = z
  .string()
  .regex(/^[a-z0-9][a-z0-9_.-]{0,127}$/, "must be 1–128 characters of lowercase ASCII letters, digits, _ . -")
  .refine((k) => !k.includes(".."), "must not contain '..'");

/** Any JSON value (the body parser already bounds depth and size). */
export const jsonValue: z.ZodType<unknown> = z.unknown().refine((v) => v !== undefined, "required");
const jsonRecord = z.record(
  z.string().regex(/^[A-Za-z_][A-Za-z0-9_-]{0,127}$/, "must be an identifier of letters, digits, _ and -"),
  jsonValue,
);

export const backoffKinds = ["fixed", "exponential", "linear"] as const;

export const retryPolicySchema = z.strictObject({
  maxAttempts: z.number().int().min(1).max(100).default(1),
  backoff: z.enum(backoffKinds).default("exponential"),
  delaySeconds: z.number().min(0).max(86_400).default(5),
  maxDelaySeconds: z.number().min(0).max(604_800).default(300),
});
export type RetryPolicy = z.output<typeof retryPolicySchema>;

export const executorTypes = ["http", "command", "handler", "sleep", "noop"] as const;
export type ExecutorType = (typeof executorTypes)[number];

const httpExecutor = z.strictObject({
  type: z.literal("http"),
  method: z.enum(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]).default("GET"),
  url: z.string().min(1).max(4096),
  headers: z.record(z.string().min(1).max(256), z.string().max(8192)).optional(),
  body: jsonValue.optional(),
  expectStatus: z
    .union([z.number().int().min(100).max(599), z.array(z.number().int().min(100).max(599)).min(1)])
    .optional(),
  timeoutSeconds: z.number().positive().max(86_400).optional(),
});

const commandExecutor = z.strictObject({
  type: z.literal("command"),
  command: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/, "must name an entry of the command allowlist"),
  args: z.array(z.string().max(65_536)).max(1000).default([]),
  env: z
    .record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "must be an environment variable name"), z.string())
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

const unknownTypeMessage = `expected one of ${executorTypes.join(", ")}`;

export const executorSchema = z.discriminatedUnion(
  "type",
  [httpExecutor, commandExecutor, handlerExecutor, sleepExecutor, noopExecutor],
  {
    error: (issue) =>
      issue.code === "invalid_union"
        ? issue.input === undefined || (issue.input as { type?: unknown } | null)?.type === undefined
          ? `executor type is required; ${unknownTypeMessage}`
          : `unknown executor type ${JSON.stringify((issue.input as { type?: unknown }).type)}; ${unknownTypeMessage}`
        : undefined,
  },
);
export type Executor = z.output<typeof executorSchema>;

const priority = z.number().int().min(1).max(10);
const timeoutSeconds = z.number().int().min(1).max(604_800);

export const stepSpecSchema = z.strictObject({
  id: stepId,
  description: z.string().max(2000).optional(),
  needs: z.array(stepId).max(5000).default([]),
  run: executorSchema,
  provides: z.array(assetKey).max(100).default([]),
  requires: z.array(assetKey).max(100).default([]),
  /** Dotted path into the output whose value is recorded as materialization metadata. */
  output: z
    .string()
    .max(500)
    .regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/, "must be a dotted path such as stats.rows")
    .optional(),
  retry: retryPolicySchema.optional(),
  timeoutSeconds: timeoutSeconds.optional(),
  onFailure: z.enum(["fail", "continue", "rollback"]).default("fail"),
  compensate: executorSchema.optional(),
  queue: queueName.optional(),
  tags: z.array(tagName).max(20).default([]),
  priority: priority.optional(),
});
export type StepSpec = z.output<typeof stepSpecSchema>;

export const notifiableEvents = eventTypes.filter((t) => t.startsWith("run."));

export const workflowSpecSchema = z
  .strictObject({
    name: workflowName,
    description: z.string().max(2000).optional(),
    params: jsonRecord.default({}),
    schedules: z
      .array(
        z.strictObject({
          cron: z.string().min(1).max(200),
          timezone: z.string().min(1).max(64).default("UTC"),
          params: jsonRecord.optional(),
          enabled: z.boolean().default(true),
        }),
      )
      .max(50)
      .default([]),
    concurrency: z
      .strictObject({
        limit: z.number().int().min(1).max(10_000),
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
          secret: z.string().min(1).max(512).optional(),
        }),
      )
      .max(20)
      .optional(),
    steps: z.array(stepSpecSchema).min(1, "a workflow needs at least one step").max(5000),
  })
  .meta({ id: "WorkflowDefinition", description: "A workflow definition (SPEC §2)" });

export type WorkflowSpec = z.output<typeof workflowSpecSchema>;
