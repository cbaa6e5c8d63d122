/**
 * Tenant fairness on BullMQ's Postgres backend (no Redis): the same rule as the Redis script
 * (domain/fairness.ts), its state in `store_values` (one row per queue), the head of the queue read
 * from BullMQ's own `job` table (waiting jobs in `priority, seq` order). One transaction under a
 * per-queue advisory lock, so dispatchers in several processes never hand out the same tag twice.
 */
import type postgres from "postgres";
import { assignFairTags, type FairQueueState } from "../../domain/fairness.ts";

export class PgFairQueueClock {
  constructor(
    private readonly sql: postgres.Sql,
    /** BullMQ's schema on this database (its default is `bullmq`). */
    private readonly queueSchema = "bullmq",
  ) {}

  async assign(
    stateKey: string,
    queue: string,
    jobs: ReadonlyArray<{ tenantId: string; priority: number }>,
  ): Promise<number[]> {
    if (jobs.length === 0) return [];
    return (await this.sql.begin(async (tx) => {
      await tx`select pg_advisory_xact_lock(hashtextextended(${stateKey}, 0))`;
      const [head] = await tx<{ tag: number | null }[]>`
        select min(priority)::int as tag from ${tx(this.queueSchema)}.job
        where queue = ${queue} and state = 'waiting' and priority > 0`;
      const [row] = await tx<{ value: string }[]>`select value from store_values where key = ${stateKey}`;
      const saved = row ? (JSON.parse(row.value) as { v: number; flows: Record<string, number> }) : undefined;
      const state: FairQueueState = {
        v: saved?.v ?? 0,
        flows: new Map(Object.entries(saved?.flows ?? {})),
      };
      const tags = assignFairTags(state, head?.tag ?? null, jobs);
      const value = JSON.stringify({ v: state.v, flows: Object.fromEntries(state.flows) });
      await tx`insert into store_values (key, value) values (${stateKey}, ${value})
        on conflict (key) do update set value = excluded.value`;
      return tags;
    })) as number[];
  }
}
