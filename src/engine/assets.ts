/**
 * Reads of assets (SPEC §4, §5): which assets a tenant has, how fresh each is, and its past
 * materializations. An asset exists when the latest version of a live (not archived) workflow
 * provides it or declares a policy for it, or when it has been materialized.
 *
 * Cost: a listing is two queries whatever the number of assets: one over the latest versions of
 * the tenant's workflows, which extracts only asset keys and policies from the stored specs (a
 * spec is never shipped whole), and one aggregate over the tenant's materializations. Filters and
 * pagination then work on that merged set in memory, so a page costs as much as the assets after
 * its cursor — fine for thousands of assets, not for millions.
 */
import type { DbHandle } from "../db/client.ts";
import { notFound } from "../domain/errors.ts";
import { assetFreshness, type Freshness } from "../domain/planner.ts";
import type { EngineDeps } from "./deps.ts";

type Sql = DbHandle["sql"];

export const freshnessValues = ["missing", "stale", "fresh"] as const satisfies readonly Freshness[];

export interface AssetPolicyView {
  maxAgeSeconds: number | null;
  autoMaterialize: boolean | null;
  description: string | null;
}

export interface MaterializationRef {
  id: number;
  runId: string;
  stepId: string;
  partitionKey: string | null;
  createdAt: Date;
}

export interface MaterializationRecord extends MaterializationRef {
  fencingToken: number;
  metadata: unknown;
}

export interface AssetSummary {
  key: string;
  /** Live workflows whose latest version has a step providing the asset, by name. */
  workflows: string[];
  policy: AssetPolicyView;
  freshness: Freshness;
  lastMaterializedAt: Date | null;
  lastMaterialization: MaterializationRef | null;
  /** Materializations still recorded (retention deletes them with their runs). */
  materializations: number;
}

/** Position in a history page: the exact (microsecond) time and id of the last row shown. */
export interface HistoryCursor {
  at: string;
  id: string;
}

export interface AssetDetails {
  asset: AssetSummary;
  history: { items: MaterializationRecord[]; next: HistoryCursor | null };
  /** The latest materialization of each partition, greatest partition key first. */
  partitions: MaterializationRef[];
  partitionCount: number;
}

/** How many partitions the asset details list. */
export const PARTITIONS_SHOWN = 100;

const noPolicy: AssetPolicyView = { maxAgeSeconds: null, autoMaterialize: null, description: null };

interface ProviderRow {
  workflow: string;
  key: string;
  provided: boolean;
  policy: { maxAgeSeconds?: number; autoMaterialize?: boolean; description?: string } | null;
}

interface AssetDefinition {
  workflows: string[];
  policy: AssetPolicyView;
}

/**
 * Asset keys of the latest version of every live workflow of the tenant, with the workflow's
 * policy for each, ordered by key then workflow name. `key` narrows to one asset (a containment
 * test on the stored spec skips the workflows that cannot mention it).
 */
async function readDefinitions(
  sql: Sql,
  tenantId: string,
  filter: { key?: string; afterKey?: string },
): Promise<Map<string, AssetDefinition>> {
  const { key, afterKey } = filter;
  const rows = await sql<ProviderRow[]>`
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
  const out = new Map<string, AssetDefinition & { policyFromProvider: boolean }>();
  for (const row of rows) {
    let def = out.get(row.key);
    if (!def) {
      def = { workflows: [], policy: noPolicy, policyFromProvider: false };
      out.set(row.key, def);
    }
    if (row.provided) def.workflows.push(row.workflow);
    // A policy comes from the first providing workflow (by name) that declares one. Validation
    // refuses a policy without a provider in the same workflow, so the fallback to a declaring
    // workflow only serves definitions stored before that rule.
    if (row.policy !== null && !def.policyFromProvider && (row.provided || def.policy === noPolicy)) {
      def.policy = {
        maxAgeSeconds: row.policy.maxAgeSeconds ?? null,
        autoMaterialize: row.policy.autoMaterialize ?? null,
        description: row.policy.description ?? null,
      };
      def.policyFromProvider = row.provided;
    }
  }
  return out;
}

interface AggregateRow {
  key: string;
  count: number;
  last_at: Date | null;
  id: string | null;
  run_id: string | null;
  step_id: string | null;
  partition_key: string | null;
  created_at: Date | null;
}

interface MaterializationState {
  count: number;
  lastMaterializedAt: Date | null;
  last: MaterializationRef | null;
}

/**
 * Per asset key: how many materializations are recorded, the latest one, and when the asset was
 * last materialized. The `assets` row keeps that time after retention has deleted the rows.
 */
async function readMaterializationStates(
  sql: Sql,
  tenantId: string,
  filter: { key?: string; afterKey?: string },
): Promise<Map<string, MaterializationState>> {
  const { key, afterKey } = filter;
  const keyFilter = (column: string) =>
    sql`${key === undefined ? sql`` : sql`and ${sql(column)} = ${key}`}
      ${afterKey === undefined ? sql`` : sql`and ${sql(column)} > ${afterKey} collate "C"`}`;
  const rows = await sql<AggregateRow[]>`
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
  const out = new Map<string, MaterializationState>();
  for (const row of rows) {
    out.set(row.key, {
      count: row.count,
      lastMaterializedAt: row.last_at,
      last:
        row.id === null
          ? null
          : {
              id: Number(row.id),
              runId: row.run_id!,
              stepId: row.step_id!,
              partitionKey: row.partition_key,
              createdAt: row.created_at!,
            },
    });
  }
  return out;
}

