import type { FastifyInstance, LightMyRequestResponse } from "fastify";

export interface CallOptions {
  key?: string | null;
  body?: unknown;
  /** Sent as-is (string/Buffer) instead of JSON-encoding `body`. */
  raw?: string | Buffer;
  contentType?: string;
  headers?: Record<string, string>;
}

/** `inject` with a bearer key and JSON by default; answers the parsed JSON body when there is one. */
export async function call(
  app: FastifyInstance,
  method: "GET" | "POST" | "PUT" | "DELETE" | "PATCH",
  url: string,
  options: CallOptions = {},
): Promise<LightMyRequestResponse & { json: () => any }> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.key) headers.authorization = `Bearer ${options.key}`;
  let payload: string | Buffer | undefined;
  if (options.raw !== undefined) {
    payload = options.raw;
    headers["content-type"] = options.contentType ?? "application/json";
  } else if (options.body !== undefined) {
    payload = JSON.stringify(options.body);
    headers["content-type"] = options.contentType ?? "application/json";
  }
  return app.inject({ method, url, headers, ...(payload === undefined ? {} : { payload }) });
}

/** Asserts the shape every error must have and returns the problem. */
export function expectProblem(response: LightMyRequestResponse, status: number): any {
  if (response.statusCode !== status) {
    throw new Error(`expected ${status}, got ${response.statusCode}: ${response.body.slice(0, 500)}`);
  }
  if (!String(response.headers["content-type"]).startsWith("application/problem+json")) {
    throw new Error(`expected application/problem+json, got ${response.headers["content-type"]}`);
  }
  const problem = JSON.parse(response.body);
  for (const field of ["type", "title", "status", "detail", "code"]) {
    if (!(field in problem)) throw new Error(`problem lacks "${field}": ${response.body}`);
  }
  if (problem.status !== status) throw new Error(`problem.status ${problem.status} != ${status}`);
  return problem;
}
