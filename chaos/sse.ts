/**
 * SSE clients that follow a run's event stream to its `end`, whatever happens to the API serving
 * them: on an error or a stream closed without `end` they reconnect (to either API) with
 * `Last-Event-ID`, like a browser's EventSource. They record every event id they receive.
 */
import { readSse } from "../test/helpers/sse.ts";
import type { Rng } from "./rng.ts";
import { ROOT_KEY } from "./system.ts";

export interface SseClient {
  runId: string;
  /** Event ids in the order received, duplicates included. */
  received: number[];
  ended: boolean;
  /** When `end` arrived (ms since epoch). */
  endedAt: number | null;
  reconnects: number;
  errors: string[];
}

export interface SseFleet {
  clients: SseClient[];
  follow(runId: string): void;
  /** Waits for every client to see `end`, up to `timeoutMs`; then closes the rest. */
  finish(timeoutMs: number): Promise<void>;
}

export function startSseFleet(apis: string[], rng: Rng, options: { dropOne?: boolean } = {}): SseFleet {
  const clients: SseClient[] = [];
  const running = new Set<Promise<void>>();
  const abort = new AbortController();
  let dropped = !options.dropOne;

  const follow = (runId: string) => {
    const client: SseClient = { runId, received: [], ended: false, endedAt: null, reconnects: 0, errors: [] };
    clients.push(client);
    let api = rng.int(apis.length);
    const p = (async () => {
      while (!client.ended && !abort.signal.aborted) {
        const last = client.received.at(-1);
        try {
          const { status } = await readSse(`${apis[api % apis.length]}/v1/runs/${runId}/events`, {
            key: ROOT_KEY,
            signal: abort.signal,
            ...(last !== undefined ? { lastEventId: String(last) } : {}),
            onFrame: (frame) => {
              if (frame.event === "end") {
                client.ended = true;
                client.endedAt = Date.now();
              } else if (frame.id !== undefined) {
                const id = Number(frame.id);
                // `--plant`: one client loses one event in the middle of its stream.
                if (!dropped && client.received.length === 2) {
                  dropped = true;
                  return;
                }
                client.received.push(id);
              }
            },
          });
          if (status !== 200 && client.errors.length < 20) client.errors.push(`status ${status}`);
        } catch (error) {
          if (abort.signal.aborted) break;
          if (client.errors.length < 20) client.errors.push(String((error as Error).message ?? error));
        }
        if (client.ended || abort.signal.aborted) break;
        client.reconnects++;
        api++;
        await new Promise((r) => setTimeout(r, 200 + rng.int(300)));
      }
    })();
    running.add(p);
    p.finally(() => running.delete(p));
  };

  return {
    clients,
    follow,
    finish: async (timeoutMs) => {
      const deadline = Date.now() + timeoutMs;
      while (running.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      abort.abort();
      await Promise.all(running);
    },
  };
}
