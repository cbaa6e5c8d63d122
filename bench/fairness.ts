/**
 * Tenant fairness on a shared queue: tenant A submits a run of `backlog` no-op steps, tenant B a
 * one-step run right after it, on a queue served by one worker with `concurrency` slots; once
 * with `fairShare` on (queue `fair`) and once off (queue `plain`, priority then arrival order).
 * Reports how many of A's steps started before B's step and B's submission-to-finish time.
 */
import type { Logger } from "pino";
import type { Config } from "../src/config/index.ts";
import type { EngineDeps } from "../src/engine/deps.ts";
import { submitRun } from "../src/engine/runs.ts";
import { startWorker } from "../src/jobs/worker.ts";
import { placeBehind, waitRuns } from "./store.ts";

export const FAIRNESS_QUEUES = { fair: {}, plain: { fairShare: false } } as const;

export interface Placement {
  aBefore: number;
  aAfter: number;
  latencyMs: number;
}

export async function fairnessBench(options: {
  engine: EngineDeps;
  config: Config;
  log: Logger;
  backlog: number;
  concurrency: number;
  /** Stores a workflow of `steps` no-op steps on `queue` for `tenantId`. */
  put(tenantId: string, name: string, queue: string, steps: number): Promise<void>;
}): Promise<Record<keyof typeof FAIRNESS_QUEUES, Placement>> {
  const { engine, config, log, backlog, concurrency, put } = options;
  const sql = engine.db.sql;
  await sql`insert into tenants (id) values ('tenant-a'), ('tenant-b') on conflict do nothing`;
  const out = {} as Record<keyof typeof FAIRNESS_QUEUES, Placement>;
  for (const queue of Object.keys(FAIRNESS_QUEUES) as Array<keyof typeof FAIRNESS_QUEUES>) {
    await put("tenant-a", `backlog-${queue}`, queue, backlog);
    await put("tenant-b", `single-${queue}`, queue, 1);
    const worker = await startWorker({ config, queues: [queue], concurrency, log });
    try {
      const a = await submitRun(engine, { tenantId: "tenant-a", workflow: `backlog-${queue}` });
      const b = await submitRun(engine, { tenantId: "tenant-b", workflow: `single-${queue}` });
      await waitRuns(sql, [a.run.id, b.run.id]);
      out[queue] = await placeBehind(sql, a.run.id, b.run.id);
    } finally {
      await worker.close();
    }
  }
  return out;
}
