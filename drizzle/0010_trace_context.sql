-- The W3C traceparent of a run's span (observability: one trace per run). Null when the run was
-- created with tracing off.
ALTER TABLE "runs" ADD COLUMN "trace_context" text;
