import { describe, expect, it } from "vitest";
import { canonicalJson, definitionHash } from "../../src/domain/workflow/canonical.ts";
import type { WorkflowSpec } from "../../src/domain/workflow/spec.ts";
import {
  collectTemplateRefs,
  parseTemplates,
  renderTemplates,
  TemplateError,
} from "../../src/domain/workflow/templates.ts";

const scope = {
  params: { date: "2026-01-01", n: 3, nested: { list: [1, 2] } },
  steps: { extract: { output: { rows: 42, meta: { ok: true }, items: ["x", "y"] } } },
};

describe("templates", () => {
  it("parses params and step references with optional whitespace", () => {
    expect(parseTemplates("{{ params.date }}-{{steps.extract.output.rows}}").refs).toEqual([
      { kind: "params", path: ["date"] },
      { kind: "step", stepId: "extract", path: ["rows"] },
    ]);
    expect(parseTemplates("{{steps.extract.output}}").refs).toEqual([
      { kind: "step", stepId: "extract", path: [] },
    ]);
    expect(parseTemplates("{{ 1 + 1 }}").errors[0]).toMatch(/malformed/);
    expect(parseTemplates("{{params}}").errors[0]).toMatch(/must name a parameter/);
  });

  it("keeps the JSON type of a whole-string template and stringifies embedded ones", () => {
    const out = renderTemplates(
      {
        n: "{{params.n}}",
        meta: "{{steps.extract.output.meta}}",
        second: "{{steps.extract.output.items.1}}",
        text: "rows={{steps.extract.output.rows}} on {{params.date}} {{params.nested}}",
        untouched: ["plain", 1, null, true],
      },
      scope,
    );
    expect(out).toEqual({
      n: 3,
      meta: { ok: true },
      second: "y",
      text: 'rows=42 on 2026-01-01 {"list":[1,2]}',
      untouched: ["plain", 1, null, true],
    });
  });

  it("throws on missing references and never walks the prototype chain", () => {
    expect(() => renderTemplates("{{params.missing}}", scope)).toThrow(TemplateError);
    expect(() => renderTemplates("{{steps.other.output}}", scope)).toThrow(/does not exist/);
    expect(() => renderTemplates("{{params.__proto__}}", scope)).toThrow(TemplateError);
    expect(() => renderTemplates("{{params.constructor}}", scope)).toThrow(TemplateError);
    expect(() => renderTemplates("{{steps.extract.output.items.length}}", scope)).toThrow(TemplateError);
  });

  it("does not evaluate anything: a template that looks like code is data or an error", () => {
    expect(renderTemplates("$(rm -rf /) {{params.date}}", scope)).toBe("$(rm -rf /) 2026-01-01");
    expect(() => renderTemplates("{{process.exit()}}", scope)).toThrow(TemplateError);
  });

  it("collects references with their paths", () => {
    const found = collectTemplateRefs({ a: ["x", "{{params.date}}"], b: { c: "{{oops}}" } }, ["run"]);
    expect(found).toContainEqual({ path: ["run", "a", 1], ref: { kind: "params", path: ["date"] } });
    expect(found.find((f) => f.error)?.path).toEqual(["run", "b", "c"]);
  });
});

describe("canonical form", () => {
  it("ignores key order and hashes stably", () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { y: 2, x: 1 }], c: null } })).toBe(
      '{"a":{"c":null,"d":[1,{"x":1,"y":2}]},"b":1}',
    );
    const a = { name: "w", steps: [{ id: "s", run: { type: "noop" } }] } as unknown as WorkflowSpec;
    const b = { steps: [{ run: { type: "noop" }, id: "s" }], name: "w" } as unknown as WorkflowSpec;
    expect(definitionHash(a)).toBe(definitionHash(b));
    expect(definitionHash(a)).toMatch(/^[0-9a-f]{64}$/);
  });
});
