CREATE TABLE "asset_fences" (
	"tenant_id" text NOT NULL,
	"lock_key" text NOT NULL,
	"fencing_token" bigint NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "asset_fences_tenant_id_lock_key_pk" PRIMARY KEY("tenant_id","lock_key")
);
--> statement-breakpoint
ALTER TABLE "runs" ADD COLUMN "locks_wanted" jsonb DEFAULT '[]'::jsonb NOT NULL;--> statement-breakpoint
ALTER TABLE "runs" ADD COLUMN "locks_held" jsonb DEFAULT '{}'::jsonb NOT NULL;