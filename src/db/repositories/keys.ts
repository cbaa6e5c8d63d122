import { and, asc, eq, isNull, sql } from "drizzle-orm";
import { displayPrefix, generateApiKey, hashApiKey, ROOT_TENANT } from "../../domain/api-keys.ts";
import type { Scope } from "../../domain/status.ts";
import type { Database } from "../client.ts";
import { apiKeys, tenants } from "../schema.ts";

export interface ApiKeyRecord {
  id: string;
  tenantId: string;
  name: string;
  prefix: string;
  scopes: string[];
  root: boolean;
  createdAt: Date;
  lastUsedAt: Date | null;
}

const columns = {
  id: apiKeys.id,
  tenantId: apiKeys.tenantId,
  name: apiKeys.name,
  prefix: apiKeys.prefix,
  scopes: apiKeys.scopes,
  root: apiKeys.root,
  createdAt: apiKeys.createdAt,
  lastUsedAt: apiKeys.lastUsedAt,
};

/** Same value on every call: the advisory lock that serialises root-key bootstrapping. */
const BOOTSTRAP_LOCK_ID = 7_316_004_222;

export function keysRepository(db: Database) {
  return {
    /** The active key whose hash matches, or null. */
    async findByKey(key: string): Promise<ApiKeyRecord | null> {
      const rows = await db
        .select(columns)
        .from(apiKeys)
        .where(and(eq(apiKeys.secretHash, hashApiKey(key)), isNull(apiKeys.revokedAt)))
        .limit(1);
      return rows[0] ?? null;
    },

    /** The active key with this id, or null (browser sessions and stream tokens name keys by id). */
    async findActiveById(id: string): Promise<ApiKeyRecord | null> {
      const rows = await db
        .select(columns)
        .from(apiKeys)
        .where(and(eq(apiKeys.id, id), isNull(apiKeys.revokedAt)))
        .limit(1);
      return rows[0] ?? null;
    },

    async create(input: {
      tenantId: string;
      name: string;
      scopes: Scope[];
      root?: boolean;
      key?: string;
    }): Promise<{ record: ApiKeyRecord; key: string }> {
      const key = input.key ?? generateApiKey();
      return db.transaction(async (tx) => {
        await tx.insert(tenants).values({ id: input.tenantId }).onConflictDoNothing();
        const [record] = await tx
          .insert(apiKeys)
          .values({
            tenantId: input.tenantId,
            name: input.name,
            prefix: displayPrefix(key),
            secretHash: hashApiKey(key),
            scopes: input.scopes,
            root: input.root ?? false,
          })
          .returning(columns);
        return { record: record!, key };
      });
    },

    async list(tenantId: string): Promise<ApiKeyRecord[]> {
      return db
        .select(columns)
        .from(apiKeys)
        .where(and(eq(apiKeys.tenantId, tenantId), isNull(apiKeys.revokedAt)))
        .orderBy(asc(apiKeys.createdAt), asc(apiKeys.id));
    },

    /**
     * Revokes a key of `tenantId` (any tenant when null, for root keys); false when there is no
     * such active key there, so a foreign id looks exactly like a missing one.
     */
    async revoke(tenantId: string | null, id: string): Promise<boolean> {
      const rows = await db
        .update(apiKeys)
        .set({ revokedAt: sql`now()` })
        .where(
          and(
            eq(apiKeys.id, id),
            tenantId === null ? undefined : eq(apiKeys.tenantId, tenantId),
            isNull(apiKeys.revokedAt),
          ),
        )
        .returning({ id: apiKeys.id });
      return rows.length > 0;
    },

    /**
     * Makes sure a root key exists. With `bootstrapKey`, that exact key becomes (or stays) a root
     * key of the default tenant. Without it, a key is generated only if no active root key exists;
     * the generated key is returned so the caller can print it once. Safe when several processes
     * start together.
     */
    async ensureRootKey(bootstrapKey?: string): Promise<{ generatedKey?: string }> {
      return db.transaction(async (tx) => {
        await tx.execute(sql`select pg_advisory_xact_lock(${BOOTSTRAP_LOCK_ID})`);
        await tx.insert(tenants).values({ id: ROOT_TENANT }).onConflictDoNothing();
        if (bootstrapKey) {
          const hash = hashApiKey(bootstrapKey);
          const existing = await tx
            .select({ id: apiKeys.id })
            .from(apiKeys)
            .where(and(eq(apiKeys.secretHash, hash), isNull(apiKeys.revokedAt)))
            .limit(1);
          if (existing.length === 0) {
            // A revoked row with the same hash would collide on the unique index: drop it first.
            await tx.delete(apiKeys).where(eq(apiKeys.secretHash, hash));
            await tx.insert(apiKeys).values({
              tenantId: ROOT_TENANT,
              name: "bootstrap",
              prefix: displayPrefix(bootstrapKey),
              secretHash: hash,
              scopes: ["admin"],
              root: true,
            });
          }
          return {};
        }
        const roots = await tx
          .select({ id: apiKeys.id })
          .from(apiKeys)
          .where(and(eq(apiKeys.root, true), isNull(apiKeys.revokedAt)))
          .limit(1);
        if (roots.length > 0) return {};
        const key = generateApiKey();
        await tx.insert(apiKeys).values({
          tenantId: ROOT_TENANT,
          name: "root (generated)",
          prefix: displayPrefix(key),
          secretHash: hashApiKey(key),
          scopes: ["admin"],
          root: true,
        });
        return { generatedKey: key };
      });
    },
  };
}

export type KeysRepository = ReturnType<typeof keysRepository>;
