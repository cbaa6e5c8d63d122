/**
 * The whole Postgres schema. Migrations in drizzle/ are generated from this file
 * (`npm run db:generate`), reviewed and committed.
 *
 * Ordering contract for events: every transaction that appends events for a run first locks the
 * run row (`SELECT … FOR UPDATE`) and only then draws event ids. Ids of one run are therefore
 * committed in increasing order, so a reader that has seen id N of a run can never later find a
 * committed event of that run with an id below N — the basis of gap-free SSE resumption.
 */
import { sql } from "drizzle-orm";
import {
  bigint,
  boolean,
  index,
  integer,
  jsonb,
  pgEnum,
  pgTable,
  primaryKey,
  real,
  smallint,
  text,
  timestamp,
  uniqueIndex,
  uuid,
} from "drizzle-orm/pg-core";
import { runKinds, runStatuses, stepStatuses } from "../domain/status.ts";

const createdAt = () => timestamp("created_at", { withTimezone: true }).notNull().defaultNow();
const ts = (name: string) => timestamp(name, { withTimezone: true });

export const runKind = pgEnum("run_kind", runKinds);
export const runStatus = pgEnum("run_status", runStatuses);
export const stepStatus = pgEnum("step_status", stepStatuses);

export const tenants = pgTable("tenants", {
  id: text("id").primaryKey(),
  createdAt: createdAt(),
});

export const apiKeys = pgTable(
  "api_keys",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    tenantId: text("tenant_id")
      .notNull()
      .references(() => tenants.id),
    name: text("name").notNull(),
    /** First characters of the key, shown in listings so a user can tell keys apart. */
    prefix: text("prefix").notNull(),
    /** SHA-256 (hex) of the whole key; the key itself is never stored. */
    secretHash: text("secret_hash").notNull(),
    scopes: text("scopes").array().notNull(),
    /** A root key administers every tenant (the bootstrap key). */
    root: boolean("root").notNull().default(false),
    createdAt: createdAt(),
    lastUsedAt: ts("last_used_at"),
    revokedAt: ts("revoked_at"),
    /** After this instant the key no longer authenticates; null: no expiry. */
    expiresAt: ts("expires_at"),
  },
  (t) => [
    uniqueIndex("api_keys_secret_hash_key").on(t.secretHash),
    index("api_keys_tenant_idx").on(t.tenantId),
  ],
);

export const workflows = pgTable(
  "workflows",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    tenantId: text("tenant_id")
      .notNull()
      .references(() => tenants.id),
    name: text("name").notNull(),
    latestVersion: integer("latest_version").notNull(),
    createdAt: createdAt(),
    updatedAt: ts("updated_at").notNull().defaultNow(),
    archivedAt: ts("archived_at"),
  },
  (t) => [uniqueIndex("workflows_tenant_name_key").on(t.tenantId, t.name)],
);

export const workflowVersions = pgTable(
  "workflow_versions",
  {
    workflowId: uuid("workflow_id")
      .notNull()
      .references(() => workflows.id, { onDelete: "cascade" }),
    version: integer("version").notNull(),
    /** The validated definition, normalised (defaults applied). */
    spec: jsonb("spec").notNull(),
    /** SHA-256 of the canonical JSON of `spec`: same content, same hash, same version. */
    hash: text("hash").notNull(),
    createdAt: createdAt(),
  },
  (t) => [primaryKey({ columns: [t.workflowId, t.version] })],
);

