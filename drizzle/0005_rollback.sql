ALTER TABLE "runs" ADD COLUMN "rollbacks" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "step_runs" ADD COLUMN "compensation_attempt" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "step_runs" ADD COLUMN "compensation_lease_token" text;--> statement-breakpoint
ALTER TABLE "step_runs" ADD COLUMN "compensation_lease_expires_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "step_runs" ADD COLUMN "compensation_job_id" text;--> statement-breakpoint
ALTER TABLE "step_runs" ADD COLUMN "compensation_worker_id" text;--> statement-breakpoint
ALTER TABLE "step_runs" ADD COLUMN "compensation_due_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "step_runs" ADD COLUMN "compensation_error" jsonb;--> statement-breakpoint
ALTER TABLE "step_runs" ADD COLUMN "compensation_started_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "step_runs" ADD COLUMN "compensation_finished_at" timestamp with time zone;--> statement-breakpoint
CREATE INDEX "step_runs_compensation_idx" ON "step_runs" USING btree ("compensation_status","compensation_lease_expires_at") WHERE "step_runs"."compensation_status" in ('queued', 'running', 'retrying');