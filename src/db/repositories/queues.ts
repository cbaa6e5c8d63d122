/**
 * Queue load as Postgres sees it (the source of truth, which survives a Redis flush): per queue,
 * the backlog (steps waiting, plus retries whose delay has passed), the steps running, and the age
 * of the oldest waiting step. Only runs that are `running` count: a paused run's steps wait.
 * The compensations of runs `rolling_back` count alike: they are attempts on their step's queue.
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
    with work as (
      select s.queue, s.status::text as status, s.queued_at, s.next_attempt_at
      from step_runs s join runs r on r.id = s.run_id
      where s.status in ('queued', 'retrying', 'running')
        and ((s.phase = 'execute' and r.status = 'running') or (s.phase = 'compensate' and r.status = 'rolling_back'))
    )
    select queue,
      count(*) filter (where status = 'queued' or (status = 'retrying' and next_attempt_at <= now())) as backlog,
      count(*) filter (where status = 'running') as active,
      count(*) filter (where status = 'retrying' and next_attempt_at > now()) as delayed,
      extract(epoch from now() - min(case when status = 'queued' then queued_at else next_attempt_at end)
        filter (where status = 'queued' or (status = 'retrying' and next_attempt_at <= now())))::float8 as oldest
    from work
    group by queue`;
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
