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
  const pipe = (from: Socket, to: Socket) => {
    let last = 0;
    from.on("data", (chunk) => {
      if (delayMs === 0 && last <= Date.now()) {
        to.write(chunk);
        return;
      }
      // Never earlier than a chunk already scheduled: the stream's order is kept.
      const at = Math.max(Date.now() + delayMs, last);
      last = at;
      setTimeout(() => {
        if (!to.destroyed) to.write(chunk);
      }, at - Date.now());
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
