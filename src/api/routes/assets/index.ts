import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import { partitionKey } from "../../../domain/partitions.ts";
import { assetKey } from "../../../domain/workflow/spec.ts";
import {
  type AssetSummary,
  freshnessValues,
  getAsset,
  type HistoryCursor,
  listAssets,
  type MaterializationRecord,
  type MaterializationRef,
  PARTITIONS_SHOWN,
} from "../../../engine/assets.ts";
import type { EngineDeps } from "../../../engine/deps.ts";
import { callerOf } from "../../plugins/auth.ts";
import { problemResponses } from "../../problem.ts";
import {
  decodeCursor,
  encodeCursor,
  isoDate,
  nameParams,
  pageQuery,
  toIso,
  toIsoOrNull,
} from "../../schemas.ts";

const materializationRef = z
  .object({
    id: z.number().int(),
    runId: z.uuid(),
    stepId: z.string(),
    partitionKey: z.string().nullable(),
    createdAt: isoDate,
  })
  .meta({ id: "MaterializationRef" });

const materialization = materializationRef
  .extend({
    fencingToken: z.number().int().describe("The asset lock's fencing token the writer held"),
    metadata: z.unknown().nullable().describe("What the step returned for the asset (its `output` path)"),
  })
  .meta({ id: "Materialization" });

const assetSchema = z
  .object({
    key: z.string(),
    workflows: z.array(z.string()).describe("Live workflows whose current version provides the asset"),
    policy: z
      .object({
        maxAgeSeconds: z
          .number()
          .int()
          .nullable()
          .describe("Older than this, the asset is stale; null: never"),
        autoMaterialize: z.boolean().nullable(),
        description: z.string().nullable(),
      })
      .describe("From the first providing workflow (by name) that declares one; all null without")
      .meta({ id: "AssetPolicy" }),
    freshness: z.enum(freshnessValues),
    lastMaterializedAt: isoDate.nullable(),
    lastMaterialization: materializationRef.nullable(),
    materializations: z.number().int().describe("Materializations still recorded"),
  })
  .meta({ id: "Asset" });

const assetDetails = assetSchema
  .extend({
    history: z
      .object({ items: z.array(materialization), nextCursor: z.string().nullable() })
      .describe("Materializations, newest first (`?partition=` narrows, `?limit=`/`?cursor=` page)"),
    partitions: z
      .array(materializationRef)
      .describe(
        `The latest materialization of each partition, greatest key first (at most ${PARTITIONS_SHOWN})`,
      ),
    partitionCount: z.number().int().describe("How many partitions have been materialized"),
  })
  .meta({ id: "AssetDetails" });

const presentRef = (m: MaterializationRef) => ({
  id: m.id,
  runId: m.runId,
  stepId: m.stepId,
  partitionKey: m.partitionKey,
  createdAt: toIso(m.createdAt),
});

const presentRecord = (m: MaterializationRecord) => ({
  ...presentRef(m),
  fencingToken: m.fencingToken,
  metadata: m.metadata,
});

const presentAsset = (a: AssetSummary) => ({
  key: a.key,
  workflows: a.workflows,
  policy: a.policy,
  freshness: a.freshness,
  lastMaterializedAt: toIsoOrNull(a.lastMaterializedAt),
  lastMaterialization: a.lastMaterialization ? presentRef(a.lastMaterialization) : null,
  materializations: a.materializations,
});

/** History cursors carry the row's exact time (microseconds) and id: `<time>|<id>`. */
const historyCursorPattern = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.(\d{6})Z\|([1-9]\d{0,17})$/;

function parseHistoryCursor(value: string): HistoryCursor | null {
  const m = historyCursorPattern.exec(value);
  if (!m) return null;
  // Only a real instant: Postgres would fail on "2026-02-30" rather than refuse it politely.
  const time = new Date(`${m[1]}Z`);
  if (Number.isNaN(time.getTime()) || time.toISOString().slice(0, 19) !== m[1]) return null;
  return { at: `${m[1]}.${m[2]}Z`, id: m[3]! };
}

const encodeHistoryCursor = (c: HistoryCursor) => encodeCursor(`${c.at}|${c.id}`);

export const assetRoutes: FastifyPluginAsyncZod<{ engine: EngineDeps }> = async (app, { engine }) => {
  app.get(
    "/assets",
    {
      config: { scope: "read" },
      schema: {
        tags: ["assets"],
        operationId: "listAssets",
        summary: "List assets with their freshness, in key order",
        querystring: z.strictObject({
          ...pageQuery,
          workflow: nameParams.shape.name.optional().describe("Only assets this workflow provides"),
          freshness: z.enum(freshnessValues).optional(),
        }),
        response: {
          200: z.object({ items: z.array(assetSchema), nextCursor: z.string().nullable() }),
          ...problemResponses(),
        },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const q = request.query;
      const afterKey = decodeCursor(q.cursor, (v) => assetKey.safeParse(v).success);
      const page = await listAssets(engine, caller.tenantId, {
        limit: q.limit,
        ...(afterKey === undefined ? {} : { afterKey }),
        ...(q.workflow === undefined ? {} : { workflow: q.workflow }),
        ...(q.freshness === undefined ? {} : { freshness: q.freshness }),
      });
      const last = page.items.at(-1);
      return {
        items: page.items.map(presentAsset),
        nextCursor: page.hasMore && last ? encodeCursor(last.key) : null,
      };
    },
  );

  app.get(
    "/assets/:key",
    {
      config: { scope: "read" },
      schema: {
        tags: ["assets"],
        operationId: "getAsset",
        summary: "An asset with its freshness, past materializations and partitions",
        params: z.strictObject({ key: assetKey }),
        querystring: z.strictObject({
          ...pageQuery,
          partition: partitionKey.optional().describe("Only this partition's materializations"),
        }),
        response: { 200: assetDetails, ...problemResponses(404) },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const q = request.query;
      const cursor = decodeCursor(q.cursor, (v) => parseHistoryCursor(v) !== null);
      const before = cursor === undefined ? undefined : parseHistoryCursor(cursor)!;
      const details = await getAsset(engine, caller.tenantId, request.params.key, {
        limit: q.limit,
        ...(before === undefined ? {} : { before }),
        ...(q.partition === undefined ? {} : { partition: q.partition }),
      });
      return {
        ...presentAsset(details.asset),
        history: {
          items: details.history.items.map(presentRecord),
          nextCursor: details.history.next ? encodeHistoryCursor(details.history.next) : null,
        },
        partitions: details.partitions.map(presentRef),
        partitionCount: details.partitionCount,
      };
    },
  );
};
