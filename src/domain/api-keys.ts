import { createHash, randomBytes } from "node:crypto";
import type { Scope } from "./status.ts";

/** Keys look like `flk_<43 base64url chars>`: 256 random bits, recognisable in logs and scanners. */
export const KEY_PREFIX = "flk_";

export function generateApiKey(): string {
  return KEY_PREFIX + randomBytes(32).toString("base64url");
}

/**
 * Keys are high-entropy random secrets, so a single SHA-256 is the right storage hash: it cannot
 * be brute-forced, and lookups stay one indexed equality. Slow hashes are for passwords.
 */
export function hashApiKey(key: string): string {
  return createHash("sha256").update(key, "utf8").digest("hex");
}

/** The part of a key safe to display: enough to tell keys apart, too little to use. */
export function displayPrefix(key: string): string {
  return key.slice(0, KEY_PREFIX.length + 6);
}

const rank: Record<Scope, number> = { read: 1, write: 2, admin: 3 };

/** admin ⊇ write ⊇ read: a key may do what any of its scopes, or a higher one, allows. */
export function hasScope(granted: readonly string[], needed: Scope): boolean {
  return granted.some((s) => s in rank && rank[s as Scope] >= rank[needed]);
}

export const ROOT_TENANT = "default";
export const tenantIdPattern = /^[a-z0-9][a-z0-9_-]{0,62}$/;
