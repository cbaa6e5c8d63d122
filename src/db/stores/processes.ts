/** API and supervisor announcements on Postgres (an unlogged table; see `ProcessDirectory`). */
import type postgres from "postgres";
import {
  keepAnnounced,
  PROCESS_ANNOUNCE_MS,
  type ProcessDirectory,
  type ProcessInfo,
} from "../../redis/processes.ts";

export class PgProcessRegistry implements ProcessDirectory {
  constructor(private readonly sql: postgres.Sql) {}

  async announce(info: ProcessInfo, ttlMs: number = PROCESS_ANNOUNCE_MS * 3): Promise<void> {
    await this.sql`
      insert into store_processes (id, info, expires_at)
      values (${info.id}, ${this.sql.json(info as never)}, clock_timestamp() + ${ttlMs} * interval '1 millisecond')
      on conflict (id) do update set info = excluded.info, expires_at = excluded.expires_at`;
  }

  async remove(id: string): Promise<void> {
    await this.sql`delete from store_processes where id = ${id}`;
  }

  async online(): Promise<ProcessInfo[]> {
    await this.sql`delete from store_processes where expires_at <= clock_timestamp()`;
    const rows = await this.sql<{ info: ProcessInfo }[]>`
      select info from store_processes where expires_at > clock_timestamp() order by id`;
    return rows.map((r) => r.info);
  }

  keepAnnounced(info: ProcessInfo, onError: (error: Error) => void): () => Promise<void> {
    return keepAnnounced(this, info, onError);
  }
}
