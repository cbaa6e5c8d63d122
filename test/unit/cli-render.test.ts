/** The pure renderers of the client commands: DAG drawings, tables and plain event lines. */
import { describe, expect, it } from "vitest";
import { renderGraph } from "../../src/cli/client/graph.ts";
import { table } from "../../src/cli/client/output.ts";
import { percent, plainLine } from "../../src/cli/client/watch.ts";

const diamond = [
  { id: "a" },
  { id: "b", needs: ["a"] },
  { id: "c", needs: ["a"], status: "failed" },
  { id: "d", needs: ["b", "c"] },
];

describe("renderGraph", () => {
  it("draws text by depth, naming what each step waits for", () => {
    expect(renderGraph(diamond, "text")).toBe("a\n  b  ← a\n  c (failed)  ← a\n    d  ← b, c");
  });

  it("draws Mermaid with one edge per need, and lone steps as nodes", () => {
    expect(renderGraph([...diamond, { id: "lone" }], "mermaid").split("\n")).toEqual([
      "flowchart LR",
      '  s0["a"] --> s1["b"]',
      '  s0["a"] --> s2["c (failed)"]',
      '  s1["b"] --> s3["d"]',
      '  s2["c (failed)"] --> s3["d"]',
      '  s4["lone"]',
    ]);
  });

  it("draws DOT with quoted ids", () => {
    const dot = renderGraph([{ id: 'x"y' }, { id: "z", needs: ['x"y'] }], "dot");
    expect(dot).toContain('"x\\"y" -> "z";');
    expect(dot.startsWith("digraph workflow {")).toBe(true);
  });
});

describe("table and event lines", () => {
  it("pads columns and shows missing cells as -", () => {
    expect(
      table(
        ["A", "LONGER"],
        [
          ["xx", null],
          ["y", 3],
        ],
      ),
    ).toBe("A   LONGER\nxx  -\ny   3");
  });

  it("prints progress as a percentage and errors by message", () => {
    expect(percent(0.505)).toBe("51%");
    const base = { id: 7, runId: "r", stepId: "s", attempt: 1, at: "2026-01-01T10:00:00.125Z" };
    expect(plainLine({ ...base, type: "step.progress", progress: 0.5, message: "half" })).toBe(
      "10:00:00.125 step.progress s 50% half",
    );
    expect(plainLine({ ...base, type: "step.failed", error: { message: "boom" } })).toBe(
      "10:00:00.125 step.failed s: boom",
    );
    expect(plainLine({ ...base, type: "step.succeeded", phase: "compensate" })).toBe(
      "10:00:00.125 step.succeeded s (compensate)",
    );
  });
});
