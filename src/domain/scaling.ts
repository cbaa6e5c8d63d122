/**
 * The autoscaler's decision for one queue: how many worker processes its pool should have. Pure —
 * the caller passes the measurement and the clock reading, and keeps the returned state for the
 * next call — so every rule is unit-tested without processes, Redis or timers.
 *
 * Size needed for a load (backlog = waiting steps + retries whose delay has passed, active =
 * steps running now; t = targetBacklogPerProcess, c = concurrency):
 *
 *     needed = max(⌈(backlog + active) / t⌉, ⌈active / c⌉), then clamped to [min, max]
 *
 * The first term is the work in the queue spread at t per process, so 200 waiting steps at t = 8
 * ask for 25 processes (the pool goes straight to max, not one step per tick). The second keeps a
 * process for every c running steps, so a pool whose running steps fill its processes is never
 * shrunk under them, even when t > c. Any backlog at all asks for at least one process, which is
 * what starts a `min: 0` pool.
 *
 * Up is immediate. Down waits: a smaller size is taken only once the load has allowed it at every
 * measurement for the whole cool-down (one larger measurement restarts the clock for the sizes it
 * exceeded), and then the pool goes straight to the smallest size that has sufficed that long.
 */

export interface PoolBounds {
  /** Processes kept even when idle (0 lets an idle pool stop every process). */
  min: number;
  /** Never more live processes than this. Expected ≥ min; a smaller value is read as min. */
  max: number;
  /** Steps one process runs at once. */
  concurrency: number;
  /** Waiting + running steps one process is meant to carry; defaults to `concurrency`. */
  targetBacklogPerProcess?: number | undefined;
}

/** One queue's decision as published for status pages (`GET /v1/queues`) and metrics. */
export interface QueueTarget {
  target: number;
  /** Live (not draining) processes when the decision was made. */
  processes: number;
  backlog: number;
  active: number;
  reason: string;
  /** ISO-8601 time of the decision. */
  updatedAt: string;
}

export interface QueueLoad {
  /** Steps waiting to start, including retries whose delay has passed. */
  backlog: number;
  /** Steps running now. */
  active: number;
}

/** Since `since` (ms), at every measurement, a pool of `size` processes would have sufficed. */
export interface SufficientSince {
  readonly size: number;
  readonly since: number;
}

/** What one decision hands to the next; keep it as returned, do not build it by hand. */
export interface ScalingState {
  /** The target this decision returned: the size the next decision starts from. */
  readonly target: number;
  /**
   * A step function over sizes below `target`, ascending by size with strictly decreasing
   * `since`: an entry covers its own size up to the next entry's size − 1 (the last one covers
   * the rest). The first entry's size is the size needed at the latest measurement; smaller sizes
   * did not suffice then, so they have no entry.
   */
  readonly sufficient: readonly SufficientSince[];
}

export interface ScalingInput {
  bounds: PoolBounds;
  load: QueueLoad;
  /** Live (not draining) processes now: the starting size when there is no previous state. */
  processes: number;
  /** Milliseconds on any monotonic-enough clock; only differences are used. */
  now: number;
  cooldownMs: number;
  /** The state the previous decision for this queue returned; undefined on the first tick. */
  previous?: ScalingState | undefined;
}

export type ScalingChange = "up" | "down" | "none";

export interface ScalingDecision {
  /** Processes the pool should have. Always within [min, max]. */
  target: number;
  /** The size the load asks for right now, clamped to [min, max]. */
  needed: number;
  change: ScalingChange;
  /** One line for logs and status pages. */
  reason: string;
  state: ScalingState;
}

/** A measurement that is not a number or is negative counts as nothing measured. */
function measured(value: number): number {
  return Number.isNaN(value) || value < 0 ? 0 : value;
}

function normalizeBounds(bounds: PoolBounds): {
  min: number;
  max: number;
  concurrency: number;
  perProcess: number;
} {
  const min = Math.max(0, Math.floor(measured(bounds.min)));
  const max = Math.max(min, Math.floor(measured(bounds.max)));
  const concurrency = Math.max(1, measured(bounds.concurrency));
  const target = bounds.targetBacklogPerProcess;
  const perProcess = target !== undefined && target > 0 ? target : concurrency;
  return { min, max, concurrency, perProcess };
}

