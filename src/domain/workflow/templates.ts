/**
 * `{{params.x}}`, `{{steps.<id>.output.<path>}}` and `{{secrets.NAME}}` templates: plain data
 * substitution, never code evaluation. Paths walk own properties only and `__proto__`,
 * `constructor` and `prototype` are always missing, so a template can never reach the prototype
 * chain. A secret is a reference only: its value is supplied by the worker at execution time
 * (`TemplateScope.secrets`) and never appears in a definition.
 */
export type TemplateRef =
  | { kind: "params"; path: string[] }
  | { kind: "step"; stepId: string; path: string[] }
  | { kind: "secret"; name: string };

export class TemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TemplateError";
  }
}

/** A `{{secrets.NAME}}` whose value the scope does not hold. Names the secret, never a value. */
export class SecretMissingError extends TemplateError {
  constructor(readonly secret: string) {
    super(`secret "${secret}" is not available`);
    this.name = "SecretMissingError";
  }
}

/** Rendering stopped: the result would pass the caller's size budget. */
export class RenderTooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`rendering produces more than ${limit} bytes`);
    this.name = "RenderTooLargeError";
  }
}

/**
 * Counts what rendering produces (in UTF-16 units, close to bytes for the JSON that is stored),
 * so that a few templates repeating a large value stop early instead of building megabytes.
 */
class RenderBudget {
  private used = 0;
  constructor(private readonly limit: number) {}
  spend(units: number): void {
    this.used += units;
    if (this.used > this.limit) throw new RenderTooLargeError(this.limit);
  }
}

const SEGMENT = /^[A-Za-z0-9_-]+$/;
const FORBIDDEN_SEGMENTS: ReadonlySet<string> = new Set(["__proto__", "constructor", "prototype"]);
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;

interface Scan {
  /** Each `{{…}}` with no brace inside: the text between the braces and the template's bounds. */
  templates: Array<{ expression: string; start: number; end: number }>;
  /** A "{{" is left once the templates are taken out. */
  unterminated: boolean;
}

/**
 * Finds templates as /\{\{([^{}]*)\}\}/g would, in linear time and without regex iterators,
 * which dominate the cost of validating 5,000 steps.
 */
function scanTemplates(text: string): Scan {
  const templates: Scan["templates"] = [];
  let unterminated = false;
  // The text left between templates, seen gap by gap: a "{{" may also span two gaps.
  let leftoverEndsWithBrace = false;
  let last = 0;
  const gap = (from: number, to: number) => {
    if (from >= to) return;
    if (!unterminated) {
      const open = text.indexOf("{{", from);
      unterminated =
        (leftoverEndsWithBrace && text.charCodeAt(from) === OPEN_BRACE) || (open !== -1 && open + 1 < to);
    }
    leftoverEndsWithBrace = text.charCodeAt(to - 1) === OPEN_BRACE;
  };
  let from = 0;
  for (;;) {
    const open = text.indexOf("{{", from);
    if (open === -1) break;
    let close = open + 2;
    while (close < text.length) {
      const c = text.charCodeAt(close);
      if (c === OPEN_BRACE || c === CLOSE_BRACE) break;
      close++;
    }
    if (text.charCodeAt(close) === CLOSE_BRACE && text.charCodeAt(close + 1) === CLOSE_BRACE) {
      templates.push({ expression: text.slice(open + 2, close), start: open, end: close + 2 });
      gap(last, open);
      last = close + 2;
      from = close + 2;
    } else {
      from = open + 1;
    }
  }
  gap(last, text.length);
  return { templates, unterminated };
}

