import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  decideScale,
  type PoolBounds,
  processesNeeded,
  type QueueLoad,
  restartDelayMs,
  type ScalingDecision,
  type ScalingState,
} from "../../src/domain/scaling.ts";

const pool = (over: Partial<PoolBounds> = {}): PoolBounds => ({ min: 1, max: 4, concurrency: 8, ...over });
const load = (backlog: number, active = 0): QueueLoad => ({ backlog, active });
const COOLDOWN = 60_000;

/** Feeds measurements one tick apart (`every` ms), as the pool does; returns every decision. */
function run(
  bounds: PoolBounds,
  loads: readonly QueueLoad[],
  options: { every?: number; start?: number; processes?: number; cooldownMs?: number } = {},
): ScalingDecision[] {
  const every = options.every ?? 1000;
  let previous: ScalingState | undefined;
  const decisions: ScalingDecision[] = [];
  loads.forEach((l, i) => {
    const decision = decideScale({
      bounds,
      load: l,
      processes: previous?.target ?? options.processes ?? bounds.min,
      now: (options.start ?? 0) + i * every,
      cooldownMs: options.cooldownMs ?? COOLDOWN,
      previous,
    });
    previous = decision.state;
    decisions.push(decision);
  });
  return decisions;
}

const last = <T>(items: readonly T[]): T => items[items.length - 1]!;

describe("processesNeeded", () => {
  it("spreads waiting + running steps at targetBacklogPerProcess (default: concurrency)", () => {
    expect(processesNeeded(pool(), load(0))).toBe(0);
    expect(processesNeeded(pool(), load(1))).toBe(1);
    expect(processesNeeded(pool(), load(8))).toBe(1);
    expect(processesNeeded(pool(), load(9))).toBe(2);
    expect(processesNeeded(pool(), load(200))).toBe(25);
    expect(processesNeeded(pool(), load(8, 8))).toBe(2);
    expect(processesNeeded(pool({ targetBacklogPerProcess: 2 }), load(7))).toBe(4);
  });

  it("keeps a process for every `concurrency` running steps even when the target is larger", () => {
    // 24 running steps fill 3 processes of 8; spread at 20 per process they would "fit" in 2.
    expect(processesNeeded(pool({ targetBacklogPerProcess: 20 }), load(0, 24))).toBe(3);
    expect(processesNeeded(pool({ targetBacklogPerProcess: 20 }), load(30, 8))).toBe(2);
  });

  it("reads NaN and negative measurements as 0", () => {
    expect(processesNeeded(pool(), load(Number.NaN, Number.NaN))).toBe(0);
    expect(processesNeeded(pool(), load(-5, -3))).toBe(0);
    expect(processesNeeded(pool(), load(Number.NaN, 9))).toBe(2);
    expect(processesNeeded(pool(), load(16, -1))).toBe(2);
  });

  it("falls back to concurrency for a missing or non-positive target, and to 1 for a bad concurrency", () => {
    expect(processesNeeded(pool({ targetBacklogPerProcess: undefined }), load(16))).toBe(2);
    expect(processesNeeded(pool({ targetBacklogPerProcess: 0 }), load(16))).toBe(2);
    expect(processesNeeded(pool({ concurrency: 0 }), load(3))).toBe(3);
  });
});

describe("decideScale: up", () => {
  it("goes straight to max when 200 steps wait in a pool of concurrency 8", () => {
    const d = decideScale({
      bounds: pool({ min: 1, max: 6 }),
      load: load(200),
      processes: 1,
      now: 0,
      cooldownMs: COOLDOWN,
    });
    expect(d).toMatchObject({ target: 6, needed: 6, change: "up" });
    expect(d.reason).toMatch(
      /^scale up from 1: backlog 200 \+ active 0 needs 25 processes .*capped at max 6/,
    );
  });

  it("scales up at once, without any cool-down, whenever the load per process is above the target", () => {
    const decisions = run(pool({ max: 10 }), [load(0), load(9), load(0, 16), load(30, 10)]);
    expect(decisions.map((d) => d.target)).toEqual([1, 2, 2, 5]);
    expect(decisions.map((d) => d.change)).toEqual(["none", "up", "none", "up"]);
  });

  it("starts a process for a min 0 pool as soon as anything waits, and keeps it for running steps", () => {
    const bounds = pool({ min: 0, max: 3 });
    const decisions = run(bounds, [load(0), load(1), load(0, 1), load(0, 0)], { processes: 0 });
    expect(decisions.map((d) => d.target)).toEqual([0, 1, 1, 1]);
    expect(decideScale({ bounds, load: load(0.25), processes: 0, now: 0, cooldownMs: 0 }).target).toBe(1);
  });

  it("does not shrink a pool whose running steps fill its processes", () => {
    const bounds = pool({ max: 4, targetBacklogPerProcess: 20 });
    const decisions = run(bounds, [load(100), ...Array.from({ length: 200 }, () => load(0, 32))], {
      cooldownMs: 1000,
    });
    expect(decisions.map((d) => d.target).every((t) => t === 4)).toBe(true);
  });

  it("keeps min even when idle, and a first decision starts from the live processes within bounds", () => {
    expect(
      decideScale({ bounds: pool({ min: 2 }), load: load(0), processes: 0, now: 0, cooldownMs: 0 }),
    ).toMatchObject({ target: 2, needed: 2 });
    expect(
      decideScale({ bounds: pool({ min: 1, max: 3 }), load: load(0), processes: 7, now: 0, cooldownMs: 5 }),
    ).toMatchObject({ target: 3, change: "none" });
  });

  it("treats NaN and negative measurements as an idle queue", () => {
    const decisions = run(pool({ min: 1, max: 4 }), [load(40), load(Number.NaN, -1), load(-3, Number.NaN)], {
      every: COOLDOWN,
    });
    expect(decisions.map((d) => d.target)).toEqual([4, 4, 1]);
  });
});

