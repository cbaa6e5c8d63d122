/**
 * A private Redis server on a free port, for tests that flush, kill or restart Redis: the shared
 * one on 6379 is never wiped.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { freePort } from "./processes.ts";

export interface PrivateRedis {
  url: string;
  client(): Redis;
  /** Kills the server (SIGKILL: no goodbye to its clients); `up()` starts it again on the same port. */
  down(): Promise<void>;
  up(): Promise<void>;
  stop(): Promise<void>;
}

export async function startPrivateRedis(): Promise<PrivateRedis> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "flowline-redis-"));
  const url = `redis://127.0.0.1:${port}`;
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  probe.on("error", () => {});
  let child: ChildProcess | undefined;

  const up = async () => {
    const server = spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
      { stdio: "ignore" },
    );
    child = server;
    for (let i = 0; ; i++) {
      try {
        probe.disconnect();
        await probe.connect();
        await probe.ping();
        return;
      } catch {
        if (i > 100 || server.exitCode !== null)
          throw new Error(`redis-server on port ${port} did not start`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  };
  const kill = async (signal: NodeJS.Signals) => {
    const server = child;
    child = undefined;
    if (!server || server.exitCode !== null || server.signalCode !== null) return;
    const exited = new Promise((r) => server.once("exit", r));
    server.kill(signal);
    await exited;
  };

  await up();
  return {
    url,
    client: () => probe,
    down: async () => {
      probe.disconnect();
      await kill("SIGKILL");
    },
    up,
    stop: async () => {
      probe.disconnect();
      await kill("SIGTERM");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