function parseExpression(expression: string): TemplateRef | string {
  const parts = expression.trim().split(".");
  for (const part of parts) {
    if (!SEGMENT.test(part)) {
      return `malformed template "{{${expression}}}"; expected {{params.<name>}}, {{steps.<id>.output.<path>}} or {{secrets.<NAME>}}`;
    }
  }
  const root = parts[0];
  if (root === "params") {
    if (parts.length < 2) return `template "{{${expression}}}" must name a parameter, e.g. {{params.date}}`;
    return { kind: "params", path: parts.slice(1) };
  }
  if (root === "steps") {
    if (parts.length < 3 || parts[2] !== "output") {
      return `template "{{${expression}}}" must read a step output, e.g. {{steps.extract.output.rows}}`;
    }
    return { kind: "step", stepId: parts[1]!, path: parts.slice(3) };
  }
  if (root === "secrets") {
    if (parts.length !== 2) {
      return `template "{{${expression}}}" must name one secret, e.g. {{secrets.API_TOKEN}}`;
    }
    if (FORBIDDEN_SEGMENTS.has(parts[1]!)) return `"${parts[1]}" is a reserved name, not a secret`;
    if (parts[1]!.length > 128)
      return `secret name "${parts[1]!.slice(0, 40)}…" is longer than 128 characters`;
    return { kind: "secret", name: parts[1]! };
  }
  return `unknown template root "${root}" in "{{${expression}}}"; use params, steps or secrets`;
}

/**
 * Every template in `text`, and a message for each malformed one or for an unterminated "{{".
 * A lone "}}" is plain text: strings often carry JSON.
 */
export function parseTemplates(text: string): { refs: TemplateRef[]; errors: string[] } {
  const refs: TemplateRef[] = [];
  const errors: string[] = [];
  if (!text.includes("{{")) return { refs, errors };
  const scan = scanTemplates(text);
  for (const { expression } of scan.templates) {
    const parsed = parseExpression(expression);
    if (typeof parsed === "string") errors.push(parsed);
    else refs.push(parsed);
  }
  if (scan.unterminated) {
    const excerpt = text.length > 80 ? `${text.slice(0, 80)}…` : text;
    errors.push(`unterminated template "{{" in "${excerpt}"`);
  }
  return { refs, errors };
}

/** `text` with every well-formed `{{…}}` replaced by `replacement`, whatever is inside. */
export function replaceTemplates(text: string, replacement: string): string {
  if (!text.includes("{{")) return text;
  let out = "";
  let last = 0;
  for (const t of scanTemplates(text).templates) {
    out += text.slice(last, t.start) + replacement;
    last = t.end;
  }
  return out + text.slice(last);
}

export interface FoundRef {
  path: (string | number)[];
  ref?: TemplateRef;
  error?: string;
}

/** A path kept as a chain of links, turned into an array only where a template is found. */
interface PathLink {
  parent: PathLink | null;
  key: string | number;
}

function pathOf(link: PathLink | null, basePath: (string | number)[]): (string | number)[] {
  const keys: (string | number)[] = [];
  for (let l = link; l !== null; l = l.parent) keys.push(l.key);
  return [...basePath, ...keys.reverse()];
}

/**
 * Every template inside the strings of a JSON value (object values and array items, not keys), in
 * document order, each with the path of its string under `basePath`. Iterative: depth costs no stack.
 */
export function collectTemplateRefs(value: unknown, basePath: (string | number)[] = []): FoundRef[] {
  const found: FoundRef[] = [];
  const values: unknown[] = [value];
  const links: Array<PathLink | null> = [null];
  while (values.length > 0) {
    const v = values.pop();
    const link = links.pop()!;
    if (typeof v === "string") {
      if (!v.includes("{{")) continue;
      const { refs, errors } = parseTemplates(v);
      const path = pathOf(link, basePath);
      for (const ref of refs) found.push({ path, ref });
      for (const error of errors) found.push({ path, error });
    } else if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) {
        values.push(v[i]);
        links.push({ parent: link, key: i });
      }
    } else if (v !== null && typeof v === "object") {
      const keys = Object.keys(v);
      for (let i = keys.length - 1; i >= 0; i--) {
        const key = keys[i]!;
        values.push((v as Record<string, unknown>)[key]);
        links.push({ parent: link, key });
      }
    }
  }
  return found;
}

export interface TemplateScope {
  params: Record<string, unknown>;
  steps: Record<string, { output: unknown }>;
  /** Secret values by name, resolved by the worker just before execution; absent elsewhere. */
  secrets?: Readonly<Record<string, string>>;
}