describe("decideScale: down", () => {
  it("waits for the whole cool-down and then goes straight to the smaller size", () => {
    // Ticks 10 s apart, cool-down 60 s: the load drops at t = 10 s.
    const decisions = run(pool({ min: 1, max: 8 }), [load(64), ...Array.from({ length: 8 }, () => load(3))], {
      every: 10_000,
    });
    expect(decisions.map((d) => d.target)).toEqual([8, 8, 8, 8, 8, 8, 8, 1, 1]);
    expect(decisions[6]!.reason).toMatch(/^holding 8: fewer have sufficed for 50 s of the 60 s cool-down/);
    expect(decisions[7]).toMatchObject({ change: "down", target: 1 });
    expect(decisions[7]!.reason).toMatch(/^scale down from 8: 1 sufficed for 60 s/);
  });

  it("restarts the cool-down on a spike", () => {
    const loads = [load(32), load(0), load(0), load(0), load(40), load(0), load(0), load(0), load(0)];
    const decisions = run(pool({ min: 1, max: 4 }), loads, { every: 20_000 });
    // Without the spike at index 4 the pool would shrink at index 4 (60 s after index 1).
    expect(decisions.map((d) => d.target)).toEqual([4, 4, 4, 4, 4, 4, 4, 4, 1]);
  });

  it("a spike that still allows a smaller size only restarts the clock for the sizes it exceeded", () => {
    // 8 processes; the load drops to 1 process, briefly asks for 3, then 1 again.
    const loads = [
      load(64),
      load(1),
      load(1),
      load(20),
      load(1),
      load(1),
      load(1),
      load(1),
      load(1),
      load(1),
    ];
    const decisions = run(pool({ min: 1, max: 8 }), loads, { every: 20_000 });
    // At index 4 (60 s after index 1), 3 processes have sufficed throughout: shrink to 3.
    // At index 7 (60 s after the spike), 1 has sufficed for the whole cool-down: shrink to 1.
    expect(decisions.map((d) => d.target)).toEqual([8, 8, 8, 8, 3, 3, 3, 1, 1, 1]);
  });

  it("with no cool-down, shrinks as soon as the load allows", () => {
    const decisions = run(pool({ min: 0, max: 4 }), [load(32), load(9), load(0)], { cooldownMs: 0 });
    expect(decisions.map((d) => d.target)).toEqual([4, 2, 0]);
  });

  it("moves into changed bounds without waiting", () => {
    const first = decideScale({
      bounds: pool({ max: 8 }),
      load: load(64),
      processes: 1,
      now: 0,
      cooldownMs: 1e9,
    });
    const second = decideScale({
      bounds: pool({ max: 3 }),
      load: load(64),
      processes: 8,
      now: 1,
      cooldownMs: 1e9,
      previous: first.state,
    });
    expect([first.target, second.target]).toEqual([8, 3]);
  });
});

describe("restartDelayMs", () => {
  it("starts at 500 ms, doubles, and stops at the cap", () => {
    expect([1, 2, 3, 4, 5, 6, 7, 8].map((n) => restartDelayMs(n, 30_000))).toEqual([
      500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000,
    ]);
    expect(restartDelayMs(0, 30_000)).toBe(500);
    expect(restartDelayMs(1_000_000, 30_000)).toBe(30_000);
    expect(restartDelayMs(3, 1000)).toBe(1000);
  });
});

// ---------------------------------------------------------------------------------------------
// Properties

const measurement = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 0, max: 500 }) },
  { weight: 1, arbitrary: fc.constantFrom(Number.NaN, -1, -1000, 0.5, Number.POSITIVE_INFINITY) },
);
const loadArb = fc.record({ backlog: measurement, active: measurement });
const boundsArb = fc
  .record({
    min: fc.integer({ min: 0, max: 10 }),
    extra: fc.integer({ min: 0, max: 20 }),
    concurrency: fc.integer({ min: 1, max: 16 }),
    targetBacklogPerProcess: fc.option(fc.integer({ min: 1, max: 40 }), { nil: undefined }),
  })
  .map(
    ({ min, extra, concurrency, targetBacklogPerProcess }): PoolBounds => ({
      min,
      max: Math.max(1, min + extra),
      concurrency,
      targetBacklogPerProcess,
    }),
  );