export const runs = pgTable(
  "runs",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    tenantId: text("tenant_id")
      .notNull()
      .references(() => tenants.id),
    workflowId: uuid("workflow_id")
      .notNull()
      .references(() => workflows.id),
    workflowVersion: integer("workflow_version").notNull(),
    kind: runKind("kind").notNull(),
    status: runStatus("status").notNull().default("queued"),
    /** What started it: api, schedule, retry, backfill, auto-materialize. */
    trigger: text("trigger").notNull().default("api"),
    params: jsonb("params").notNull().default({}),
    priority: smallint("priority").notNull().default(5),
    parentRunId: uuid("parent_run_id"),
    /** Runs created together by one backfill request share this id. */
    backfillId: uuid("backfill_id"),
    partitionKey: text("partition_key"),
    /** Rendered `concurrency.key`; null means the workflow-wide slot pool. */
    concurrencyKey: text("concurrency_key"),
    /** The request as submitted (selection, assets, force…), for audit and retry. */
    request: jsonb("request").notNull().default({}),
    /** The plan with a reason per step. */
    plan: jsonb("plan"),
    /** Asset locks this run needs (lock keys); it waits in `queued` until it holds them all. */
    locksWanted: jsonb("locks_wanted").notNull().default([]),
    /** Asset locks granted: lock key → fencing token, presented with every materialization. */
    locksHeld: jsonb("locks_held").notNull().default({}),
    error: jsonb("error"),
    /** Incremented by every state change; lets writers detect lost updates cheaply. */
    revision: integer("revision").notNull().default(0),
    /** Steps not yet in a terminal state; the run ends when it reaches 0. */
    pendingSteps: integer("pending_steps").notNull().default(0),
    /** Rollbacks started (a failed rollback may be requested again); keeps their job ids apart. */
    rollbacks: integer("rollbacks").notNull().default(0),
    createdAt: createdAt(),
    updatedAt: ts("updated_at").notNull().defaultNow(),
    startedAt: ts("started_at"),
    finishedAt: ts("finished_at"),
    /** W3C `traceparent` of the run's span when it was traced: its jobs carry it to the workers. */
    traceContext: text("trace_context"),
  },
  (t) => [
    index("runs_tenant_created_idx").on(t.tenantId, t.createdAt.desc(), t.id.desc()),
    index("runs_workflow_status_idx").on(t.workflowId, t.status),
    index("runs_active_idx")
      .on(t.status)
      .where(sql`${t.status} in ('queued', 'running', 'paused', 'rolling_back')`),
    index("runs_parent_idx").on(t.parentRunId),
  ],
);

export const stepRuns = pgTable(
  "step_runs",
  {
    runId: uuid("run_id")
      .notNull()
      .references(() => runs.id, { onDelete: "cascade" }),
    stepId: text("step_id").notNull(),
    /**
     * `execute` (the step itself) or `compensate` (its compensation during a rollback, a row that
     * exists only once a rollback asks for it). Both phases share every column and every fenced
     * statement: one attempt lifecycle (see engine/attempts.ts).
     */
    phase: text("phase").notNull().default("execute"),
    status: stepStatus("status").notNull().default("pending"),
    /** The current attempt (0 before the first). A completion counts only for this attempt. */
    attempt: integer("attempt").notNull().default(0),
    maxAttempts: integer("max_attempts").notNull().default(1),
    queue: text("queue").notNull().default("default"),
    priority: smallint("priority").notNull().default(5),
    /** Why the planner included it: missing, stale, forced, selected, reused-from-parent … */
    planReason: text("plan_reason"),
    output: jsonb("output"),
    error: jsonb("error"),
    progress: real("progress"),
    progressMessage: text("progress_message"),
    workerId: text("worker_id"),
    /** Parents not yet succeeded or reused; the step is ready when this reaches 0. */
    unmetNeeds: integer("unmet_needs").notNull().default(0),
    /** Fencing token of the current holder: a completion must present it. New on every pickup. */
    leaseToken: text("lease_token"),
    timeoutSeconds: integer("timeout_seconds"),
    /** Worker lease: a running attempt whose lease expired is recovered by the reconciler. */
    leaseExpiresAt: ts("lease_expires_at"),
    nextAttemptAt: ts("next_attempt_at"),
    /** Id of the BullMQ job that carries the current attempt; the reconciler checks it exists. */
    jobId: text("job_id"),
    /** The lease protocol of the holder that wrote the lease (src/domain/formats.ts); 1 today. */
    leaseFormat: smallint("lease_format").notNull().default(1),
    reusedFromRunId: uuid("reused_from_run_id"),
    queuedAt: ts("queued_at"),
    startedAt: ts("started_at"),
    finishedAt: ts("finished_at"),
    updatedAt: ts("updated_at").notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ columns: [t.runId, t.stepId, t.phase] }),
    index("step_runs_recovery_idx")
      .on(t.status, t.leaseExpiresAt)
      .where(sql`${t.status} in ('queued', 'running', 'retrying')`),
  ],
);

export const stepAttempts = pgTable(
  "step_attempts",
  {
    runId: uuid("run_id")
      .notNull()
      .references(() => runs.id, { onDelete: "cascade" }),
    stepId: text("step_id").notNull(),
    phase: text("phase").notNull().default("execute"),
    attempt: integer("attempt").notNull(),
    status: stepStatus("status").notNull(),
    workerId: text("worker_id"),
    error: jsonb("error"),
    startedAt: ts("started_at"),
    finishedAt: ts("finished_at"),
  },
  (t) => [primaryKey({ columns: [t.runId, t.stepId, t.phase, t.attempt] })],
);

