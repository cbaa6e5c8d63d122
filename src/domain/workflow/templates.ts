/**
 * `{{params.x}}` and `{{steps.<id>.output.<path>}}` templates: plain data substitution, never code
 * evaluation. Paths walk own properties only, so `__proto__` and friends are simply missing.
 */
export type TemplateRef =
  | { kind: "params"; path: string[] }
  | { kind: "step"; stepId: string; path: string[] };

export class TemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TemplateError";
  }
}

const TEMPLATE = /\{\{([^{}]*)\}\}/g;
const SEGMENT = /^[A-Za-z0-9_-]+$/;

function parseExpression(expression: string): TemplateRef | string {
  const parts = expression.trim().split(".");
  if (parts.some((p) => !SEGMENT.test(p))) return `malformed template "{{${expression}}}"`;
  const [root, ...rest] = parts;
  if (root === "params") {
    if (rest.length === 0) return `template "{{${expression}}}" must name a parameter, e.g. {{params.date}}`;
    return { kind: "params", path: rest };
  }
  if (root === "steps") {
    const [id, output, ...path] = rest;
    if (!id || output !== "output") {
      return `template "{{${expression}}}" must read a step output, e.g. {{steps.extract.output.rows}}`;
    }
    return { kind: "step", stepId: id, path };
  }
  return `unknown template root "${root}" in "{{${expression}}}"; use params or steps`;
}

/** Every template in `text`, and a message for each malformed one (including an unclosed "{{"). */
export function parseTemplates(text: string): { refs: TemplateRef[]; errors: string[] } {
  const refs: TemplateRef[] = [];
  const errors: string[] = [];
  for (const match of text.matchAll(TEMPLATE)) {
    const parsed = parseExpression(match[1]!);
    if (typeof parsed === "string") errors.push(parsed);
    else refs.push(parsed);
  }
  const rest = text.replace(TEMPLATE, "");
  if (rest.includes("{{") || rest.includes("}}"))
    errors.push(`unbalanced template braces in "${text.slice(0, 80)}"`);
  return { refs, errors };
}

export interface FoundRef {
  path: (string | number)[];
  ref?: TemplateRef;
  error?: string;
}

/** Walks every string inside a JSON value (iteratively) and reports where each template stands. */
export function collectTemplateRefs(value: unknown, basePath: (string | number)[] = []): FoundRef[] {
  const found: FoundRef[] = [];
  const stack: Array<[unknown, (string | number)[]]> = [[value, basePath]];
  while (stack.length > 0) {
    const [v, path] = stack.pop()!;
    if (typeof v === "string") {
      if (!v.includes("{{") && !v.includes("}}")) continue;
      const { refs, errors } = parseTemplates(v);
      for (const ref of refs) found.push({ path, ref });
      for (const error of errors) found.push({ path, error });
    } else if (Array.isArray(v)) {
      v.forEach((item, i) => {
        stack.push([item, [...path, i]]);
      });
    } else if (v !== null && typeof v === "object") {
      for (const [k, item] of Object.entries(v)) stack.push([item, [...path, k]]);
    }
  }
  return found;
}

export interface TemplateScope {
  params: Record<string, unknown>;
  steps: Record<string, { output: unknown }>;
}

const MISSING = Symbol("missing");

function walk(value: unknown, path: readonly string[]): unknown {
  let current = value;
  for (const segment of path) {
    if (current === null || typeof current !== "object") return MISSING;
    if (Array.isArray(current)) {
      if (!/^\d+$/.test(segment)) return MISSING;
      const i = Number(segment);
      if (i >= current.length) return MISSING;
      current = current[i];
    } else {
      if (!Object.hasOwn(current, segment)) return MISSING;
      current = (current as Record<string, unknown>)[segment];
    }
  }
  return current;
}

function resolve(ref: TemplateRef, scope: TemplateScope, source: string): unknown {
  let value: unknown;
  if (ref.kind === "params") value = walk(scope.params, ref.path);
  else {
    const step = Object.hasOwn(scope.steps, ref.stepId) ? scope.steps[ref.stepId] : undefined;
    value = step === undefined ? MISSING : walk(step.output, ref.path);
  }
  if (value === MISSING) throw new TemplateError(`template ${source} refers to a value that does not exist`);
  return value;
}

function renderString(text: string, scope: TemplateScope): unknown {
  const whole = /^\{\{([^{}]*)\}\}$/.exec(text);
  if (whole) {
    const ref = parseExpression(whole[1]!);
    if (typeof ref === "string") throw new TemplateError(ref);
    // A string that is exactly one template takes the referenced value with its JSON type.
    return resolve(ref, scope, text);
  }
  return text.replace(TEMPLATE, (source, expression: string) => {
    const ref = parseExpression(expression);
    if (typeof ref === "string") throw new TemplateError(ref);
    const value = resolve(ref, scope, source);
    return typeof value === "string" ? value : JSON.stringify(value);
  });
}

/** A copy of `value` with every template replaced; throws TemplateError on a missing reference. */
export function renderTemplates(value: unknown, scope: TemplateScope): unknown {
  if (typeof value === "string") return value.includes("{{") ? renderString(value, scope) : value;
  if (Array.isArray(value)) return value.map((item) => renderTemplates(item, scope));
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      Object.defineProperty(out, k, {
        value: renderTemplates(v, scope),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  }
  return value;
}
