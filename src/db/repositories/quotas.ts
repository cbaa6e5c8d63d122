/**
 * What a tenant holds now, for its quotas (SPEC §13): active runs and the steps they have still to
 * finish. One statement over the partial index of active runs.
 */
import type { Sql } from "./runs.ts";

export interface TenantLoad {
  activeRuns: number;
  /** Steps of the tenant's active runs not yet in a terminal state. */
  openSteps: number;
  /** Steps of the named workflow's current version (0 when none is named or it does not exist). */
  workflowSteps: number;
}

export async function tenantLoad(sql: Sql, tenantId: string, workflow?: string): Promise<TenantLoad> {
  const [row] = await sql<{ active_runs: number; open_steps: number; workflow_steps: number }[]>`
    select a.active_runs, a.open_steps,
      coalesce((select jsonb_array_length(v.spec->'steps') from workflows w
        join workflow_versions v on v.workflow_id = w.id and v.version = w.latest_version
        where w.tenant_id = ${tenantId} and w.name = ${workflow ?? null}), 0)::int as workflow_steps
    from (select count(*)::int as active_runs, coalesce(sum(pending_steps), 0)::int as open_steps from runs
      where tenant_id = ${tenantId} and status in ('queued', 'running', 'paused', 'rolling_back')) a`;
  return { activeRuns: row!.active_runs, openSteps: row!.open_steps, workflowSteps: row!.workflow_steps };
}
