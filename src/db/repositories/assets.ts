/**
 * Reads of assets and their materializations (SPEC §4, §5). Read-only: a materialization is
 * written by the attempt that produced it, fenced by its asset lock's token (engine/attempts.ts).
 * Asset keys are ASCII; cursor filters compare them by code unit (`collate "C"`).
 */
import type { Sql } from "./runs.ts";

/** Which assets to read: one key, or the keys after a cursor, or all. */
export interface AssetKeyFilter {
  key?: string;
  afterKey?: string;
}

/** One asset key of one workflow's latest version: provided by a step, and/or given a policy. */
export interface AssetProviderRow {
  workflow: string;
  key: string;
  provided: boolean;
  policy: { maxAgeSeconds?: number; autoMaterialize?: boolean; description?: string } | null;
}

/**
 * Reads the asset keys of the latest version of every live (not archived) workflow of the tenant,
 * with the workflow's policy for each, ordered by key then workflow name. Only keys and policies
 * are extracted from the stored specs. `key` narrows to one asset (a containment test on the spec
 * skips the workflows that cannot mention it).
 */
export async function assetProviderRows(
  sql: Sql,
  tenantId: string,
  filter: AssetKeyFilter,
): Promise<AssetProviderRow[]> {
  const { key, afterKey } = filter;
  return sql<AssetProviderRow[]>`
    select w.name as workflow, k.key, k.provided, v.spec->'assets'->k.key as policy
    from workflows w
    join workflow_versions v on v.workflow_id = w.id and v.version = w.latest_version
    cross join lateral (
      select d.key, bool_or(d.provided) as provided from (
        select jsonb_array_elements_text(coalesce(s->'provides', '[]'::jsonb)) as key, true as provided
        from jsonb_array_elements(v.spec->'steps') s
        union all
        select jsonb_object_keys(coalesce(v.spec->'assets', '{}'::jsonb)), false
      ) d group by d.key
    ) k
    where w.tenant_id = ${tenantId} and w.archived_at is null
      ${
        key === undefined
          ? sql``
          : sql`and k.key = ${key} and (v.spec->'steps' @> ${sql.json([{ provides: [key] }])}
              or coalesce(v.spec->'assets', '{}'::jsonb) ? ${key})`
      }
      ${afterKey === undefined ? sql`` : sql`and k.key > ${afterKey} collate "C"`}
    order by k.key, w.name`;
}

export interface MaterializationAggregateRow {
  key: string;
  count: number;
  last_at: Date | null;
  id: string | null;
  run_id: string | null;
  step_id: string | null;
  partition_key: string | null;
  created_at: Date | null;
}

/**
 * Reads, per asset key of the tenant: how many materializations are recorded, the latest one,
 * and when the asset was last materialized (the `assets` row keeps that time after retention has
 * deleted the materialization rows). One statement whatever the number of assets.
 */
export async function materializationAggregates(
  sql: Sql,
  tenantId: string,
  filter: AssetKeyFilter,
): Promise<MaterializationAggregateRow[]> {
  const { key, afterKey } = filter;
  const keyFilter = (column: string) =>
    sql`${key === undefined ? sql`` : sql`and ${sql(column)} = ${key}`}
      ${afterKey === undefined ? sql`` : sql`and ${sql(column)} > ${afterKey} collate "C"`}`;
  return sql<MaterializationAggregateRow[]>`
    with counted as (
      select asset_key as key, count(*)::int as count, max(created_at) as last_at
      from materializations where tenant_id = ${tenantId} ${keyFilter("asset_key")}
      group by asset_key
    ), latest as (
      select distinct on (asset_key) asset_key as key, id, run_id, step_id, partition_key, created_at
      from materializations where tenant_id = ${tenantId} ${keyFilter("asset_key")}
      order by asset_key, created_at desc, id desc
    ), recorded as (
      select key, last_materialized_at from assets
      where tenant_id = ${tenantId} and last_materialized_at is not null ${keyFilter("key")}
    )
    select coalesce(c.key, r.key) as key, coalesce(c.count, 0) as count,
      greatest(c.last_at, r.last_materialized_at) as last_at,
      l.id, l.run_id, l.step_id, l.partition_key, l.created_at
    from counted c
    full join recorded r on r.key = c.key
    left join latest l on l.key = c.key`;
}

export interface MaterializationHistoryRow {
  id: string;
  run_id: string;
  step_id: string;
  partition_key: string | null;
  fencing_token: string;
  metadata: unknown;
  created_at: Date;
  /** `created_at` to the microsecond, for a cursor that a JavaScript Date would round. */
  exact_at: string;
}

/**
 * Reads up to `limit` materializations of one asset, newest first, optionally of one partition and
 * before a cursor (time to the microsecond, then id).
 */
