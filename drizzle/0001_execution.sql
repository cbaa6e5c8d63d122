ALTER TABLE "runs" ADD COLUMN "pending_steps" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "step_runs" ADD COLUMN "lease_token" text;--> statement-breakpoint
ALTER TABLE "step_runs" ADD COLUMN "timeout_seconds" integer;