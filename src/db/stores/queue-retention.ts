/**
 * How many completed jobs a queue on BullMQ's Postgres backend keeps. BullMQ's own count-based
 * retention (`removeOnComplete: { count }`) runs on every completion and reads every completed
 * job of the queue (a `NOT IN` over the newest `count`): about 8 ms of database time per job once
 * 10,000 are kept, the largest single cost of a step there. The dispatcher asks BullMQ for the age
 * limit only (an index range, nothing to do most of the time) and trims to the count here, every
 * half minute, in one statement.
 */
import type postgres from "postgres";

export class PgCompletedJobs {
  constructor(
    private readonly sql: postgres.Sql,
    /** BullMQ's schema on this database (its default is `bullmq`). */
    private readonly queueSchema = "bullmq",
  ) {}

  /**
   * Deletes the completed jobs of `queue` older than its newest `keep` (BullMQ's order: finish
   * time, then arrival); answers how many. Processes trimming the same queue at the same moment do
   * not queue up behind each other: all but one skip.
   */
  async trim(queue: string, keep: number): Promise<number> {
    if (!Number.isInteger(keep) || keep < 1) throw new Error(`keep must be a positive integer, not ${keep}`);
    const schema = this.sql(this.queueSchema);
    const result = await this.sql`
      with gate as (select pg_try_advisory_xact_lock(hashtextextended(${`flowline:retention:${queue}`}, 0)) as ok)
      delete from ${schema}.job j
      where j.queue = ${queue} and j.state = 'completed' and (select ok from gate)
        and (j.finished_at_ms, j.seq) < (
          select finished_at_ms, seq from ${schema}.job
          where queue = ${queue} and state = 'completed'
          order by finished_at_ms desc, seq desc
          offset ${keep - 1} limit 1)`;
    return result.count;
  }
}
