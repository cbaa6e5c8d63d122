/**
 * The configuration schema, one strict object per subsystem. Every object is strict so a typo
 * (`queus`, `prot`) stops start-up instead of silently falling back to a default, and every
 * constraint carries a message written for the person editing the file or the environment.
 *
 * Defaults run everything on one machine; `load.ts` layers the YAML file, the environment and
 * explicit overrides on top and hands the merged document to `parseConfig`.
 */
import { z } from "zod";

// ---------------------------------------------------------------------------------------------
// Building blocks: each one states its constraint in words, so the error reads the same whether
// the value came from YAML or from an environment variable.

function intBetween(min: number, max: number) {
  const error = `expected an integer between ${min} and ${max}`;
  return z.int({ error }).min(min, { error }).max(max, { error });
}

function intAtLeast(min: number) {
  const error = min === 1 ? "expected a positive integer" : `expected an integer ≥ ${min}`;
  return z.int({ error }).min(min, { error });
}

/** Strict: a key the shape does not name is an error, never silently ignored. */
function section<T extends z.core.$ZodLooseShape>(shape: T) {
  return z.strictObject(shape, { error: "expected a mapping" });
}

const bool = () => z.boolean({ error: "expected true or false" });

function nonEmptyString(what = "a non-empty string") {
  return z.string({ error: `expected ${what}` }).min(1, { error: `expected ${what}` });
}

function urlWithProtocols(protocols: readonly string[]) {
  const names = protocols.map((p) => `${p}//`).join(" or ");
  const error = `expected a ${names} URL`;
  return z.string({ error }).refine(
    (value) => {
      // The host may be empty: `postgres:///flowline?host=/run/postgresql` is a Unix socket.
      return URL.canParse(value) && protocols.includes(new URL(value).protocol);
    },
    { error },
  );
}

/** A mapping whose keys must match `pattern`; `what` names the key and `rule` explains the pattern. */
function recordOf<T extends z.ZodType>(pattern: RegExp, what: string, rule: string, value: T) {
  return z.record(z.string().regex(pattern, { error: `invalid ${what}: expected ${rule}` }), value, {
    error: "expected a mapping",
  });
}

/**
 * Values copied from an example without being replaced (the shipped Kubernetes `secret.yaml`
 * holds `CHANGE_ME`): a server must not start with a credential everyone can read.
 */
const PLACEHOLDER = /(^|[^a-z])(change|replace)[_-]?me([^a-z]|$)|placeholder/i;
const placeholderError = "looks like a placeholder (CHANGE_ME); set a real value";
function notPlaceholder<T extends z.ZodType<string | undefined>>(schema: T) {
  return schema.refine((value) => value === undefined || !PLACEHOLDER.test(value), {
    error: placeholderError,
  });
}

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

export const COMMAND_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
export const QUEUE_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/;
export const TAG_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;
const TENANT_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const REDIS_PREFIX = /^[A-Za-z0-9:_-]{1,64}$/;

// ---------------------------------------------------------------------------------------------
// Subsystems

const serverSchema = section({
  /** Interface the API listens on; `0.0.0.0` to accept connections from other hosts. */
  host: nonEmptyString("a host name or IP address").default("127.0.0.1"),
  port: intBetween(1, 65535).default(3000),
  bodyLimitBytes: intAtLeast(1).default(1_048_576),
  /** Nesting depth refused before a JSON/YAML body is parsed. */
  maxJsonDepth: intBetween(1, 1000).default(64),
  trustProxy: bool().default(false),
  shutdownGraceSeconds: intAtLeast(0).default(10),
  /**
   * Time a client has to send a whole request (headers and body); 408 after that. Event streams
   * are not affected: their request is complete once its headers are in.
   */
  requestTimeoutMs: intAtLeast(0).default(30_000),
  /** Time a client has to send the request headers; at most requestTimeoutMs. */
  headersTimeoutMs: intAtLeast(0).default(10_000),
  /** An idle keep-alive connection is closed after this long. */
  keepAliveTimeoutMs: intAtLeast(0).default(72_000),
  /**
   * A connection with no traffic either way for this long is closed (0: never). Event streams send
   * a heartbeat every 15 s, so a value above that never cuts them.
   */
  connectionTimeoutMs: z
    .union([z.literal(0), intAtLeast(20_000)], {
      error: "expected 0 (never) or an integer ≥ 20000 (event stream heartbeats come every 15 s)",
    })
    .default(120_000),
  /** The address clients use to reach the API, when it differs from host:port (links, webhooks). */
  publicUrl: urlWithProtocols(["http:", "https:"]).optional(),
});

