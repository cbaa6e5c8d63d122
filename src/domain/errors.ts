/**
 * The one list of error codes Flowline speaks. Every failure a caller can see is a FlowlineError
 * carrying one of these codes; `src/api/problem.ts` maps each code to an HTTP status through a
 * `Record<ErrorCode, number>`, so a new code does not compile until it has a status.
 */
export const errorCodes = [
  "validation_failed",
  "invalid_definition",
  "malformed_body",
  "unauthorized",
  "forbidden",
  "not_found",
  "method_not_allowed",
  "request_timeout",
  "conflict",
  "idempotency_conflict",
  "illegal_transition",
  "payload_too_large",
  "uri_too_long",
  "unsupported_media_type",
  "headers_too_large",
  "rate_limited",
  "quota_exceeded",
  "service_unavailable",
  "internal",
] as const;

export type ErrorCode = (typeof errorCodes)[number];

/** One offending field. `path` is the JSON path inside `location`, e.g. ["steps", 2, "run", "type"]. */
export interface FieldIssue {
  location?: "body" | "query" | "params" | "headers";
  path: ReadonlyArray<string | number>;
  message: string;
}

export class FlowlineError extends Error {
  readonly code: ErrorCode;
  readonly issues: readonly FieldIssue[];
  /** Seconds a client should wait before retrying (429, 503). */
  readonly retryAfterSeconds: number | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { issues?: readonly FieldIssue[]; retryAfterSeconds?: number; cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "FlowlineError";
    this.code = code;
    this.issues = options.issues ?? [];
    this.retryAfterSeconds = options.retryAfterSeconds;
  }
}

/** Formats a path as `steps[2].run.type`; the empty path is the whole document. */
export function formatPath(path: ReadonlyArray<string | number>): string {
  let out = "";
  for (const part of path) {
    if (typeof part === "number") out += `[${part}]`;
    else if (/^[A-Za-z_$][\w$-]*$/.test(part)) out += out === "" ? part : `.${part}`;
    else out += `[${JSON.stringify(part)}]`;
  }
  return out === "" ? "(root)" : out;
}

export const notFound = (what: string): FlowlineError => new FlowlineError("not_found", `${what} not found`);

/**
 * A run move the transition table refused (its guarded statement moved nothing). Callers hold the
 * run lock and check the status first, so this answers a race or a bug, never a client's request.
 */
export const illegalRunTransition = (run: { id: string; status: string }, to: string): FlowlineError =>
  new FlowlineError("illegal_transition", `Run ${run.id} is ${run.status}: it cannot become ${to}`);
