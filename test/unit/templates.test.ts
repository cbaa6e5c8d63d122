import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  collectTemplateRefs,
  parseTemplates,
  renderTemplates,
  replaceTemplates,
  TemplateError,
} from "../../src/domain/workflow/templates.ts";

const scope = {
  params: { date: "2026-01-01", n: 3, flag: false, none: null, nested: { list: [1, 2] } },
  steps: { extract: { output: { rows: 42, meta: { ok: true }, items: ["x", "y"] } } },
};

describe("parseTemplates", () => {
  it("parses params and step references, with whitespace inside the braces", () => {
    expect(parseTemplates("{{ params.date }}-{{steps.extract.output.rows}}")).toEqual({
      refs: [
        { kind: "params", path: ["date"] },
        { kind: "step", stepId: "extract", path: ["rows"] },
      ],
      errors: [],
    });
    expect(parseTemplates("{{steps.extract.output}}").refs).toEqual([
      { kind: "step", stepId: "extract", path: [] },
    ]);
    expect(parseTemplates("{{params.a.b.0}}").refs).toEqual([{ kind: "params", path: ["a", "b", "0"] }]);
    expect(parseTemplates("no templates here")).toEqual({ refs: [], errors: [] });
  });

  it("reports malformed templates and unknown roots", () => {
    expect(parseTemplates("{{env.HOME}}").errors[0]).toMatch(/unknown template root "env"/);
    expect(parseTemplates("{{steps.a}}").errors[0]).toMatch(/must read a step output/);
    expect(parseTemplates("{{steps.a.result}}").errors[0]).toMatch(/must read a step output/);
    expect(parseTemplates("{{params}}").errors[0]).toMatch(/must name a parameter/);
    expect(parseTemplates("{{ 1 + 1 }}").errors[0]).toMatch(/malformed/);
    expect(parseTemplates("{{params..x}}").errors[0]).toMatch(/malformed/);
    expect(parseTemplates("{{}}").errors[0]).toMatch(/malformed/);
    expect(parseTemplates("{{process.exit()}}").errors[0]).toMatch(/malformed/);
  });

  it("reports an unterminated {{ but treats a lone }} as text", () => {
    expect(parseTemplates("--date={{params.date").errors).toEqual([
      'unterminated template "{{" in "--date={{params.date"',
    ]);
    expect(parseTemplates("{{params.a}} and {{params.b").refs).toHaveLength(1);
    expect(parseTemplates('{"a":{"b":1}}')).toEqual({ refs: [], errors: [] });
    // Braces around a template are text, as in /\{\{([^{}]*)\}\}/.
    expect(parseTemplates("{{{params.x}}}")).toEqual({ refs: [{ kind: "params", path: ["x"] }], errors: [] });
  });

  it("finds exactly what /{{([^{}]*)}}/g finds, and flags a {{ left outside them", () => {
    const pattern = /\{\{([^{}]*)\}\}/g;
    const text = fc.string({ unit: fc.constantFrom("{", "}", "a", ".", " ", "params.x"), maxLength: 40 });
    fc.assert(
      fc.property(text, (t) => {
        const { refs, errors } = parseTemplates(t);
        const matches = [...t.matchAll(pattern)].length;
        const unterminated = t.replace(pattern, "").includes("{{");
        expect(replaceTemplates(t, "")).toBe(t.replace(pattern, ""));
        expect(refs.length + errors.length).toBe(matches + (unterminated ? 1 : 0));
        expect(errors.some((e) => e.startsWith("unterminated"))).toBe(unterminated);
      }),
      { numRuns: 2000 },
    );
    expect(parseTemplates("{{{params.x}}{").errors).toEqual([expect.stringMatching(/unterminated/)]);
    expect(parseTemplates("{{a}b}}").errors).toEqual([expect.stringMatching(/unterminated/)]);
  });

  it("replaces templates without looking inside them", () => {
    expect(replaceTemplates("https://{{params.host}}/x/{{ bad }}", "1")).toBe("https://1/x/1");
    expect(replaceTemplates("plain", "1")).toBe("plain");
    expect(replaceTemplates("{{params.x", "1")).toBe("{{params.x");
  });
});

describe("collectTemplateRefs", () => {
  it("reports every reference and error with the path of its string, in document order", () => {
    const found = collectTemplateRefs(
      { a: ["x", "{{params.date}}"], b: { c: "{{oops}}" }, d: "{{steps.s.output.v}} {{params.n}}" },
      ["run"],
    );
    expect(found.map((f) => [f.path, f.ref ?? f.error])).toEqual([
      [["run", "a", 1], { kind: "params", path: ["date"] }],
      [["run", "b", "c"], expect.stringMatching(/unknown template root "oops"/)],
      [["run", "d"], { kind: "step", stepId: "s", path: ["v"] }],
      [["run", "d"], { kind: "params", path: ["n"] }],
    ]);
  });

  it("looks at values, not keys, and ignores non-strings", () => {
    expect(collectTemplateRefs({ "{{params.k}}": 1, n: 2, b: true, z: null })).toEqual([]);
    expect(collectTemplateRefs("{{params.x}}")).toEqual([{ path: [], ref: { kind: "params", path: ["x"] } }]);
  });

  it("walks deep values without recursion", () => {
    let deep: unknown = "{{params.x}}";
    for (let i = 0; i < 20_000; i++) deep = [deep];
    const [found] = collectTemplateRefs(deep);
    expect(found?.path).toHaveLength(20_000);
  });
});