/** The distinct secret names `value` refers to, in document order. */
export function secretNames(value: unknown): string[] {
  const names = new Set<string>();
  for (const found of collectTemplateRefs(value)) if (found.ref?.kind === "secret") names.add(found.ref.name);
  return [...names];
}

const MISSING = Symbol("missing");

function walk(value: unknown, path: readonly string[]): unknown {
  let current = value;
  for (const segment of path) {
    if (FORBIDDEN_SEGMENTS.has(segment)) return MISSING;
    if (current === null || typeof current !== "object") return MISSING;
    if (Array.isArray(current)) {
      if (!/^(0|[1-9]\d*)$/.test(segment)) return MISSING;
      const i = Number(segment);
      if (i >= current.length) return MISSING;
      current = current[i];
    } else {
      if (!Object.hasOwn(current, segment)) return MISSING;
      current = (current as Record<string, unknown>)[segment];
    }
    if (current === undefined) return MISSING;
  }
  return current;
}

function resolve(ref: TemplateRef, scope: TemplateScope, source: string): unknown {
  if (ref.kind === "secret") {
    const secrets = scope.secrets;
    if (secrets && Object.hasOwn(secrets, ref.name)) return secrets[ref.name];
    throw new SecretMissingError(ref.name);
  }
  let value: unknown = MISSING;
  if (ref.kind === "params") value = walk(scope.params, ref.path);
  else if (!FORBIDDEN_SEGMENTS.has(ref.stepId) && Object.hasOwn(scope.steps, ref.stepId)) {
    value = walk(scope.steps[ref.stepId]!.output, ref.path);
  }
  if (value === MISSING) throw new TemplateError(`template ${source} refers to a value that does not exist`);
  return value;
}

function parseOrThrow(expression: string): TemplateRef {
  const ref = parseExpression(expression);
  if (typeof ref === "string") throw new TemplateError(ref);
  return ref;
}

function renderString(text: string, scope: TemplateScope, budget: RenderBudget | undefined): unknown {
  const scan = scanTemplates(text);
  if (scan.unterminated) throw new TemplateError(`unterminated template "{{" in "${text.slice(0, 80)}"`);
  const [first] = scan.templates;
  // A string that is exactly one template takes the referenced value with its JSON type.
  if (first && first.start === 0 && first.end === text.length) {
    const value = resolve(parseOrThrow(first.expression), scope, text);
    budget?.spend(typeof value === "string" ? value.length : (JSON.stringify(value)?.length ?? 0));
    return value;
  }
  let out = "";
  let last = 0;
  for (const t of scan.templates) {
    const value = resolve(parseOrThrow(t.expression), scope, text.slice(t.start, t.end));
    const piece =
      text.slice(last, t.start) + (typeof value === "object" ? JSON.stringify(value) : String(value));
    budget?.spend(piece.length);
    out += piece;
    last = t.end;
  }
  return out + text.slice(last);
}

/**
 * A copy of `value` with every template replaced; the input is not modified. Throws TemplateError
 * naming the template when a reference is missing or malformed, and RenderTooLargeError as soon as
 * the strings it produces pass `maxSize` (when given). Recursion is bounded by the depth
 * of the definition, which the body parser limits; substituted values are not walked again.
 */
export function renderTemplates(
  value: unknown,
  scope: TemplateScope,
  options: { maxSize?: number } = {},
): unknown {
  return render(value, scope, options.maxSize === undefined ? undefined : new RenderBudget(options.maxSize));
}

function render(value: unknown, scope: TemplateScope, budget: RenderBudget | undefined): unknown {
  if (typeof value === "string") {
    if (value.includes("{{")) return renderString(value, scope, budget);
    budget?.spend(value.length);
    return value;
  }
  if (Array.isArray(value)) return value.map((item) => render(item, scope, budget));
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      // defineProperty keeps a key named "__proto__" as plain data instead of setting the prototype.
      Object.defineProperty(out, k, {
        value: render(v, scope, budget),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  }
  return value;
}
