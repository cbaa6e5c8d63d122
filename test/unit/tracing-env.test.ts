import { describe, expect, it } from "vitest";
import { traceIdOf, tracingRequested } from "../../src/observability/tracing.ts";

describe("tracing configuration", () => {
  it("is on only with an OTLP endpoint, and off when the standard switches say so", () => {
    expect(tracingRequested({})).toBe(false);
    expect(tracingRequested({ OTEL_SERVICE_NAME: "x" })).toBe(false);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: " " })).toBe(false);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318" })).toBe(true);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://collector:4318/v1/traces" })).toBe(
      true,
    );
    const on = { OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318" };
    expect(tracingRequested({ ...on, OTEL_SDK_DISABLED: "TRUE" })).toBe(false);
    expect(tracingRequested({ ...on, OTEL_TRACES_EXPORTER: "none" })).toBe(false);
    expect(tracingRequested({ ...on, OTEL_SDK_DISABLED: "false" })).toBe(true);
  });

  it("reads a run's trace id from its traceparent, and nothing from anything else", () => {
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    expect(traceIdOf(`00-${traceId}-00f067aa0ba902b7-01`)).toBe(traceId);
    expect(traceIdOf(null)).toBeNull();
    expect(traceIdOf(undefined)).toBeNull();
    expect(traceIdOf(`00-${"0".repeat(32)}-00f067aa0ba902b7-01`)).toBeNull();
    expect(traceIdOf(`00-${traceId.toUpperCase()}-00f067aa0ba902b7-01`)).toBeNull();
    expect(traceIdOf(`00-${traceId}-00f067aa0ba902b7`)).toBeNull();
  });
});
