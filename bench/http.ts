/**
 * The API side of the benchmark: the real application (buildApp) listening on 127.0.0.1 in this
 * process, driven over HTTP — submissions with a fixed number of requests in flight, read latency,
 * and event replay as SSE.
 */
import { buildApp } from "../src/api/app.ts";
import type { Config } from "../src/config/index.ts";
import { createDb } from "../src/db/client.ts";
import { keysRepository } from "../src/db/repositories/keys.ts";
import { openStores } from "../src/stores/index.ts";

const KEY = "flk_bench_http_key_0123456789abcdefghij";

export interface BenchApi {
  base: string;
  close(): Promise<void>;
}

export async function startApi(config: Config): Promise<BenchApi> {
  const db = createDb({ ...config.database, applicationName: "flowline-api" });
  const stores = await openStores(config, {
    name: "flowline-api",
    flavour: "consumer",
    subscribe: true,
    sql: db.sql,
  });
  await keysRepository(db.db).ensureRootKey(KEY);
  const app = await buildApp({ config, db, stores });
  const base = await app.listen({ host: "127.0.0.1", port: 0 });
  return {
    base,
    close: async () => {
      await app.close();
      await stores.close();
      await db.close();
    },
  };
}

const auth = { authorization: `Bearer ${KEY}` };

/** Submits `n` runs of a workflow, `inFlight` requests at a time; answers their ids. */
export async function submitOverHttp(api: BenchApi, workflow: string, n: number, inFlight: number) {
  const ids: string[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < n) {
        next++;
        const res = await fetch(`${api.base}/v1/workflows/${workflow}/runs`, {
          method: "POST",
          headers: { ...auth, "content-type": "application/json" },
          body: "{}",
        });
        if (res.status !== 202) throw new Error(`submit answered ${res.status}: ${await res.text()}`);
        ids.push(((await res.json()) as { id: string }).id);
      }
    }),
  );
  return ids;
}

/**
 * Sequential GETs of `path()` after 5 warm-up requests: `samples` latencies in ms, or fewer (at
 * least 20) when they take longer than `budgetMs` in all.
 */
export async function getLatencies(
  api: BenchApi,
  path: () => string,
  samples: number,
  budgetMs: number,
): Promise<number[]> {
  const latencies: number[] = [];
  const get = async () => {
    const t0 = performance.now();
    const res = await fetch(`${api.base}${path()}`, { headers: auth });
    await res.arrayBuffer();
    if (res.status !== 200) throw new Error(`GET answered ${res.status}`);
    return performance.now() - t0;
  };
  for (let i = 0; i < 5; i++) await get();
  const deadline = performance.now() + budgetMs;
  while (latencies.length < samples && (latencies.length < 20 || performance.now() < deadline)) {
    latencies.push(await get());
  }
  return latencies;
}

/** Reads a finished run's events as SSE from after=0 to `event: end`; answers ms and event count. */
export async function replayEvents(api: BenchApi, runId: string) {
  const t0 = performance.now();
  const res = await fetch(`${api.base}/v1/runs/${runId}/events?after=0`, {
    headers: { ...auth, accept: "text/event-stream" },
  });
  if (!res.ok || !res.body) throw new Error(`event stream answered ${res.status}`);
  const decoder = new TextDecoder();
  let events = 0;
  let tail = "";
  for await (const chunk of res.body) {
    const text = tail + decoder.decode(chunk, { stream: true });
    const frames = text.split("\n\n");
    tail = frames.pop() ?? "";
    for (const f of frames) {
      if (f.startsWith("event: end")) return { ms: performance.now() - t0, events };
      if (f.startsWith("id: ")) events++;
    }
  }
  throw new Error("event stream closed before its end");
}
