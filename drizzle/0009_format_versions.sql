-- Upgrades with work in flight (expand-only: processes of the previous release keep running).
-- Events and step rows (the rows that hold a worker's lease) say which format wrote them; the
-- defaults stamp today's format 1, so writers of the previous release need no change.
-- schema_versions names every migration applied by a release that records them, and for one that
-- breaks older processes (a contract step) the oldest migration a process must know to run against
-- the schema, so that a process can judge a schema newer than itself (src/db/schema-version.ts;
-- the rows come from drizzle/compat.json and the journal, written after migrating).
-- step_runs before events: the order in which the engine's transactions lock them, so that the
-- migration waiting for one table never holds the other one a live transaction waits for.
ALTER TABLE "step_runs" ADD COLUMN "lease_format" smallint DEFAULT 1 NOT NULL;--> statement-breakpoint
ALTER TABLE "events" ADD COLUMN "format" smallint DEFAULT 1 NOT NULL;--> statement-breakpoint
CREATE TABLE "schema_versions" (
	"migration" integer PRIMARY KEY NOT NULL,
	"tag" text NOT NULL,
	"readers_from" integer,
	"readers_release" text,
	"reason" text,
	"recorded_at" timestamp with time zone DEFAULT now() NOT NULL
);
