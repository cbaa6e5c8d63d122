/**
 * A TCP proxy in the checker's process between the Flowline processes and one store: it can add
 * latency to every chunk (both directions, order kept) and cut every open connection at once.
 */
import { once } from "node:events";
import { createConnection, createServer, type Socket } from "node:net";

export interface TcpProxy {
  port: number;
  /** Added to every chunk from now on; 0 removes it. */
  setDelay(ms: number): void;
  /** Destroys every open connection (clients see a reset and reconnect). */
  cut(): void;
  close(): Promise<void>;
}

export async function startProxy(targetPort: number): Promise<TcpProxy> {
  let delayMs = 0;
  const sockets = new Set<Socket>();
  /**
   * Forwards `from` to `to`, each chunk no earlier than `delayMs` after it arrived and never
   * before a chunk that arrived before it: one FIFO per direction, drained by one timer, so a late
   * timer can never let a newer chunk overtake an older one (Postgres pipelines queries on one
   * connection: reordered bytes would hand one query's rows to another).
   */
  const pipe = (from: Socket, to: Socket) => {
    const queue: Array<{ at: number; chunk: Buffer }> = [];
    let timer: NodeJS.Timeout | undefined;
    const drain = () => {
      timer = undefined;
      while (queue.length > 0 && queue[0]!.at <= Date.now()) {
        const { chunk } = queue.shift()!;
        if (!to.destroyed) to.write(chunk);
      }
      if (queue.length > 0) timer = setTimeout(drain, queue[0]!.at - Date.now());
    };
    from.on("data", (chunk: Buffer) => {
      if (delayMs === 0 && queue.length === 0) {
        to.write(chunk);
        return;
      }
      queue.push({ at: Date.now() + delayMs, chunk });
      timer ??= setTimeout(drain, delayMs);
    });
    from.on("close", () => {
      if (timer) clearTimeout(timer);
    });
  };
  const server = createServer((client) => {
    const upstream = createConnection({ host: "127.0.0.1", port: targetPort });
    sockets.add(client);
    sockets.add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const s of [client, upstream]) {
      s.setNoDelay(true);
      s.on("error", end);
      s.on("close", end);
    }
    pipe(client, upstream);
    pipe(upstream, client);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as { port: number };
  return {
    port,
    setDelay: (ms) => {
      delayMs = ms;
    },
    cut: () => {
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      sockets.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
