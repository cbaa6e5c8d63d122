/** Materializations of assets: the asset's row (newest time and fencing token) and the record. */
import type { Sql } from "./runs.ts";

/**
 * Records that `stepId` of `runId` materialized `asset` with fencing token `fence`; answers the
 * record's id. The asset's token only grows. The caller holds the run lock and has claimed the
 * asset's fence (`claimAssetFence`) in the same transaction.
 */
export async function recordMaterialization(
  sql: Sql,
  m: {
    tenantId: string;
    asset: string;
    runId: string;
    stepId: string;
    partitionKey: string | null;
    fence: number;
    metadata: unknown;
  },
): Promise<number> {
  await sql`
    insert into assets (tenant_id, key, fencing_token, last_materialized_at)
    values (${m.tenantId}, ${m.asset}, ${m.fence}, now())
    on conflict (tenant_id, key) do update set last_materialized_at = now(),
      fencing_token = greatest(assets.fencing_token, excluded.fencing_token)`;
  const [row] = await sql<{ id: string }[]>`
    insert into materializations (tenant_id, asset_key, run_id, step_id, partition_key, fencing_token, metadata)
    values (${m.tenantId}, ${m.asset}, ${m.runId}, ${m.stepId}, ${m.partitionKey}, ${m.fence},
      ${sql.json((m.metadata ?? null) as never)})
    returning id`;
  return Number(row!.id);
}
