/** Worker announcements and autoscaler targets on Postgres (unlogged tables; see `WorkerDirectory`). */

import type postgres from "postgres";
import type { WorkerDirectory, WorkerInfo } from "../../domain/ports.ts";
import type { QueueTarget } from "../../domain/scaling.ts";
import { thisRelease } from "../../redis/processes.ts";

export class PgWorkerRegistry implements WorkerDirectory {
  constructor(private readonly sql: postgres.Sql) {}

  async announce(info: WorkerInfo, ttlMs: number): Promise<void> {
    await this.sql`
      insert into store_workers (id, info, expires_at)
      values (${info.id}, ${this.sql.json({ ...info, release: thisRelease() } as never)}, clock_timestamp() + ${ttlMs} * interval '1 millisecond')
      on conflict (id) do update set info = excluded.info, expires_at = excluded.expires_at`;
  }

  async remove(id: string): Promise<void> {
    await this.sql`delete from store_workers where id = ${id}`;
  }

  async online(): Promise<WorkerInfo[]> {
    await this.sql`delete from store_workers where expires_at <= clock_timestamp()`;
    const rows = await this.sql<{ info: WorkerInfo }[]>`
      select info from store_workers where expires_at > clock_timestamp() order by id`;
    return rows.map((r) => r.info);
  }

  async publishTargets(targets: Record<string, QueueTarget>, ttlMs: number): Promise<void> {
    const entries = Object.entries(targets);
    if (entries.length === 0) return;
    await this.sql.begin(async (sql) => {
      for (const [queue, target] of entries) {
        await sql`
          insert into store_scaler_targets (queue, target, expires_at)
          values (${queue}, ${sql.json(target as never)}, clock_timestamp() + ${ttlMs} * interval '1 millisecond')
          on conflict (queue) do update set target = excluded.target, expires_at = excluded.expires_at`;
      }
      // Like the Redis hash, the whole set expires together with its latest write.
      await sql`update store_scaler_targets set expires_at = clock_timestamp() + ${ttlMs} * interval '1 millisecond'`;
    });
  }

  async targets(): Promise<Record<string, QueueTarget>> {
    const rows = await this.sql<{ queue: string; target: QueueTarget }[]>`
      select queue, target from store_scaler_targets where expires_at > clock_timestamp()`;
    return Object.fromEntries(rows.map((r) => [r.queue, r.target]));
  }
}
