import { and, asc, eq, gt, isNull, or, sql } from "drizzle-orm";
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
  expiresAt: Date | null;
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
  expiresAt: apiKeys.expiresAt,
};

/** Not revoked and not expired. */
const usable = () =>
  and(isNull(apiKeys.revokedAt), or(isNull(apiKeys.expiresAt), gt(apiKeys.expiresAt, sql`now()`)));

/** Same value on every call: the advisory lock that serialises root-key bootstrapping. */
const BOOTSTRAP_LOCK_ID = 7_316_004_222;

export function keysRepository(db: Database) {
  return {
    /** The active key whose hash matches, or null. */
    async findByKey(key: string): Promise<ApiKeyRecord | null> {
      const rows = await db
        .select(columns)
        .from(apiKeys)
        .where(and(eq(apiKeys.secretHash, hashApiKey(key)), usable()))
        .limit(1);
      return rows[0] ?? null;
    },

    /** The active key with this id, or null (browser sessions and stream tokens name keys by id). */
    async findActiveById(id: string): Promise<ApiKeyRecord | null> {
      const rows = await db
        .select(columns)
        .from(apiKeys)
        .where(and(eq(apiKeys.id, id), usable()))
        .limit(1);
      return rows[0] ?? null;
    },

    async create(input: {
      tenantId: string;
      name: string;
      scopes: Scope[];
      root?: boolean;
      key?: string;
      expiresAt?: Date;
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
            expiresAt: input.expiresAt ?? null,
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
    async revoke(tenantId: string | null, id: string, options: { root?: false } = {}): Promise<boolean> {
      // A transaction, so the request's audit entry commits with the revocation.
      const rows = await db.transaction((tx) =>
        tx
          .update(apiKeys)
          .set({ revokedAt: sql`now()` })
          .where(
            and(
              eq(apiKeys.id, id),
              tenantId === null ? undefined : eq(apiKeys.tenantId, tenantId),
              options.root === false ? eq(apiKeys.root, false) : undefined,
              isNull(apiKeys.revokedAt),
            ),
          )
          .returning({ id: apiKeys.id }),
      );
      return rows.length > 0;
    },

    /**
     * Makes sure a root key exists. With `bootstrapKey`, that exact key becomes (or stays) a root
     * key of the default tenant, unless it was revoked: then it stays revoked and
     * `bootstrapRevoked` says so. Without it, a key is generated only if no active root key exists;
     * the generated key is returned so the caller can print it once. Safe when several processes
     * start together.
     */
    async ensureRootKey(bootstrapKey?: string): Promise<{ generatedKey?: string; bootstrapRevoked?: true }> {
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
            // Revoking the bootstrap key is final: restoring it at every start would undo the
            // revocation of a key that may have leaked. The operator sets a new one (docs/security.md).
            const revoked = await tx
              .select({ id: apiKeys.id })
              .from(apiKeys)
              .where(eq(apiKeys.secretHash, hash))
              .limit(1);
            if (revoked.length > 0) return { bootstrapRevoked: true };
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