const databaseSchema = section({
  /**
   * The Postgres to use. Unset: `flowline up` starts an embedded one whose data lives in `dataDir`
   * (other roles then need the URL `up` prints).
   */
  url: notPlaceholder(urlWithProtocols(["postgres:", "postgresql:"])).optional(),
  /** Where the embedded Postgres (no `url`) keeps its data; relative to the working directory. */
  dataDir: nonEmptyString("a directory path").default(".flowline"),
  poolMax: intBetween(1, 1000).default(10),
  connectTimeoutSeconds: intAtLeast(1).default(5),
  statementTimeoutMs: intAtLeast(0).default(30_000),
});

const redisSchema = section({
  /** The Redis to use. Unset: queues, locks, leases, rate limits and event fan-out run on Postgres. */
  url: notPlaceholder(urlWithProtocols(["redis:", "rediss:"])).optional(),
  /**
   * Every key Flowline writes starts with `<prefix>:`, so deployments can share a server. On
   * Postgres it names the lease, counter and notification channel keys the same way.
   */
  prefix: z
    .string({ error: "expected a string" })
    .regex(REDIS_PREFIX, { error: "expected 1-64 characters among A-Z a-z 0-9 : _ -" })
    .default("flowline"),
});

const authSchema = section({
  /** The root API key ensured at start-up (tenant `default`). Without it one is generated once. */
  bootstrapKey: notPlaceholder(
    z
      .string({ error: "expected a string of at least 24 characters" })
      .min(24, { error: "expected a string of at least 24 characters" }),
  ).optional(),
  /**
   * Signs browser session cookies and stream tokens (HMAC-SHA256). Every API process must share
   * it; without it one is generated and kept in Redis, so a Redis flush ends every session.
   */
  sessionSecret: notPlaceholder(
    z
      .string({ error: "expected a string of at least 32 characters" })
      .min(32, { error: "expected a string of at least 32 characters" }),
  ).optional(),
  /** How long a dashboard login lasts. */
  sessionTtlSeconds: intBetween(60, 30 * 24 * 3600).default(12 * 3600),
  /** How long a stream token (`POST /v1/runs/{id}/stream-token`) stays valid, reconnects included. */
  streamTokenTtlSeconds: intBetween(10, 7 * 24 * 3600).default(3600),
});

const rateLimitSchema = section({
  enabled: bool().default(true),
  /** Requests per API key per window. */
  max: intAtLeast(1).default(1200),
  windowSeconds: intAtLeast(1).default(60),
  /**
   * Failed authentications per client address per window; past it the address gets 429 before
   * its key is looked up.
   */
  failedAuthMax: intAtLeast(1).default(30),
  failedAuthWindowSeconds: intAtLeast(1).default(300),
});

const logSchema = section({
  level: z.enum(LOG_LEVELS, { error: `expected one of ${LOG_LEVELS.join(", ")}` }).default("info"),
});

