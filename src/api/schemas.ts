/** Schemas shared by several routes. Route-specific schemas live beside their routes. */
import { z } from "zod";

export const isoDate = z.iso.datetime({ offset: true }).describe("RFC 3339 timestamp");
export const toIso = (d: Date): string => d.toISOString();
export const toIsoOrNull = (d: Date | null | undefined): string | null => (d ? d.toISOString() : null);

/** A query flag: exactly "true" or "false" (z.coerce.boolean would read "false" as true). */
export const booleanQuery = z
  .enum(["true", "false"])
  .transform((v) => v === "true")
  .describe("true or false");

export const nameParams = z.strictObject({
  name: z
    .string()
    .regex(
      /^[a-z0-9][a-z0-9_-]{0,62}$/,
      "must match ^[a-z0-9][a-z0-9_-]{0,62}$ (lowercase ASCII, digits, _ and -)",
    ),
});

export const pageQuery = {
  limit: z.coerce.number().int().min(1).max(200).default(50).describe("Page size, 1–200"),
  cursor: z.string().max(512).optional().describe("The `nextCursor` of the previous page"),
};

export const encodeCursor = (value: string): string => Buffer.from(value, "utf8").toString("base64url");

/** Decodes a cursor made by `encodeCursor`; anything else is a 400 naming the `cursor` parameter. */
export function decodeCursor(
  cursor: string | undefined,
  check: (value: string) => boolean,
): string | undefined {
  if (cursor === undefined) return undefined;
  const value = /^[A-Za-z0-9_-]+$/.test(cursor) ? Buffer.from(cursor, "base64url").toString("utf8") : "";
  if (!check(value)) return invalidCursor();
  return value;
}

import { FlowlineError } from "../domain/errors.ts";

function invalidCursor(): never {
  throw new FlowlineError("validation_failed", "The cursor is not one this API issued", {
    issues: [{ location: "query", path: ["cursor"], message: "invalid cursor" }],
  });
}