export const events = pgTable(
  "events",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedAlwaysAsIdentity(),
    tenantId: text("tenant_id").notNull(),
    runId: uuid("run_id")
      .notNull()
      .references(() => runs.id, { onDelete: "cascade" }),
    stepId: text("step_id"),
    type: text("type").notNull(),
    attempt: integer("attempt"),
    data: jsonb("data").notNull().default({}),
    /** The event format that wrote it (src/domain/formats.ts); 1 today. */
    format: smallint("format").notNull().default(1),
    createdAt: createdAt(),
  },
  (t) => [index("events_run_idx").on(t.runId, t.id), index("events_created_idx").on(t.createdAt)],
);

export const assets = pgTable(
  "assets",
  {
    tenantId: text("tenant_id")
      .notNull()
      .references(() => tenants.id),
    key: text("key").notNull(),
    /** Highest fencing token ever granted for this asset's lock and recorded here. */
    fencingToken: bigint("fencing_token", { mode: "number" }).notNull().default(0),
    lastMaterializedAt: ts("last_materialized_at"),
    createdAt: createdAt(),
  },
  (t) => [primaryKey({ columns: [t.tenantId, t.key] })],
);

export const materializations = pgTable(
  "materializations",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedAlwaysAsIdentity(),
    tenantId: text("tenant_id").notNull(),
    assetKey: text("asset_key").notNull(),
    runId: uuid("run_id")
      .notNull()
      .references(() => runs.id, { onDelete: "cascade" }),
    stepId: text("step_id").notNull(),
    partitionKey: text("partition_key"),
    fencingToken: bigint("fencing_token", { mode: "number" }).notNull(),
    metadata: jsonb("metadata"),
    createdAt: createdAt(),
  },
  (t) => [index("materializations_asset_idx").on(t.tenantId, t.assetKey, t.createdAt.desc())],
);

export const idempotencyKeys = pgTable(
  "idempotency_keys",
  {
    tenantId: text("tenant_id").notNull(),
    key: text("key").notNull(),
    /** The route and a hash of the request body: the same key with another body is a 409. */
    requestHash: text("request_hash").notNull(),
    runId: uuid("run_id"),
    createdAt: createdAt(),
    expiresAt: ts("expires_at").notNull(),
  },
  (t) => [primaryKey({ columns: [t.tenantId, t.key] })],
);

export const scheduleFires = pgTable(
  "schedule_fires",
  {
    workflowId: uuid("workflow_id")
      .notNull()
      .references(() => workflows.id, { onDelete: "cascade" }),
    /** Stable identity of a schedule inside its workflow (hash of cron, timezone and params). */
    scheduleKey: text("schedule_key").notNull(),
    fireAt: ts("fire_at").notNull(),
    runId: uuid("run_id"),
    createdAt: createdAt(),
  },
  (t) => [primaryKey({ columns: [t.workflowId, t.scheduleKey, t.fireAt] })],
);

/**
 * Run-level events (`run.*`) waiting to be turned into webhook deliveries. Written by
 * `appendEvents` in the same transaction as the event, so none is missed whatever the commit
 * order of concurrent transactions; the supervisor drains it.
 */
export const notificationOutbox = pgTable("notification_outbox", {
  eventId: bigint("event_id", { mode: "number" }).primaryKey(),
  tenantId: text("tenant_id").notNull(),
  runId: uuid("run_id")
    .notNull()
    .references(() => runs.id, { onDelete: "cascade" }),
  type: text("type").notNull(),
  createdAt: createdAt(),
});

/** One webhook call per (event, url), retried with backoff until delivered or out of attempts. */
export const webhookDeliveries = pgTable(
  "webhook_deliveries",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedAlwaysAsIdentity(),
    tenantId: text("tenant_id").notNull(),
    runId: uuid("run_id")
      .notNull()
      .references(() => runs.id, { onDelete: "cascade" }),
    eventId: bigint("event_id", { mode: "number" }).notNull(),
    eventType: text("event_type").notNull(),
    url: text("url").notNull(),
    /** pending | delivered | failed */
    status: text("status").notNull().default("pending"),
    attempts: integer("attempts").notNull().default(0),
    nextAttemptAt: ts("next_attempt_at").notNull().defaultNow(),
    responseStatus: integer("response_status"),
    lastError: text("last_error"),
    createdAt: createdAt(),
    deliveredAt: ts("delivered_at"),
  },
  (t) => [
    uniqueIndex("webhook_deliveries_event_url_idx").on(t.eventId, t.url),
    index("webhook_deliveries_due_idx").on(t.nextAttemptAt).where(sql`${t.status} = 'pending'`),
    index("webhook_deliveries_tenant_due_idx")
      .on(t.tenantId, t.nextAttemptAt)
      .where(sql`${t.status} = 'pending'`),
  ],
);

