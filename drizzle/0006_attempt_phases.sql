-- One attempt lifecycle: a step's compensation becomes a row of its own in step_runs (phase
-- 'compensate') with the same status, attempt, lease and job columns as the step itself (phase
-- 'execute'), instead of ten compensation_* columns mirroring them. Rows in flight are copied.
ALTER TABLE "step_runs" ADD COLUMN "phase" text DEFAULT 'execute' NOT NULL;--> statement-breakpoint
ALTER TABLE "step_attempts" ADD COLUMN "phase" text DEFAULT 'execute' NOT NULL;--> statement-breakpoint
ALTER TABLE "step_runs" DROP CONSTRAINT "step_runs_run_id_step_id_pk";--> statement-breakpoint
ALTER TABLE "step_runs" ADD CONSTRAINT "step_runs_run_id_step_id_phase_pk" PRIMARY KEY("run_id","step_id","phase");--> statement-breakpoint
ALTER TABLE "step_attempts" DROP CONSTRAINT "step_attempts_run_id_step_id_attempt_pk";--> statement-breakpoint
ALTER TABLE "step_attempts" ADD CONSTRAINT "step_attempts_run_id_step_id_phase_attempt_pk" PRIMARY KEY("run_id","step_id","phase","attempt");--> statement-breakpoint
INSERT INTO "step_runs" ("run_id", "step_id", "phase", "status", "attempt", "max_attempts", "queue", "priority",
  "timeout_seconds", "error", "worker_id", "lease_token", "lease_expires_at", "job_id", "queued_at",
  "next_attempt_at", "started_at", "finished_at", "updated_at")
SELECT "run_id", "step_id", 'compensate', "compensation_status"::step_status, "compensation_attempt", "max_attempts",
  "queue", "priority", "timeout_seconds", "compensation_error", "compensation_worker_id", "compensation_lease_token",
  "compensation_lease_expires_at", "compensation_job_id", "compensation_due_at", "compensation_due_at",
  "compensation_started_at", "compensation_finished_at", now()
FROM "step_runs" WHERE "compensation_status" IS NOT NULL;--> statement-breakpoint
DROP INDEX "step_runs_compensation_idx";--> statement-breakpoint
ALTER TABLE "step_runs" DROP COLUMN "compensation_status";--> statement-breakpoint
ALTER TABLE "step_runs" DROP COLUMN "compensation_attempt";--> statement-breakpoint
ALTER TABLE "step_runs" DROP COLUMN "compensation_lease_token";--> statement-breakpoint
ALTER TABLE "step_runs" DROP COLUMN "compensation_lease_expires_at";--> statement-breakpoint
ALTER TABLE "step_runs" DROP COLUMN "compensation_job_id";--> statement-breakpoint
ALTER TABLE "step_runs" DROP COLUMN "compensation_worker_id";--> statement-breakpoint
ALTER TABLE "step_runs" DROP COLUMN "compensation_due_at";--> statement-breakpoint
ALTER TABLE "step_runs" DROP COLUMN "compensation_error";--> statement-breakpoint
ALTER TABLE "step_runs" DROP COLUMN "compensation_started_at";--> statement-breakpoint
ALTER TABLE "step_runs" DROP COLUMN "compensation_finished_at";
