/**
 * The history checker: pure functions from what was recorded (runs, attempts, events, effects at
 * the target, what SSE clients received, faults) to the violations of SPEC §8 found in it. No I/O,
 * so it is unit-tested on made-up histories, and a planted violation shows it can fail.
 */
import type { FaultKind, FaultRecord } from "./faults.ts";
import { type Effect, effectKey } from "./target.ts";

export interface RunRow {
  id: string;
  workflow: string;
  status: string;
  trigger: string;
  tag: string | null;
  partition: string | null;
}

export interface EventRow {
  id: number;
  runId: string;
  type: string;
  stepId: string | null;
  phase: string;
  createdAt: number;
}

export interface History {
  runs: RunRow[];
  /** Runs an API accepted (answered with their id). */
  accepted: string[];
  /** When an API answered a cancel request with the run `cancelled` (after its commit). */
  cancelAcks: Array<{ runId: string; at: number }>;
  /** Idempotency-Key → every run id answered for it. */
  idempotency: Array<{ key: string; runIds: string[] }>;
  /**
   * Cron slots, each with every run that claims it: the run its `schedule_fires` row records and
   * the run its slot idempotency key names (a fire interrupted between the two has only the key).
   */
  scheduleSlots: Array<{ slot: string; runIds: string[] }>;
  /** step_attempts rows that succeeded. */
  attemptsSucceeded: Array<{ runId: string; stepId: string; phase: string; attempt: number }>;
  materializations: Array<{ runId: string; stepId: string; asset: string }>;
  /** Every event of the runs (for SSE comparison and cancel times). */
  events: EventRow[];
  effects: Effect[];
  sse: Array<{ runId: string; received: number[]; ended: boolean; endedAt: number | null }>;
  faults: FaultRecord[];
}

export interface Check {
  name: string;
  violations: number;
  examples: string[];
}

export interface Verdict {
  checks: Check[];
  recovery: Array<{
    kind: FaultKind;
    count: number;
    p50: number | null;
    p99: number | null;
    unrecovered: number;
  }>;
  violations: number;
}

const TERMINAL = new Set(["succeeded", "failed", "cancelled", "rolled_back"]);
/**
 * An effect may start this long after its run's cancellation was acknowledged: an attempt that
 * started before the cancel committed may get its request out before its abort arrives.
 */
export const CANCEL_GRACE_MS = 2000;
/** An event committed this long before a stream's `end` must have been delivered on it. */
export const SSE_COMMIT_SLACK_MS = 5000;

const percentile = (sorted: number[], p: number) =>
  sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]! : null;

function check(name: string, found: string[]): Check {
  return { name, violations: found.length, examples: found.slice(0, 5) };
}

const groupBy = <T>(items: T[], key: (t: T) => string) => {
  const map = new Map<string, T[]>();
  for (const item of items) {
    const k = key(item);
    const list = map.get(k);
    if (list) list.push(item);
    else map.set(k, [item]);
  }
  return map;
};

/** Pairs of intervals in `items` that overlap in time (`end` null: still open). */
function overlaps(items: Effect[], distinct: (a: Effect, b: Effect) => boolean): Array<[Effect, Effect]> {
  const sorted = [...items].sort((a, b) => a.start - b.start);
  const found: Array<[Effect, Effect]> = [];
  for (let i = 0; i < sorted.length; i++) {
    const a = sorted[i]!;
    const aEnd = a.end ?? Number.POSITIVE_INFINITY;
    for (let j = i + 1; j < sorted.length && sorted[j]!.start < aEnd; j++) {
      if (distinct(a, sorted[j]!)) found.push([a, sorted[j]!]);
    }
  }
  return found;
}

const show = (e: Effect) =>
  `#${e.id} ${e.workflow}/${e.step}${e.phase === "compensate" ? " (compensate)" : ""} tag ${e.tag}/${e.partition} ` +
  `[${e.start}, ${e.end ?? "open"}] ${e.outcome ?? "open"}`;

