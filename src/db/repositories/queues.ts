/**
 * Queue load as Postgres sees it (the source of truth, which survives a Redis flush): per queue,
 * the backlog (steps waiting, plus retries whose delay has passed), the steps running, and the age
 * of the oldest waiting step. Only runs that are `running` count: a paused run's steps wait.
 */
import type { Sql } from "./runs.ts";

export interface QueueLoad {
  queue: string;
  backlog: number;
  active: number;
  delayed: number;
  oldestWaitingSeconds: number | null;
}

export async function queueLoad(sql: Sql): Promise<Map<string, QueueLoad>> {
  const rows = await sql<
    { queue: string; backlog: string; active: string; delayed: string; oldest: number | null }[]
  >`
    select s.queue,
      count(*) filter (where s.status = 'queued' or (s.status = 'retrying' and s.next_attempt_at <= now())) as backlog,
      count(*) filter (where s.status = 'running') as active,
      count(*) filter (where s.status = 'retrying' and s.next_attempt_at > now()) as delayed,
      extract(epoch from now() - min(case when s.status = 'queued' then s.queued_at else s.next_attempt_at end)
        filter (where s.status = 'queued' or (s.status = 'retrying' and s.next_attempt_at <= now())))::float8 as oldest
    from step_runs s join runs r on r.id = s.run_id
    where s.status in ('queued', 'retrying', 'running') and r.status = 'running'
    group by s.queue`;
  return new Map(
    rows.map((r) => [
      r.queue,
      {
        queue: r.queue,
        backlog: Number(r.backlog),
        active: Number(r.active),
        delayed: Number(r.delayed),
        oldestWaitingSeconds: r.oldest === null ? null : Math.max(0, r.oldest),
      },
    ]),
  );
}