export async function materializationHistory(
  sql: Sql,
  tenantId: string,
  key: string,
  page: { limit: number; partition?: string; before?: { at: string; id: string } },
): Promise<MaterializationHistoryRow[]> {
  return sql<MaterializationHistoryRow[]>`
    select id, run_id, step_id, partition_key, fencing_token, metadata, created_at,
      to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as exact_at
    from materializations
    where tenant_id = ${tenantId} and asset_key = ${key}
      ${page.partition === undefined ? sql`` : sql`and partition_key = ${page.partition}`}
      ${
        page.before === undefined
          ? sql``
          : sql`and (created_at, id) < (${page.before.at}::timestamptz, ${page.before.id}::bigint)`
      }
    order by created_at desc, id desc
    limit ${page.limit}`;
}

export type LatestPartitionRow = Pick<
  MaterializationHistoryRow,
  "id" | "run_id" | "step_id" | "partition_key" | "created_at"
> & {
  /** How many partitions the asset has in all. */
  total: number;
};

/** Reads the latest materialization of each partition of one asset, greatest partition key first. */
export async function latestPartitions(
  sql: Sql,
  tenantId: string,
  key: string,
  limit: number,
): Promise<LatestPartitionRow[]> {
  return sql<LatestPartitionRow[]>`
    select p.*, (count(*) over ())::int as total from (
      select distinct on (partition_key) id, run_id, step_id, partition_key, created_at
      from materializations
      where tenant_id = ${tenantId} and asset_key = ${key} and partition_key is not null
      order by partition_key desc, created_at desc, id desc
    ) p
    order by p.partition_key desc
    limit ${limit}`;
}

/** Reads which live workflows (at their latest version) provide which of `assets`. */
export async function assetProviders(
  sql: Sql,
  tenantId: string,
  assets: readonly string[],
): Promise<Array<{ workflow_id: string; version: number; asset: string }>> {
  return sql<{ workflow_id: string; version: number; asset: string }[]>`
    select w.id as workflow_id, w.latest_version as version, p.asset
    from workflows w
    join workflow_versions v on v.workflow_id = w.id and v.version = w.latest_version
    cross join lateral jsonb_array_elements(v.spec->'steps') s
    cross join lateral jsonb_array_elements_text(coalesce(s->'provides', '[]'::jsonb)) p(asset)
    where w.tenant_id = ${tenantId} and w.archived_at is null
      and p.asset = any(${sql.array(assets as string[])}::text[])`;
}

/** Reads the latest materialization (time and metadata) of each of `assets` in one partition (or none). */
export async function lastMaterializations(
  sql: Sql,
  tenantId: string,
  assets: readonly string[],
  partition: string | null,
): Promise<Map<string, { at: Date; metadata: unknown }>> {
  if (assets.length === 0) return new Map();
  const rows = await sql<{ asset_key: string; created_at: Date; metadata: unknown }[]>`
    select distinct on (asset_key) asset_key, created_at, metadata from materializations
    where tenant_id = ${tenantId} and asset_key = any(${sql.array(assets as string[])}::text[])
      and partition_key is not distinct from ${partition}
    order by asset_key, created_at desc, id desc`;
  return new Map(rows.map((r) => [r.asset_key, { at: r.created_at, metadata: r.metadata }]));
}

export interface AutoMaterializeCandidate {
  tenant_id: string;
  workflow_id: string;
  version: number;
  asset: string;
  max_age: number | null;
}

/** Reads, across tenants, the assets whose policy in a live workflow says `autoMaterialize: true`. */
export async function autoMaterializeCandidates(sql: Sql): Promise<AutoMaterializeCandidate[]> {
  return sql<AutoMaterializeCandidate[]>`
    select w.tenant_id, w.id as workflow_id, w.latest_version as version, a.key as asset,
      (a.value->>'maxAgeSeconds')::int as max_age
    from workflows w
    join workflow_versions v on v.workflow_id = w.id and v.version = w.latest_version
    cross join lateral jsonb_each(coalesce(v.spec->'assets', '{}'::jsonb)) a
    where w.archived_at is null and (a.value->>'autoMaterialize')::boolean is true`;
}

/** Reads when each (tenant, asset) was last materialized unpartitioned, keyed `tenant/asset`. */
export async function lastUnpartitionedMaterializations(
  sql: Sql,
  assets: ReadonlyArray<{ tenantId: string; asset: string }>,
): Promise<Map<string, Date>> {
  if (assets.length === 0) return new Map();
  const rows = await sql<{ tenant_id: string; asset_key: string; at: Date }[]>`
    select tenant_id, asset_key, max(created_at) as at from materializations
    where partition_key is null and (tenant_id, asset_key) in
      (select * from unnest(${sql.array(assets.map((a) => a.tenantId))}::text[],
        ${sql.array(assets.map((a) => a.asset))}::text[]) as x(t, a))
    group by tenant_id, asset_key`;
  return new Map(rows.map((r) => [`${r.tenant_id}/${r.asset_key}`, r.at]));
}
