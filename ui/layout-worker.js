/* Lays out a DAG with dagre off the page's main thread, so a large graph never freezes the page. */
importScripts("/ui/vendor/dagre/dagre.min.js");

self.onmessage = (message) => {
  const { ids, edges, node } = message.data;
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 18, ranksep: 50, marginx: 10, marginy: 10 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const id of ids) g.setNode(id, { width: node.width, height: node.height });
  for (const [from, to] of edges) g.setEdge(from, to);
  dagre.layout(g);
  self.postMessage({
    width: g.graph().width,
    height: g.graph().height,
    nodes: ids.map((id) => ({ id, x: g.node(id).x, y: g.node(id).y })),
    edges: g.edges().map((e) => g.edge(e).points),
  });
};
