import { describe, expect, it } from "vitest";
import { storableText, storableValue, unstorableAt } from "../../src/domain/limits.ts";

describe("text Postgres cannot store", () => {
  it("is replaced in free text: NUL and unpaired surrogates, not valid pairs", () => {
    expect(storableText("plain")).toBe("plain");
    expect(storableText("a\u0000b")).toBe("a\uFFFDb");
    expect(storableText("x\ud800y\udc00z")).toBe("x\uFFFDy\uFFFDz");
    expect(storableText("emoji \u{1F600}")).toBe("emoji \u{1F600}");
    expect(storableValue({ "k\u0000": ["v\u0000", 1, null], n: 2 })).toEqual({
      "k\uFFFD": ["v\uFFFD", 1, null],
      n: 2,
    });
  });

  it("is located in a value by its path, keys included", () => {
    expect(unstorableAt({ a: [1, "ok", { b: "\u{1F600}" }] })).toBeNull();
    expect(unstorableAt("a\u0000")).toBe("$");
    expect(unstorableAt({ a: [1, { b: "x\ud800" }] })).toBe("$.a[1].b");
    expect(unstorableAt({ "odd key": { "\u0000": 1 } })).toBe('$["odd key"]["\\u0000"]');
    expect(unstorableAt(null)).toBeNull();
  });
});
