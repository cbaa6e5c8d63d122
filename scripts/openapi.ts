/**
 * The OpenAPI document the API serves at /openapi.json, built without Postgres or Redis (the
 * connections are lazy and never used): `node bin/run-ts.js scripts/openapi.ts > openapi.json`.
 */
import { pathToFileURL } from "node:url";
import { pino } from "pino";
import { buildApp } from "../src/api/app.ts";
import { parseConfig } from "../src/config/index.ts";
import { createDb } from "../src/db/client.ts";
import { openStores } from "../src/stores/index.ts";

export async function openApiDocument(): Promise<Record<string, unknown>> {
  // Addresses nothing listens on: building the document must not touch real stores.
  const config = parseConfig({
    database: { url: "postgres://flowline@127.0.0.1:9/openapi" },
    redis: { url: "redis://127.0.0.1:9" },
  });
  const db = createDb(config.database);
  const stores = await openStores(config, {
    name: "openapi",
    flavour: "request",
    subscribe: true,
    sql: db.sql,
  });
  const app = await buildApp({ config, db, stores, logger: pino({ level: "silent" }) });
  await app.ready();
  return app.swagger() as unknown as Record<string, unknown>;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.stdout.write(`${JSON.stringify(await openApiDocument(), null, 2)}\n`);
  // The unused lazy connections would keep retrying: nothing else is left to do.
  process.exit(0);
}
