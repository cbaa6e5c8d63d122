/**
 * Partitions of a backfill (SPEC §4): a request names them as a list of keys or as a date range
 * with a step, and `expandPartitions` turns either into the list of partition keys, one run each.
 * Pure: no clock, no I/O; all dates are UTC.
 *
 * A range covers every partition that overlaps it: `from` and `to` may be written in the step's
 * own format or as a date, and a date stands for its whole day. So `{ from: "2026-01-15", to:
 * "2026-02-03", step: "month" }` is 2026-01 and 2026-02, and a date range with `step: "hour"`
 * ends at hour 23 of `to`.
 */
import { z } from "zod";
import { type FieldIssue, FlowlineError } from "./errors.ts";

export const partitionKeyPattern = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

export const partitionKey = z
  .string()
  .regex(
    partitionKeyPattern,
    "must be 1–128 characters of letters, digits, _ . : -, starting with a letter or digit",
  )
  .describe("A partition key, e.g. 2026-01-01");

export const partitionSteps = ["hour", "day", "week", "month"] as const;
export type PartitionStep = (typeof partitionSteps)[number];

/** The widest list or range the request schema admits; the caller's `max` is usually smaller. */
const SCHEMA_MAX_KEYS = 10_000;

/**
 * The request field. Its shape only: `expandPartitions` checks the keys and dates and reports
 * each problem with its path, which a zod union could not do as precisely.
 */
export const partitionsSchema = z
  .union(
    [
      z
        .array(z.string().max(200))
        .max(SCHEMA_MAX_KEYS)
        .describe("Partition keys, each 1–128 characters of letters, digits, _ . : -"),
      z
        .strictObject({
          from: z.string().max(32).describe("First partition: YYYY-MM-DD, or the step's own format"),
          to: z.string().max(32).describe("Last partition, inclusive"),
          step: z
            .enum(partitionSteps)
            .optional()
            .describe(
              "day (default, keys YYYY-MM-DD), hour (YYYY-MM-DDTHH), week (the Monday, YYYY-MM-DD), month (YYYY-MM)",
            ),
        })
        .describe("A date range in UTC, both ends inclusive"),
    ],
    { error: "must be a list of partition keys or a range { from, to, step? }" },
  )
  .meta({
    id: "Partitions",
    description: "One run per partition: a list of keys, or a UTC date range with a step",
  });

export type PartitionsInput = z.output<typeof partitionsSchema>;

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
/** Length of the steps of fixed length; months vary and are counted by calendar. */
const stepMs = { hour: HOUR_MS, day: DAY_MS, week: 7 * DAY_MS } as const;

/**
 * The partition keys `input` names, in order (a range ascending). Throws `validation_failed`
 * with one issue per problem, under `partitions`: a malformed or repeated key, an empty list, a
 * date that does not exist, a reversed range, or more than `options.max` partitions (counted
 * before any key is made, so a century of hours costs nothing).
 */
export function expandPartitions(input: PartitionsInput, options: { max: number }): string[] {
  return Array.isArray(input) ? checkList(input, options.max) : expandRange(input, options.max);
}

function refuse(message: string, issues: FieldIssue[]): never {
  throw new FlowlineError("validation_failed", message, { issues });
}

const at = (...path: (string | number)[]): FieldIssue["path"] => ["partitions", ...path];

function tooMany(count: number, max: number): never {
  refuse(`${count} partitions requested; at most ${max} are allowed in one request (limits.backfillRuns)`, [
    { location: "body", path: at(), message: `must name at most ${max} partitions` },
  ]);
}

function checkList(keys: readonly string[], max: number): string[] {
  if (keys.length === 0) {
    refuse("Name at least one partition", [{ location: "body", path: at(), message: "must not be empty" }]);
  }
  if (keys.length > max) tooMany(keys.length, max);
  const issues: FieldIssue[] = [];
  const seen = new Map<string, number>();
  keys.forEach((key, i) => {
    if (!partitionKeyPattern.test(key)) {
      issues.push({
        location: "body",
        path: at(i),
        message: "must be 1–128 characters of letters, digits, _ . : -, starting with a letter or digit",
      });
      return;
    }
    const first = seen.get(key);
    if (first !== undefined) {
      issues.push({ location: "body", path: at(i), message: `repeats partitions[${first}] "${key}"` });
    } else seen.set(key, i);
  });
  if (issues.length > 0) {
    const more = issues.length > 1 ? ` (and ${issues.length - 1} more)` : "";
    refuse(`Invalid partition list: ${issues[0]!.message}${more}`, issues);
  }
  return [...keys];
}

/** A parsed end of a range: the first and the last millisecond it stands for. */
interface Span {
  start: number;
  end: number;
}

const datePattern = /^(\d{4})-(\d{2})-(\d{2})$/;
const hourPattern = /^(\d{4})-(\d{2})-(\d{2})T(\d{2})$/;
const monthPattern = /^(\d{4})-(\d{2})$/;

