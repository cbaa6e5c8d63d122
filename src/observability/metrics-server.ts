/**
 * `/metrics` for processes that have no HTTP server of their own (workers, supervisors, `flowline
 * workers`): a bare listener that answers the process registry at `/metrics` and 404 elsewhere.
 */
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { processRegistry } from "./metrics.ts";

export interface MetricsServer {
  /** The port it listens on (the one the OS chose when asked for port 0). */
  port: number;
  url: string;
  close(): Promise<void>;
}

export async function startMetricsServer(host: string, port: number): Promise<MetricsServer> {
  const registry = processRegistry();
  const server: Server = createServer((request, response) => {
    const path = (request.url ?? "/").split("?")[0];
    if (request.method !== "GET" || path !== "/metrics") {
      response.writeHead(404, { "content-type": "text/plain" }).end("not found: try GET /metrics\n");
      return;
    }
    registry.metrics().then(
      (body) => response.writeHead(200, { "content-type": registry.contentType }).end(body),
      (error: Error) => response.writeHead(500, { "content-type": "text/plain" }).end(`${error.message}\n`),
    );
  });
  server.listen(port, host);
  await Promise.race([
    once(server, "listening"),
    once(server, "error").then(([error]) => {
      throw new Error(
        `cannot serve metrics on ${host}:${port}: ${(error as Error).message} (choose another port with metrics.*Port, or 0 for any free port)`,
      );
    }),
  ]);
  const actual = (server.address() as AddressInfo).port;
  return {
    port: actual,
    url: `http://${host.includes(":") ? `[${host}]` : host}:${actual}/metrics`,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
