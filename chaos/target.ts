/**
 * The recording target: every step of the workload is an `http` step that POSTs here, so side
 * effects are observed from outside Flowline. Each request is one effect: which run (by its `tag`
 * param and partition), step and phase, which asset critical section it is in, when it started
 * and when it ended (answered, or the connection closed under it: an aborted attempt).
 *
 * The body says how to behave: hold for `ms`, and fail (500) the first `failTimes` calls of the
 * same (tag, partition, step, phase) — a retried step.
 */
import { once } from "node:events";
import { createServer, type IncomingMessage } from "node:http";

export interface Effect {
  id: number;
  tag: string;
  partition: string;
  workflow: string;
  step: string;
  phase: "execute" | "compensate";
  /** The asset (with partition) whose critical section this effect is in, if any. */
  asset: string | null;
  start: number;
  end: number | null;
  outcome: "ok" | "failed" | "aborted" | null;
}

export interface EffectRequest {
  tag: string;
  partition: string;
  workflow: string;
  step: string;
  phase: "execute" | "compensate";
  asset?: string | null;
  ms: number;
  failTimes?: number;
}

export interface Target {
  url: string;
  effects: Effect[];
  /** Adds a made-up effect: the way `--plant` proves the checker can fail. */
  record(effect: Omit<Effect, "id">): Effect;
  close(): Promise<void>;
}

async function readJson(req: IncomingMessage): Promise<EffectRequest> {
  let text = "";
  for await (const chunk of req) text += chunk;
  return JSON.parse(text) as EffectRequest;
}

export const effectKey = (e: Pick<Effect, "tag" | "partition" | "step" | "phase">) =>
  `${e.tag}/${e.partition}/${e.step}/${e.phase}`;

export async function startTarget(): Promise<Target> {
  const effects: Effect[] = [];
  const calls = new Map<string, number>();
  const record = (effect: Omit<Effect, "id">) => {
    const e = { ...effect, id: effects.length + 1 };
    effects.push(e);
    return e;
  };
  const server = createServer((req, res) => {
    const start = Date.now();
    readJson(req).then(
      (body) => {
        const effect = record({
          tag: String(body.tag),
          partition: String(body.partition),
          workflow: String(body.workflow),
          step: String(body.step),
          phase: body.phase === "compensate" ? "compensate" : "execute",
          asset: body.asset ? `${body.asset}/${body.partition}` : null,
          start,
          end: null,
          outcome: null,
        });
        const key = effectKey(effect);
        const n = (calls.get(key) ?? 0) + 1;
        calls.set(key, n);
        const timer = setTimeout(() => {
          effect.end = Date.now();
          const fail = n <= (body.failTimes ?? 0);
          effect.outcome = fail ? "failed" : "ok";
          res.writeHead(fail ? 500 : 200, { "content-type": "application/json" });
          res.end(JSON.stringify(fail ? { error: `planned failure ${n}` } : { effect: effect.id, call: n }));
        }, body.ms);
        res.on("close", () => {
          if (effect.end !== null) return;
          clearTimeout(timer);
          effect.end = Date.now();
          effect.outcome = "aborted";
        });
      },
      () => {
        res.writeHead(400).end();
      },
    );
  });
  server.keepAliveTimeout = 1000;
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}/effect`,
    effects,
    record,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
