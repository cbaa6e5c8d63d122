/** Where the test suite finds Postgres and Redis (the machine's defaults unless overridden). */
export const TEST_PG_URL =
  process.env.FLOWLINE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
export const TEST_REDIS_URL = process.env.FLOWLINE_TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

export function databaseUrl(name: string): string {
  const url = new URL(TEST_PG_URL);
  url.pathname = `/${name}`;
  return url.toString();
}
