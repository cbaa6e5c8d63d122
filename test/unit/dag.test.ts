import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  buildGraph,
  buildUpstreamIndex,
  downstreamClosure,
  findCycle,
  type Graph,
  isUpstreamOf,
  topologicalOrder,
  upstreamClosure,
} from "../../src/domain/dag.ts";

interface RandomDag {
  nodes: string[];
  parents: Map<string, string[]>;
}

/** A random DAG: nodes in a random order, edges only from earlier to later nodes of that order. */
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
      .map(([order, picks]): RandomDag => {
        const parents = new Map<string, string[]>();
        order.forEach((id, i) => {
          parents.set(id, i === 0 ? [] : picks[i]!.map((p) => order[p % i]!));
        });
        // Declaration order differs from the hidden order, so sorting cannot pass by accident.
        return { nodes: [...order].sort(), parents };
      }),
  );

const graphOf = (d: RandomDag): Graph => buildGraph(d.nodes, (id) => d.parents.get(id) ?? []);

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

const sorted = (s: Iterable<string>) => [...s].sort();

const chainIds = Array.from({ length: 5000 }, (_, i) => `s${i}`);
const previousInChain = (id: string) => (id === "s0" ? [] : [`s${Number(id.slice(1)) - 1}`]);

describe("buildGraph", () => {
  it("dedupes repeated parents and ignores parents that are not nodes", () => {
    const g = buildGraph(
      ["a", "b", "c"],
      (id) => ({ a: [], b: ["a", "a", "ghost"], c: ["b", "a", "b"] })[id]!,
    );
    expect(g.parents("b")).toEqual(["a"]);
    expect(g.parents("c")).toEqual(["b", "a"]);
    expect(g.children("a")).toEqual(["b", "c"]);
    expect(g.has("ghost")).toBe(false);
    expect(g.nodes).toEqual(["a", "b", "c"]);
  });

  it("throws on ids that are not nodes", () => {
    const g = buildGraph(["a"], () => []);
    expect(() => g.parents("zz")).toThrow(/unknown node "zz"/);
    expect(() => upstreamClosure(g, ["zz"])).toThrow(/unknown node/);
  });
});

describe("DAG algorithms", () => {
  it("orders a diamond deterministically and finds its closures", () => {
    const g = buildGraph(
      ["a", "b", "c", "d"],
      (id) => ({ a: [], b: ["a"], c: ["a"], d: ["c", "b", "b"] })[id]!,
    );
    expect(topologicalOrder(g)).toEqual(["a", "b", "c", "d"]);
    expect(g.parents("d")).toEqual(["c", "b"]);
    expect(sorted(upstreamClosure(g, ["c"]))).toEqual(["a", "c"]);
    expect(sorted(downstreamClosure(g, ["b"]))).toEqual(["b", "d"]);
    expect(isUpstreamOf(g, "a", "d")).toBe(true);
    expect(isUpstreamOf(g, "b", "c")).toBe(false);
    expect(isUpstreamOf(g, "d", "a")).toBe(false);
    expect(isUpstreamOf(g, "a", "a")).toBe(false);
    expect(findCycle(g)).toBeNull();
  });

  it("breaks ties by declaration order, not by name", () => {
    const g = buildGraph(["zeta", "alpha", "mid", "beta"], (id) => (id === "mid" ? ["zeta"] : []));
    expect(topologicalOrder(g)).toEqual(["zeta", "alpha", "mid", "beta"]);
    const h = buildGraph(["c", "b", "a"], (id) => (id === "c" ? ["a"] : []));
    expect(topologicalOrder(h)).toEqual(["b", "a", "c"]);
  });

  it("names cycles, including self-loops", () => {
    const g = buildGraph(["a", "b", "c"], (id) => ({ a: ["c"], b: ["a"], c: ["b"] })[id]!);
    expect(findCycle(g)).toEqual(["a", "b", "c", "a"]);
    expect(() => topologicalOrder(g)).toThrow(/cycle/);
    expect(() => buildUpstreamIndex(g, ["a"])).toThrow(/cycle/);
    expect(findCycle(buildGraph(["x"], () => ["x"]))).toEqual(["x", "x"]);
    // The reported cycle is the loop itself, not the path that led into it.
    const tail = buildGraph(["r", "p", "q"], (id) => ({ r: [], p: ["r", "q"], q: ["p"] })[id]!);
    expect(findCycle(tail)).toEqual(["p", "q", "p"]);
  });

  it("accepts any Graph implementation, not only its own", () => {
    const parents: Record<string, string[]> = { a: [], b: ["a"], c: ["b"] };
    const children: Record<string, string[]> = { a: ["b"], b: ["c"], c: [] };
    const g: Graph = {
      nodes: ["a", "b", "c"],
      parents: (id) => parents[id]!,
      children: (id) => children[id]!,
      has: (id) => id in parents,
    };
    expect(topologicalOrder(g)).toEqual(["a", "b", "c"]);
    expect(sorted(downstreamClosure(g, ["b"]))).toEqual(["b", "c"]);
    expect(buildUpstreamIndex(g, ["c"]).isUpstreamOf("a", "c")).toBe(true);
  });

  it("answers upstream questions from an index, falling back to a search for other ids", () => {
    const g = buildGraph(["a", "b", "c", "d"], (id) => ({ a: [], b: ["a"], c: ["b"], d: [] })[id]!);
    const index = buildUpstreamIndex(g, ["c"]);
    expect(index.isUpstreamOf("a", "c")).toBe(true);
    expect(index.isUpstreamOf("c", "c")).toBe(false);
    expect(index.isUpstreamOf("d", "c")).toBe(false);
    // "b" has a row (it is upstream of "c"); "d" does not and is searched.
    expect(index.isUpstreamOf("a", "b")).toBe(true);
    expect(index.isUpstreamOf("a", "d")).toBe(false);
  });

  it("handles a 5,000-node chain without recursion limits", () => {
    const g = buildGraph(chainIds, previousInChain);
    expect(topologicalOrder(g)).toEqual(chainIds);
    expect(upstreamClosure(g, ["s4999"]).size).toBe(5000);
    expect(downstreamClosure(g, ["s0"]).size).toBe(5000);
    expect(isUpstreamOf(g, "s0", "s4999")).toBe(true);
    expect(buildUpstreamIndex(g, ["s4999"]).isUpstreamOf("s0", "s4999")).toBe(true);
    expect(findCycle(g)).toBeNull();
    const cyclic = buildGraph(chainIds, (id) => (id === "s0" ? ["s4999"] : previousInChain(id)));
    expect(findCycle(cyclic)).toHaveLength(5001);
  });

  // How fast is measured by `npm run bench` (planner); here only that the answers are right.
  it("builds a 5,000-node, 20,000-edge graph and answers every question about it", () => {
    const parents = (id: string) => {
      const i = Number(id.slice(1));
      return i === 0 ? [] : [0, 1, 2, 3].map((k) => `s${(i * 7919 + k * 104729) % i}`);
    };
    const g = buildGraph(chainIds, parents);
    expect(findCycle(g)).toBeNull();
    expect(topologicalOrder(g)).toHaveLength(5000);
    const index = buildUpstreamIndex(g, chainIds);
    for (const id of chainIds) for (const p of g.parents(id)) expect(index.isUpstreamOf(p, id)).toBe(true);
  });
});

