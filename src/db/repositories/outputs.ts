/**
 * One step's output, read alone: run details trim large outputs, and this is how a client fetches
 * one whole.
 */
import type { Sql } from "./runs.ts";

/** The output, or undefined when the tenant has no such run or the run no such step. */
export async function stepOutput(
  sql: Sql,
  tenantId: string,
  runId: string,
  stepId: string,
): Promise<{ output: unknown } | undefined> {
  const [row] = await sql<{ output: unknown }[]>`
    select s.output from step_runs s join runs r on r.id = s.run_id
    where r.id = ${runId} and r.tenant_id = ${tenantId} and s.step_id = ${stepId}`;
  return row ? { output: row.output ?? null } : undefined;
}
