/**
 * The last pass over the OpenAPI document before it is served, so that generators get exactly
 * what the API speaks: the zod transform registers every named schema twice (an input and an
 * output form) whether a route uses it or not, and writes `unknown().nullable()` as
 * `anyOf: [{}, {type: null}]`. Unused components are dropped and such an `anyOf` becomes `{}`.
 * The `default` of an optional property moves into its description: some generators
 * (openapi-typescript) read a default as "always present" and would make a request field that may
 * be left out required.
 */
import type { OpenAPIV3_1 } from "openapi-types";

const REF = "#/components/schemas/";

export function tidyDocument(document: OpenAPIV3_1.Document): OpenAPIV3_1.Document {
  const tidied = describeDefaults(collapseAnyValue(document)) as OpenAPIV3_1.Document;
  const schemas = tidied.components?.schemas;
  if (!schemas) return tidied;

  // Components reachable from the paths, following references between components.
  const used = new Set<string>();
  const pending = refsIn(tidied.paths);
  for (let name = pending.pop(); name !== undefined; name = pending.pop()) {
    if (used.has(name) || !Object.hasOwn(schemas, name)) continue;
    used.add(name);
    pending.push(...refsIn(schemas[name]));
  }
  const kept = Object.fromEntries(Object.entries(schemas).filter(([name]) => used.has(name)));
  return { ...tidied, components: { ...tidied.components, schemas: kept } };
}

function refsIn(value: unknown, found: string[] = []): string[] {
  if (Array.isArray(value)) for (const item of value) refsIn(item, found);
  else if (typeof value === "object" && value !== null) {
    for (const [key, child] of Object.entries(value)) {
      if (key === "$ref" && typeof child === "string" && child.startsWith(REF))
        found.push(child.slice(REF.length));
      else refsIn(child, found);
    }
  }
  return found;
}

const isEmptySchema = (value: unknown) =>
  typeof value === "object" && value !== null && !Array.isArray(value) && Object.keys(value).length === 0;

function collapseAnyValue(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(collapseAnyValue);
  if (typeof value !== "object" || value === null) return value;
  const entries = Object.entries(value).map(([key, child]) => [key, collapseAnyValue(child)] as const);
  const object = Object.fromEntries(entries) as Record<string, unknown>;
  const { anyOf, ...rest } = object;
  // Anything, or null, or …: anything.
  if (Array.isArray(anyOf) && anyOf.some(isEmptySchema)) return rest;
  return object;
}

function describeDefaults(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(describeDefaults);
  if (typeof value !== "object" || value === null) return value;
  const object = Object.fromEntries(
    Object.entries(value).map(([key, child]) => [key, describeDefaults(child)]),
  ) as Record<string, unknown>;
  const properties = object.properties as Record<string, Record<string, unknown>> | undefined;
  if (typeof properties !== "object" || properties === null) return object;
  const required = new Set(Array.isArray(object.required) ? object.required : []);
  const moved: Record<string, unknown> = {};
  for (const [name, property] of Object.entries(properties)) {
    if (required.has(name) || typeof property !== "object" || property === null || !("default" in property)) {
      moved[name] = property;
      continue;
    }
    const { default: fallback, ...rest } = property;
    const note = `Default: ${JSON.stringify(fallback)}.`;
    moved[name] = { ...rest, description: rest.description ? `${rest.description}. ${note}` : note };
  }
  return { ...object, properties: moved };
}
