import { createHash } from "node:crypto";
import type { WorkflowSpec } from "./spec.ts";

/** Deeper than any definition the body parser lets through (64); a guard, not a limit users meet. */
const maxDepth = 512;

/**
 * JSON with object keys sorted (by UTF-16 code units) at every level: equal content, equal text,
 * whatever the key order. Undefined members are dropped and undefined array items become null,
 * as JSON.stringify does. Recursion is bounded by `maxDepth`.
 */
export function canonicalJson(value: unknown): string {
  return canonical(value, 0);
}

function canonical(value: unknown, depth: number): string {
  if (depth > maxDepth) throw new RangeError(`value is nested deeper than ${maxDepth} levels`);
  if (value === null || typeof value !== "object") return JSON.stringify(value) ?? "null";
  if (Array.isArray(value)) {
    return `[${value.map((v) => (v === undefined ? "null" : canonical(v, depth + 1))).join(",")}]`;
  }
  const record = value as Record<string, unknown>;
  const members: string[] = [];
  for (const key of Object.keys(record).sort()) {
    if (record[key] !== undefined)
      members.push(`${JSON.stringify(key)}:${canonical(record[key], depth + 1)}`);
  }
  return `{${members.join(",")}}`;
}

/** SHA-256 (hex) of the canonical JSON of a validated definition: the identity of a version. */
export function definitionHash(spec: WorkflowSpec): string {
  return createHash("sha256").update(canonicalJson(spec)).digest("hex");
}