export function checkHistory(h: History): Verdict {
  const runsById = new Map(h.runs.map((r) => [r.id, r]));
  const checks: Check[] = [];

  checks.push(
    check(
      "runs that never ended",
      h.runs.filter((r) => !TERMINAL.has(r.status)).map((r) => `${r.id} ${r.workflow} ${r.status}`),
    ),
  );
  checks.push(
    check(
      "lost runs (accepted, not stored)",
      h.accepted.filter((id) => !runsById.has(id)),
    ),
  );
  const slotted = new Set(h.scheduleSlots.flatMap((s) => s.runIds));
  checks.push(
    check("duplicate runs per idempotency key or cron slot", [
      ...h.idempotency
        .filter((k) => new Set(k.runIds).size > 1)
        .map((k) => `key ${k.key}: ${k.runIds.join(", ")}`),
      ...h.scheduleSlots
        .filter((s) => new Set(s.runIds).size > 1)
        .map((s) => `slot ${s.slot}: runs ${[...new Set(s.runIds)].join(", ")}`),
      ...h.runs
        .filter((r) => r.trigger === "schedule" && !slotted.has(r.id))
        .map((r) => `schedule run ${r.id} of ${r.workflow} belongs to no slot`),
    ]),
  );

  const successEvents = h.events.filter((e) => e.type === "step.succeeded");
  checks.push(
    check("step success recorded more than once", [
      ...[...groupBy(h.attemptsSucceeded, (a) => `${a.runId}/${a.stepId}/${a.phase}`)]
        .filter(([, list]) => list.length > 1)
        .map(([k, list]) => `${k}: attempts ${list.map((a) => a.attempt).join(", ")} succeeded`),
      ...[...groupBy(successEvents, (e) => `${e.runId}/${e.stepId}/${e.phase}`)]
        .filter(([, list]) => list.length > 1)
        .map(([k, list]) => `${k}: step.succeeded events ${list.map((e) => e.id).join(", ")}`),
      ...[...groupBy(h.materializations, (m) => `${m.runId}/${m.stepId}/${m.asset}`)]
        .filter(([, list]) => list.length > 1)
        .map(([k, list]) => `${k}: ${list.length} materializations`),
    ]),
  );

  checks.push(
    check(
      "steps running concurrently with themselves",
      [...groupBy(h.effects, effectKey).values()].flatMap((list) =>
        overlaps(list, () => true).map(([a, b]) => `${show(a)} overlaps ${show(b)}`),
      ),
    ),
  );

  // Effects that started after their run was cancelled: a run is found by its tag and partition.
  const runsByTag = groupBy(
    h.runs.filter((r) => r.tag !== null),
    (r) => `${r.tag}/${r.partition ?? "-"}`,
  );
  // An event's time is its transaction's start; the API's answer comes after the commit.
  const cancelledAt = new Map<string, number>();
  for (const e of h.events)
    if (e.type === "run.cancelled" && !cancelledAt.has(e.runId)) cancelledAt.set(e.runId, e.createdAt);
  for (const a of h.cancelAcks) cancelledAt.set(a.runId, Math.max(a.at, cancelledAt.get(a.runId) ?? 0));
  // An attempt running when the run was cancelled (started before `run.cancelled`, none after)
  // may still get its request out late: a worker frozen between its start and its request sends
  // it when it wakes, before the abort reaches it. Only effects no such attempt explains count.
  const cancelEventId = new Map<string, number>();
  for (const e of h.events)
    if (e.type === "run.cancelled" && !cancelEventId.has(e.runId)) cancelEventId.set(e.runId, e.id);
  const starts = groupBy(
    h.events.filter((e) => e.type === "step.started"),
    (e) => `${e.runId}/${e.stepId}/${e.phase}`,
  );
  const runningAtCancel = (runId: string, e: Effect) => {
    const cancelId = cancelEventId.get(runId);
    const list = starts.get(`${runId}/${e.step}/${e.phase}`) ?? [];
    return cancelId !== undefined && list.some((s) => s.id < cancelId) && list.every((s) => s.id < cancelId);
  };
  checks.push(
    check(
      "effects after their run was cancelled",
      h.effects.flatMap((e) => {
        const runs = runsByTag.get(`${e.tag}/${e.partition}`) ?? [];
        if (runs.length !== 1) return [];
        const runId = runs[0]!.id;
        const at = cancelledAt.get(runId);
        return at !== undefined && e.start > at + CANCEL_GRACE_MS && !runningAtCancel(runId, e)
          ? [`${show(e)} started ${e.start - at} ms after run ${runId} was cancelled`]
          : [];
      }),
    ),
  );

  checks.push(
    check(
      "asset lock overlaps (two runs in one critical section)",
      [
        ...groupBy(
          h.effects.filter((e) => e.asset !== null),
          (e) => e.asset!,
        ),
      ].flatMap(([asset, list]) =>
        overlaps(list, (a, b) => a.tag !== b.tag || a.partition !== b.partition).map(
          ([a, b]) => `${asset}: ${show(a)} and ${show(b)}`,
        ),
      ),
    ),
  );

  const eventsByRun = groupBy(h.events, (e) => e.runId);
  const sseGaps: string[] = [];
  const sseDuplicates: string[] = [];
  const sseOrder: string[] = [];
  const sseUnended: string[] = [];
  const sseForeign: string[] = [];
  h.sse.forEach((client, index) => {
    const name = `client ${index + 1} (run ${client.runId})`;
    const seen = new Set<number>();
    let previous = 0;
    for (const id of client.received) {
      if (seen.has(id)) sseDuplicates.push(`${name}: event ${id} twice`);
      else if (id < previous) sseOrder.push(`${name}: event ${id} after ${previous}`);
      seen.add(id);
      previous = Math.max(previous, id);
    }
    if (!client.ended) sseUnended.push(`${name}: no end after ${client.received.length} events`);
    const events = eventsByRun.get(client.runId) ?? [];
    const own = new Set(events.map((e) => e.id));
    const foreign = client.received.filter((id) => !own.has(id));
    if (foreign.length > 0)
      sseForeign.push(`${name}: events ${foreign.slice(0, 5).join(", ")} are not this run's`);
    const missing = events.filter(
      (e) =>
        !seen.has(e.id) &&
        (e.id < previous || (client.endedAt !== null && e.createdAt < client.endedAt - SSE_COMMIT_SLACK_MS)),
    );
    if (missing.length > 0)
      sseGaps.push(
        `${name}: missed ${missing
          .map((e) => `${e.id} ${e.type}`)
          .slice(0, 5)
          .join(", ")}`,
      );
  });
  checks.push(check("SSE gaps (events never delivered)", sseGaps));
  checks.push(check("SSE events of another run", sseForeign));
  checks.push(check("SSE duplicates", sseDuplicates));
  checks.push(check("SSE reordering", sseOrder));
  checks.push(check("SSE streams that never ended", sseUnended));

  const recovery = [...groupBy(h.faults, (f) => f.kind)].map(([kind, list]) => {
    const times = list
      .map((f) => f.recoveryMs)
      .filter((t): t is number => t !== null)
      .sort((a, b) => a - b);
    return {
      kind: kind as FaultKind,
      count: list.length,
      p50: percentile(times, 50),
      p99: percentile(times, 99),
      unrecovered: list.length - times.length,
    };
  });
  checks.push(
    check(
      "faults not recovered within the bound",
      h.faults
        .filter((f) => f.recoveryMs === null)
        .map(
          (f) => `${f.kind} (${f.target}) at ${new Date(f.injectedAt).toISOString()}: ${f.affectedRuns} runs`,
        ),
    ),
  );

  return { checks, recovery, violations: checks.reduce((s, c) => s + c.violations, 0) };
}

