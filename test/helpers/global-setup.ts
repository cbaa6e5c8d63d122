/**
 * Runs once per `vitest run`: migrates a template database whose name is derived from the
 * migration files (so a schema change gets a fresh template), and afterwards drops every
 * per-file database this run cloned from it.
 */
import { createHash, randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import type { TestProject } from "vitest/node";
import { migrationsFolder, runMigrations } from "../../src/db/migrate.ts";
import { databaseUrl, TEST_PG_URL } from "./services.ts";

declare module "vitest" {
  export interface ProvidedContext {
    templateDatabase: string;
    runId: string;
  }
}

function migrationsFingerprint(): string {
  const hash = createHash("sha256");
  for (const file of readdirSync(migrationsFolder)
    .filter((f) => f.endsWith(".sql"))
    .sort()) {
    hash.update(file).update(readFileSync(join(migrationsFolder, file)));
  }
  return hash.digest("hex").slice(0, 12);
}

export default async function setup(project: TestProject) {
  const template = `flowline_test_tpl_${migrationsFingerprint()}`;
  // BullMQ's Postgres schema too: files on Postgres stores clone it with the rest.
  await runMigrations(databaseUrl(template), { queues: true });
  const runId = randomBytes(3).toString("hex");
  project.provide("templateDatabase", template);
  project.provide("runId", runId);

  return async () => {
    const sql = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} });
    try {
      const rows = await sql<{ datname: string }[]>`
        select datname from pg_database where datname like ${`flowline_t_${runId}_%`}`;
      for (const { datname } of rows) await sql.unsafe(`drop database if exists "${datname}" with (force)`);
    } finally {
      await sql.end();
    }
  };
}
