import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { FlowlineError, formatPath } from "../../src/domain/errors.ts";
import { expandPartitions, type PartitionsInput, partitionsSchema } from "../../src/domain/partitions.ts";

const expand = (input: PartitionsInput, max = 1000) => expandPartitions(input, { max });

/** The error `run` throws, checked to be a validation failure under `partitions`. */
function refusal(run: () => unknown): { message: string; paths: string[]; messages: string[] } {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(FlowlineError);
    const e = error as FlowlineError;
    expect(e.code).toBe("validation_failed");
    expect(e.issues.length).toBeGreaterThan(0);
    for (const issue of e.issues) {
      expect(issue.location).toBe("body");
      expect(issue.path[0]).toBe("partitions");
    }
    return {
      message: e.message,
      paths: e.issues.map((i) => formatPath(i.path)),
      messages: e.issues.map((i) => i.message),
    };
  }
  throw new Error("expected a refusal");
}

describe("partition lists", () => {
  it("answers the keys as given, in order", () => {
    expect(expand(["eu", "us", "2026-01-01", "a.b:c_d-e"])).toEqual(["eu", "us", "2026-01-01", "a.b:c_d-e"]);
    expect(expand(["x"], 1)).toEqual(["x"]);
  });

  it("refuses an empty list", () => {
    expect(refusal(() => expand([])).paths).toEqual(["partitions"]);
  });

  it("refuses malformed keys, naming each", () => {
    const bad = refusal(() => expand(["ok", "", "-lead", "sp ace", "é", "x".repeat(129), "y".repeat(128)]));
    expect(bad.paths).toEqual([
      "partitions[1]",
      "partitions[2]",
      "partitions[3]",
      "partitions[4]",
      "partitions[5]",
    ]);
    expect(bad.message).toMatch(/and 4 more/);
  });

  it("refuses duplicates, pointing at the repeat and the original", () => {
    const dup = refusal(() => expand(["a", "b", "a", "b", "a"]));
    expect(dup.paths).toEqual(["partitions[2]", "partitions[3]", "partitions[4]"]);
    expect(dup.messages[0]).toMatch(/partitions\[0\]/);
    expect(dup.messages[1]).toMatch(/partitions\[1\]/);
  });

  it("refuses more than max keys", () => {
    const many = refusal(() => expand(["a", "b", "c"], 2));
    expect(many.paths).toEqual(["partitions"]);
    expect(many.message).toMatch(/3 partitions.*at most 2/);
  });
});