/** Measurements with the time since the previous one (ms). */
const historyArb = fc.array(fc.tuple(loadArb, fc.integer({ min: 0, max: 30_000 })), { maxLength: 40 });
const cooldownArb = fc.integer({ min: 0, max: 120_000 });

function replay(
  bounds: PoolBounds,
  cooldownMs: number,
  history: ReadonlyArray<readonly [QueueLoad, number]>,
) {
  let now = 0;
  let previous: ScalingState | undefined;
  const steps: Array<{ now: number; load: QueueLoad; decision: ScalingDecision }> = [];
  for (const [l, gap] of history) {
    now += gap;
    const decision = decideScale({
      bounds,
      load: l,
      processes: previous?.target ?? 0,
      now,
      cooldownMs,
      previous,
    });
    steps.push({ now, load: l, decision });
    previous = decision.state;
  }
  return { now, previous, steps };
}

describe("decideScale: properties", () => {
  it("min ≤ target ≤ max, and the target is never below what the load needs", () => {
    fc.assert(
      fc.property(boundsArb, cooldownArb, historyArb, (bounds, cooldownMs, history) => {
        for (const { decision } of replay(bounds, cooldownMs, history).steps) {
          expect(decision.target).toBeGreaterThanOrEqual(bounds.min);
          expect(decision.target).toBeLessThanOrEqual(bounds.max);
          expect(decision.target).toBeGreaterThanOrEqual(decision.needed);
          expect(Number.isInteger(decision.target)).toBe(true);
        }
      }),
    );
  });

  it("never scales down before the load has allowed the new size for the whole cool-down", () => {
    fc.assert(
      fc.property(boundsArb, cooldownArb, historyArb, (bounds, cooldownMs, history) => {
        const { steps } = replay(bounds, cooldownMs, history);
        steps.forEach(({ now, decision }, i) => {
          const before = i === 0 ? undefined : steps[i - 1]!.decision.target;
          if (before === undefined || decision.target >= before) return;
          expect(decision.change).toBe("down");
          // Every measurement within the cool-down (and this one) needed no more than the new target.
          const window = steps.slice(0, i + 1).filter((s) => s.now >= now - cooldownMs);
          for (const s of window) expect(s.decision.needed).toBeLessThanOrEqual(decision.target);
          // …and the window reaches back a full cool-down: an earlier measurement exists at or
          // before its start.
          const streakStart = steps.slice(0, i + 1).findLastIndex((s) => s.decision.needed > decision.target);
          const firstSufficient = steps[streakStart + 1]!;
          expect(now - firstSufficient.now).toBeGreaterThanOrEqual(cooldownMs);
        });
      }),
    );
  });

  it("scales up at once to what the load needs", () => {
    fc.assert(
      fc.property(boundsArb, cooldownArb, historyArb, (bounds, cooldownMs, history) => {
        const { steps } = replay(bounds, cooldownMs, history);
        steps.forEach(({ decision }, i) => {
          const before = i === 0 ? undefined : steps[i - 1]!.decision.target;
          if (before !== undefined && decision.needed > before) expect(decision.target).toBe(decision.needed);
        });
      }),
    );
  });

  it("is monotonic in the backlog (and in running steps) for the same history", () => {
    fc.assert(
      fc.property(
        boundsArb,
        cooldownArb,
        historyArb,
        fc.integer({ min: 0, max: 60_000 }),
        loadArb,
        fc.integer({ min: 0, max: 500 }),
        fc.integer({ min: 0, max: 500 }),
        (bounds, cooldownMs, history, gap, l, moreBacklog, moreActive) => {
          const { now, previous } = replay(bounds, cooldownMs, history);
          const decide = (x: QueueLoad) =>
            decideScale({
              bounds,
              load: x,
              processes: previous?.target ?? 0,
              now: now + gap,
              cooldownMs,
              previous,
            }).target;
          const base = { backlog: Math.max(0, l.backlog) || 0, active: Math.max(0, l.active) || 0 };
          const low = decide(base);
          expect(decide({ ...base, backlog: base.backlog + moreBacklog })).toBeGreaterThanOrEqual(low);
          expect(decide({ ...base, active: base.active + moreActive })).toBeGreaterThanOrEqual(low);
        },
      ),
    );
  });

  it("holds steady under a constant load once the cool-down has passed", () => {
    fc.assert(
      fc.property(boundsArb, cooldownArb, loadArb, (bounds, cooldownMs, l) => {
        const ticks = Array.from({ length: 5 }, () => [l, cooldownMs + 1] as const);
        const { steps } = replay(bounds, cooldownMs, ticks);
        const needed = steps[0]!.decision.needed;
        expect(last(steps).decision.target).toBe(needed);
      }),
    );
  });
});
