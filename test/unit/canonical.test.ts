import { describe, expect, it } from "vitest";
import { canonicalJson, definitionHash } from "../../src/domain/workflow/canonical.ts";
import { type WorkflowSpec, workflowSpecSchema } from "../../src/domain/workflow/spec.ts";

const spec = (input: unknown): WorkflowSpec => workflowSpecSchema.parse(input);

describe("canonicalJson", () => {
  it("sorts keys at every level and keeps array order", () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { y: 2, x: 1 }], c: null } })).toBe(
      '{"a":{"c":null,"d":[1,{"x":1,"y":2}]},"b":1}',
    );
    expect(canonicalJson([3, 1, 2])).toBe("[3,1,2]");
  });

  it("is independent of key insertion order", () => {
    const a = { name: "w", params: { z: 1, a: [{ q: 1, p: 2 }] }, steps: [] };
    const b = { steps: [], params: { a: [{ p: 2, q: 1 }], z: 1 }, name: "w" };
    expect(canonicalJson(a)).toBe(canonicalJson(b));
  });

  it("matches JSON.stringify on scalars, strings and undefined members", () => {
    for (const v of [null, true, 0, -1.5, 'é\n"', "\u2028"]) expect(canonicalJson(v)).toBe(JSON.stringify(v));
    expect(canonicalJson({ a: undefined, b: 1 })).toBe('{"b":1}');
    expect(canonicalJson([undefined, 1])).toBe("[null,1]");
    expect(canonicalJson({ "10": 1, "9": 2, b: 3, B: 4, é: 5 })).toBe('{"10":1,"9":2,"B":4,"b":3,"é":5}');
  });

  it("keeps a __proto__ key as data", () => {
    expect(canonicalJson(JSON.parse('{"b":1,"__proto__":{"x":1}}'))).toBe('{"__proto__":{"x":1},"b":1}');
  });
});

describe("definitionHash", () => {
  const base = { name: "w", steps: [{ id: "s", run: { type: "noop" } }] };

  it("is stable: the same content always hashes to the same, pinned value", () => {
    // Stored hashes identify versions: changing the canonical form would fork every workflow.
    expect(definitionHash(spec(base))).toBe(definitionHash(spec(structuredClone(base))));
    expect(definitionHash(spec(base))).toMatch(/^[0-9a-f]{64}$/);
    expect(canonicalJson(spec(base))).toBe(
      '{"name":"w","params":{},"schedules":[],"steps":[{"id":"s","needs":[],"onFailure":"fail","provides":[],' +
        '"requires":[],"run":{"type":"noop"},"tags":[]}]}',
    );
    expect(definitionHash(spec(base))).toBe(
      "07f0b1cec7916be250034412e9c0c4a8ca0c56c0eb8c766cf8801f7d237fd012",
    );
  });

  it("ignores key order and spelled-out defaults, and sees every real change", () => {
    const reordered = { steps: [{ run: { type: "noop" }, id: "s" }], name: "w" };
    const withDefaults = {
      ...base,
      params: {},
      steps: [{ id: "s", needs: [], onFailure: "fail", run: { type: "noop" } }],
    };
    expect(definitionHash(spec(reordered))).toBe(definitionHash(spec(base)));
    expect(definitionHash(spec(withDefaults))).toBe(definitionHash(spec(base)));
    expect(definitionHash(spec({ ...base, description: "x" }))).not.toBe(definitionHash(spec(base)));
    expect(definitionHash(spec({ ...base, name: "v" }))).not.toBe(definitionHash(spec(base)));
  });
});