/** Milliseconds of a UTC calendar date, or null when it does not exist (2026-02-29, month 13). */
function utc(year: number, month: number, day: number, hour = 0): number | null {
  if (year < 1 || month < 1 || month > 12 || day < 1 || hour > 23) return null;
  const d = new Date(0);
  // setUTCFullYear, unlike Date.UTC, does not map years 0–99 to 1900–1999.
  d.setUTCFullYear(year, month - 1, day);
  d.setUTCHours(hour, 0, 0, 0);
  if (d.getUTCFullYear() !== year || d.getUTCMonth() !== month - 1 || d.getUTCDate() !== day) return null;
  return d.getTime();
}

function addMonths(ms: number, months: number): number {
  const d = new Date(ms);
  d.setUTCMonth(d.getUTCMonth() + months, 1);
  return d.getTime();
}

const formats: Record<PartitionStep, string> = {
  hour: "YYYY-MM-DDTHH or YYYY-MM-DD",
  day: "YYYY-MM-DD",
  week: "YYYY-MM-DD",
  month: "YYYY-MM or YYYY-MM-DD",
};

function parseEnd(value: string, step: PartitionStep): Span | null {
  let m = datePattern.exec(value);
  if (m) {
    const start = utc(Number(m[1]), Number(m[2]), Number(m[3]));
    return start === null ? null : { start, end: start + DAY_MS - 1 };
  }
  m = step === "hour" ? hourPattern.exec(value) : null;
  if (m) {
    const start = utc(Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4]));
    return start === null ? null : { start, end: start + HOUR_MS - 1 };
  }
  m = step === "month" ? monthPattern.exec(value) : null;
  if (m) {
    const start = utc(Number(m[1]), Number(m[2]), 1);
    return start === null ? null : { start, end: addMonths(start, 1) - 1 };
  }
  return null;
}

/** Start of the partition of `step` that contains the instant `ms`. */
function floorTo(ms: number, step: PartitionStep): number {
  switch (step) {
    case "hour":
      return ms - (((ms % HOUR_MS) + HOUR_MS) % HOUR_MS);
    case "day":
      return ms - (((ms % DAY_MS) + DAY_MS) % DAY_MS);
    case "week": {
      const day = floorTo(ms, "day");
      // getUTCDay: 0 is Sunday; Monday starts the week (ISO 8601).
      const sinceMonday = (new Date(day).getUTCDay() + 6) % 7;
      return day - sinceMonday * DAY_MS;
    }
    case "month": {
      const d = new Date(ms);
      return utc(d.getUTCFullYear(), d.getUTCMonth() + 1, 1)!;
    }
    default: {
      const unknown: never = step;
      throw new Error(`unknown partition step ${String(unknown)}`);
    }
  }
}

const pad = (n: number, width = 2) => String(n).padStart(width, "0");

function keyOf(ms: number, step: PartitionStep): string {
  const d = new Date(ms);
  const date = `${pad(d.getUTCFullYear(), 4)}-${pad(d.getUTCMonth() + 1)}`;
  if (step === "month") return date;
  const day = `${date}-${pad(d.getUTCDate())}`;
  return step === "hour" ? `${day}T${pad(d.getUTCHours())}` : day;
}

function expandRange(range: { from: string; to: string; step?: PartitionStep | undefined }, max: number) {
  const step = range.step ?? "day";
  const from = parseEnd(range.from, step);
  const to = parseEnd(range.to, step);
  const issues: FieldIssue[] = [];
  const badEnd = (name: "from" | "to", value: string) =>
    issues.push({
      location: "body",
      path: at(name),
      message: `"${value}" is not a ${step} partition: expected an existing UTC date as ${formats[step]}`,
    });
  if (from === null) badEnd("from", range.from);
  if (to === null) badEnd("to", range.to);
  if (from === null || to === null) refuse(`Invalid partition range: ${issues[0]!.message}`, issues);
  if (to.end < from.start) {
    refuse(`The partition range is reversed: "${range.to}" is before "${range.from}"`, [
      { location: "body", path: at("to"), message: `must not be before from ("${range.from}")` },
    ]);
  }

  const first = floorTo(from.start, step);
  const last = floorTo(to.end, step);
  let count: number;
  if (step === "month") {
    const a = new Date(first);
    const b = new Date(last);
    count = (b.getUTCFullYear() - a.getUTCFullYear()) * 12 + (b.getUTCMonth() - a.getUTCMonth()) + 1;
  } else {
    count = Math.round((last - first) / stepMs[step]) + 1;
  }
  if (count > max) tooMany(count, max);

  const keys: string[] = [];
  for (let i = 0; i < count; i++) {
    keys.push(keyOf(step === "month" ? addMonths(first, i) : first + i * stepMs[step], step));
  }
  return keys;
}