/**
 * Plants one violation of each observable kind in a copy of `h`: a step attempt that overlaps
 * another at the target, and an event an SSE client never received. The checker must flag both.
 */
export function plantViolations(h: History): History {
  const copy: History = structuredClone(h);
  const victim = copy.effects.find((e) => e.outcome === "ok" && e.end !== null && e.asset !== null);
  if (victim) {
    copy.effects.push({ ...victim, id: copy.effects.length + 1, start: victim.start + 1 });
  }
  const client = copy.sse.find((c) => c.received.length >= 3);
  if (client) client.received.splice(1, 1);
  return copy;
}

const pad = (s: string, n: number) => (s.length >= n ? s : s + " ".repeat(n - s.length));
const padLeft = (s: string, n: number) => (s.length >= n ? s : " ".repeat(n - s.length) + s);

/** The verdict as plain-text tables (violations with their first examples, then recovery times). */
export function formatVerdict(v: Verdict): string {
  const lines: string[] = [];
  const width = Math.max(...v.checks.map((c) => c.name.length));
  lines.push(`${pad("check", width)}  violations`);
  lines.push(`${"-".repeat(width)}  ----------`);
  for (const c of v.checks) {
    lines.push(`${pad(c.name, width)}  ${padLeft(String(c.violations), 10)}${c.violations ? "  ✗" : ""}`);
    for (const e of c.examples) lines.push(`    ${e}`);
  }
  lines.push("");
  const kw = Math.max(10, ...v.recovery.map((r) => r.kind.length));
  lines.push(`${pad("fault", kw)}  count  recovery p50  recovery p99  unrecovered`);
  lines.push(`${"-".repeat(kw)}  -----  ------------  ------------  -----------`);
  const ms = (n: number | null) => (n === null ? "-" : `${(n / 1000).toFixed(1)} s`);
  for (const r of [...v.recovery].sort((a, b) => a.kind.localeCompare(b.kind))) {
    lines.push(
      `${pad(r.kind, kw)}  ${padLeft(String(r.count), 5)}  ${padLeft(ms(r.p50), 12)}  ${padLeft(ms(r.p99), 12)}  ${padLeft(String(r.unrecovered), 11)}`,
    );
  }
  lines.push("");
  lines.push(v.violations === 0 ? "no violations" : `${v.violations} violation(s)`);
  return lines.join("\n");
}
