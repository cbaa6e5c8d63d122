/**
 * Tracing with OpenTelemetry, on only when the standard variables ask for it: an OTLP endpoint
 * (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), not turned off by
 * `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Off, the SDK is not even loaded: the
 * helpers below run their work directly and the API's no-op tracer is never asked for a span.
 *
 * One run is one trace: the submitting request, the run's span (stored with the run as a W3C
 * `traceparent`, and sent with every job of the run), each step attempt under it with its queue
 * wait and its execution, and the executor's own work inside the execution span.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import {
  type Context,
  context,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  type Tracer,
  trace,
} from "@opentelemetry/api";
import { installObserver } from "./hooks.ts";

let tracer: Tracer | undefined;
/** Inside a transaction's span: the context the transaction was started in. */
const outsideTransaction = new AsyncLocalStorage<Context>();

/** Whether these variables turn tracing on. */
export function tracingRequested(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === "true") return false;
  if (env.OTEL_TRACES_EXPORTER?.trim().toLowerCase() === "none") return false;
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim());
}

export const tracingOn = (): boolean => tracer !== undefined;

export interface TracingHandle {
  /** Sends the spans still buffered; call before the process exits. */
  shutdown(): Promise<void>;
}

/**
 * Starts the SDK when the environment asks for it: spans go in batches to the OTLP/HTTP endpoint
 * (JSON), with `service.name` from `OTEL_SERVICE_NAME`, else `flowline-<role>`, and the other
 * resource attributes of `OTEL_RESOURCE_ATTRIBUTES`.
 */
export async function startTracing(
  role: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<TracingHandle> {
  if (tracer || !tracingRequested(env)) return { shutdown: async () => {} };
  const [{ NodeTracerProvider, BatchSpanProcessor }, { OTLPTraceExporter }, resources] = await Promise.all([
    import("@opentelemetry/sdk-trace-node"),
    import("@opentelemetry/exporter-trace-otlp-http"),
    import("@opentelemetry/resources"),
  ]);
  const detected = resources.detectResources({ detectors: [resources.envDetector] });
  const resource = resources
    .resourceFromAttributes({ "service.name": env.OTEL_SERVICE_NAME?.trim() || `flowline-${role}` })
    .merge(detected);
  const provider = new NodeTracerProvider({
    resource,
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
  });
  provider.register();
  tracer = trace.getTracer("flowline");
  installObserver({
    traceTransaction: (work) => transactionSpan(work),
    startRunSpan: (attributes) => {
      // A run is created inside a transaction, but it belongs to what started the transaction
      // (the request, the schedule): its span is the transaction's sibling, not its child.
      const parent = outsideTransaction.getStore() ?? context.active();
      const span = tracer!.startSpan("flowline.run", { attributes: prefixed(attributes) }, parent);
      return {
        traceparent: traceparentOf(trace.setSpan(parent, span)),
        end: (runId) => {
          span.setAttribute("flowline.run_id", runId);
          span.end();
        },
      };
    },
  });
  return { shutdown: () => provider.shutdown() };
}

function prefixed(attributes: Record<string, string | number>): Record<string, string | number> {
  return Object.fromEntries(Object.entries(attributes).map(([k, v]) => [`flowline.${k}`, v]));
}

/** A database transaction inside a trace gets a span; one outside any trace (a supervisor pass) none. */
async function transactionSpan<T>(work: () => Promise<T>): Promise<T> {
  if (!tracer || !trace.getSpan(context.active())) return work();
  const outside = context.active();
  return tracer.startActiveSpan(
    "db.transaction",
    { kind: SpanKind.CLIENT, attributes: { "db.system.name": "postgresql" } },
    (span) => outsideTransaction.run(outside, () => endWith(span, work())),
  );
}

async function endWith<T>(span: Span, work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (error) {
    span.recordException(error as Error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error)?.message });
    throw error;
  } finally {
    span.end();
  }
}

/** The W3C `traceparent` of a context's span, or null when it has none. */
export function traceparentOf(ctx: Context = context.active()): string | null {
  const carrier: Record<string, string> = {};
  propagation.inject(ctx, carrier);
  return carrier.traceparent ?? null;
}

/** The context a `traceparent` (and `tracestate`) describes; the root context when absent or malformed. */
export function contextOf(headers: Record<string, unknown>): Context {
  return propagation.extract(ROOT_CONTEXT, headers, {
    get: (carrier, key) => {
      const value = (carrier as Record<string, unknown>)[key];
      return typeof value === "string" || Array.isArray(value) ? (value as string | string[]) : undefined;
    },
    keys: (carrier) => Object.keys(carrier as object),
  });
}

/** Headers that carry the active span to a server this process calls (empty when tracing is off). */
export function traceHeaders(): Record<string, string> {
  if (!tracer) return {};
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  return carrier;
}

/** `TRACEPARENT` (and `TRACESTATE`) for a child process, from the active span; empty when tracing is off. */
export function traceEnv(): Record<string, string> {
  const headers = traceHeaders();
  return {
    ...(headers.traceparent ? { TRACEPARENT: headers.traceparent } : {}),
    ...(headers.tracestate ? { TRACESTATE: headers.tracestate } : {}),
  };
}

/** The trace id inside a `traceparent`, or null. */
export function traceIdOf(traceparent: string | null | undefined): string | null {
  const match = /^[\da-f]{2}-([\da-f]{32})-[\da-f]{16}-[\da-f]{2}$/.exec(traceparent ?? "");
  return match && !/^0+$/.test(match[1]!) ? match[1]! : null;
}

export interface SpanOptions {
  kind?: SpanKind;
  parent?: Context;
  attributes?: Record<string, string | number | boolean>;
  /** Milliseconds since the epoch. */
  startTime?: number;
}

/** Starts a span (null when tracing is off). */
export function startSpan(name: string, options: SpanOptions = {}): Span | null {
  if (!tracer) return null;
  return tracer.startSpan(
    name,
    {
      ...(options.kind !== undefined ? { kind: options.kind } : {}),
      ...(options.attributes ? { attributes: options.attributes } : {}),
      ...(options.startTime !== undefined ? { startTime: options.startTime } : {}),
    },
    options.parent ?? context.active(),
  );
}

/** The active context with `span` as its span (for starting a child of a span that is not active). */
export function contextWith(span: Span): Context {
  return trace.setSpan(context.active(), span);
}

/** Calls `fn` (synchronously) with `span` as the active span: what it starts inherits it. */
export function callInSpan<T>(span: Span, fn: () => T): T {
  return context.with(contextWith(span), fn);
}

/** Runs `work` with `span` as the active span (directly when there is none). */
export function withSpan<T>(span: Span | null, work: () => Promise<T>): Promise<T> {
  if (!span) return work();
  return context.with(trace.setSpan(context.active(), span), work);
}

/** Runs `work` in a span of its own, ended (with the error, if any) when it settles. */
export function inSpan<T>(name: string, options: SpanOptions, work: () => Promise<T>): Promise<T> {
  const span = startSpan(name, options);
  if (!span) return work();
  return withSpan(span, () => endWith(span, work()));
}

export { SpanKind, SpanStatusCode };
