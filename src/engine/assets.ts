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
import {
  type AssetKeyFilter,
  assetProviderRows,
  latestPartitions,
  materializationAggregates,
  materializationHistory,
} from "../db/repositories/assets.ts";
import type { Sql } from "../db/repositories/runs.ts";
import { notFound } from "../domain/errors.ts";
import { assetFreshness, type Freshness } from "../domain/planner.ts";
import type { EngineDeps } from "./deps.ts";

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
  filter: AssetKeyFilter,
): Promise<Map<string, AssetDefinition>> {
  const rows = await assetProviderRows(sql, tenantId, filter);
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
  filter: AssetKeyFilter,
): Promise<Map<string, MaterializationState>> {
  const rows = await materializationAggregates(sql, tenantId, filter);
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
    materializationHistory(sql, tenantId, key, {
      limit: filter.limit + 1,
      ...(filter.partition === undefined ? {} : { partition: filter.partition }),
      ...(filter.before === undefined ? {} : { before: filter.before }),
    }),
    latestPartitions(sql, tenantId, key, PARTITIONS_SHOWN),
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