/**
 * Each tenant's webhook signing secret (`whsec_…`, Standard Webhooks), created on first use. After
 * a rotation the previous secret signs alongside the new one until `previous_expires_at`.
 */
export const tenantWebhookSecrets = pgTable("tenant_webhook_secrets", {
  tenantId: text("tenant_id")
    .primaryKey()
    .references(() => tenants.id),
  secret: text("secret").notNull(),
  createdAt: createdAt(),
  previousSecret: text("previous_secret"),
  previousExpiresAt: ts("previous_expires_at"),
});

/**
 * Who did what: one row per state-changing API request (key id and prefix, action, target,
 * outcome, request id). Append-only; pruned with runs (`retention.runsDays`).
 */
export const auditLog = pgTable(
  "audit_log",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedAlwaysAsIdentity(),
    tenantId: text("tenant_id").notNull(),
    keyId: uuid("key_id"),
    keyPrefix: text("key_prefix"),
    action: text("action").notNull(),
    target: text("target"),
    /** ok, or the error code of a refused request. */
    outcome: text("outcome").notNull(),
    requestId: text("request_id"),
    details: jsonb("details").notNull().default({}),
    createdAt: createdAt(),
  },
  (t) => [index("audit_log_tenant_idx").on(t.tenantId, t.id), index("audit_log_created_idx").on(t.createdAt)],
);

/**
 * The newest supervisor fencing token that has acted. A supervisor writes its token when it becomes
 * active; writes that must come from the active supervisor only (cron fires) check it in their
 * transaction, so a former leader that wakes up after a takeover is refused by Postgres itself.
 */
export const supervisorFences = pgTable("supervisor_fences", {
  name: text("name").primaryKey(),
  fence: bigint("fence", { mode: "number" }).notNull(),
  holder: text("holder").notNull(),
  updatedAt: ts("updated_at").notNull().defaultNow(),
});

/**
 * The newest fencing token that has written for each asset lock (an asset, or an asset's
 * partition: `key@partition`). A materialization carrying an older token is refused.
 */
export const assetFences = pgTable(
  "asset_fences",
  {
    tenantId: text("tenant_id").notNull(),
    lockKey: text("lock_key").notNull(),
    fencingToken: bigint("fencing_token", { mode: "number" }).notNull(),
    updatedAt: ts("updated_at").notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.tenantId, t.lockKey] })],
);

/**
 * The migrations applied by releases that record them (0009 on): each one's tag and, for one that
 * breaks older processes, the oldest migration a process must know to run against the schema.
 * Lets a process judge a schema newer than itself (db/schema-version.ts).
 */
export const schemaVersions = pgTable("schema_versions", {
  migration: integer("migration").primaryKey(),
  tag: text("tag").notNull(),
  readersFrom: integer("readers_from"),
  readersRelease: text("readers_release"),
  reason: text("reason"),
  recordedAt: ts("recorded_at").notNull().defaultNow(),
});

// ---------------------------------------------------------------------------------------------
// The Postgres-only deployment's stores (what Redis holds otherwise; see src/db/stores/).
// `store_counters`, `store_workers` and `store_scaler_targets` are UNLOGGED tables (migration 0008).

/** Named leases with a fencing counter that never goes back (asset locks, the supervisor lease). */
export const storeLeases = pgTable("store_leases", {
  name: text("name").primaryKey(),
  token: text("token"),
  expiresAt: ts("expires_at"),
  fence: bigint("fence", { mode: "number" }).notNull().default(0),
});

/** Counters in a time window (rate limits, failed authentications). */
export const storeCounters = pgTable("store_counters", {
  key: text("key").primaryKey(),
  count: integer("count").notNull(),
  expiresAt: ts("expires_at").notNull(),
});

/** Worker announcements, each living until `expires_at`. */
export const storeWorkers = pgTable("store_workers", {
  id: text("id").primaryKey(),
  info: jsonb("info").notNull(),
  expiresAt: ts("expires_at").notNull(),
});

/** The autoscaler's latest decision per queue. */
export const storeScalerTargets = pgTable("store_scaler_targets", {
  queue: text("queue").primaryKey(),
  target: jsonb("target").notNull(),
  expiresAt: ts("expires_at").notNull(),
});

/** Values shared by every process of a deployment (the generated session secret). */
export const storeValues = pgTable("store_values", {
  key: text("key").primaryKey(),
  value: text("value").notNull(),
});

/** API and supervisor announcements (role, release), each living until `expires_at`. */
export const storeProcesses = pgTable("store_processes", {
  id: text("id").primaryKey(),
  info: jsonb("info").notNull(),
  expiresAt: ts("expires_at").notNull(),
});
