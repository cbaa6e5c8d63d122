/**
 * Loads the one configuration: schema defaults < YAML file < environment < overrides.
 *
 * Contract: `loadConfig` either returns a deep-frozen, fully validated `Config` or throws one
 * `ConfigError` listing every problem it found (unknown keys, bad values, unknown `FLOWLINE_*`
 * variables, an unreadable or invalid file), each naming the key and where the value came from.
 * It never falls back to a default for a value that was given but is wrong.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { LineCounter, parseDocument } from "yaml";
import type { z } from "zod";
import {
  type Config,
  configSchema,
  DEFAULT_SECRET_PREFIX,
  type DeepPartialConfig,
  knownKeysAt,
} from "./schema.ts";

export interface ConfigIssue {
  /** Dotted key path (`server.port`, `queues.heavy`), or the variable or file at fault. */
  key: string;
  message: string;
}

export class ConfigError extends Error {
  override readonly name = "ConfigError";
  readonly issues: ConfigIssue[];

  constructor(issues: ConfigIssue[]) {
    super(issues.map((issue) => `${issue.key}: ${issue.message}`).join("\n"));
    this.issues = issues;
  }
}

export interface LoadConfigOptions {
  /** Defaults to `process.env`. */
  env?: NodeJS.ProcessEnv;
  /** Where `flowline.config.yaml` and a relative `FLOWLINE_CONFIG` are looked up; defaults to `process.cwd()`. */
  cwd?: string;
  /** Applied last: objects merge key by key, arrays and scalars replace. */
  overrides?: DeepPartialConfig;
}

export const CONFIG_FILE_NAME = "flowline.config.yaml";
export const CONFIG_FILE_VARIABLE = "FLOWLINE_CONFIG";

type Path = readonly PropertyKey[];
type SettingPath = { [S in keyof Config]: readonly [S, Extract<keyof Config[S], string>] }[keyof Config];

interface EnvironmentVariable {
  name: string;
  path: SettingPath;
  /** How the string is coerced before validation; a value that does not coerce is passed on as is. */
  type: "string" | "integer" | "boolean";
}

/** Every environment variable Flowline reads, besides `FLOWLINE_CONFIG` (the file path itself). */
export const ENVIRONMENT_VARIABLES: readonly EnvironmentVariable[] = [
  { name: "PORT", path: ["server", "port"], type: "integer" },
  { name: "HOST", path: ["server", "host"], type: "string" },
  { name: "FLOWLINE_BODY_LIMIT_BYTES", path: ["server", "bodyLimitBytes"], type: "integer" },
  { name: "FLOWLINE_PUBLIC_URL", path: ["server", "publicUrl"], type: "string" },
  { name: "DATABASE_URL", path: ["database", "url"], type: "string" },
  { name: "FLOWLINE_DATA_DIR", path: ["database", "dataDir"], type: "string" },
  { name: "REDIS_URL", path: ["redis", "url"], type: "string" },
  { name: "FLOWLINE_REDIS_PREFIX", path: ["redis", "prefix"], type: "string" },
  { name: "FLOWLINE_BOOTSTRAP_KEY", path: ["auth", "bootstrapKey"], type: "string" },
  { name: "FLOWLINE_SESSION_SECRET", path: ["auth", "sessionSecret"], type: "string" },
  { name: "FLOWLINE_RATE_LIMIT_MAX", path: ["rateLimit", "max"], type: "integer" },
  { name: "FLOWLINE_RATE_LIMIT_ENABLED", path: ["rateLimit", "enabled"], type: "boolean" },
  { name: "LOG_LEVEL", path: ["log", "level"], type: "string" },
  { name: "FLOWLINE_HANDLERS", path: ["worker", "handlersModule"], type: "string" },
  { name: "FLOWLINE_WEBHOOK_SECRET", path: ["webhooks", "secret"], type: "string" },
  { name: "FLOWLINE_METRICS_ENABLED", path: ["metrics", "enabled"], type: "boolean" },
  { name: "FLOWLINE_METRICS_HOST", path: ["metrics", "host"], type: "string" },
  { name: "FLOWLINE_METRICS_SUPERVISOR_PORT", path: ["metrics", "supervisorPort"], type: "integer" },
  { name: "FLOWLINE_METRICS_WORKER_PORT", path: ["metrics", "workerPort"], type: "integer" },
];

/**
 * `FLOWLINE_*` names that are not configuration and so are not reported as typos: the test
 * suite's own service addresses live under this prefix.
 */
const NON_CONFIG_PREFIXES = ["FLOWLINE_TEST_"];

/** `FLOWLINE_*` names that are facts about the build, not settings (see release.ts). */
const BUILD_VARIABLES = ["FLOWLINE_IMAGE_TAG"];

