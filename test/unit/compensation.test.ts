/** The pure rules of a rollback: which compensations may start, and how the rollback ends. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { buildGraph, isUpstreamOf } from "../../src/domain/dag.ts";
import {
  type CompensationStatus,
  compensationsReady,
  progressAfter,
  rollbackOutcome,
} from "../../src/domain/progress.ts";

// a → b → c, a → d, (c, d) → e; x independent
const graph = buildGraph(
  ["a", "b", "c", "d", "e", "x"],
  (id) => ({ a: [], b: ["a"], c: ["b"], d: ["a"], e: ["c", "d"], x: [] })[id]!,
);
const of =
  (s: Record<string, CompensationStatus>) =>
  (id: string): CompensationStatus | null =>
    s[id] ?? null;

describe("rollback", () => {
  it("a failure with onFailure: rollback cancels the rest and rolls the run back", () => {
    const p = progressAfter(graph, { stepId: "c", status: "failed", onFailure: "rollback" }, (id) =>
      id === "c" ? "failed" : id === "d" ? "running" : id === "e" ? "pending" : "succeeded",
    );
    expect(p.runOutcome).toBe("rolling_back");
    expect(p.transitions).toEqual([
      { stepId: "d", to: "cancelled" },
      { stepId: "e", to: "cancelled" },
    ]);
  });

  it("starts a compensation once every compensating descendant has compensated", () => {
    const all = { a: "pending", b: "pending", d: "pending", x: "pending" } as const;
    // The leaves of the compensating set first, independent ones together, in reverse order.
    expect(compensationsReady(graph, of(all))).toEqual(["x", "d", "b"]);
    expect(compensationsReady(graph, of({ ...all, b: "running", d: "succeeded", x: "queued" }))).toEqual([]);
    expect(compensationsReady(graph, of({ ...all, b: "succeeded", d: "succeeded", x: "running" }))).toEqual([
      "a",
    ]);
  });

  it("waits through steps that have nothing to compensate", () => {
    // c has no compensation, e has one: a must wait for e although its children do not compensate.
    const s = { a: "pending", e: "running" } as const;
    expect(compensationsReady(graph, of(s))).toEqual([]);
    expect(compensationsReady(graph, of({ ...s, e: "succeeded" }))).toEqual(["a"]);
    // A failed or cancelled descendant blocks for good.
    expect(compensationsReady(graph, of({ ...s, e: "failed" }))).toEqual([]);
  });

  it("never readies a compensation before one of its descendants (property)", () => {
    const ids = graph.nodes;
    const status = fc.constantFrom<CompensationStatus | null>(
      null,
      "pending",
      "queued",
      "running",
      "succeeded",
    );
    fc.assert(
      fc.property(fc.array(status, { minLength: ids.length, maxLength: ids.length }), (picked) => {
        const s = new Map(ids.map((id, i) => [id, picked[i]!]));
        for (const ready of compensationsReady(graph, (id) => s.get(id) ?? null)) {
          expect(s.get(ready)).toBe("pending");
          for (const other of ids) {
            const c = s.get(other);
            if (c !== null && c !== undefined && isUpstreamOf(graph, ready, other))
              expect(c).toBe("succeeded");
          }
        }
      }),
    );
  });

  it("ends rolled_back when every compensation succeeded, failed when one failed", () => {
    expect(rollbackOutcome([])).toBe("rolled_back");
    expect(rollbackOutcome(["succeeded", "succeeded"])).toBe("rolled_back");
    expect(rollbackOutcome(["succeeded", "running"])).toBeUndefined();
    expect(rollbackOutcome(["pending", "failed"])).toBe("failed");
  });
});
