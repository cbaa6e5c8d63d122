/**
 * The typed Flowline client: openapi-fetch over the types generated from the API's own OpenAPI
 * document (`openapi.gen.ts`, written by scripts/client-types.ts), plus `watchRun()`, an async
 * iterator over a run's server-sent events that resumes with `Last-Event-ID` after a drop, so a
 * watcher sees every event once and in order across API restarts.
 *
 * It depends on nothing else in this repository: a program can copy this folder (with the
 * generated file) and talk to a Flowline server.
 */
import { createParser, type EventSourceMessage } from "eventsource-parser";
import createClient, { type Client } from "openapi-fetch";
import type { components, paths } from "./openapi.gen.ts";

export type { components, paths };
export type Schemas = components["schemas"];
export type Run = Schemas["Run"];
export type RunDetails = Schemas["RunDetails"];
export type RunEventFrame = Schemas["RunEventFrame"];
export type RunEventType = RunEventFrame["type"];
export type Problem = Schemas["Problem"];
export type FlowlineClient = Client<paths>;

export interface ClientOptions {
  /** The server, e.g. `http://127.0.0.1:3000`. */
  url: string;
  /** An API key (`flk_…`), sent as `Authorization: Bearer`. */
  key?: string | undefined;
}

/** The server answered with an RFC 9457 problem (or another error status). */
export class ProblemError extends Error {
  override readonly name = "ProblemError";
  constructor(
    readonly status: number,
    readonly problem: Partial<Problem> & { detail?: string },
  ) {
    super(problem.detail ?? problem.title ?? `HTTP ${status}`);
  }
}

/** No answer from the server (refused, reset, timed out, or a gateway error for too long). */
export class UnreachableError extends Error {
  override readonly name = "UnreachableError";
}

export function createFlowlineClient(options: ClientOptions): FlowlineClient {
  const client = createClient<paths>({
    baseUrl: options.url.replace(/\/+$/, ""),
    headers: authHeaders(options),
  });
  // A network failure surfaces as UnreachableError, so callers tell it from a refusal.
  client.use({
    onError: ({ error }) => {
      throw new UnreachableError(`cannot reach ${options.url}: ${describeNetworkError(error)}`);
    },
  });
  return client;
}

/** The data of an openapi-fetch answer, or a ProblemError carrying the server's problem. */
export function unwrap<T>(result: { data?: T; error?: unknown; response: Response }): T {
  if (result.error !== undefined || !result.response.ok) {
    const problem = (
      typeof result.error === "object" && result.error !== null ? result.error : {}
    ) as Problem;
    throw new ProblemError(result.response.status, {
      ...problem,
      detail: problem.detail ?? (typeof result.error === "string" ? result.error : undefined),
    });
  }
  return result.data as T;
}

export interface WatchOptions {
  /** Start after this event id (0: from the first event). */
  after?: number;
  signal?: AbortSignal;
  /** `logs` follows only `step.log` frames (optionally of one step). */
  stream?: { kind: "events" } | { kind: "logs"; step?: string };
  /** How long to keep reconnecting without reaching the server before giving up (ms). */
  reconnectForMs?: number;
  /** Called before each reconnect, with the event id it resumes after. */
  onReconnect?: (afterId: number, cause: string) => void;
}

/**
 * A run's events from `after` to the run's end (`event: end`), each exactly once and in order.
 * A dropped connection or an unavailable server (502/503/504) is retried with `Last-Event-ID`
 * set to the last event received; other error statuses throw ProblemError.
 */
export async function* watchRun(
  options: ClientOptions,
  runId: string,
  watch: WatchOptions = {},
): AsyncGenerator<RunEventFrame> {
  const stream = watch.stream ?? { kind: "events" };
  const reconnectForMs = watch.reconnectForMs ?? 60_000;
  let lastId = watch.after ?? 0;
  let retryMs = 1000;
  let failingSince: number | undefined;

  for (;;) {
    const url = new URL(
      `${options.url.replace(/\/+$/, "")}/v1/runs/${encodeURIComponent(runId)}/${stream.kind}`,
    );
    if (stream.kind === "logs") {
      url.searchParams.set("follow", "true");
      if (stream.step) url.searchParams.set("step", stream.step);
    }
    if (lastId > 0) url.searchParams.set("after", String(lastId));
    let cause: string;
    try {
      const response = await fetch(url, {
        headers: {
          ...authHeaders(options),
          accept: "text/event-stream",
          ...(lastId > 0 ? { "last-event-id": String(lastId) } : {}),
        },
        ...(watch.signal ? { signal: watch.signal } : {}),
      });
      if (response.status === 502 || response.status === 503 || response.status === 504) {
        await response.body?.cancel();
        cause = `HTTP ${response.status}`;
      } else if (!response.ok || !response.body) {
        const problem = await response.json().catch(() => ({}));
        throw new ProblemError(response.status, problem as Problem);
      } else {
        failingSince = undefined;
        const received: EventSourceMessage[] = [];
        const parser = createParser({
          onEvent: (message) => received.push(message),
          onRetry: (ms) => {
            retryMs = Math.min(Math.max(ms, 100), 10_000);
          },
        });
        const decoder = new TextDecoder();
        const reader = response.body.getReader();
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            parser.feed(decoder.decode(value, { stream: true }));
            for (const message of received.splice(0)) {
              if (message.event === "end") return;
              const frame = JSON.parse(message.data) as RunEventFrame;
              const id = Number(message.id ?? frame.id);
              // A replay never repeats what was seen; the guard keeps that true whatever happens.
              if (id <= lastId) continue;
              lastId = id;
              yield frame;
            }
          }
          cause = "stream closed before the run ended";
        } finally {
          reader.cancel().catch(() => {});
        }
      }
    } catch (error) {
      if (error instanceof ProblemError || watch.signal?.aborted) throw error;
      cause = describeNetworkError(error);
    }
    failingSince ??= Date.now();
    if (Date.now() - failingSince > reconnectForMs)
      throw new UnreachableError(
        `cannot reach ${options.url}: ${cause} (gave up after ${reconnectForMs} ms)`,
      );
    watch.onReconnect?.(lastId, cause);
    await sleep(retryMs, watch.signal);
  }
}

function authHeaders(options: ClientOptions): Record<string, string> {
  return options.key ? { authorization: `Bearer ${options.key}` } : {};
}

function describeNetworkError(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } })?.cause;
  return cause?.code ?? cause?.message ?? (error as Error)?.message ?? String(error);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}