/** The `flowline` client's own variables (SPEC §11): a server ignores them rather than refusing them. */
export const CLIENT_VARIABLES = ["FLOWLINE_URL", "FLOWLINE_KEY"] as const;

/**
 * Variables Kubernetes (and Docker links) inject for a Service named `flowline-…`, e.g.
 * `FLOWLINE_API_SERVICE_HOST` or `FLOWLINE_API_PORT_80_TCP_ADDR`: not typos, so not refused.
 */
const SERVICE_LINK =
  /^FLOWLINE_[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)$/;

/** Values never echoed back in an error message: they may hold secrets. */
const SECRET_KEYS = new Set(["auth.bootstrapKey", "auth.sessionSecret", "database.url", "redis.url"]);

const FORBIDDEN_KEYS = new Set(["__proto__", "constructor", "prototype"]);

// ---------------------------------------------------------------------------------------------

/** Validates a configuration document (defaults filled in) and returns it deep-frozen. */
export function parseConfig(input: unknown): Config {
  const result = validate(input);
  if (!result.ok) throw new ConfigError(result.issues.map(toConfigIssue));
  return result.config;
}

export function loadConfig(options: LoadConfigOptions = {}): Config {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  // Problems that make the merged document meaningless stop here; an unknown variable does not,
  // so one run reports it together with every bad value.
  const blocking: SourcedIssue[] = [];
  const file = readConfigFile(env, cwd, blocking);
  const overrides = options.overrides ?? {};
  for (const [layer, source] of [
    [file?.data, file?.display],
    [overrides, "overrides"],
  ] as const) {
    if (layer !== undefined) blocking.push(...forbiddenKeys(layer).map((issue) => ({ ...issue, source })));
  }
  const variableIssues: SourcedIssue[] = [];
  const environment = readEnvironment(env, variableIssues);
  const merged = [file?.data ?? {}, environment.tree, overrides].reduce(deepMerge, {});
  // Secrets the `env` provider reads are not settings, so not typos either.
  const secretPrefix = secretVariablePrefix(merged);
  const issues = variableIssues.filter(
    (issue) => secretPrefix === undefined || !issue.label?.startsWith(secretPrefix),
  );
  if (blocking.length > 0) throw new ConfigError([...blocking, ...issues].map(toConfigIssue));

  const result = validate(merged);
  if (result.ok && issues.length === 0) return result.config;
  if (result.ok) throw new ConfigError(issues.map(toConfigIssue));

  const layers: Layer[] = [
    { tree: overrides },
    { tree: environment.tree, sourceOf: (path) => environment.sources.get(pathKey(path)) },
    ...(file ? [{ tree: file.data, sourceOf: () => file.display }] : []),
  ];
  const sourced = result.issues.map((issue) => ({ ...issue, source: sourceOf(issue.path, layers) }));
  throw new ConfigError([...issues, ...sourced].map(toConfigIssue));
}

/** The prefix of the variables holding secrets, when the `env` secrets provider is configured. */
function secretVariablePrefix(merged: unknown): string | undefined {
  const secrets = isPlainObject(merged) ? merged.secrets : undefined;
  if (secrets === undefined) return DEFAULT_SECRET_PREFIX;
  if (!isPlainObject(secrets) || (secrets.provider !== undefined && secrets.provider !== "env"))
    return undefined;
  return typeof secrets.prefix === "string" && secrets.prefix !== "FLOWLINE_"
    ? secrets.prefix
    : DEFAULT_SECRET_PREFIX;
}

// ---------------------------------------------------------------------------------------------
// Validation

interface RawIssue {
  path: Path;
  message: string;
  /** The offending value, when it is worth quoting. */
  input?: unknown;
  hasInput?: boolean;
}

interface SourcedIssue extends RawIssue {
  /** `env PORT`, a file name, … appended as "(from …)". */
  source?: string | undefined;
  /** Shown instead of the formatted path: a variable or file name. */
  label?: string;
}

type Validation = { ok: true; config: Config } | { ok: false; issues: RawIssue[] };

function validate(input: unknown): Validation {
  const forbidden = forbiddenKeys(input);
  if (forbidden.length > 0) return { ok: false, issues: forbidden };
  const result = configSchema.safeParse(input, { reportInput: true });
  if (result.success) return { ok: true, config: deepFreeze(result.data) };
  return { ok: false, issues: result.error.issues.flatMap(fromZodIssue) };
}

