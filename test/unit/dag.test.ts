import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  buildGraph,
  downstreamClosure,
  findCycle,
  type Graph,
  isUpstreamOf,
  topologicalOrder,
  upstreamClosure,
} from "../../src/domain/dag.ts";

/** A random DAG: nodes in a random order, edges only from earlier to later nodes. */
const dagArbitrary = (maxNodes: number, maxEdgesPerNode: number) =>
  fc.integer({ min: 1, max: maxNodes }).chain((n) =>
    fc
      .tuple(
        fc.shuffledSubarray(
          Array.from({ length: n }, (_, i) => `s${i}`),
          { minLength: n, maxLength: n },
        ),
        fc.array(fc.array(fc.nat(), { maxLength: maxEdgesPerNode }), { minLength: n, maxLength: n }),
      )
      .map(([order, picks]) => {
        const parents = new Map<string, string[]>();
        order.forEach((id, i) => {
          parents.set(id, i === 0 ? [] : picks[i]!.map((p) => order[p % i]!));
        });
        return { nodes: [...order].sort(), parents };
      }),
  );

const graphOf = (d: { nodes: string[]; parents: Map<string, string[]> }): Graph =>
  buildGraph(d.nodes, (id) => d.parents.get(id) ?? []);

function naiveClosure(start: string[], next: (id: string) => readonly string[]): Set<string> {
  const out = new Set(start);
  let frontier = [...start];
  while (frontier.length > 0) {
    const nextFrontier: string[] = [];
    for (const id of frontier)
      for (const n of next(id))
        if (!out.has(n)) {
          out.add(n);
          nextFrontier.push(n);
        }
    frontier = nextFrontier;
  }
  return out;
}

describe("DAG", () => {
  it("orders a diamond deterministically and finds its closures", () => {
    const g = buildGraph(
      ["a", "b", "c", "d"],
      (id) => ({ a: [], b: ["a"], c: ["a"], d: ["c", "b", "b"] })[id]!,
    );
    expect(topologicalOrder(g)).toEqual(["a", "b", "c", "d"]);
    expect(g.parents("d")).toEqual(["c", "b"]);
    expect([...upstreamClosure(g, ["c"])].sort()).toEqual(["a", "c"]);
    expect([...downstreamClosure(g, ["b"])].sort()).toEqual(["b", "d"]);
    expect(isUpstreamOf(g, "a", "d")).toBe(true);
    expect(isUpstreamOf(g, "b", "c")).toBe(false);
    expect(findCycle(g)).toBeNull();
  });

  it("names cycles, including self-loops", () => {
    const g = buildGraph(["a", "b", "c"], (id) => ({ a: ["c"], b: ["a"], c: ["b"] })[id]!);
    const cycle = findCycle(g)!;
    expect(cycle[0]).toBe(cycle.at(-1));
    expect(new Set(cycle)).toEqual(new Set(["a", "b", "c"]));
    expect(() => topologicalOrder(g)).toThrow(/cycle/);
    expect(findCycle(buildGraph(["x"], () => ["x"]))).toEqual(["x", "x"]);
  });

  it("handles a 5,000-step chain without recursion limits", () => {
    const ids = Array.from({ length: 5000 }, (_, i) => `s${i}`);
    const g = buildGraph(ids, (id) => (id === "s0" ? [] : [`s${Number(id.slice(1)) - 1}`]));
    expect(topologicalOrder(g)).toEqual(ids);
    expect(upstreamClosure(g, ["s4999"]).size).toBe(5000);
    expect(findCycle(g)).toBeNull();
    const cyclic = buildGraph(ids, (id) => (id === "s0" ? ["s4999"] : [`s${Number(id.slice(1)) - 1}`]));
    expect(findCycle(cyclic)).toHaveLength(5001);
  });

  it("property: a topological order contains every node once and respects every edge", () => {
    fc.assert(
      fc.property(dagArbitrary(5000, 4), (d) => {
        const g = graphOf(d);
        const order = topologicalOrder(g);
        expect(order.length).toBe(d.nodes.length);
        expect(new Set(order).size).toBe(order.length);
        const position = new Map(order.map((id, i) => [id, i]));
        for (const id of d.nodes)
          for (const p of g.parents(id)) expect(position.get(p)!).toBeLessThan(position.get(id)!);
        expect(findCycle(g)).toBeNull();
      }),
      { numRuns: 40 },
    );
  });

  it("property: an edge back along a path makes a cycle that findCycle reports truthfully", () => {
    fc.assert(
      fc.property(dagArbitrary(2000, 3), fc.nat(), (d, pick) => {
        const g = graphOf(d);
        // Pick a node with a parent, and close the loop: the parent now also needs the child.
        const withParent = d.nodes.filter((id) => g.parents(id).length > 0);
        fc.pre(withParent.length > 0);
        const child = withParent[pick % withParent.length]!;
        const ancestor = [...upstreamClosure(g, [child])].find((a) => a !== child)!;
        const parents = new Map(d.parents);
        parents.set(ancestor, [...(parents.get(ancestor) ?? []), child]);
        const cyclic = buildGraph(d.nodes, (id) => parents.get(id) ?? []);
        const cycle = findCycle(cyclic);
        expect(cycle).not.toBeNull();
        expect(cycle![0]).toBe(cycle!.at(-1));
        for (let i = 0; i + 1 < cycle!.length; i++)
          expect(cyclic.children(cycle![i]!)).toContain(cycle![i + 1]);
      }),
      { numRuns: 40 },
    );
  });

  it("property: closures equal a naive breadth-first reference", () => {
    fc.assert(
      fc.property(dagArbitrary(1500, 3), fc.array(fc.nat(), { minLength: 1, maxLength: 5 }), (d, picks) => {
        const g = graphOf(d);
        const start = [...new Set(picks.map((p) => d.nodes[p % d.nodes.length]!))];
        expect(upstreamClosure(g, start)).toEqual(naiveClosure(start, (id) => g.parents(id)));
        expect(downstreamClosure(g, start)).toEqual(naiveClosure(start, (id) => g.children(id)));
      }),
      { numRuns: 60 },
    );
  });
});
