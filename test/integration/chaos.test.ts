/**
 * The short, fixed-seed chaos run (docs/reliability.md): the whole system as real processes on
 * private stores, a mixed workload, faults of every kind on a schedule. It fails on any violation
 * of SPEC §8 in the history, and it shows that the checker would catch a planted one.
 */
import { describe, expect, it } from "vitest";
import { checkHistory, formatVerdict, plantViolations } from "../../chaos/checker.ts";
import { runChaos } from "../../chaos/run.ts";

const SEED = 7;
const DURATION_SECONDS = 90;

describe("chaos", () => {
  it("keeps every promise of SPEC §8 under faults, and catches a planted violation", async () => {
    const lines: string[] = [];
    const result = await runChaos({
      seed: SEED,
      durationSeconds: DURATION_SECONDS,
      plant: false,
      log: (line) => lines.push(line),
    });
    const table = formatVerdict(result.verdict);
    // Not vacuous: a real workload ran and faults were injected.
    expect(result.summary.runs, lines.join("\n")).toBeGreaterThan(40);
    expect(Object.values(result.summary.faultsByKind).reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(5);
    expect(result.summary.sseClients).toBeGreaterThan(10);
    expect(result.verdict.violations, `${lines.join("\n")}\n${table}\n${result.dir}`).toBe(0);

    // The same history with an overlapping duplicate attempt and a dropped SSE event fails.
    const planted = checkHistory(plantViolations(result.history));
    const failed = Object.fromEntries(
      planted.checks.filter((c) => c.violations > 0).map((c) => [c.name, c.violations]),
    );
    expect(failed).toEqual({
      "steps running concurrently with themselves": 1,
      "SSE gaps (events never delivered)": 1,
    });
  }, 240_000);
});
