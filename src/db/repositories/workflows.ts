import { and, asc, eq, gt, isNull, sql } from "drizzle-orm";
import { definitionHash } from "../../domain/workflow/canonical.ts";
import type { WorkflowSpec } from "../../domain/workflow/spec.ts";
import type { Database } from "../client.ts";
import { workflows, workflowVersions } from "../schema.ts";
import type { Sql } from "./runs.ts";

export interface WorkflowSummary {
  name: string;
  latestVersion: number;
  description: string | null;
  stepCount: number;
  createdAt: Date;
  updatedAt: Date;
  archivedAt: Date | null;
}

export interface WorkflowVersionRecord {
  workflowId: string;
  name: string;
  version: number;
  latestVersion: number;
  hash: string;
  spec: WorkflowSpec;
  createdAt: Date;
  archivedAt: Date | null;
}

export function workflowsRepository(db: Database) {
  return {
    /**
     * Stores a validated definition. Content identical to the latest version answers that version
     * (`created: false`); anything else becomes the next version. The workflow row is locked for
     * the duration, so concurrent PUTs of one name produce consecutive versions, never a fork.
     * Putting an archived workflow restores it.
     */
    async put(
      tenantId: string,
      spec: WorkflowSpec,
    ): Promise<{ name: string; version: number; created: boolean; hash: string }> {
      const hash = definitionHash(spec);
      return db.transaction(async (tx) => {
        await tx
          .insert(workflows)
          .values({ tenantId, name: spec.name, latestVersion: 0 })
          .onConflictDoNothing({ target: [workflows.tenantId, workflows.name] });
        const [wf] = await tx
          .select({
            id: workflows.id,
            latestVersion: workflows.latestVersion,
            archivedAt: workflows.archivedAt,
          })
          .from(workflows)
          .where(and(eq(workflows.tenantId, tenantId), eq(workflows.name, spec.name)))
          .for("update");
        if (!wf) throw new Error("workflow row vanished inside its own transaction");
        if (wf.latestVersion > 0) {
          const [latest] = await tx
            .select({ hash: workflowVersions.hash })
            .from(workflowVersions)
            .where(
              and(eq(workflowVersions.workflowId, wf.id), eq(workflowVersions.version, wf.latestVersion)),
            );
          if (latest?.hash === hash) {
            if (wf.archivedAt) {
              await tx
                .update(workflows)
                .set({ archivedAt: null, updatedAt: sql`now()` })
                .where(eq(workflows.id, wf.id));
            }
            return { name: spec.name, version: wf.latestVersion, created: false, hash };
          }
        }
        const version = wf.latestVersion + 1;
        await tx.insert(workflowVersions).values({ workflowId: wf.id, version, spec, hash });
        await tx
          .update(workflows)
          .set({ latestVersion: version, archivedAt: null, updatedAt: sql`now()` })
          .where(eq(workflows.id, wf.id));
        return { name: spec.name, version, created: true, hash };
      });
    },

    async get(tenantId: string, name: string, version?: number): Promise<WorkflowVersionRecord | null> {
      const rows = await db
        .select({
          workflowId: workflows.id,
          name: workflows.name,
          version: workflowVersions.version,
          latestVersion: workflows.latestVersion,
          hash: workflowVersions.hash,
          spec: workflowVersions.spec,
          createdAt: workflowVersions.createdAt,
          archivedAt: workflows.archivedAt,
        })
        .from(workflows)
        .innerJoin(
          workflowVersions,
          and(
            eq(workflowVersions.workflowId, workflows.id),
            eq(workflowVersions.version, version ?? workflows.latestVersion),
          ),
        )
        .where(and(eq(workflows.tenantId, tenantId), eq(workflows.name, name)))
        .limit(1);
      const row = rows[0];
      return row ? { ...row, spec: row.spec as WorkflowSpec } : null;
    },

    /** Names in ascending order after `afterName`; `limit + 1` rows are read to know if more exist. */
    async list(
      tenantId: string,
      options: { limit: number; afterName?: string; includeArchived: boolean },
    ): Promise<{ items: WorkflowSummary[]; hasMore: boolean }> {
      const rows = await db
        .select({
          name: workflows.name,
          latestVersion: workflows.latestVersion,
          description: sql<string | null>`${workflowVersions.spec}->>'description'`,
          stepCount: sql<number>`jsonb_array_length(${workflowVersions.spec}->'steps')`,
          createdAt: workflows.createdAt,
          updatedAt: workflows.updatedAt,
          archivedAt: workflows.archivedAt,
        })
        .from(workflows)
        .innerJoin(
          workflowVersions,
          and(
            eq(workflowVersions.workflowId, workflows.id),
            eq(workflowVersions.version, workflows.latestVersion),
          ),
        )
        .where(
          and(
            eq(workflows.tenantId, tenantId),
            options.afterName === undefined ? undefined : gt(workflows.name, options.afterName),
            options.includeArchived ? undefined : isNull(workflows.archivedAt),
          ),
        )
        .orderBy(asc(workflows.name))
        .limit(options.limit + 1);
      return { items: rows.slice(0, options.limit), hasMore: rows.length > options.limit };
    },

    /**
     * Archives (soft-deletes) a workflow; its versions stay for the runs that pinned them. In a
     * transaction, like every change a request makes, so its audit entry commits with it.
     */
    async archive(tenantId: string, name: string): Promise<boolean> {
      const rows = await db.transaction((tx) =>
        tx
          .update(workflows)
          .set({ archivedAt: sql`coalesce(${workflows.archivedAt}, now())`, updatedAt: sql`now()` })
          .where(and(eq(workflows.tenantId, tenantId), eq(workflows.name, name)))
          .returning({ id: workflows.id }),
      );
      return rows.length > 0;
    },
  };
}

export type WorkflowsRepository = ReturnType<typeof workflowsRepository>;

// --- lookups for the engine's hand-written SQL (a `postgres` client, inside its transactions) ----

/** Reads a workflow's name by id. */
export async function workflowName(sql: Sql, workflowId: string): Promise<string | undefined> {
  const [row] = await sql<{ name: string }[]>`select name from workflows where id = ${workflowId}`;
  return row?.name;
}

/** Reads the names of these workflows, in name order. */
export async function workflowNames(sql: Sql, workflowIds: readonly string[]): Promise<string[]> {
  const rows = await sql<{ name: string }[]>`
    select name from workflows where id = any(${sql.array(workflowIds as string[])}::uuid[]) order by name`;
  return rows.map((r) => r.name);
}

/** Reads a tenant's workflow by name (archived or not): its id and latest version. */
export async function workflowByName(
  sql: Sql,
  tenantId: string,
  name: string,
): Promise<{ id: string; latest_version: number; archived_at: Date | null } | undefined> {
  const [row] = await sql<{ id: string; latest_version: number; archived_at: Date | null }[]>`
    select id, latest_version, archived_at from workflows where tenant_id = ${tenantId} and name = ${name}`;
  return row;
}
