/**
 * Credentials for browsers, which cannot keep an API key safe nor send one on an EventSource: a
 * session cookie and per-run stream tokens. Both are stateless — an HMAC over what they grant
 * (the key id, the run, the expiry) — so any API process can check them without a table, and
 * the caller still looks the key up on every request: a revoked key ends its sessions and tokens.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

const B64 = /^[A-Za-z0-9_-]+$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface SessionClaims {
  keyId: string;
  /** Unix seconds. */
  expiresAt: number;
}

export interface StreamTokenClaims extends SessionClaims {
  runId: string;
}

function mac(secret: string, purpose: string, payload: string): string {
  return createHmac("sha256", secret).update(`${purpose}\n${payload}`).digest("base64url");
}

function sameMac(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** `s1.<keyId>.<expiresAt>.<mac>` */
export function signSession(secret: string, claims: SessionClaims): string {
  const payload = `${claims.keyId}.${claims.expiresAt}`;
  return `s1.${payload}.${mac(secret, "session", payload)}`;
}

/** The claims of a well-formed, authentic, unexpired session value; null otherwise. */
export function verifySession(secret: string, value: string, nowSeconds: number): SessionClaims | null {
  const parts = value.split(".");
  if (parts.length !== 4 || parts[0] !== "s1") return null;
  const [, keyId, exp, given] = parts as [string, string, string, string];
  if (!UUID.test(keyId) || !/^\d{1,12}$/.test(exp) || !B64.test(given)) return null;
  if (!sameMac(given, mac(secret, "session", `${keyId}.${exp}`))) return null;
  const expiresAt = Number(exp);
  return expiresAt > nowSeconds ? { keyId, expiresAt } : null;
}

/**
 * The CSRF token of a session (double submit): derived from the session value, so it needs no
 * storage, and unknowable to another site, which can neither read the cookie nor the token.
 */
export function csrfTokenFor(secret: string, sessionValue: string): string {
  return mac(secret, "csrf", sessionValue);
}

export function csrfTokenMatches(secret: string, sessionValue: string, given: string): boolean {
  return sameMac(given, csrfTokenFor(secret, sessionValue));
}

/** `t1.<runId>.<keyId>.<expiresAt>.<mac>` — safe in a query string as is. */
export function signStreamToken(secret: string, claims: StreamTokenClaims): string {
  const payload = `${claims.runId}.${claims.keyId}.${claims.expiresAt}`;
  return `t1.${payload}.${mac(secret, "stream", payload)}`;
}

export function verifyStreamToken(
  secret: string,
  value: string,
  nowSeconds: number,
): StreamTokenClaims | null {
  const parts = value.split(".");
  if (parts.length !== 5 || parts[0] !== "t1") return null;
  const [, runId, keyId, exp, given] = parts as [string, string, string, string, string];
  if (!UUID.test(runId) || !UUID.test(keyId) || !/^\d{1,12}$/.test(exp) || !B64.test(given)) return null;
  if (!sameMac(given, mac(secret, "stream", `${runId}.${keyId}.${exp}`))) return null;
  const expiresAt = Number(exp);
  return expiresAt > nowSeconds ? { runId, keyId, expiresAt } : null;
}
