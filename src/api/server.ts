/**
 * Starts the API: migrations, connections, root key, listening socket, and a close() that stops
 * accepting connections, finishes in-flight requests within the grace period and then releases
 * Postgres and Redis.
 */
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import type { FastifyBaseLogger, FastifyInstance } from "fastify";
import type { Config } from "../config/index.ts";
import { createDb, type DbHandle } from "../db/client.ts";
import { checkSchema, runMigrations } from "../db/migrate.ts";
import { keysRepository } from "../db/repositories/keys.ts";
import { thisRelease } from "../redis/processes.ts";
import { openStores, storeKind } from "../stores/index.ts";
import { buildApp } from "./app.ts";

export interface ApiServer {
  app: FastifyInstance;
  db: DbHandle;
  url: string;
  close(): Promise<void>;
}

export interface StartApiOptions {
  logger: FastifyBaseLogger;
  /** Called with a freshly generated root key, the one time one is generated. */
  onGeneratedRootKey?: (key: string) => void;
}

export async function startApiServer(config: Config, options: StartApiOptions): Promise<ApiServer> {
  const log = options.logger;
  const { createdDatabase } = await runMigrations(config.database.url, {
    queues: storeKind(config) === "postgres",
  });
  log.info({ createdDatabase }, "database migrated");
  const schemaNote = await checkSchema(config.database.url);
  if (schemaNote) log.warn(schemaNote);

  const db = createDb({ ...config.database, applicationName: "flowline-api" });
  const stores = await openStores(config, {
    name: "flowline-api",
    flavour: "request",
    subscribe: true,
    sql: db.sql,
    onError: (error) => log.warn({ err: error.message }, "store connection error"),
  });

  const { generatedKey, bootstrapRevoked } = await keysRepository(db.db).ensureRootKey(
    config.auth.bootstrapKey,
  );
  if (bootstrapRevoked) {
    log.error(
      "FLOWLINE_BOOTSTRAP_KEY (auth.bootstrapKey) names a key that was revoked; it stays revoked. " +
        "To rotate it, set a new value and restart (docs/security.md)",
    );
  }
  if (generatedKey) {
    log.warn("no root API key existed: generated one (printed once on stdout)");
    options.onGeneratedRootKey?.(generatedKey);
  }

  const app = await buildApp({ config, db, stores, logger: log });
  const address = await app.listen({ host: config.server.host, port: config.server.port });
  log.info({ address, ...thisRelease() }, "api listening");
  // Announced for `flowline migrate --check`, which judges the releases running against a schema.
  const unannounce = stores.processes.keepAnnounced(
    {
      id: `${hostname()}:${process.pid}:${randomBytes(2).toString("hex")}`,
      role: "api",
      pid: process.pid,
      host: hostname(),
      startedAt: new Date().toISOString(),
      release: thisRelease(),
    },
    (error) => log.debug({ err: error.message }, "process announcement failed"),
  );

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      const grace = config.server.shutdownGraceSeconds * 1000;
      const timer = setTimeout(() => {
        log.warn({ graceMs: grace }, "grace period over: closing remaining connections");
        app.server.closeAllConnections();
      }, grace);
      timer.unref();
      try {
        await unannounce();
        await app.close();
      } finally {
        clearTimeout(timer);
        await stores.close();
        await db.close();
      }
    })();
    return closing;
  };
  return { app, db, url: address, close };
}
