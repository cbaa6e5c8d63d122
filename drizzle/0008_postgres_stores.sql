-- The Postgres-only deployment (no REDIS_URL): what Redis holds otherwise lives in these tables.
-- Leases with fencing counters (asset locks, the supervisor's lease) are logged tables: a crash
-- must not hand out a fence twice. Counters (rate limits, failed logins), worker announcements and
-- autoscaler targets expire within seconds or minutes anyway: unlogged, so they cost no WAL.
CREATE TABLE IF NOT EXISTS "store_leases" (
	"name" text PRIMARY KEY NOT NULL,
	"token" text,
	"expires_at" timestamp with time zone,
	"fence" bigint DEFAULT 0 NOT NULL
);--> statement-breakpoint
CREATE UNLOGGED TABLE IF NOT EXISTS "store_counters" (
	"key" text PRIMARY KEY NOT NULL,
	"count" integer NOT NULL,
	"expires_at" timestamp with time zone NOT NULL
);--> statement-breakpoint
CREATE UNLOGGED TABLE IF NOT EXISTS "store_workers" (
	"id" text PRIMARY KEY NOT NULL,
	"info" jsonb NOT NULL,
	"expires_at" timestamp with time zone NOT NULL
);--> statement-breakpoint
CREATE UNLOGGED TABLE IF NOT EXISTS "store_scaler_targets" (
	"queue" text PRIMARY KEY NOT NULL,
	"target" jsonb NOT NULL,
	"expires_at" timestamp with time zone NOT NULL
);--> statement-breakpoint
CREATE TABLE IF NOT EXISTS "store_values" (
	"key" text PRIMARY KEY NOT NULL,
	"value" text NOT NULL
);
--> statement-breakpoint
CREATE UNLOGGED TABLE IF NOT EXISTS "store_processes" (
	"id" text PRIMARY KEY NOT NULL,
	"info" jsonb NOT NULL,
	"expires_at" timestamp with time zone NOT NULL
);
