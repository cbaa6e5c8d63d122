/**
 * `flowline graph WORKFLOW`: a workflow's DAG as text for a terminal, or as Mermaid or Graphviz
 * DOT for documentation. Pure: steps in, text out.
 */
import { buildGraph, topologicalOrder } from "../../domain/dag.ts";

export const graphStyles = ["text", "mermaid", "dot"] as const;
export type GraphStyle = (typeof graphStyles)[number];

export interface GraphStep {
  id: string;
  needs?: readonly string[];
  /** Optional decoration: the step's status in a run. */
  status?: string;
}

export function renderGraph(steps: readonly GraphStep[], style: GraphStyle): string {
  const byId = new Map(steps.map((s) => [s.id, s]));
  const graph = buildGraph(
    steps.map((s) => s.id),
    (id) => (byId.get(id)?.needs ?? []).filter((n) => byId.has(n)),
  );
  const order = topologicalOrder(graph);
  const label = (id: string) => {
    const status = byId.get(id)?.status;
    return status ? `${id} (${status})` : id;
  };
  switch (style) {
    case "mermaid": {
      const node = (id: string) => `s${order.indexOf(id)}["${label(id).replaceAll('"', "#quot;")}"]`;
      const lines = ["flowchart LR"];
      for (const id of order) {
        const parents = graph.parents(id);
        if (parents.length === 0 && graph.children(id).length === 0) lines.push(`  ${node(id)}`);
        for (const parent of parents) lines.push(`  ${node(parent)} --> ${node(id)}`);
      }
      return lines.join("\n");
    }
    case "dot": {
      const quote = (text: string) => JSON.stringify(text);
      const lines = ["digraph workflow {", "  rankdir=LR;", "  node [shape=box];"];
      for (const id of order) lines.push(`  ${quote(id)} [label=${quote(label(id))}];`);
      for (const id of order)
        for (const parent of graph.parents(id)) lines.push(`  ${quote(parent)} -> ${quote(id)};`);
      lines.push("}");
      return lines.join("\n");
    }
    default: {
      // Steps by depth (longest path from a root): each line says what it waits for.
      const depth = new Map<string, number>();
      for (const id of order)
        depth.set(id, Math.max(-1, ...graph.parents(id).map((p) => depth.get(p) ?? 0)) + 1);
      return order
        .map((id) => {
          const parents = graph.parents(id);
          const indent = "  ".repeat(depth.get(id) ?? 0);
          return `${indent}${label(id)}${parents.length > 0 ? `  ← ${parents.join(", ")}` : ""}`;
        })
        .join("\n");
    }
  }
}