/** What one request can make the system hold; each error names the limit and the value. */
const limitsSchema = section({
  /** Steps per workflow definition. */
  maxSteps: intBetween(1, 5000).default(5000),
  /** A run's merged params, as JSON (also a definition's default params). */
  maxRunParamsBytes: intAtLeast(1).default(65_536),
  /** An executor with its templates rendered, as JSON; larger fails the attempt (`input_too_large`). */
  renderedInputBytes: intAtLeast(1).default(1_048_576),
  /** A step output, as JSON; larger fails the attempt with `output_too_large`, not retried. */
  outputBytes: intAtLeast(1).default(1_048_576),
  /** A log line longer than this is cut and marked. */
  logLineBytes: intAtLeast(64).default(8192),
  /** Outputs larger than this are left out of run details (`GET /v1/runs/{id}/steps/{step}/output` reads one). */
  inlineOutputBytes: intAtLeast(0).default(65_536),
  /** Log lines kept per attempt; later ones are dropped and counted in one summary line. */
  logLinesPerAttempt: intAtLeast(1).default(10_000),
  /** Runs one backfill request may create (one per partition). */
  backfillRuns: intBetween(1, 10_000).default(1000),
  /** Ceiling on a `sleep` step's `seconds`. */
  maxSleepSeconds: intAtLeast(1).default(3600),
  /** Ceiling on `timeoutSeconds` (step, defaults, http request). */
  maxTimeoutSeconds: intAtLeast(1).default(86_400),
});

/** Per-tenant quotas; `tenants.<id>` overrides any of them for one tenant. */
const quotaFields = {
  /** Runs queued, running, paused or rolling back at once; more → 429 `quota_exceeded`. */
  activeRuns: intAtLeast(1),
  /** Steps pending, queued or retrying across the tenant's active runs, counting the new run's. */
  queuedSteps: intAtLeast(1),
  /** Open event and log streams, counted across all API processes. */
  streams: intAtLeast(1),
  /** The highest priority the tenant may give a run or step (1–10). */
  maxPriority: intBetween(1, 10),
};
const quotaOverrideSchema = section({
  activeRuns: quotaFields.activeRuns.optional(),
  queuedSteps: quotaFields.queuedSteps.optional(),
  streams: quotaFields.streams.optional(),
  maxPriority: quotaFields.maxPriority.optional(),
});
const quotasSchema = section({
  activeRuns: quotaFields.activeRuns.default(1000),
  queuedSteps: quotaFields.queuedSteps.default(50_000),
  streams: quotaFields.streams.default(500),
  maxPriority: quotaFields.maxPriority.default(10),
  tenants: recordOf(
    TENANT_ID,
    "tenant id",
    `lowercase letters, digits, "_" and "-", starting with a letter or digit, at most 63 characters`,
    quotaOverrideSchema,
  ).prefault(() => ({})),
});

const commandSchema = section({
  /** Program and leading arguments; a step's `args` are appended as separate items, never via a shell. */
  argv: z
    .array(nonEmptyString(), { error: "expected a non-empty list of strings" })
    .min(1, { error: "expected a non-empty list of strings" }),
  cwd: nonEmptyString("a directory path").optional(),
  env: z
    .record(
      z.string().regex(ENV_NAME, { error: "invalid environment variable name" }),
      z.string({ error: "expected a string (quote numbers and booleans in YAML)" }),
      { error: "expected a mapping of variable names to strings" },
    )
    .optional(),
  timeoutSeconds: intAtLeast(1).optional(),
});

const httpSchema = section({
  /** Hosts `http` steps may call: exact names or addresses, or `*.example.com` for subdomains. */
  allowedHosts: z
    .array(nonEmptyString("a host name"), { error: "expected a list of host names" })
    .default(() => []),
  /** Private, loopback and link-local addresses are refused unless this is true. */
  allowPrivateNetworks: bool().default(false),
  maxResponseBytes: intAtLeast(1).default(10_485_760),
  /** Browser access to the API from other origins (the dashboard at `/ui/` needs none). */
  cors: section({
    /** Origins (`https://app.example.com`) whose pages may call the API; others get no CORS headers. */
    allowedOrigins: z
      .array(
        z
          .string({ error: "expected an origin" })
          .refine((value) => URL.canParse(value) && new URL(value).origin === value, {
            error: "expected an origin: scheme://host[:port], no path or trailing slash",
          }),
        { error: "expected a list of origins" },
      )
      .default(() => []),
  }).prefault({}),
});

