/**
 * `flowline workers`: the per-queue worker pools of `pool.ts`, measured from Postgres (the backlog
 * survives a Redis flush and counts only steps of running runs) and announced in the worker
 * directory (Redis, or Postgres without Redis) for `GET /v1/queues`.
 */
import { type ChildProcess, spawn } from "node:child_process";
import type { Logger } from "pino";
import type { Config } from "../config/index.ts";
import { createDb } from "../db/client.ts";
import { queueLoad } from "../db/repositories/queues.ts";
import { metricsPortOf, type QueueLoad } from "../domain/scaling.ts";
import { openStores } from "../stores/index.ts";
import { startWorkerPools, type WorkerPools } from "./pool.ts";

export interface RunningAutoscaler {
  pools: WorkerPools;
  close(): Promise<void>;
}

/**
 * Starts the pools. `workerArgv` is how to run one worker process for a queue (by default this
 * same program: `<node> <entry script> worker --queues <q> --supervised`).
 */
export async function startAutoscaler(options: {
  config: Config;
  log: Logger;
  workerArgv?: (queue: string, slot: number) => string[];
}): Promise<RunningAutoscaler> {
  const { config } = options;
  const log = options.log.child({ component: "autoscaler" });
  const db = createDb({ ...config.database, poolMax: 2, applicationName: "flowline-autoscaler" });
  const stores = await openStores(config, {
    name: "flowline-autoscaler",
    flavour: "consumer",
    subscribe: false,
    sql: db.sql,
    onError: (error) => log.warn({ err: error.message }, "store connection error"),
  });
  const { registry } = stores;
  const argv =
    options.workerArgv ??
    ((queue: string, slot: number) => [
      process.argv[1]!,
      "worker",
      "--queues",
      queue,
      "--supervised",
      // Each process of the pools gets a port of its own: workerPort + its slot (0, or past the
      // last port, lets the OS choose one; the worker logs and announces it).
      "--metrics-port",
      String(metricsPortOf(config.metrics.workerPort, slot)),
    ]);
  const pools = startWorkerPools({
    config,
    log,
    measure: async () => {
      const load = await queueLoad(db.sql);
      return new Map<string, QueueLoad>(
        Object.keys(config.queues).map((q) => [
          q,
          { backlog: load.get(q)?.backlog ?? 0, active: load.get(q)?.active ?? 0 },
        ]),
      );
    },
    // Supervised workers ignore the terminal's Ctrl-C (the pool stops them, once, with SIGTERM)
    // and stop by themselves if this process dies: their stdin closes.
    spawnWorker: (queue, slot): ChildProcess =>
      spawn(process.execPath, argv(queue, slot), { stdio: ["pipe", "inherit", "inherit"], env: process.env }),
    publishTargets: (targets) => registry.publishTargets(targets, config.autoscaler.intervalSeconds * 5000),
  });
  return {
    pools,
    close: async () => {
      await pools.close();
      await stores.close();
      await db.close();
    },
  };
}
