/** Where the test suite finds Postgres and Redis (the machine's defaults unless overridden). */
export const TEST_PG_URL =
  process.env.FLOWLINE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
export const TEST_REDIS_URL = process.env.FLOWLINE_TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

export function databaseUrl(name: string): string {
  const url = new URL(TEST_PG_URL);
  url.pathname = `/${name}`;
  return url.toString();
}

/**
 * Which stores the suite runs on: `redis` (the default) or `postgres` (FLOWLINE_TEST_STORES=postgres:
 * no Redis URL, so queues, locks, leases and fan-out run on Postgres). The `postgres-stores`
 * vitest project runs the engine, SSE, lock, supervisor and recovery files this way.
 */
export const TEST_STORES: "redis" | "postgres" =
  process.env.FLOWLINE_TEST_STORES === "postgres" ? "postgres" : "redis";