const queueSchema = section({
  /** Jobs one worker process runs at the same time. */
  concurrency: intAtLeast(1).default(8),
  /** Bounds on the number of worker processes the autoscaler keeps for this queue. */
  min: intAtLeast(0).default(1),
  max: intAtLeast(1).default(4),
  /**
   * The autoscaler sizes the pool so that each process has at most this many steps to do
   * (waiting, retries whose delay has passed, and running); defaults to `concurrency`.
   */
  targetBacklogPerProcess: intAtLeast(1).optional(),
  /**
   * At most `max` steps of this queue start per `durationMs`, across all worker processes (BullMQ's
   * limiter, kept in Redis). For APIs with a request quota.
   */
  rateLimit: section({ max: intAtLeast(1), durationMs: intAtLeast(1) }).optional(),
  /**
   * Tenants share the queue evenly: one tenant's backlog does not hold back another tenant's
   * steps (see docs/configuration.md). `false`: priority, then arrival order, across tenants.
   */
  fairShare: z.boolean().default(true),
});

const QUEUE_RULE = `lowercase letters, digits, "_" and "-", starting with a letter or digit, at most 63 characters`;

const queuesSchema = recordOf(QUEUE_NAME, "queue name", QUEUE_RULE, queueSchema)
  .superRefine((queues, ctx) => {
    for (const [name, queue] of Object.entries(queues)) {
      if (queue.min > queue.max) {
        ctx.addIssue({
          code: "custom",
          path: [name],
          message: `queue "${name}": min (${queue.min}) must not exceed max (${queue.max})`,
        });
      }
    }
    if (!Object.hasOwn(queues, "default")) {
      ctx.addIssue({
        code: "custom",
        path: ["default"],
        message: 'queue "default" is required: steps that name no queue and match no tag run on it',
      });
    }
  })
  .prefault(() => ({ default: {} }));

const retentionSchema = section({
  eventsDays: intAtLeast(1).default(30),
  runsDays: intAtLeast(1).default(90),
});

const workerSchema = section({
  /** Path of a module whose default export comes from `defineHandlers({...})`. */
  handlersModule: nonEmptyString("a module path").optional(),
  /** A running attempt whose lock is not renewed for this long is treated as lost. */
  stallSeconds: intAtLeast(1).default(30),
  /** On SIGTERM, how long running attempts may take to finish before they are handed back. */
  graceSeconds: intAtLeast(0).default(30),
});

const supervisorSchema = section({
  /** The active supervisor's Redis lease; a standby takes over within about this long. */
  leaseSeconds: intAtLeast(2).default(15),
  reconcileIntervalSeconds: intAtLeast(1).default(5),
  /** How often cron schedules are checked for a due fire. */
  scheduleIntervalSeconds: intAtLeast(1).default(5),
  /** How often retention deletes old events and finished runs. */
  retentionIntervalSeconds: intAtLeast(60).default(3600),
});

const autoscalerSchema = section({
  /** How often `flowline workers` measures backlogs and resizes pools. */
  intervalSeconds: intAtLeast(1).default(2),
  /** A pool shrinks only after its backlog has allowed fewer processes for this long. */
  cooldownSeconds: intAtLeast(0).default(60),
  /** Crashed worker processes are restarted with exponential backoff up to this delay. */
  maxRestartDelaySeconds: intAtLeast(1).default(30),
});

/**
 * `/metrics` listeners of the processes that have no HTTP server of their own (the API serves
 * `/metrics` on its own port). Port 0 asks the OS for a free port; the process logs which.
 */