/** Processes the load asks for, before the pool's bounds apply (may be 0 or above max). */
export function processesNeeded(bounds: PoolBounds, load: QueueLoad): number {
  const { concurrency, perProcess } = normalizeBounds(bounds);
  const backlog = measured(load.backlog);
  const active = measured(load.active);
  return Math.max(Math.ceil((backlog + active) / perProcess), Math.ceil(active / concurrency));
}

const clamp = (value: number, min: number, max: number) => Math.min(max, Math.max(min, value));

/**
 * Extends the previous streaks with a measurement that needs `needed` processes: sizes below it
 * did not suffice, so their streaks end; sizes from it up keep theirs, or start one now.
 */
function extendStreaks(previous: readonly SufficientSince[], needed: number, now: number): SufficientSince[] {
  let coveringSince = now;
  const above: SufficientSince[] = [];
  for (const entry of previous) {
    if (entry.size <= needed) coveringSince = entry.since;
    else above.push(entry);
  }
  return [{ size: needed, since: coveringSince }, ...above];
}

const seconds = (ms: number) => `${Math.round(ms / 100) / 10} s`;

function describeLoad(backlog: number, active: number, raw: number, perProcess: number): string {
  const count = raw === 1 ? "1 process" : `${raw} processes`;
  return `backlog ${backlog} + active ${active} needs ${count} at ${perProcess} per process`;
}

export function decideScale(input: ScalingInput): ScalingDecision {
  const { min, max, perProcess } = normalizeBounds(input.bounds);
  const backlog = measured(input.load.backlog);
  const active = measured(input.load.active);
  const raw = processesNeeded(input.bounds, { backlog, active });
  const needed = clamp(raw, min, max);
  const { now } = input;
  const cooldownMs = measured(input.cooldownMs);
  // Bounds may have changed since the previous decision; moving into them does not wait.
  const current = clamp(input.previous?.target ?? Math.floor(measured(input.processes)), min, max);
  const streaks = extendStreaks(input.previous?.sufficient ?? [], needed, now);
  let load = describeLoad(backlog, active, raw, perProcess);
  if (raw > max) load += `; capped at max ${max}`;
  else if (raw < min) load += `; kept at min ${min}`;

  let target = current;
  let change: ScalingChange = "none";
  let reason: string;
  if (needed > current) {
    target = needed;
    change = "up";
    reason = `scale up from ${current}: ${load}`;
  } else if (needed === current) {
    reason = `steady at ${current}: ${load}`;
  } else {
    // Streaks start no later for larger sizes, so the first size whose streak is long enough is
    // the smallest one that has sufficed for the whole cool-down.
    const candidates = streaks.filter((entry) => entry.size < current);
    const ready = candidates.find((entry) => now - entry.since >= cooldownMs);
    if (ready) {
      target = ready.size;
      change = "down";
      reason = `scale down from ${current}: ${target} sufficed for ${seconds(now - ready.since)} (cool-down ${seconds(cooldownMs)}); ${load}`;
    } else {
      const longest = candidates[candidates.length - 1]!;
      reason = `holding ${current}: fewer have sufficed for ${seconds(Math.max(0, now - longest.since))} of the ${seconds(cooldownMs)} cool-down; ${load}`;
    }
  }
  return {
    target,
    needed,
    change,
    reason,
    state: { target, sufficient: streaks.filter((entry) => entry.size < target) },
  };
}

/** Delay before replacing a process that exited unexpectedly. */
export const FIRST_RESTART_DELAY_MS = 500;

/**
 * Restart backoff: 500 ms after the first crash of a streak, doubling with each further crash,
 * never more than `maxDelayMs`. `crashes` counts the streak including this crash (≥ 1).
 */
export function restartDelayMs(crashes: number, maxDelayMs: number): number {
  const streak = Math.max(1, Math.floor(measured(crashes)));
  return Math.min(measured(maxDelayMs), FIRST_RESTART_DELAY_MS * 2 ** Math.min(streak - 1, 40));
}

/**
 * The metrics port of the pool process in `slot`: `workerPort + slot`, or 0 (any free port, which
 * the worker logs and announces) when 0 was configured or the sum passes the last port.
 */
export function metricsPortOf(workerPort: number, slot: number): number {
  return workerPort === 0 || workerPort + slot > 65535 ? 0 : workerPort + slot;
}
