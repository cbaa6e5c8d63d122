import type { Sql } from "./runs.ts";

/** How stale `last_used_at` may get: a key used constantly costs one write a minute, not one per request. */
export const LAST_USED_RESOLUTION_SECONDS = 60;

/** Records that a key was used now, unless that was recorded within the resolution already. */
export async function recordKeyUse(sql: Sql, keyId: string): Promise<void> {
  await sql`
    update api_keys set last_used_at = now()
    where id = ${keyId}
      and (last_used_at is null
        or last_used_at < now() - make_interval(secs => ${LAST_USED_RESOLUTION_SECONDS}))`;
}