const metricsSchema = section({
  /** Workers and supervisors serve `/metrics`; false turns their listeners off. */
  enabled: bool().default(true),
  /** Interface the listeners bind; `0.0.0.0` when Prometheus scrapes from another host. */
  host: nonEmptyString("a host name or IP address").default("127.0.0.1"),
  /** The supervisor's port. */
  supervisorPort: intBetween(0, 65535).default(9464),
  /**
   * A `flowline worker` process's port. Pools (`flowline workers`, `flowline up`) give their
   * processes consecutive ports from here: the first `workerPort`, the next `workerPort + 1`, …
   * (a process that stops frees its port for the next one).
   */
  workerPort: intBetween(0, 65535).default(9465),
});

const assetsSchema = section({
  /**
   * An asset lock's lease. The supervisor renews the locks of active runs; if it is gone longer
   * than this, a lock may pass to another run, and the fencing token then refuses the first
   * run's late materialization.
   */
  lockTtlSeconds: intAtLeast(2).default(60),
});

const webhooksSchema = section({
  /** Attempts per delivery (exponential backoff between them) before it is marked failed. */
  maxAttempts: intBetween(1, 50).default(8),
  timeoutSeconds: intBetween(1, 120).default(10),
  /** Delay before the second attempt; each further attempt doubles it (capped at one hour). */
  initialRetryDelayMs: intBetween(10, 3_600_000).default(2000),
  /**
   * Adds the legacy `flowline-signature` header (HMAC-SHA256) to deliveries whose `notify` entry has
   * no `secret`; every delivery is signed per Standard Webhooks with its tenant's own secret anyway.
   */
  secret: notPlaceholder(nonEmptyString()).optional(),
});

/** Environment variables whose names start with this hold secrets (`{{secrets.NAME}}` → `<prefix>NAME`). */
export const DEFAULT_SECRET_PREFIX = "FLOWLINE_SECRET_";
/** What `{{secrets.NAME}}` may name: also a file name in `secrets.dir`, so no dots or slashes. */
export const SECRET_NAME = /^[A-Za-z0-9_-]{1,128}$/;

/**
 * Where workers find the values of `{{secrets.NAME}}` (SPEC §12). Values are read at execution
 * time, on every attempt, and never stored: `env` reads `<prefix>NAME` from the worker's
 * environment; `files` reads the file `<dir>/NAME` (a mounted Kubernetes Secret, Docker secrets).
 */
const secretsSchema = z
  .discriminatedUnion(
    "provider",
    [
      section({
        provider: z.literal("env"),
        prefix: z
          .string({ error: "expected a variable name prefix such as FLOWLINE_SECRET_" })
          .regex(/^[A-Z_][A-Z0-9_]{0,63}_$/, {
            error: "expected upper-case letters, digits and _, ending with _ (e.g. FLOWLINE_SECRET_)",
          })
          .refine((p) => p !== "FLOWLINE_", {
            error: "FLOWLINE_ alone would hide misspelt settings; use e.g. FLOWLINE_SECRET_",
          })
          .default(DEFAULT_SECRET_PREFIX),
      }),
      section({
        provider: z.literal("files"),
        /** One file per secret, named after it; a trailing newline is not part of the value. */
        dir: nonEmptyString("a directory path"),
      }),
    ],
    { error: 'expected provider "env" (with an optional prefix) or "files" (with a dir)' },
  )
  .prefault({ provider: "env" });

// ---------------------------------------------------------------------------------------------

