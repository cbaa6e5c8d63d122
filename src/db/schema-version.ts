/**
 * Reads which migrations a database holds and records them, so that every process can judge the
 * schema it is about to run against (domain/versions.ts). Two sources, since releases before 0009
 * did not record anything: drizzle's own ledger (`drizzle.__drizzle_migrations`, one row per applied
 * migration, keyed by the journal's `when`) and `schema_versions` (names and contract steps of
 * the migrations applied by 0009 and later, including those this release does not carry).
 */
import { readFileSync } from "node:fs";
import type postgres from "postgres";
import { knownMigrations, release } from "../config/release.ts";
import {
  judgeSchema,
  type SchemaJudgement,
  type SchemaRequirement,
  type SchemaState,
  stricter,
} from "../domain/versions.ts";

interface CompatFile {
  contract: Record<string, { readersFrom: number; readersRelease: string; reason: string }>;
}

const compat = JSON.parse(
  readFileSync(new URL("../../drizzle/compat.json", import.meta.url), "utf8"),
) as CompatFile;

/** The contract steps among the migrations this release carries (drizzle/compat.json). */
export function carriedRequirement(upTo: number = release.schema): SchemaRequirement | null {
  let requires: SchemaRequirement | null = null;
  for (const [migration, c] of Object.entries(compat.contract)) {
    if (Number(migration) > upTo) continue;
    requires = stricter(requires, {
      migration: Number(migration),
      readersFrom: c.readersFrom,
      readersRelease: c.readersRelease,
      reason: c.reason,
    });
  }
  return requires;
}

const UNDEFINED_TABLE = "42P01";
const INVALID_SCHEMA = "3F000";

async function rowsOrNone<T>(query: Promise<T[]>): Promise<T[]> {
  try {
    return await query;
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === UNDEFINED_TABLE || code === INVALID_SCHEMA) return [];
    throw error;
  }
}

/** What the database holds, relative to the migrations this release carries. */
export async function readSchemaState(sql: postgres.Sql): Promise<SchemaState> {
  const applied = await rowsOrNone(
    sql<{ created_at: string }[]>`select created_at::text from drizzle.__drizzle_migrations`,
  );
  const recorded = await rowsOrNone(
    sql<
      {
        migration: number;
        readers_from: number | null;
        readers_release: string | null;
        reason: string | null;
      }[]
    >`select migration, readers_from, readers_release, reason from schema_versions`,
  );
  const whens = new Set(applied.map((r) => Number(r.created_at)));
  const lastApplied = Math.max(-1, ...whens);
  const known = new Set(knownMigrations.map((m) => m.when));
  let newest = -1;
  for (const m of knownMigrations) if (whens.has(m.when)) newest = Math.max(newest, m.idx);
  for (const r of recorded) newest = Math.max(newest, r.migration);
  let requires: SchemaRequirement | null = null;
  for (const r of recorded) {
    if (r.readers_from === null) continue;
    requires = stricter(requires, {
      migration: r.migration,
      readersFrom: r.readers_from,
      readersRelease: r.readers_release,
      reason: r.reason,
    });
  }
  // Databases migrated by releases that did not record contract steps: what this release knows.
  requires = stricter(requires, carriedRequirement(newest));
  return {
    newest,
    // What drizzle would apply: journal entries newer than the last applied one.
    pending: knownMigrations.filter((m) => m.when > lastApplied).map((m) => m.tag),
    unknown: [...whens].filter((w) => !known.has(w)).length,
    requires,
  };
}

/** Records the migrations this release carries that the database holds (after migrating). */
export async function recordSchemaVersions(sql: postgres.Sql): Promise<void> {
  const state = await readSchemaState(sql);
  const held = knownMigrations.filter((m) => m.idx <= state.newest);
  if (held.length === 0) return;
  const rows = held.map((m) => {
    const c = compat.contract[String(m.idx)];
    return {
      migration: m.idx,
      tag: m.tag,
      readers_from: c?.readersFrom ?? null,
      readers_release: c?.readersRelease ?? null,
      reason: c?.reason ?? null,
    };
  });
  await rowsOrNone(
    sql`insert into schema_versions ${sql(rows)}
        on conflict (migration) do update set tag = excluded.tag, readers_from = excluded.readers_from,
          readers_release = excluded.readers_release, reason = excluded.reason`,
  );
}

export class SchemaMismatchError extends Error {
  constructor(
    readonly problem: "behind" | "ahead",
    message: string,
  ) {
    super(message);
    this.name = "SchemaMismatchError";
  }
}

/**
 * Refuses to go on against a schema this release does not understand: one it must migrate first,
 * or a newer one a contract step made unreadable for it. Answers a note when the schema is newer
 * but compatible (worth a log line).
 */
export async function assertSchemaUnderstood(
  sql: postgres.Sql,
  process: { version: string; knows: number } = { version: release.version, knows: release.schema },
): Promise<string | undefined> {
  const judgement: SchemaJudgement = judgeSchema(process, await readSchemaState(sql));
  if (!judgement.ok) throw new SchemaMismatchError(judgement.problem, judgement.message);
  return judgement.note;
}
