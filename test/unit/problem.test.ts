import { describe, expect, it } from "vitest";
import { bracketDepth, parseJsonBody, parseYamlBody } from "../../src/api/plugins/body-parsers.ts";
import { httpStatusOf, problemFromFlowlineError, toFlowlineError } from "../../src/api/problem.ts";
import { errorCodes, FlowlineError, formatPath } from "../../src/domain/errors.ts";

describe("problem mapping", () => {
  it("gives every error code a 4xx or 5xx status", () => {
    for (const code of errorCodes) expect(httpStatusOf[code]).toBeGreaterThanOrEqual(400);
  });

  it("renders issues with readable paths and a stable type", () => {
    const problem = problemFromFlowlineError(
      new FlowlineError("invalid_definition", "bad", {
        issues: [{ location: "body", path: ["steps", 2, "run", "type"], message: "unknown" }],
      }),
      "req-1",
    );
    expect(problem.status).toBe(400);
    expect(problem.body).toMatchObject({
      type: "urn:flowline:problem:invalid-definition",
      instance: "req-1",
      errors: [{ location: "body", path: "steps[2].run.type", message: "unknown" }],
    });
  });

  it("hides unknown errors behind a generic 500 and sets Retry-After on unavailability", () => {
    const internal = toFlowlineError(new Error("password=hunter2"));
    expect(internal.code).toBe("internal");
    expect(internal.message).not.toContain("hunter2");
    const down = toFlowlineError(Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }));
    expect(problemFromFlowlineError(down).headers["retry-after"]).toBe("5");
  });

  it("formats paths", () => {
    expect(formatPath([])).toBe("(root)");
    expect(formatPath(["a", 0, "b-c", "x y"])).toBe('a[0].b-c["x y"]');
  });
});

describe("body parsing", () => {
  it("measures bracket depth outside strings and stops early", () => {
    expect(bracketDepth('{"a":[1,{"b":"[[[["}]}', 100)).toBe(3);
    expect(bracketDepth("[".repeat(1000), 10)).toBe(11);
  });

  it("refuses invalid UTF-8, deep nesting and prototype keys", () => {
    expect(() => parseJsonBody(Buffer.from([0x22, 0xff, 0x22]), 64)).toThrow(/UTF-8/);
    expect(() => parseJsonBody(Buffer.from("[".repeat(65) + "]".repeat(65)), 64)).toThrow(/deeper/);
    expect(() => parseJsonBody(Buffer.from('{"__proto__":{}}'), 64)).toThrow(FlowlineError);
    expect(() => parseYamlBody(Buffer.from("a:\n  __proto__: 1\n"), 64)).toThrow(/forbidden/);
    expect(parseJsonBody(Buffer.alloc(0), 64)).toBeUndefined();
    expect(parseYamlBody(Buffer.from("a: [1, {b: 2}]\n"), 64)).toEqual({ a: [1, { b: 2 }] });
  });
});