export const configSchema = section({
  server: serverSchema.prefault({}),
  database: databaseSchema.prefault({}),
  redis: redisSchema.prefault({}),
  auth: authSchema.prefault({}),
  rateLimit: rateLimitSchema.prefault({}),
  log: logSchema.prefault({}),
  limits: limitsSchema.prefault({}),
  quotas: quotasSchema.prefault({}),
  /** The only programs a `command` step may run, by name. */
  commands: recordOf(
    COMMAND_NAME,
    "command name",
    `letters, digits, "_", "." and "-", starting with a letter or digit, at most 128 characters`,
    commandSchema,
  ).prefault(() => ({})),
  http: httpSchema.prefault({}),
  /** Worker pools. */
  queues: queuesSchema,
  /** Tag → queue: a step with this tag runs on that queue unless it names a queue itself. */
  tags: recordOf(
    TAG_NAME,
    "tag",
    `letters, digits, "_", ".", ":" and "-", starting with a letter or digit, at most 64 characters`,
    z.string({ error: "expected a queue name" }),
  ).prefault(() => ({})),
  retention: retentionSchema.prefault({}),
  worker: workerSchema.prefault({}),
  supervisor: supervisorSchema.prefault({}),
  autoscaler: autoscalerSchema.prefault({}),
  metrics: metricsSchema.prefault({}),
  webhooks: webhooksSchema.prefault({}),
  assets: assetsSchema.prefault({}),
  secrets: secretsSchema,
}).superRefine((config, ctx) => {
  const { requestTimeoutMs, headersTimeoutMs } = config.server;
  if (requestTimeoutMs > 0 && headersTimeoutMs > requestTimeoutMs) {
    ctx.addIssue({
      code: "custom",
      path: ["server", "headersTimeoutMs"],
      message: `must not exceed server.requestTimeoutMs (${requestTimeoutMs})`,
    });
  }
  for (const [tag, queue] of Object.entries(config.tags)) {
    if (!Object.hasOwn(config.queues, queue)) {
      const known = Object.keys(config.queues).join(", ") || "none";
      ctx.addIssue({
        code: "custom",
        path: ["tags", tag],
        message: `tag "${tag}" routes to queue "${queue}", which is not defined in queues (defined: ${known})`,
      });
    }
  }
});

export type ConfigInput = z.input<typeof configSchema>;
export type Config = Readonly<z.output<typeof configSchema>>;
export type CommandConfig = Config["commands"][string];
export type QueueConfig = Config["queues"][string];
export type Quotas = Omit<Config["quotas"], "tenants">;

/** The quotas of one tenant: the defaults with that tenant's overrides. */
export function quotasOf(config: Config, tenantId: string): Quotas {
  const { tenants, ...defaults } = config.quotas;
  const own = Object.hasOwn(tenants, tenantId) ? tenants[tenantId] : undefined;
  if (!own) return defaults;
  const merged = { ...defaults };
  for (const [key, value] of Object.entries(own) as Array<[keyof Quotas, number | undefined]>)
    if (value !== undefined) merged[key] = value;
  return merged;
}
export type LogLevel = (typeof LOG_LEVELS)[number];

type DeepPartial<T> = T extends readonly unknown[]
  ? T
  : T extends object
    ? { [K in keyof T]?: DeepPartial<T[K]> }
    : T;

/** What a test or the CLI may override: any subset of keys; objects merge, arrays replace. */
export type DeepPartialConfig = DeepPartial<ConfigInput>;

/**
 * The keys a strict object at `path` accepts, or undefined when `path` is not an object (used to
 * suggest a spelling for an unknown key).
 */
export function knownKeysAt(path: readonly PropertyKey[]): string[] | undefined {
  let schema: z.ZodType | undefined = configSchema;
  for (const segment of [...path, null]) {
    schema = unwrap(schema);
    if (segment === null) break;
    if (schema instanceof z.ZodObject) {
      schema = (schema.shape as Record<string, z.ZodType>)[String(segment)];
    } else if (schema instanceof z.ZodRecord) {
      schema = schema.valueType as z.ZodType;
    } else if (schema instanceof z.ZodArray) {
      schema = schema.element as z.ZodType;
    } else {
      return undefined;
    }
  }
  return schema instanceof z.ZodObject ? Object.keys(schema.shape) : undefined;
}

function unwrap(schema: z.ZodType | undefined): z.ZodType | undefined {
  let current = schema;
  while (
    current instanceof z.ZodDefault ||
    current instanceof z.ZodPrefault ||
    current instanceof z.ZodOptional
  ) {
    current = current.unwrap() as z.ZodType;
  }
  return current;
}
