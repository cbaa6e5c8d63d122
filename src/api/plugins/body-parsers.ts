/**
 * Request body parsers for JSON and YAML. Both read raw bytes so that invalid UTF-8 is refused
 * rather than silently replaced, scan nesting depth before parsing (a 100,000-deep document
 * must not reach a recursive validator), and refuse prototype-polluting keys.
 */
import type { FastifyInstance, FastifyRequest } from "fastify";
import sjson from "secure-json-parse";
import { parse as parseYaml } from "yaml";
import { FlowlineError } from "../../domain/errors.ts";

export const yamlContentTypes = ["application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"];

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

function decodeUtf8(body: Buffer): string {
  try {
    return utf8.decode(body);
  } catch {
    throw new FlowlineError("malformed_body", "The request body is not valid UTF-8");
  }
}

/**
 * Deepest bracket nesting of a JSON-like text, ignoring brackets inside double- or single-quoted
 * strings. Stops counting as soon as `limit` is exceeded.
 */
export function bracketDepth(text: string, limit: number): number {
  let depth = 0;
  let max = 0;
  let quote = "";
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (quote !== "") {
      if (c === 92 /* \ */ && quote === '"') i++;
      else if (text[i] === quote) quote = "";
      continue;
    }
    if (c === 34 /* " */) quote = '"';
    else if (c === 123 /* { */ || c === 91 /* [ */) {
      depth++;
      if (depth > max) {
        max = depth;
        if (max > limit) return max;
      }
    } else if (c === 125 || c === 93) depth--;
  }
  return max;
}

const tooDeep = (limit: number) =>
  new FlowlineError("malformed_body", `The request body is nested deeper than ${limit} levels`);

/** Walks a parsed value without recursion, checking depth and forbidden keys. */
function checkParsedValue(value: unknown, limit: number): void {
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (v === null || typeof v !== "object") continue;
    if (depth > limit) throw tooDeep(limit);
    if (Array.isArray(v)) {
      for (const item of v) stack.push([item, depth + 1]);
      continue;
    }
    for (const key of Object.keys(v)) {
      if (key === "__proto__" || key === "prototype") {
        throw new FlowlineError("malformed_body", `The request body contains the forbidden key "${key}"`);
      }
      stack.push([(v as Record<string, unknown>)[key], depth + 1]);
    }
  }
}

export function parseJsonBody(body: Buffer, maxDepth: number): unknown {
  if (body.length === 0) return undefined;
  const text = decodeUtf8(body);
  if (bracketDepth(text, maxDepth) > maxDepth) throw tooDeep(maxDepth);
  try {
    return sjson.parse(text, undefined, { protoAction: "error", constructorAction: "error" });
  } catch (error) {
    const message = (error as Error).message;
    if (/prototype|constructor/i.test(message)) {
      throw new FlowlineError(
        "malformed_body",
        "The request body contains a forbidden __proto__ or constructor key",
      );
    }
    throw new FlowlineError("malformed_body", `The request body is not valid JSON: ${message}`);
  }
}

export function parseYamlBody(body: Buffer, maxDepth: number): unknown {
  if (body.length === 0) return undefined;
  const text = decodeUtf8(body);
  // Flow collections ([…], {…}) are the only way to nest deeply in a small body; block nesting
  // is bounded by the body limit through indentation.
  if (bracketDepth(text, maxDepth) > maxDepth) throw tooDeep(maxDepth);
  let value: unknown;
  try {
    value = parseYaml(text, { maxAliasCount: 100, uniqueKeys: true, merge: false, prettyErrors: true });
  } catch (error) {
    if (error instanceof RangeError) throw tooDeep(maxDepth);
    const message = (error as Error).message.split("\n")[0];
    throw new FlowlineError("malformed_body", `The request body is not valid YAML: ${message}`);
  }
  checkParsedValue(value, maxDepth);
  return value;
}

export function registerBodyParsers(app: FastifyInstance, options: { maxDepth: number }): void {
  app.removeAllContentTypeParsers();
  const json = (_req: FastifyRequest, body: Buffer, done: (err: Error | null, value?: unknown) => void) => {
    try {
      done(null, parseJsonBody(body, options.maxDepth));
    } catch (error) {
      done(error as Error);
    }
  };
  app.addContentTypeParser("application/json", { parseAs: "buffer" }, json);
  app.addContentTypeParser(/^application\/[a-z0-9.+-]+\+json$/, { parseAs: "buffer" }, json);
  app.addContentTypeParser(yamlContentTypes, { parseAs: "buffer" }, (_req, body, done) => {
    try {
      done(null, parseYamlBody(body as Buffer, options.maxDepth));
    } catch (error) {
      done(error as Error);
    }
  });
}
