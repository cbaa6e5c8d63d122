import type { FastifyInstance } from "fastify";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { installEngineMetrics, processRegistry } from "../../observability/metrics.ts";

/**
 * Prometheus metrics of the API, served at /metrics: this app's own (requests, open streams, queue
 * gauges) with the process's (Node, engine; in `flowline up` also the supervisor's).
 */
export function registerMetrics(app: FastifyInstance): Registry {
  installEngineMetrics();
  const registry = new Registry();
  const requests = new Counter({
    name: "flowline_http_requests_total",
    help: "HTTP requests answered, by route and status",
    labelNames: ["method", "route", "status"],
    registers: [registry],
  });
  const duration = new Histogram({
    name: "flowline_http_request_duration_seconds",
    help: "HTTP request duration",
    labelNames: ["method", "route"],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry],
  });
  app.addHook("onResponse", async (request, reply) => {
    // The route pattern, never the raw URL: label values must stay bounded.
    const route = request.routeOptions.url ?? "unmatched";
    requests.inc({ method: request.method, route, status: reply.statusCode });
    duration.observe({ method: request.method, route }, reply.elapsedTime / 1000);
  });
  app.get("/metrics", { config: { public: true }, schema: { hide: true } }, async (_request, reply) => {
    const merged = Registry.merge([registry, processRegistry()]);
    reply.type(merged.contentType);
    return merged.metrics();
  });
  return registry;
}

/** Event and log streams open on this API process. */
export function registerStreamGauge(registry: Registry, open: () => number): void {
  new Gauge({
    name: "flowline_sse_streams_open",
    help: "Event streams (SSE) open on this API process",
    registers: [registry],
    collect() {
      this.set(open());
    },
  });
}
