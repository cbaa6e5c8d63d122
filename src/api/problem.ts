/**
 * The only place that turns errors into RFC 9457 problem+json. Routes throw FlowlineError;
 * Fastify's own errors (body limit, media type, schema validation, JSON syntax) are translated
 * here as well, so every error a client sees has the same shape.
 */
import type { FastifyError } from "fastify";
import { hasZodFastifySchemaValidationErrors } from "fastify-type-provider-zod";
import { z } from "zod";
import { type ErrorCode, type FieldIssue, FlowlineError, formatPath } from "../domain/errors.ts";

export const httpStatusOf: Record<ErrorCode, number> = {
  validation_failed: 400,
  invalid_definition: 400,
  malformed_body: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  method_not_allowed: 405,
  request_timeout: 408,
  conflict: 409,
  idempotency_conflict: 409,
  illegal_transition: 409,
  payload_too_large: 413,
  uri_too_long: 414,
  unsupported_media_type: 415,
  headers_too_large: 431,
  rate_limited: 429,
  quota_exceeded: 429,
  service_unavailable: 503,
  internal: 500,
};

const titles: Record<ErrorCode, string> = {
  validation_failed: "Request validation failed",
  invalid_definition: "Invalid workflow definition",
  malformed_body: "Malformed request body",
  unauthorized: "Authentication required",
  forbidden: "Forbidden",
  not_found: "Not found",
  method_not_allowed: "Method not allowed",
  request_timeout: "Request timeout",
  conflict: "Conflict",
  idempotency_conflict: "Idempotency key reused with a different request",
  illegal_transition: "Illegal state transition",
  payload_too_large: "Payload too large",
  uri_too_long: "URI too long",
  unsupported_media_type: "Unsupported media type",
  headers_too_large: "Request headers too large",
  rate_limited: "Too many requests",
  quota_exceeded: "Quota exceeded",
  service_unavailable: "Service unavailable",
  internal: "Internal server error",
};

export const problemTypeOf = (code: ErrorCode): string => `urn:flowline:problem:${code.replaceAll("_", "-")}`;

export const problemSchema = z
  .object({
    type: z.string().describe("Stable identifier of the problem kind, e.g. urn:flowline:problem:not-found"),
    title: z.string(),
    status: z.number().int(),
    detail: z.string(),
    instance: z.string().optional().describe("The request id; quote it when reporting a problem"),
    code: z.string().describe("The error code, the last part of `type`"),
    errors: z
      .array(
        z.object({
          location: z.enum(["body", "query", "params", "headers"]).optional(),
          path: z.string().describe("Path of the offending field, e.g. steps[2].run.type"),
          message: z.string(),
        }),
      )
      .optional(),
  })
  .meta({ id: "Problem" });
export type Problem = z.infer<typeof problemSchema>;

export interface ProblemReply {
  status: number;
  body: Problem;
  headers: Record<string, string>;
}

export function problemFromFlowlineError(error: FlowlineError, requestId?: string): ProblemReply {
  const status = httpStatusOf[error.code];
  const headers: Record<string, string> = {};
  if (error.retryAfterSeconds !== undefined)
    headers["retry-after"] = String(Math.ceil(error.retryAfterSeconds));
  if (error.code === "unauthorized") headers["www-authenticate"] = 'Bearer realm="flowline"';
  const body: Problem = {
    type: problemTypeOf(error.code),
    title: titles[error.code],
    status,
    detail: error.message,
    code: error.code,
    ...(requestId ? { instance: requestId } : {}),
  };
  if (error.issues.length > 0) {
    body.errors = error.issues.map((i) => ({
      ...(i.location ? { location: i.location } : {}),
      path: formatPath(i.path),
      message: i.message,
    }));
  }
  return { status, body, headers };
}

const locationOf = (context: string | undefined): FieldIssue["location"] => {
  switch (context) {
    case "querystring":
      return "query";
    case "params":
      return "params";
    case "headers":
      return "headers";
    default:
      return "body";
  }
};

