/**
 * The benchmark's reads and writes of Flowline's own tables, in one place: waiting for runs to end,
 * step timestamps (microseconds, computed in Postgres), and seeding stored runs for the read
 * benchmarks. These follow the schema; the engine itself is driven only through its entry points.
 */
import type postgres from "postgres";
import { isTerminalRun, runStatuses } from "../src/domain/status.ts";

const active = runStatuses.filter((s) => !isTerminalRun(s));

/**
 * Waits until every run has ended, and answers when the last one finished (epoch ms, from
 * Postgres). It polls for any active run at all — cheap, so that its own cost stays out of what the
 * bench measures — and reads the runs themselves once none is left. `onQuery` counts its queries.
 */
export async function waitRuns(sql: postgres.Sql, ids: string[], onQuery = () => {}): Promise<number> {
  for (;;) {
    onQuery();
    const [row] = await sql<
      { busy: boolean }[]
    >`select exists (select 1 from runs where status in ${sql(active)}) as busy`;
    if (!row!.busy) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  onQuery();
  const [row] = await sql<{ n: number; last: number | null }[]>`
    select count(*)::int as n, (extract(epoch from max(finished_at)) * 1000)::float8 as last
    from runs where id = any(${ids}::uuid[]) and status = 'succeeded'`;
  if (row!.n !== ids.length) throw new Error(`${ids.length - row!.n} of ${ids.length} runs did not succeed`);
  return row!.last!;
}

/** Per step, the gap in ms from its parent's finish to its own start, for a chain c0 → c1 → …. */
export async function chainGaps(sql: postgres.Sql, runId: string): Promise<number[]> {
  const rows = await sql<{ gap: number }[]>`
    select (extract(epoch from s.started_at - p.finished_at) * 1000)::float8 as gap
    from step_runs s join step_runs p
      on p.run_id = s.run_id and p.step_id = 'c' || (substr(s.step_id, 2)::int - 1)::text
    where s.run_id = ${runId} and s.step_id <> 'c0' and s.phase = 'execute' and p.phase = 'execute'`;
  return rows.map((r) => r.gap);
}

/** Ms from one step's finish to another's start. */
export async function stepGap(sql: postgres.Sql, runId: string, from: string, to: string): Promise<number> {
  const [row] = await sql<{ gap: number }[]>`
    select (extract(epoch from t.started_at - f.finished_at) * 1000)::float8 as gap
    from step_runs f, step_runs t
    where f.run_id = ${runId} and f.step_id = ${from} and t.run_id = ${runId} and t.step_id = ${to}
      and f.phase = 'execute' and t.phase = 'execute'`;
  return row!.gap;
}

export async function countRuns(sql: postgres.Sql): Promise<number> {
  return (await sql<{ n: number }[]>`select count(*)::int as n from runs`)[0]!.n;
}

/** The id of seeded run `n` (1-based): a valid version-4 UUID, so the API accepts it. */
export const seededRunId = (n: number) => `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;

/**
 * Stores copies of a finished run, numbered `from` to `to`: its run row, step rows and events, with
 * every column copied as is but the run id, and creation times 10 ms apart, a day back. To keep a
 * million runs within tens of seconds, each table is copied in a transaction of its own, in
 * parallel, without its foreign key triggers (the copies reference rows that exist) and with its
 * non-unique indexes dropped and rebuilt afterwards (one sort instead of a million inserts).
 */
export async function seedRuns(sql: postgres.Sql, template: string, from: number, to: number) {
  const id = "('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid";
  const at = "now() - interval '1 day' + g * interval '10 milliseconds'";
  const copies: Array<[table: string, key: string, replace: Record<string, string>]> = [
    ["runs", "id", { created_at: at, updated_at: at }],
    ["step_runs", "run_id", {}],
    ["events", "run_id", { created_at: at }],
  ];
  await Promise.all(
    copies.map(([table, key, replace]) =>
      sql.begin(async (tx) => {
        await tx`set local session_replication_role = replica`;
        await tx`set local maintenance_work_mem = '256MB'`;
        const indexes = await tx<{ name: string; def: string }[]>`
          select indexrelid::regclass::text as name, pg_get_indexdef(indexrelid) as def
          from pg_index where indrelid = ${table}::regclass and not indisunique`;
        for (const i of indexes) await tx.unsafe(`drop index ${i.name}`);
        const columns = (
          await tx<{ name: string }[]>`
            select column_name as name from information_schema.columns
            where table_schema = 'public' and table_name = ${table} and is_identity = 'NO'
              and is_generated = 'NEVER' order by ordinal_position`
        ).map((c) => c.name);
        const values = columns.map((c) => (c === key ? id : (replace[c] ?? `t."${c}"`)));
        await tx.unsafe(
          `insert into ${table} (${columns.map((c) => `"${c}"`).join(", ")})
           select ${values.join(", ")} from ${table} t, generate_series($1::int, $2::int) g
           where t."${key}" = $3`,
          [from, to, template],
        );
        for (const i of indexes) await tx.unsafe(i.def);
        await tx.unsafe(`analyze ${table}`);
      }),
    ),
  );
}

/**
 * Where tenant B's one-step run landed behind tenant A's backlog: how many of A's steps started
 * before B's step, how many were still to start when it did, and B's submission-to-finish time.
 */
export async function placeBehind(
  sql: postgres.Sql,
  runA: string,
  runB: string,
): Promise<{ aBefore: number; aAfter: number; latencyMs: number }> {
  const [row] = await sql<{ a_before: number; a_after: number; latency: number }[]>`
    with b as (
      select s.started_at, r.created_at, r.finished_at from step_runs s join runs r on r.id = s.run_id
      where s.run_id = ${runB} and s.phase = 'execute' order by s.started_at desc limit 1)
    select
      (select count(*)::int from step_runs a where a.run_id = ${runA} and a.started_at < b.started_at) as a_before,
      (select count(*)::int from step_runs a where a.run_id = ${runA} and a.started_at >= b.started_at) as a_after,
      (extract(epoch from b.finished_at - b.created_at) * 1000)::float8 as latency
    from b`;
  return { aBefore: row!.a_before, aAfter: row!.a_after, latencyMs: row!.latency };
}