describe("DAG properties", () => {
  it("a topological order contains every node once and respects every edge", () => {
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
    // 40 graphs of 5,000 nodes: a few seconds alone, much longer on a machine busy with other tests.
  }, 180_000);

  it("an edge back along a path makes a cycle that findCycle reports truthfully", () => {
    fc.assert(
      fc.property(dagArbitrary(2000, 3), fc.nat(), fc.nat(), (d, pickChild, pickAncestor) => {
        const g = graphOf(d);
        const withParent = d.nodes.filter((id) => g.parents(id).length > 0);
        fc.pre(withParent.length > 0);
        // Close a loop: some ancestor of `child` now also needs `child`.
        const child = withParent[pickChild % withParent.length]!;
        const ancestors = [...upstreamClosure(g, [child])].filter((a) => a !== child);
        const ancestor = ancestors[pickAncestor % ancestors.length]!;
        const parents = new Map(d.parents);
        parents.set(ancestor, [...(parents.get(ancestor) ?? []), child]);
        const cyclic = buildGraph(d.nodes, (id) => parents.get(id) ?? []);
        const cycle = findCycle(cyclic);
        expect(cycle).not.toBeNull();
        expect(cycle![0]).toBe(cycle!.at(-1));
        expect(new Set(cycle!.slice(1)).size).toBe(cycle!.length - 1);
        for (let i = 0; i + 1 < cycle!.length; i++)
          expect(cyclic.children(cycle![i]!)).toContain(cycle![i + 1]);
        expect(() => topologicalOrder(cyclic)).toThrow(/cycle/);
      }),
      { numRuns: 40 },
    );
  });

  it("closures equal a naive breadth-first reference", () => {
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

  it("isUpstreamOf and the upstream index agree with the closures", () => {
    fc.assert(
      fc.property(dagArbitrary(300, 3), fc.array(fc.nat(), { minLength: 1, maxLength: 8 }), (d, picks) => {
        const g = graphOf(d);
        const ids = [...new Set(picks.map((p) => d.nodes[p % d.nodes.length]!))];
        const index = buildUpstreamIndex(g, ids);
        for (const id of ids) {
          const upstream = naiveClosure([id], (x) => g.parents(x));
          for (const candidate of d.nodes) {
            const expected = candidate !== id && upstream.has(candidate);
            expect(index.isUpstreamOf(candidate, id)).toBe(expected);
            expect(isUpstreamOf(g, candidate, id)).toBe(expected);
          }
        }
      }),
      { numRuns: 50 },
    );
  });
});
