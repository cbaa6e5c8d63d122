import { drizzle, type PostgresJsDatabase } from "drizzle-orm/postgres-js";
import postgres from "postgres";
import { observedTransaction } from "../observability/hooks.ts";
import { auditedBegin } from "./repositories/audit.ts";
import * as schema from "./schema.ts";

export type Database = PostgresJsDatabase<typeof schema>;
/** A drizzle handle usable both at top level and inside `db.transaction`. */
export type Tx = Parameters<Parameters<Database["transaction"]>[0]>[0] | Database;

export interface DbOptions {
  /** Unset only when `flowline up` has not started the embedded Postgres: then this throws. */
  url?: string | undefined;
  poolMax: number;
  connectTimeoutSeconds: number;
  statementTimeoutMs: number;
  applicationName?: string;
  /**
   * Ends a transaction whose client went silent for this long (a frozen process holding locks).
   * Set for processes whose authority is a lease, so a frozen holder cannot commit after waking.
   */
  idleInTransactionTimeoutMs?: number;
}

export interface DbHandle {
  readonly db: Database;
  readonly sql: postgres.Sql;
  close(timeoutSeconds?: number): Promise<void>;
  ping(): Promise<void>;
}

/**
 * postgres.js reports connection failures on the query that needed the connection (no pool-level
 * 'error' event can kill the process); connect and statement timeouts keep an exhausted or
 * unreachable database from hanging a request forever.
 */
export function createDb(options: DbOptions): DbHandle {
  const url = requireDatabaseUrl(options.url);
  const clientOptions = (max: number) => ({
    max,
    connect_timeout: options.connectTimeoutSeconds,
    idle_timeout: 30,
    onnotice: () => {},
    connection: {
      statement_timeout: options.statementTimeoutMs,
      application_name: options.applicationName ?? "flowline",
      ...(options.idleInTransactionTimeoutMs
        ? { idle_in_transaction_session_timeout: options.idleInTransactionTimeoutMs }
        : {}),
    },
  });
  // drizzle rewires its client's type parsers and serializers (timestamps as strings, JSON left
  // to itself), so the engine's hand-written SQL gets a client of its own with the defaults.
  const sql = observeTransactions(postgres(url, clientOptions(options.poolMax)));
  const drizzleClient = auditTransactions(
    postgres(url, clientOptions(Math.max(2, Math.ceil(options.poolMax / 2)))),
  );
  const db = drizzle(drizzleClient, { schema });
  return {
    db,
    sql,
    close: async (timeoutSeconds = 5) => {
      await Promise.all([
        sql.end({ timeout: timeoutSeconds }),
        drizzleClient.end({ timeout: timeoutSeconds }),
      ]);
    },
    ping: async () => {
      await sql`select 1`;
    },
  };
}

/**
 * Every transaction of the engine's client goes through `observedTransaction`: its span when
 * traced, its latency, and the events it wrote counted once it committed. Transactions of both
 * clients carry the audit entry of the request they run for (repositories/audit.ts).
 */
function observeTransactions(sql: postgres.Sql): postgres.Sql {
  const begin = sql.begin.bind(sql) as (...args: unknown[]) => Promise<unknown>;
  (sql as { begin: unknown }).begin = (...args: unknown[]) =>
    observedTransaction(() => auditedBegin(begin, args));
  return sql;
}

function auditTransactions(sql: postgres.Sql): postgres.Sql {
  const begin = sql.begin.bind(sql) as (...args: unknown[]) => Promise<unknown>;
  (sql as { begin: unknown }).begin = (...args: unknown[]) => auditedBegin(begin, args);
  return sql;
}

/**
 * The database URL, or a message saying what to do: only `flowline up` starts an embedded
 * Postgres, so every other role needs `DATABASE_URL`.
 */
export function requireDatabaseUrl(url: string | undefined): string {
  if (url) return url;
  throw new Error(
    "DATABASE_URL is not set: `flowline up` starts an embedded Postgres by itself, but this role " +
      "needs a database URL (the one `flowline up` prints, or your own server's)",
  );
}
