import type { NewEvent } from "../db/repositories/runs.ts";

/** What an attempt reports while it runs: logs and progress of a step (or of its compensation). */
export interface Activity {
  logs?: Array<{ stream: "stdout" | "stderr" | "log"; line: string }>;
  progress?: { pct: number; message?: string };
}

/** The `step.log` / `step.progress` events of an attempt's activity; `extra` joins every event's data. */
export function activityEvents(
  ref: { stepId: string; attempt: number },
  activity: Activity,
  extra: Record<string, unknown> = {},
): NewEvent[] {
  const events: NewEvent[] = (activity.logs ?? []).map((l) => ({
    type: "step.log",
    stepId: ref.stepId,
    attempt: ref.attempt,
    data: { ...extra, stream: l.stream, line: l.line },
  }));
  if (activity.progress) {
    events.push({
      type: "step.progress",
      stepId: ref.stepId,
      attempt: ref.attempt,
      data: { ...extra, progress: activity.progress.pct, message: activity.progress.message ?? null },
    });
  }
  return events;
}