function summarize(
  key: string,
  definition: AssetDefinition | undefined,
  state: MaterializationState | undefined,
  now: Date,
): AssetSummary {
  const policy = definition?.policy ?? noPolicy;
  const lastMaterializedAt = state?.lastMaterializedAt ?? null;
  return {
    key,
    workflows: definition?.workflows ?? [],
    policy,
    freshness: assetFreshness(
      policy.maxAgeSeconds === null ? undefined : { maxAgeSeconds: policy.maxAgeSeconds },
      { lastMaterializedAt },
      now,
    ),
    lastMaterializedAt,
    lastMaterialization: state?.last ?? null,
    materializations: state?.count ?? 0,
  };
}

export interface ListAssetsFilter {
  limit: number;
  /** The key of the last asset of the previous page. */
  afterKey?: string;
  /** Only assets this workflow provides. */
  workflow?: string;
  freshness?: Freshness;
  now?: Date;
}

/** The tenant's assets in key order. */
export async function listAssets(
  deps: EngineDeps,
  tenantId: string,
  filter: ListAssetsFilter,
): Promise<{ items: AssetSummary[]; hasMore: boolean }> {
  const now = filter.now ?? new Date();
  const range = filter.afterKey === undefined ? {} : { afterKey: filter.afterKey };
  const [definitions, states] = await Promise.all([
    readDefinitions(deps.db.sql, tenantId, range),
    readMaterializationStates(deps.db.sql, tenantId, range),
  ]);
  const keys = [...new Set([...definitions.keys(), ...states.keys()])].sort(compareKeys);
  const items: AssetSummary[] = [];
  for (const key of keys) {
    const definition = definitions.get(key);
    if (filter.workflow !== undefined && !definition?.workflows.includes(filter.workflow)) continue;
    const asset = summarize(key, definition, states.get(key), now);
    if (filter.freshness !== undefined && asset.freshness !== filter.freshness) continue;
    items.push(asset);
    if (items.length > filter.limit) break;
  }
  return { items: items.slice(0, filter.limit), hasMore: items.length > filter.limit };
}

/** Keys are ASCII; compare by code unit, as the SQL cursor filters do (`collate "C"`). */
function compareKeys(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export interface AssetHistoryFilter {
  limit: number;
  before?: HistoryCursor;
  partition?: string;
  now?: Date;
}

interface HistoryRow {
  id: string;
  run_id: string;
  step_id: string;
  partition_key: string | null;
  fencing_token: string;
  metadata: unknown;
  created_at: Date;
  exact_at: string;
}

/**
 * One asset with a page of its materializations, newest first, and the latest materialization
 * of each partition. Throws `not_found` for an asset the tenant does not have.
 */
export async function getAsset(
  deps: EngineDeps,
  tenantId: string,
  key: string,
  filter: AssetHistoryFilter,
): Promise<AssetDetails> {
  const sql = deps.db.sql;
  const now = filter.now ?? new Date();
  const [definitions, states, historyRows, partitionRows] = await Promise.all([
    readDefinitions(sql, tenantId, { key }),
    readMaterializationStates(sql, tenantId, { key }),
    sql<HistoryRow[]>`
      select id, run_id, step_id, partition_key, fencing_token, metadata, created_at,
        to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as exact_at
      from materializations
      where tenant_id = ${tenantId} and asset_key = ${key}
        ${filter.partition === undefined ? sql`` : sql`and partition_key = ${filter.partition}`}
        ${
          filter.before === undefined
            ? sql``
            : sql`and (created_at, id) < (${filter.before.at}::timestamptz, ${filter.before.id}::bigint)`
        }
      order by created_at desc, id desc
      limit ${filter.limit + 1}`,
    sql<(Omit<HistoryRow, "fencing_token" | "metadata" | "exact_at"> & { total: number })[]>`
      select p.*, (count(*) over ())::int as total from (
        select distinct on (partition_key) id, run_id, step_id, partition_key, created_at
        from materializations
        where tenant_id = ${tenantId} and asset_key = ${key} and partition_key is not null
        order by partition_key desc, created_at desc, id desc
      ) p
      order by p.partition_key desc
      limit ${PARTITIONS_SHOWN}`,
  ]);
  const definition = definitions.get(key);
  const state = states.get(key);
  if (definition === undefined && state === undefined) throw notFound(`Asset "${key}"`);

  const page = historyRows.slice(0, filter.limit);
  const last = page.at(-1);
  return {
    asset: summarize(key, definition, state, now),
    history: {
      items: page.map((r) => ({
        id: Number(r.id),
        runId: r.run_id,
        stepId: r.step_id,
        partitionKey: r.partition_key,
        fencingToken: Number(r.fencing_token),
        metadata: r.metadata ?? null,
        createdAt: r.created_at,
      })),
      next: historyRows.length > filter.limit && last ? { at: last.exact_at, id: String(last.id) } : null,
    },
    partitions: partitionRows.map((r) => ({
      id: Number(r.id),
      runId: r.run_id,
      stepId: r.step_id,
      partitionKey: r.partition_key,
      createdAt: r.created_at,
    })),
    partitionCount: partitionRows[0]?.total ?? 0,
  };
}
