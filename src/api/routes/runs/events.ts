/**
 * The shapes of a run's events, one variant per event type, so generated clients get a union keyed
 * by `type`. Two forms share the same variants: `RunEvent` (a JSON page item, the type-specific
 * fields under `data`) and `RunEventFrame` (the JSON of an SSE frame's `data:` line, the same
 * fields merged into the envelope). Every type-specific field is optional and unknown ones pass
 * through: a client written today keeps working when an event gains a field.
 */
import { z } from "zod";
import { type EventType, eventTypes } from "../../../domain/status.ts";
import { isoDate } from "../../schemas.ts";

const error = z.unknown().describe("The error: at least a `message`, often a `code`");

/** The type-specific fields of each event type. */
const fieldsOf: { [T in EventType]: z.ZodRawShape } = {
  "run.queued": {
    workflow: z.string(),
    version: z.number().int(),
    kind: z.string(),
    plan: z.object({ run: z.number().int(), reuse: z.number().int(), skip: z.number().int() }).partial(),
    partition: z.string(),
    waiting: z.string().describe("Why the run waits for admission (a concurrency limit or an asset lock)"),
  },
  "run.started": { locks: z.record(z.string(), z.unknown()).describe("Asset locks the run holds") },
  "run.paused": {},
  "run.resumed": {},
  "run.succeeded": {},
  "run.failed": { error },
  "run.cancelled": {},
  "run.rolling_back": { reason: z.string(), error, compensations: z.array(z.string()) },
  "run.rolled_back": {},
  "step.queued": {
    queue: z.string(),
    attempt: z.number().int(),
    reason: z.string(),
    warning: z.string().describe("Set when no configured worker pool serves the queue"),
  },
  "step.started": { attempt: z.number().int(), workerId: z.string() },
  "step.progress": {
    progress: z.number().nullable().describe("A fraction from 0 to 1"),
    message: z.string().nullable(),
  },
  "step.log": { stream: z.string().describe("stdout, stderr or log"), line: z.string() },
  "step.retrying": { attempt: z.number().int(), delayMs: z.number(), error, reason: z.string() },
  "step.succeeded": { attempt: z.number().int() },
  "step.failed": { attempt: z.number().int(), error },
  "step.skipped": { reason: z.string() },
  "step.cancelled": { reason: z.string() },
  "step.reused": { fromRunId: z.string(), reason: z.string() },
  "asset.materialized": {
    asset: z.string(),
    partition: z.string().nullable(),
    fencingToken: z.number(),
    materializationId: z.number().int(),
  },
};

const envelope = {
  id: z.number().int().describe("The event id; resume after it with `Last-Event-ID` or `?after=`"),
  runId: z.uuid(),
  stepId: z.string().nullable(),
  attempt: z.number().int().nullable(),
  at: isoDate,
};

type Variants = [z.ZodObject, ...z.ZodObject[]];

const phase = z
  .literal("compensate")
  .describe("Set on step events of a rollback: the event is about the step's compensation");

/** The type-specific fields of `type`, all optional. */
const fields = (type: EventType) =>
  z.object({ ...fieldsOf[type], ...(type.startsWith("step.") ? { phase } : {}) }).partial().shape;

/** A JSON page item: the envelope, with the type-specific fields under `data`. */
export const runEventSchema = z
  .discriminatedUnion(
    "type",
    eventTypes.map((type) =>
      z.object({ ...envelope, type: z.literal(type), data: z.looseObject(fields(type)) }),
    ) as unknown as Variants,
  )
  .meta({ id: "RunEvent" });

/** The JSON of one SSE frame's `data:` line: the envelope with the type-specific fields merged in. */
export const runEventFrameSchema = z
  .discriminatedUnion(
    "type",
    eventTypes.map((type) =>
      z.looseObject({ ...fields(type), ...envelope, type: z.literal(type) }),
    ) as unknown as Variants,
  )
  .meta({
    id: "RunEventFrame",
    description:
      "The `data:` of one server-sent event. The frame's `event:` is the same `type` and its `id:` the same `id`; " +
      "after the run's terminal event a final `event: end` frame carries `{}`.",
  });

export type RunEventFrame = z.infer<typeof runEventFrameSchema>;

/** Described once for every route that answers a stream of frames. */
export const eventStreamContent = {
  "text/event-stream": { schema: runEventFrameSchema },
} as const;
