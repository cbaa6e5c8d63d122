import { createHash } from "node:crypto";
import type { WorkflowSpec } from "./spec.ts";

/** JSON with object keys sorted at every level: equal content, equal text, whatever the key order. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== "object") return JSON.stringify(value) ?? "null";
  if (Array.isArray(value))
    return `[${value.map((v) => (v === undefined ? "null" : canonicalJson(v))).join(",")}]`;
  const entries = Object.keys(value)
    .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`);
  return `{${entries.join(",")}}`;
}

/** SHA-256 (hex) of the canonical JSON of a validated definition. */
export function definitionHash(spec: WorkflowSpec): string {
  return createHash("sha256").update(canonicalJson(spec)).digest("hex");
}
