/** Values every process of a deployment shares (`store_values`). */
import { randomBytes } from "node:crypto";
import type { Sql } from "../repositories/runs.ts";

/** The generated session secret: the first process to ask writes it, the others read it. */
export async function pgSessionSecret(sql: Sql, prefix: string): Promise<string> {
  const key = `${prefix}:auth:session-secret`;
  await sql`
    insert into store_values (key, value) values (${key}, ${randomBytes(32).toString("base64url")})
    on conflict (key) do nothing`;
  const [row] = await sql<{ value: string }[]>`select value from store_values where key = ${key}`;
  if (!row) throw new Error("the session secret vanished between insert and select");
  return row.value;
}
