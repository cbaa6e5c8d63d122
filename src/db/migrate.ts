import { fileURLToPath } from "node:url";
import { drizzle } from "drizzle-orm/postgres-js";
import { migrate } from "drizzle-orm/postgres-js/migrator";
import postgres from "postgres";
import { requireDatabaseUrl } from "./client.ts";

export const migrationsFolder = fileURLToPath(new URL("../../drizzle", import.meta.url));

/** An arbitrary constant: the advisory lock that serialises concurrent migrators. */
const MIGRATION_LOCK_ID = 7_316_004_221;

/**
 * Creates the database named in `url` if it does not exist yet. The database itself is tried
 * first: managed services often let an application user into its own database only, not into the
 * `postgres` maintenance database needed to create one.
 */
export async function ensureDatabase(url: string): Promise<{ created: boolean }> {
  const target = new URL(url);
  const name = decodeURIComponent(target.pathname.replace(/^\//, "")) || "postgres";
  const direct = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 10 });
  try {
    await direct`select 1`;
    return { created: false };
  } catch (error) {
    // 3D000: invalid_catalog_name, the database does not exist. Anything else is a real failure.
    if ((error as { code?: string }).code !== "3D000") throw error;
  } finally {
    await direct.end({ timeout: 5 });
  }
  const admin = new URL(url);
  admin.pathname = "/postgres";
  const sql = postgres(admin.toString(), { max: 1, onnotice: () => {}, connect_timeout: 10 });
  try {
    const rows = await sql`select 1 from pg_database where datname = ${name}`;
    if (rows.length > 0) return { created: false };
    try {
      await sql.unsafe(`create database "${name.replaceAll('"', '""')}"`);
      return { created: true };
    } catch (error) {
      // Another process created it between our check and our CREATE.
      if ((error as { code?: string }).code === "42P04") return { created: false };
      throw error;
    }
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/**
 * Creates the database if needed and applies every pending migration in `drizzle/`. Safe to run
 * from several processes at once: an advisory lock lets one migrate while the others wait.
 */
export async function runMigrations(
  databaseUrl: string | undefined,
  options: { queues?: boolean } = {},
): Promise<{ createdDatabase: boolean }> {
  const url = requireDatabaseUrl(databaseUrl);
  const { created } = await ensureDatabase(url);
  const sql = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 10 });
  try {
    await sql`select pg_advisory_lock(${MIGRATION_LOCK_ID})`;
    try {
      await migrate(drizzle(sql), { migrationsFolder });
      if (options.queues) await migrateQueueSchema(url);
    } finally {
      await sql`select pg_advisory_unlock(${MIGRATION_LOCK_ID})`;
    }
  } finally {
    await sql.end({ timeout: 5 });
  }
  return { createdDatabase: created };
}

/**
 * BullMQ's own schema (`bullmq`) for queues on Postgres (no `REDIS_URL`), through BullMQ's
 * migrator: idempotent and serialised by its own advisory lock.
 */
async function migrateQueueSchema(url: string): Promise<void> {
  const { Client } = (await import("pg")).default;
  const client = new Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  client.on("error", () => {});
  await client.connect();
  try {
    const { runMigrations: runQueueMigrations } = await import("bullmq");
    await runQueueMigrations(client as never);
  } finally {
    await client.end();
  }
}
