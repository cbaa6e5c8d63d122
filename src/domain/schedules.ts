/**
 * When a cron schedule is due. One rule covers normal ticks, restarts and long outages: the fire
 * is the most recent slot at or before `now` that is later than the last one fired. So a schedule
 * whose slots were missed while everything was down fires once on recovery, not once per slot.
 */
import { canonicalJson } from "./workflow/canonical.ts";
import type { ScheduleSpec } from "./workflow/spec.ts";
import { scheduleCron } from "./workflow/validate.ts";

/**
 * The slot to fire now, or null. `since` is the last slot fired (or, for a schedule that never
 * fired, the moment it was defined: a new schedule does not fire for slots before it existed).
 */
export function dueSlot(
  schedule: Pick<ScheduleSpec, "cron" | "timezone">,
  since: Date,
  now: Date,
): Date | null {
  const [latest] = scheduleCron(schedule.cron, schedule.timezone).previousRuns(1, now);
  if (!latest || latest.getTime() > now.getTime()) return null;
  return latest.getTime() > since.getTime() ? latest : null;
}

/** A schedule's identity inside its workflow: the same cron, zone and params keep their history. */
export function scheduleIdentity(schedule: Pick<ScheduleSpec, "cron" | "timezone" | "params">): string {
  return canonicalJson({
    cron: schedule.cron.trim(),
    timezone: schedule.timezone,
    params: schedule.params ?? {},
  });
}
