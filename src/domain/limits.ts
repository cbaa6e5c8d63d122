/**
 * Sizes and ceilings shared by the API and the workers (SPEC §13). A refusal names the setting
 * that bounds it and the value that crossed it.
 */
import { FlowlineError } from "./errors.ts";

const encoder = new TextEncoder();

/** The size of a value as UTF-8 JSON, the form in which it is stored and sent. */
export function jsonBytes(value: unknown): number {
  return encoder.encode(JSON.stringify(value) ?? "null").length;
}

/** 400 for a request priority above the tenant's `quotas.maxPriority`. */
export function checkRequestPriority(priority: number | undefined, maxPriority: number): void {
  if (priority === undefined || priority <= maxPriority) return;
  throw new FlowlineError(
    "validation_failed",
    `priority ${priority} is above this tenant's ceiling of ${maxPriority} (quotas.maxPriority)`,
    { issues: [{ location: "body", path: ["priority"], message: `must be at most ${maxPriority}` }] },
  );
}

/**
 * 400 for a request's own params over `limits.maxRunParamsBytes`, naming the limit; the engine
 * checks the params merged over the definition's defaults again.
 */
export function checkRequestParams(params: Record<string, unknown> | undefined, maxBytes: number): void {
  if (params === undefined) return;
  const bytes = jsonBytes(params);
  if (bytes <= maxBytes) return;
  throw new FlowlineError(
    "validation_failed",
    `params are ${bytes} bytes as JSON; the limit is ${maxBytes} (limits.maxRunParamsBytes)`,
    {
      issues: [{ location: "body", path: ["params"], message: `must be at most ${maxBytes} bytes as JSON` }],
    },
  );
}

/** 429 `quota_exceeded` naming the quota (`quotas.activeRuns`…), its value and what is held now. */
export function quotaExceeded(quota: string, limit: number, current: string): FlowlineError {
  return new FlowlineError(
    "quota_exceeded",
    `${current}; the quota is ${limit} (quotas.${quota}). Wait for work to finish or raise the quota`,
    { retryAfterSeconds: 5 },
  );
}

/**
 * Text Postgres cannot store in `jsonb` or `text`: the NUL character, and UTF-16 surrogates that
 * are not part of a pair (JSON can carry both; Postgres refuses the whole write).
 */
// biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is exactly what this looks for
const UNSTORABLE = /\u0000|[\ud800-\udfff]/;

/** The text with each unstorable character replaced by U+FFFD (for logs and messages). */
export function storableText(text: string): string {
  if (!UNSTORABLE.test(text)) return text;
  return text.toWellFormed().replaceAll("\u0000", "\uFFFD");
}

const isStorable = (text: string) =>
  !UNSTORABLE.test(text) || (!text.includes("\u0000") && text.isWellFormed());

/**
 * Where a JSON value holds text Postgres cannot store (as `$.a[0].b`, a key or a string), or null.
 * A step output is refused whole rather than altered: its readers would get other data.
 */
export function unstorableAt(value: unknown, path = "$"): string | null {
  if (typeof value === "string") return isStorable(value) ? null : path;
  if (typeof value !== "object" || value === null) return null;
  if (Array.isArray(value)) {
    for (const [i, item] of value.entries()) {
      const found = unstorableAt(item, `${path}[${i}]`);
      if (found) return found;
    }
    return null;
  }
  for (const [key, item] of Object.entries(value)) {
    const at = /^[A-Za-z_$][\w$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;
    if (!isStorable(key)) return at;
    const found = unstorableAt(item, at);
    if (found) return found;
  }
  return null;
}

/** A JSON value with its unstorable text replaced (error details, which are only read by people). */
export function storableValue<T>(value: T): T {
  if (typeof value === "string") return storableText(value) as T;
  if (typeof value !== "object" || value === null) return value;
  if (Array.isArray(value)) return value.map(storableValue) as T;
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [storableText(k), storableValue(v)])) as T;
}