function fromZodIssue(issue: z.core.$ZodIssue): RawIssue[] {
  const path = issue.path;
  switch (issue.code) {
    case "unrecognized_keys": {
      const known = knownKeysAt(path) ?? [];
      return issue.keys.map((key) => ({ path: [...path, key], message: unknownKeyMessage(key, known) }));
    }
    case "invalid_key":
      return [{ path, message: issue.issues[0]?.message ?? issue.message }];
    case "invalid_type":
      if (issue.input === undefined) return [{ path, message: `missing: ${issue.message}` }];
      return [{ path, message: issue.message, input: issue.input, hasInput: true }];
    case "custom": {
      // Cross-field rules write complete messages about a whole object; a refined scalar is quoted.
      const scalar = issue.input === null || typeof issue.input !== "object";
      return [
        { path, message: issue.message, input: issue.input, hasInput: scalar && issue.input !== undefined },
      ];
    }
    default:
      return [{ path, message: issue.message, input: issue.input, hasInput: "input" in issue }];
  }
}

function unknownKeyMessage(key: string, known: readonly string[]): string {
  const suggestion = closest(key, known);
  return suggestion === undefined
    ? `unknown key "${key}"${known.length > 0 ? ` (expected one of: ${known.join(", ")})` : ""}`
    : `unknown key "${key}" (did you mean "${suggestion}"?)`;
}

function forbiddenKeys(value: unknown, path: PropertyKey[] = []): RawIssue[] {
  if (Array.isArray(value)) return value.flatMap((item, index) => forbiddenKeys(item, [...path, index]));
  if (!isPlainObject(value)) return [];
  return Object.keys(value).flatMap((key) =>
    FORBIDDEN_KEYS.has(key)
      ? [{ path: [...path, key], message: `the key "${key}" is not allowed` }]
      : forbiddenKeys(value[key], [...path, key]),
  );
}

function toConfigIssue(issue: SourcedIssue): ConfigIssue {
  const key = issue.label ?? formatPath(issue.path);
  let message = issue.message;
  if (issue.hasInput && !SECRET_KEYS.has(key)) message += `, got ${describeValue(issue.input)}`;
  if (issue.source) message += ` (from ${issue.source})`;
  return { key, message };
}

function describeValue(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "null";
  if (Array.isArray(value)) return value.length === 0 ? "an empty list" : `a list of ${value.length}`;
  if (typeof value === "object") return "a mapping";
  if (typeof value === "string") {
    const shown = value.length > 80 ? `${value.slice(0, 77)}...` : value;
    return JSON.stringify(shown);
  }
  return String(value);
}

/** `server.port`, `commands["reports.daily"].argv[0]`. */
export function formatPath(path: Path): string {
  let out = "";
  for (const segment of path) {
    if (typeof segment === "number") out += `[${segment}]`;
    else if (typeof segment === "string" && /^[A-Za-z_$][A-Za-z0-9_$-]*$/.test(segment)) {
      out += out === "" ? segment : `.${segment}`;
    } else out += `[${JSON.stringify(String(segment))}]`;
  }
  return out === "" ? "(config)" : out;
}

// ---------------------------------------------------------------------------------------------
// Sources

interface ConfigFile {
  /** How the file is named in messages: as the user wrote it. */
  display: string;
  data: Record<string, unknown>;
}

function readConfigFile(env: NodeJS.ProcessEnv, cwd: string, issues: SourcedIssue[]): ConfigFile | undefined {
  const explicit = nonEmpty(env[CONFIG_FILE_VARIABLE]);
  const display = explicit ?? CONFIG_FILE_NAME;
  const absolute = resolve(cwd, display);
  const fileIssue = (message: string, key = display) => {
    issues.push({ path: [], label: key, message });
    return undefined;
  };

  let text: string;
  try {
    text = readFileSync(absolute, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      // Only a file someone asked for by name must exist.
      if (!explicit) return undefined;
      return fileIssue(
        `config file not found: ${absolute} (from env ${CONFIG_FILE_VARIABLE})`,
        CONFIG_FILE_VARIABLE,
      );
    }
    return fileIssue(`cannot read ${absolute}: ${code ?? (error as Error).message}`);
  }

  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (document.errors.length > 0) {
    for (const error of document.errors) {
      const { line, col } = lineCounter.linePos(error.pos[0]);
      fileIssue(`invalid YAML at line ${line}, column ${col}: ${error.message.split("\n")[0]}`);
    }
    return undefined;
  }
  let data: unknown;
  try {
    data = document.toJS({ maxAliasCount: 100 });
  } catch (error) {
    return fileIssue(`invalid YAML: ${(error as Error).message}`);
  }
  // A file holding only comments is an empty configuration.
  if (data === null || data === undefined) return { display, data: {} };
  if (!isPlainObject(data)) {
    return fileIssue(`expected a mapping of settings at the top level, got ${describeValue(data)}`);
  }
  return { display, data };
}