describe("renderTemplates", () => {
  it("keeps the JSON type of a whole-string template and stringifies embedded ones", () => {
    const out = renderTemplates(
      {
        n: "{{params.n}}",
        flag: "{{ params.flag }}",
        none: "{{params.none}}",
        meta: "{{steps.extract.output.meta}}",
        whole: "{{steps.extract.output}}",
        second: "{{steps.extract.output.items.1}}",
        text: "rows={{steps.extract.output.rows}} on {{params.date}} {{params.nested}} {{params.flag}}",
        untouched: ["plain", 1, null, true, '{"a":{"b":1}}'],
      },
      scope,
    );
    expect(out).toEqual({
      n: 3,
      flag: false,
      none: null,
      meta: { ok: true },
      whole: { rows: 42, meta: { ok: true }, items: ["x", "y"] },
      second: "y",
      text: 'rows=42 on 2026-01-01 {"list":[1,2]} false',
      untouched: ["plain", 1, null, true, '{"a":{"b":1}}'],
    });
  });

  it("returns a new value and leaves the input alone", () => {
    const input = { args: ["{{params.date}}"], nested: { v: "{{params.n}}" } };
    const copy = structuredClone(input);
    const out = renderTemplates(input, scope) as typeof input;
    expect(input).toEqual(copy);
    expect(out.nested).not.toBe(input.nested);
  });

  it("does not render what a substituted value contains", () => {
    const out = renderTemplates("{{params.t}}", { params: { t: "{{params.secret}}" }, steps: {} });
    expect(out).toBe("{{params.secret}}");
  });

  it("throws a TemplateError naming the template when a reference is missing", () => {
    expect(() => renderTemplates("{{params.missing}}", scope)).toThrow(TemplateError);
    expect(() => renderTemplates("x {{params.missing}}", scope)).toThrow(/\{\{params.missing\}\}/);
    expect(() => renderTemplates("{{steps.other.output}}", scope)).toThrow(/does not exist/);
    expect(() => renderTemplates("{{params.date.x}}", scope)).toThrow(TemplateError);
    expect(() => renderTemplates("{{steps.extract.output.items.2}}", scope)).toThrow(TemplateError);
    expect(() => renderTemplates("{{steps.extract.output.items.01}}", scope)).toThrow(TemplateError);
    expect(() => renderTemplates("{{params.x", scope)).toThrow(/unterminated/);
    expect(() => renderTemplates("{{env.HOME}}", scope)).toThrow(/unknown template root/);
  });

  it("never walks the prototype chain, even through own __proto__ keys", () => {
    const params = JSON.parse('{"__proto__": {"polluted": 1}, "obj": {"constructor": {"prototype": 2}}}');
    expect(Object.hasOwn(params, "__proto__")).toBe(true);
    const withProto = { params, steps: {} };
    expect(() => renderTemplates("{{params.__proto__}}", withProto)).toThrow(TemplateError);
    expect(() => renderTemplates("{{params.__proto__.polluted}}", withProto)).toThrow(TemplateError);
    expect(() => renderTemplates("{{params.obj.constructor}}", withProto)).toThrow(TemplateError);
    expect(() => renderTemplates("{{params.obj.constructor.prototype}}", withProto)).toThrow(TemplateError);
    expect(() => renderTemplates("{{params.toString}}", scope)).toThrow(TemplateError);
    expect(() => renderTemplates("{{steps.__proto__.output}}", scope)).toThrow(TemplateError);
    expect(() => renderTemplates("{{steps.extract.output.items.length}}", scope)).toThrow(TemplateError);
  });

  it("copies a __proto__ key of the input as plain data", () => {
    const input = JSON.parse('{"__proto__": {"x": "{{params.date}}"}}');
    const out = renderTemplates(input, scope) as Record<string, unknown>;
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(Object.hasOwn(out, "__proto__")).toBe(true);
    expect(JSON.stringify(out)).toBe('{"__proto__":{"x":"2026-01-01"}}');
  });

  it("does not evaluate anything: text that looks like code stays text", () => {
    expect(renderTemplates("$(rm -rf /) `id` {{params.date}}", scope)).toBe("$(rm -rf /) `id` 2026-01-01");
    expect(() => renderTemplates("{{process.exit()}}", scope)).toThrow(TemplateError);
  });
});
