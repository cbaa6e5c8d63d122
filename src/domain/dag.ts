/**
 * Directed acyclic graph logic over string ids: cycle detection, topological order, closures.
 * Index arrays internally and no recursion, so 5,000-step chains neither slow down nor overflow
 * the stack.
 */
export interface Graph {
  readonly nodes: readonly string[];
  parents(id: string): readonly string[];
  children(id: string): readonly string[];
  has(id: string): boolean;
}

class IndexedGraph implements Graph {
  readonly nodes: readonly string[];
  readonly index: ReadonlyMap<string, number>;
  readonly parentIdx: readonly number[][];
  readonly childIdx: readonly number[][];

  constructor(nodes: readonly string[], parentsOf: (id: string) => readonly string[]) {
    this.nodes = nodes;
    const index = new Map<string, number>();
    nodes.forEach((id, i) => {
      index.set(id, i);
    });
    this.index = index;
    const parentIdx: number[][] = nodes.map(() => []);
    const childIdx: number[][] = nodes.map(() => []);
    nodes.forEach((id, i) => {
      const seen = new Set<number>();
      for (const parent of parentsOf(id)) {
        const p = index.get(parent);
        if (p === undefined || seen.has(p)) continue;
        seen.add(p);
        parentIdx[i]!.push(p);
        childIdx[p]!.push(i);
      }
    });
    this.parentIdx = parentIdx;
    this.childIdx = childIdx;
  }

  has(id: string): boolean {
    return this.index.has(id);
  }
  parents(id: string): readonly string[] {
    return (this.parentIdx[this.indexOf(id)] ?? []).map((i) => this.nodes[i]!);
  }
  children(id: string): readonly string[] {
    return (this.childIdx[this.indexOf(id)] ?? []).map((i) => this.nodes[i]!);
  }
  indexOf(id: string): number {
    const i = this.index.get(id);
    if (i === undefined) throw new Error(`unknown node "${id}"`);
    return i;
  }
}

/**
 * Builds a graph. Precondition (checked by validation first): ids are unique. Parents that are not
 * nodes are ignored, repeated parents count once.
 */
export function buildGraph(nodes: readonly string[], parentsOf: (id: string) => readonly string[]): Graph {
  return new IndexedGraph(nodes, parentsOf);
}

function indexed(g: Graph): IndexedGraph {
  return g instanceof IndexedGraph ? g : new IndexedGraph(g.nodes, (id) => g.parents(id));
}

/** A cycle as a path whose first node is repeated at its end (`["a","b","a"]`), or null. */
export function findCycle(graph: Graph): string[] | null {
  const g = indexed(graph);
  const n = g.nodes.length;
  // 0 = unvisited, 1 = on the current path, 2 = done.
  const state = new Uint8Array(n);
  const nextChild = new Int32Array(n);
  const path: number[] = [];
  for (let start = 0; start < n; start++) {
    if (state[start] !== 0) continue;
    path.push(start);
    state[start] = 1;
    while (path.length > 0) {
      const v = path[path.length - 1]!;
      const children = g.childIdx[v]!;
      if (nextChild[v]! < children.length) {
        const c = children[nextChild[v]!]!;
        nextChild[v]!++;
        if (state[c] === 1) {
          const from = path.indexOf(c);
          return [...path.slice(from), c].map((i) => g.nodes[i]!);
        }
        if (state[c] === 0) {
          state[c] = 1;
          path.push(c);
        }
      } else {
        state[v] = 2;
        path.pop();
      }
    }
  }
  return null;
}

/** Kahn's algorithm; among ready nodes the one declared first comes first. Throws on a cycle. */
export function topologicalOrder(graph: Graph): string[] {
  const g = indexed(graph);
  const n = g.nodes.length;
  const indegree = new Int32Array(n);
  for (let i = 0; i < n; i++) indegree[i] = g.parentIdx[i]!.length;
  // A binary min-heap of indices keeps the order deterministic in O(E log V).
  const heap: number[] = [];
  const push = (x: number) => {
    heap.push(x);
    let i = heap.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (heap[p]! <= heap[i]!) break;
      [heap[p], heap[i]] = [heap[i]!, heap[p]!];
      i = p;
    }
  };
  const pop = (): number => {
    const top = heap[0]!;
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < heap.length && heap[l]! < heap[m]!) m = l;
        if (r < heap.length && heap[r]! < heap[m]!) m = r;
        if (m === i) break;
        [heap[m], heap[i]] = [heap[i]!, heap[m]!];
        i = m;
      }
    }
    return top;
  };
  for (let i = 0; i < n; i++) if (indegree[i] === 0) push(i);
  const order: string[] = [];
  while (heap.length > 0) {
    const v = pop();
    order.push(g.nodes[v]!);
    for (const c of g.childIdx[v]!) {
      indegree[c]!--;
      if (indegree[c] === 0) push(c);
    }
  }
  if (order.length !== n) throw new Error("graph has a cycle");
  return order;
}

function closure(g: IndexedGraph, ids: Iterable<string>, edges: readonly number[][]): Set<string> {
  const seen = new Uint8Array(g.nodes.length);
  const stack: number[] = [];
  for (const id of ids) {
    const i = g.indexOf(id);
    if (!seen[i]) {
      seen[i] = 1;
      stack.push(i);
    }
  }
  while (stack.length > 0) {
    const v = stack.pop()!;
    for (const w of edges[v]!) {
      if (!seen[w]) {
        seen[w] = 1;
        stack.push(w);
      }
    }
  }
  const out = new Set<string>();
  for (let i = 0; i < seen.length; i++) if (seen[i]) out.add(g.nodes[i]!);
  return out;
}

/** `ids` and every node they transitively depend on. */
export function upstreamClosure(graph: Graph, ids: Iterable<string>): Set<string> {
  const g = indexed(graph);
  return closure(g, ids, g.parentIdx);
}

/** `ids` and every node that transitively depends on them. */
export function downstreamClosure(graph: Graph, ids: Iterable<string>): Set<string> {
  const g = indexed(graph);
  return closure(g, ids, g.childIdx);
}

/** True when `ancestor` is a transitive parent of `id` (a node is not its own ancestor). */
export function isUpstreamOf(graph: Graph, ancestor: string, id: string): boolean {
  if (ancestor === id) return false;
  return upstreamClosure(graph, [id]).has(ancestor);
}