/** Maps anything thrown during a request to a FlowlineError; unknown errors become `internal`. */
export function toFlowlineError(error: unknown): FlowlineError {
  if (error instanceof FlowlineError) return error;
  if (hasZodFastifySchemaValidationErrors(error)) {
    const location = locationOf((error as { validationContext?: string }).validationContext);
    const issues: FieldIssue[] = error.validation.map((v) => {
      const params = v.params as { issue?: { path?: (string | number)[] } } | undefined;
      const path =
        params?.issue?.path ??
        v.instancePath
          .split("/")
          .filter(Boolean)
          .map((p) => (/^\d+$/.test(p) ? Number(p) : p));
      return { location, path, message: v.message ?? "invalid value" };
    });
    const where = issues.length === 1 ? ` at ${location} ${formatPath(issues[0]!.path)}` : "";
    return new FlowlineError("validation_failed", `The request is invalid${where}: ${issues[0]?.message}`, {
      issues,
    });
  }
  const fe = error as Partial<FastifyError> & { status?: number };
  switch (fe.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return new FlowlineError("payload_too_large", "The request body is larger than the configured limit");
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return new FlowlineError(
        "unsupported_media_type",
        "Unsupported Content-Type; send application/json or application/yaml",
      );
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return new FlowlineError("malformed_body", "The body is empty but Content-Type says JSON");
    case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
      return new FlowlineError("malformed_body", "Content-Length does not match the body");
    case "FST_ERR_CTP_INVALID_JSON_BODY":
    case "FST_ERR_CTP_INVALID_TYPE":
      return new FlowlineError("malformed_body", fe.message ?? "Malformed body");
    case "FST_ERR_NOT_FOUND":
      return new FlowlineError("not_found", "No such route");
    case "FST_ERR_BAD_URL":
    case "FST_ERR_ASYNC_CONSTRAINT":
      return new FlowlineError(
        "validation_failed",
        "Malformed URL: a percent-encoded part is not valid UTF-8",
        {
          issues: [{ location: "params", path: [], message: "not a valid URL component" }],
        },
      );
    case "FST_ERR_MAX_PARAM_LENGTH":
      return new FlowlineError("uri_too_long", "A path segment of the URL is longer than the server accepts");
    case "ERR_HTTP_REQUEST_TIMEOUT":
      return new FlowlineError("request_timeout", "The request was not received completely in time");
    case "HPE_HEADER_OVERFLOW":
      return new FlowlineError("headers_too_large", "The request headers are larger than the server accepts");
  }
  if (isStoreUnavailable(error)) {
    return new FlowlineError("service_unavailable", "A backing store is unavailable; retry shortly", {
      retryAfterSeconds: 5,
      cause: error,
    });
  }
  // Errors from http-errors style producers (e.g. raw-body) carry a 4xx status; keep their class.
  const status = fe.statusCode ?? fe.status;
  if (typeof status === "number" && status >= 400 && status < 500) {
    if (status === 413) return new FlowlineError("payload_too_large", "The request body is too large");
    if (status === 415) return new FlowlineError("unsupported_media_type", "Unsupported Content-Type");
    if (status === 404) return new FlowlineError("not_found", "Not found");
    if (status === 429) return new FlowlineError("rate_limited", "Too many requests");
    return new FlowlineError("malformed_body", "The request could not be read");
  }
  return new FlowlineError(
    "internal",
    "An unexpected error occurred; the request id identifies it in the logs",
    {
      cause: error,
    },
  );
}

/**
 * A client error Node reports before any request object exists (a request that timed out, headers
 * too large, a line that is not HTTP): the whole HTTP response as raw bytes for the socket.
 */
export function rawProblemResponse(error: unknown): string {
  let flowlineError = toFlowlineError(error);
  if (flowlineError.code === "internal")
    flowlineError = new FlowlineError("malformed_body", "The request is not valid HTTP");
  const { status, body } = problemFromFlowlineError(flowlineError);
  const json = JSON.stringify(body);
  return (
    `HTTP/1.1 ${status} ${body.title}\r\nContent-Type: application/problem+json\r\n` +
    `Content-Length: ${Buffer.byteLength(json)}\r\nConnection: close\r\n\r\n${json}`
  );
}

/** OpenAPI response declarations for the problem statuses a route can answer. */
export function problemResponses(...statuses: number[]): Record<number, typeof problemSchema> {
  const all = new Set([400, 401, 429, 500, 503, ...statuses]);
  return Object.fromEntries([...all].sort().map((s) => [s, problemSchema]));
}

/** Connection-level failures of Postgres or Redis: the request may succeed later (503), not a bug (500). */
const unavailableCodes = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "CONNECT_TIMEOUT",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "57P01", // admin_shutdown
  "57P03", // cannot_connect_now
  "53300", // too_many_connections
]);

function isStoreUnavailable(error: unknown): boolean {
  // Query builders wrap driver errors; look down the cause chain a few levels.
  for (
    let e = error, depth = 0;
    e && typeof e === "object" && depth < 4;
    e = (e as { cause?: unknown }).cause, depth++
  ) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && unavailableCodes.has(code)) return true;
    const message = (e as { message?: unknown }).message;
    // ioredis with the offline queue disabled, or a connection that is closed.
    if (typeof message === "string" && /Stream isn't writeable|Connection is closed/.test(message))
      return true;
  }
  return false;
}