interface EnvironmentLayer {
  tree: Record<string, unknown>;
  /** Key path → the variable it came from. */
  sources: Map<string, string>;
}

function readEnvironment(env: NodeJS.ProcessEnv, issues: SourcedIssue[]): EnvironmentLayer {
  const tree: Record<string, unknown> = {};
  const sources = new Map<string, string>();
  for (const variable of ENVIRONMENT_VARIABLES) {
    const raw = nonEmpty(env[variable.name]);
    if (raw === undefined) continue;
    const [section, key] = variable.path;
    tree[section] = {
      ...(tree[section] as Record<string, unknown> | undefined),
      [key]: coerce(raw, variable.type),
    };
    sources.set(pathKey(variable.path), `env ${variable.name}`);
  }

  const known = [CONFIG_FILE_VARIABLE, ...ENVIRONMENT_VARIABLES.map((variable) => variable.name)];
  for (const name of Object.keys(env).sort()) {
    if (!name.startsWith("FLOWLINE_") || known.includes(name)) continue;
    if (NON_CONFIG_PREFIXES.some((prefix) => name.startsWith(prefix)) || SERVICE_LINK.test(name)) continue;
    if ((CLIENT_VARIABLES as readonly string[]).includes(name) || BUILD_VARIABLES.includes(name)) continue;
    if (nonEmpty(env[name]) === undefined) continue;
    const unprefixed = name.slice("FLOWLINE_".length);
    const suggestion = known.includes(unprefixed) ? unprefixed : closest(name, known);
    issues.push({
      path: [],
      label: name,
      message:
        suggestion === undefined
          ? `unknown environment variable ${name}; Flowline reads ${known.join(", ")}`
          : `unknown environment variable ${name} (did you mean ${suggestion}?)`,
    });
  }
  return { tree, sources };
}

function coerce(raw: string, type: EnvironmentVariable["type"]): unknown {
  const value = raw.trim();
  if (type === "integer" && /^[+-]?\d+$/.test(value)) return Number(value);
  if (type === "boolean") {
    const lower = value.toLowerCase();
    if (lower === "true" || lower === "1") return true;
    if (lower === "false" || lower === "0") return false;
  }
  // Left as the original string so the schema reports it, quoted, with the key it was meant for.
  return type === "string" ? raw : value;
}

interface Layer {
  tree: unknown;
  sourceOf?: (path: Path) => string | undefined;
}

/**
 * The source of the value an issue is about: the highest-priority layer holding the path, or
 * else its nearest ancestor (a missing field inside an object a file defines). Overrides come
 * from code and carry no note.
 */
function sourceOf(path: Path, layers: readonly Layer[]): string | undefined {
  for (let length = path.length; length >= Math.min(2, path.length); length--) {
    const prefix = path.slice(0, length);
    for (const layer of layers) {
      if (has(layer.tree, prefix)) return layer.sourceOf?.(prefix);
    }
  }
  return undefined;
}

function has(tree: unknown, path: Path): boolean {
  let node = tree;
  for (const segment of path) {
    if (!isPlainObject(node) && !Array.isArray(node)) return false;
    const key = String(segment);
    if (!Object.hasOwn(node, key)) return false;
    node = (node as Record<string, unknown>)[key];
  }
  return node !== undefined;
}

// ---------------------------------------------------------------------------------------------
// Helpers

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === "" ? undefined : value;
}

function pathKey(path: Path): string {
  return path.map(String).join("\u0000");
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** Objects merge key by key; anything else in `over` (arrays included) replaces; `undefined` is "not set". */
function deepMerge(base: unknown, over: unknown): unknown {
  if (over === undefined) return base;
  if (!isPlainObject(base) || !isPlainObject(over)) return over;
  const merged: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) merged[key] = deepMerge(base[key], value);
  return merged;
}

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}

/** Optimal string alignment distance (Levenshtein plus adjacent transpositions). */
function editDistance(a: string, b: string): number {
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d: number[] = new Array(rows * cols).fill(0);
  const at = (i: number, j: number) => d[i * cols + j] ?? 0;
  for (let i = 0; i < rows; i++) d[i * cols] = i;
  for (let j = 0; j < cols; j++) d[j] = j;
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        best = Math.min(best, at(i - 2, j - 2) + 1);
      d[i * cols + j] = best;
    }
  }
  return at(a.length, b.length);
}

/** The candidate closest to `word`, if it is close enough to be a likely typo. */
function closest(word: string, candidates: readonly string[]): string | undefined {
  const limit = word.length <= 3 ? 1 : word.length <= 6 ? 2 : 3;
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const candidate of candidates) {
    const distance = editDistance(word.toLowerCase(), candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return bestDistance <= limit ? best : undefined;
}
