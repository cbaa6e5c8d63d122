/**
 * `flowline migrate --check`: before migrating, says whether the processes running now (API and
 * supervisors from the process registry, workers from the worker registry, the supervisor lease
 * holder) can keep running against the schema this release migrates to. Applies nothing.
 */

import postgres from "postgres";
import type { Config } from "../config/index.ts";
import { release } from "../config/release.ts";
import { createDb, requireDatabaseUrl } from "../db/client.ts";
import { carriedRequirement, readSchemaState } from "../db/schema-version.ts";
import {
  judgeRunning,
  migrationLabel,
  type ProcessVerdict,
  type RunningProcess,
  type SchemaState,
  stricter,
} from "../domain/versions.ts";
import { openStores } from "../stores/index.ts";

export interface MigrateCheck {
  schema: SchemaState;
  target: { newest: number; requires: ReturnType<typeof carriedRequirement> };
  processes: Array<RunningProcess & ProcessVerdict>;
  compatible: boolean;
}

async function schemaState(databaseUrl: string | undefined): Promise<SchemaState> {
  const url = requireDatabaseUrl(databaseUrl);
  const sql = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 10 });
  try {
    return await readSchemaState(sql);
  } catch (error) {
    // 3D000: the database does not exist yet; migrating creates it.
    if ((error as { code?: string }).code !== "3D000") throw error;
    return { newest: -1, pending: [], unknown: 0, requires: null };
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/** The supervisor id inside a lease token (`<id>:<random>`, see jobs/supervisor). */
const holderId = (token: string): string => token.slice(0, token.lastIndexOf(":"));

export async function checkMigration(config: Config): Promise<MigrateCheck> {
  const schema = await schemaState(config.database.url);
  const target = {
    newest: Math.max(schema.newest, release.schema),
    requires: stricter(schema.requires, carriedRequirement()),
  };
  const db = createDb({
    ...config.database,
    url: requireDatabaseUrl(config.database.url),
    poolMax: 2,
    applicationName: "flowline-migrate-check",
  });
  const stores = await openStores(config, {
    name: "flowline-migrate-check",
    flavour: "consumer",
    subscribe: false,
    sql: db.sql,
  });
  let running: RunningProcess[];
  try {
    const [processes, workers, leaseToken] = await Promise.all([
      stores.processes.online(),
      stores.registry.online(),
      stores.supervisorLease.holder(),
    ]);
    running = [
      ...processes.map((p) => ({ role: p.role, id: p.id, release: p.release })),
      ...workers.map((w) => ({
        role: "worker" as const,
        id: w.id,
        ...(w.release ? { release: w.release } : {}),
      })),
    ];
    // A supervisor of a release that does not announce itself is seen only through its lease.
    if (leaseToken && !running.some((p) => p.id === holderId(leaseToken)))
      running.push({ role: "supervisor", id: holderId(leaseToken) });
  } finally {
    await stores.close();
    await db.close();
  }
  const judged = running.map((p) => ({ ...p, ...judgeRunning(p, target) }));
  return { schema, target, processes: judged, compatible: judged.every((p) => p.compatible) };
}

export function renderMigrateCheck(check: MigrateCheck): string {
  const { schema, target } = check;
  const lines = [
    `database schema: ${schema.newest < 0 ? "empty" : migrationLabel(schema.newest)}${schema.unknown > 0 ? ` (${schema.unknown} migration(s) newer than this release)` : ""}`,
    `this release: Flowline ${release.version}, migrates to ${migrationLabel(target.newest)}${schema.pending.length > 0 ? ` (applies ${schema.pending.join(", ")})` : " (nothing to apply)"}`,
    target.requires
      ? `processes must know migration ${migrationLabel(target.requires.readersFrom)} or later (${migrationLabel(target.requires.migration)}: ${target.requires.reason ?? "contract step"})`
      : "no migration restricts which processes may run",
    "",
  ];
  if (check.processes.length === 0)
    lines.push("no running process announces itself (API processes before 0.2.0 do not)");
  for (const p of check.processes) {
    lines.push(
      `${p.compatible ? "ok      " : "BLOCKED "} ${p.role.padEnd(10)} ${p.id.padEnd(36)} ${p.version.padEnd(20)} knows ${migrationLabel(p.knows)}  ${p.detail}`,
    );
  }
  lines.push(
    "",
    check.compatible
      ? `compatible: every running process can run against schema ${migrationLabel(target.newest)}`
      : `NOT compatible: replace the BLOCKED processes before migrating to ${migrationLabel(target.newest)}`,
    "(API processes of releases before 0.2.0 do not announce themselves and are not listed)",
  );
  return `${lines.join("\n")}\n`;
}