describe("partition ranges", () => {
  it("expands days inclusively, day being the default step", () => {
    const days = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"];
    expect(expand({ from: "2026-01-01", to: "2026-01-05" })).toEqual(days);
    expect(expand({ from: "2026-01-01", to: "2026-01-05", step: "day" })).toEqual(days);
    expect(expand({ from: "2026-01-01", to: "2026-01-01" })).toEqual(["2026-01-01"]);
  });

  it("crosses month and year ends", () => {
    expect(expand({ from: "2025-12-30", to: "2026-01-02" })).toEqual([
      "2025-12-30",
      "2025-12-31",
      "2026-01-01",
      "2026-01-02",
    ]);
    expect(expand({ from: "2026-04-29", to: "2026-05-01" })).toEqual([
      "2026-04-29",
      "2026-04-30",
      "2026-05-01",
    ]);
  });

  it("knows leap years", () => {
    expect(expand({ from: "2024-02-28", to: "2024-03-01" })).toEqual([
      "2024-02-28",
      "2024-02-29",
      "2024-03-01",
    ]);
    expect(expand({ from: "2026-02-28", to: "2026-03-01" })).toEqual(["2026-02-28", "2026-03-01"]);
    expect(expand({ from: "2000-02-28", to: "2000-03-01" })).toHaveLength(3); // divisible by 400
    expect(expand({ from: "1900-02-28", to: "1900-03-01" })).toHaveLength(2); // by 100 only
    expect(refusal(() => expand({ from: "2026-02-29", to: "2026-03-01" })).paths).toEqual([
      "partitions.from",
    ]);
    expect(refusal(() => expand({ from: "2023-01-01", to: "2100-02-29" })).paths).toEqual(["partitions.to"]);
  });

  it("expands hours, a date standing for its whole day", () => {
    expect(expand({ from: "2026-01-01T22", to: "2026-01-02T01", step: "hour" })).toEqual([
      "2026-01-01T22",
      "2026-01-01T23",
      "2026-01-02T00",
      "2026-01-02T01",
    ]);
    const day = expand({ from: "2026-03-29", to: "2026-03-29", step: "hour" });
    expect(day).toHaveLength(24); // UTC: no daylight-saving gap
    expect(day[0]).toBe("2026-03-29T00");
    expect(day[23]).toBe("2026-03-29T23");
    expect(expand({ from: "2024-02-29T23", to: "2024-03-01", step: "hour" })).toHaveLength(25);
    expect(refusal(() => expand({ from: "2026-01-01T24", to: "2026-01-02", step: "hour" })).paths).toEqual([
      "partitions.from",
    ]);
  });

  it("expands weeks as their Mondays", () => {
    // 2026-01-01 is a Thursday: its week starts on Monday 2025-12-29.
    expect(expand({ from: "2026-01-01", to: "2026-01-19", step: "week" })).toEqual([
      "2025-12-29",
      "2026-01-05",
      "2026-01-12",
      "2026-01-19",
    ]);
    // A Sunday belongs to the week that began the Monday before.
    expect(expand({ from: "2026-01-04", to: "2026-01-04", step: "week" })).toEqual(["2025-12-29"]);
    expect(expand({ from: "2024-02-26", to: "2024-03-04", step: "week" })).toEqual([
      "2024-02-26",
      "2024-03-04",
    ]);
  });

  it("expands months, from either a month or a date", () => {
    expect(expand({ from: "2025-11", to: "2026-02", step: "month" })).toEqual([
      "2025-11",
      "2025-12",
      "2026-01",
      "2026-02",
    ]);
    expect(expand({ from: "2026-01-31", to: "2026-03-01", step: "month" })).toEqual([
      "2026-01",
      "2026-02",
      "2026-03",
    ]);
    expect(expand({ from: "2024-02-29", to: "2024-02", step: "month" })).toEqual(["2024-02"]);
  });

  it("refuses a reversed range", () => {
    const reversed = refusal(() => expand({ from: "2026-01-05", to: "2026-01-01" }));
    expect(reversed.paths).toEqual(["partitions.to"]);
    expect(reversed.message).toMatch(/reversed/);
    expect(refusal(() => expand({ from: "2026-01-01T05", to: "2026-01-01T04", step: "hour" })).paths).toEqual(
      ["partitions.to"],
    );
    expect(refusal(() => expand({ from: "2026-03", to: "2026-02", step: "month" })).paths).toEqual([
      "partitions.to",
    ]);
    // The ends are compared as written, even when both fall in one partition.
    expect(refusal(() => expand({ from: "2026-01-08", to: "2026-01-06", step: "week" })).paths).toEqual([
      "partitions.to",
    ]);
    expect(expand({ from: "2026-01-06", to: "2026-01-08", step: "week" })).toEqual(["2026-01-05"]);
  });

  it("refuses ranges over max without building them", () => {
    expect(expand({ from: "2026-01-01", to: "2026-01-10" }, 10)).toHaveLength(10);
    expect(refusal(() => expand({ from: "2026-01-01", to: "2026-01-11" }, 10)).message).toMatch(
      /11 partitions.*at most 10/,
    );
    const started = performance.now();
    const huge = refusal(() => expand({ from: "0001-01-01", to: "9999-12-31", step: "hour" }, 1000));
    expect(performance.now() - started).toBeLessThan(50);
    expect(huge.paths).toEqual(["partitions"]);
    expect(refusal(() => expand({ from: "2026-01", to: "2027-01", step: "month" }, 12)).message).toMatch(
      /13 partitions/,
    );
  });

  it("refuses ends that are not dates of the step's format", () => {
    const cases: Array<[PartitionsInput, string[]]> = [
      [{ from: "2026-1-01", to: "2026-01-02" }, ["partitions.from"]],
      [{ from: "2026-01-01", to: "tomorrow" }, ["partitions.to"]],
      [{ from: "2026-13-01", to: "2026-14-01" }, ["partitions.from", "partitions.to"]],
      [{ from: "2026-04-31", to: "2026-05-01" }, ["partitions.from"]],
      [{ from: "2026-00-10", to: "2026-01-01" }, ["partitions.from"]],
      [{ from: "2026-01-01T00", to: "2026-01-02" }, ["partitions.from"]], // hour format, day step
      [{ from: "2026-01", to: "2026-02", step: "day" }, ["partitions.from", "partitions.to"]],
      [{ from: "2026-01", to: "2026-02", step: "week" }, ["partitions.from", "partitions.to"]],
      [{ from: "2026-01-01T00:00", to: "2026-01-02", step: "hour" }, ["partitions.from"]],
      [{ from: "2026-01-01T00Z", to: "2026-01-02", step: "hour" }, ["partitions.from"]],
      [{ from: "2026-01-01 ", to: "2026-01-02" }, ["partitions.from"]],
      [{ from: "+2026-01-01", to: "2026-01-02" }, ["partitions.from"]],
      [{ from: "0000-01-01", to: "2026-01-02" }, ["partitions.from"]],
      [{ from: "", to: "" }, ["partitions.from", "partitions.to"]],
    ];
    for (const [input, paths] of cases) {
      expect(refusal(() => expand(input)).paths, JSON.stringify(input)).toEqual(paths);
    }
  });

  it("makes as many consecutive, distinct, ascending keys as the arithmetic count says", () => {
    const step = fc.constantFrom("hour", "day", "week", "month" as const);
    const date = fc.date({
      min: new Date("1990-01-01T00:00:00Z"),
      max: new Date("2060-12-31T23:59:59Z"),
      noInvalidDate: true,
    });
    fc.assert(
      fc.property(step, date, fc.integer({ min: 0, max: 400 }), (s, start, span) => {
        const from = start.toISOString().slice(0, 10);
        const to = new Date(start.getTime() + span * 86_400_000).toISOString().slice(0, 10);
        const keys = expand({ from, to, step: s }, 20_000);
        expect(new Set(keys).size).toBe(keys.length);
        expect([...keys].sort()).toEqual(keys);
        expect(keys.length).toBeGreaterThan(0);
        if (s === "day") expect(keys.length).toBe(span + 1);
        if (s === "hour") expect(keys.length).toBe((span + 1) * 24);
        if (s === "day" || s === "hour") expect(keys[0]!.slice(0, 10)).toBe(from);
        if (s === "week") for (const k of keys) expect(new Date(`${k}T00:00:00Z`).getUTCDay()).toBe(1);
      }),
      { numRuns: 200 },
    );
  });
});

describe("partitionsSchema", () => {
  it("accepts a list or a range and refuses other shapes", () => {
    expect(partitionsSchema.safeParse(["a"]).success).toBe(true);
    expect(partitionsSchema.safeParse({ from: "2026-01-01", to: "2026-01-02" }).success).toBe(true);
    expect(partitionsSchema.safeParse({ from: "2026-01-01", to: "2026-01-02", step: "hour" }).success).toBe(
      true,
    );
    for (const bad of [
      "a",
      5,
      null,
      { from: "2026-01-01" },
      { from: "a", to: "b", step: "year" },
      { from: "a", to: "b", x: 1 },
    ]) {
      expect(partitionsSchema.safeParse(bad).success, JSON.stringify(bad)).toBe(false);
    }
  });

  it("is a named OpenAPI component", () => {
    expect(partitionsSchema.meta()?.id).toBe("Partitions");
  });
});
