import type { Span } from "@opentelemetry/api";
import type { FastifyInstance } from "fastify";
import {
  callInSpan,
  contextOf,
  SpanKind,
  SpanStatusCode,
  startSpan,
  tracingOn,
} from "../../observability/tracing.ts";

/**
 * With tracing on, every request gets a server span, a child of the caller's `traceparent` when it
 * sends one; the handler runs inside it, so a run the request creates joins the caller's trace.
 * The span is entered at preHandler (after the body is read: socket events would lose the
 * context) and ends when the response is sent.
 */
export function registerTracing(app: FastifyInstance): void {
  if (!tracingOn()) return;
  const spans = new WeakMap<object, Span>();
  app.addHook("onRequest", (request, _reply, done) => {
    const route = request.routeOptions.url ?? "unmatched";
    const span = startSpan(`${request.method} ${route}`, {
      kind: SpanKind.SERVER,
      parent: contextOf(request.headers),
      attributes: {
        "http.request.method": request.method,
        "http.route": route,
        "url.path": request.url.split("?")[0]!,
      },
    });
    if (span) spans.set(request, span);
    done();
  });
  app.addHook("preHandler", (request, _reply, done) => {
    const span = spans.get(request);
    if (!span) return done();
    // The rest of the request (the handler) runs in the span's context.
    callInSpan(span, done);
  });
  app.addHook("onResponse", async (request, reply) => {
    const span = spans.get(request);
    if (!span) return;
    span.setAttribute("http.response.status_code", reply.statusCode);
    if (reply.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
    span.end();
  });
}
