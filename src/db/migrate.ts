import { fileURLToPath } from "node:url";
import { drizzle } from "drizzle-orm/postgres-js";
import { migrate } from "drizzle-orm/postgres-js/migrator";
import postgres from "postgres";
import { requireDatabaseUrl } from "./client.ts";
import { assertSchemaUnderstood, recordSchemaVersions } from "./schema-version.ts";

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
      // Another process created it between our check and our CREATE: 42P04 (duplicate_database),
      // or 23505 on pg_database's name index when both CREATEs ran at the same moment.
      const code = (error as { code?: string }).code;
      if (code === "42P04" || code === "23505") return { created: false };
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
  options: { lockTimeoutMs?: number; attempts?: number; folder?: string; queues?: boolean } = {},
): Promise<{ createdDatabase: boolean }> {
  const url = requireDatabaseUrl(databaseUrl);
  const { created } = await ensureDatabase(url);
  const lockTimeoutMs = options.lockTimeoutMs ?? MIGRATION_LOCK_TIMEOUT_MS;
  const attempts = options.attempts ?? MIGRATION_ATTEMPTS;
  // A bounded wait for each table lock: an ALTER queued behind a long transaction would stall
  // every query on that table behind it, and one that meets live transactions in another order
  // can deadlock with them. Better to give up, let the traffic through, and try again.
  const sql = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 10 });
  try {
    // Waiting for another migrator is fine (no lock_timeout yet): it is not traffic.
    await sql`select pg_advisory_lock(${MIGRATION_LOCK_ID})`;
    try {
      await sql`select set_config('lock_timeout', ${`${lockTimeoutMs}ms`}, false)`;
      for (let attempt = 1; ; attempt++) {
        try {
          // One transaction: a migration that gave up left nothing behind.
          await migrate(drizzle(sql), { migrationsFolder: options.folder ?? migrationsFolder });
          break;
        } catch (error) {
          if (attempt >= attempts || !LOCK_CONFLICTS.has(sqlStateOf(error) ?? "")) throw error;
          await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** (attempt - 1))));
        }
      }
      await recordSchemaVersions(sql);
      if (options.queues) await migrateQueueSchema(url);
    } finally {
      await sql`select pg_advisory_unlock(${MIGRATION_LOCK_ID})`;
    }
  } finally {
    await sql.end({ timeout: 5 });
  }
  return { createdDatabase: created };
}

/** How long a migration statement waits for a table lock before the migration is tried again. */
const MIGRATION_LOCK_TIMEOUT_MS = 3000;
const MIGRATION_ATTEMPTS = 20;
/** lock_not_available (lock_timeout), deadlock_detected. */
const LOCK_CONFLICTS = new Set(["55P03", "40P01"]);

/** The SQLSTATE of a Postgres error, also when drizzle wrapped it (as its `cause`). */
function sqlStateOf(error: unknown): string | undefined {
  for (let e = error as { code?: unknown; cause?: unknown } | undefined; e; e = e.cause as typeof e) {
    if (typeof e.code === "string") return e.code;
  }
  return undefined;
}

/**
 * Refuses (SchemaMismatchError) a schema this release does not understand: one that lacks its
 * migrations, or a newer one whose contract step needs a newer release. Answers a note to log when
 * the schema is newer but compatible.
 */
export async function checkSchema(databaseUrl: string | undefined): Promise<string | undefined> {
  const url = requireDatabaseUrl(databaseUrl);
  const sql = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 10 });
  try {
    return await assertSchemaUnderstood(sql);
  } finally {
    await sql.end({ timeout: 5 });
  }
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
