import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config/index.ts";
import { Redactor } from "../../src/domain/redaction.ts";
import {
  parseTemplates,
  renderTemplates,
  SecretMissingError,
  secretNames,
} from "../../src/domain/workflow/templates.ts";

const NO_FILE = "/nonexistent-flowline-config-dir";

describe("{{secrets.NAME}} templates", () => {
  it("parse as a reference by name; other shapes are refused", () => {
    expect(parseTemplates("Bearer {{secrets.API_TOKEN}}").refs).toEqual([
      { kind: "secret", name: "API_TOKEN" },
    ]);
    expect(parseTemplates("{{ secrets.db-password }}").refs).toEqual([
      { kind: "secret", name: "db-password" },
    ]);
    for (const bad of ["{{secrets}}", "{{secrets.a.b}}", "{{secrets.__proto__}}", "{{secrets.../x}}"])
      expect(parseTemplates(bad).errors, bad).toHaveLength(1);
    expect(parseTemplates(`{{secrets.${"a".repeat(129)}}}`).errors).toHaveLength(1);
  });

  it("render only from the values the worker supplies", () => {
    const executor = { url: "https://x/{{secrets.A}}", headers: { h: "{{secrets.B}}" }, n: "{{params.n}}" };
    expect(secretNames(executor)).toEqual(["A", "B"]);
    const scope = { params: { n: 1 }, steps: {}, secrets: { A: "a1", B: "b2" } };
    expect(renderTemplates(executor, scope)).toEqual({ url: "https://x/a1", headers: { h: "b2" }, n: 1 });
    expect(() => renderTemplates(executor, { params: { n: 1 }, steps: {} })).toThrow(SecretMissingError);
  });

  it("a value substituted from params is not rendered again, so params cannot reach a secret", () => {
    const scope = { params: { p: "{{secrets.A}}" }, steps: {}, secrets: { A: "a1" } };
    expect(renderTemplates("x {{params.p}}", scope)).toBe("x {{secrets.A}}");
  });
});

describe("Redactor", () => {
  const redactor = new Redactor(["hunter2", "p@ss word", ""]);

  it("hides each value, URL-encoded and JSON-escaped forms included", () => {
    expect(redactor.text("token=hunter2; again hunter2")).toBe("token=***; again ***");
    expect(redactor.text("/x?p=p%40ss%20word")).toBe("/x?p=***");
    expect(redactor.text('{"a":"p@ss word"}')).toBe('{"a":"***"}');
  });

  it("walks values, keys included, without changing the input", () => {
    const input = { list: ["hunter2", 3, null], hunter2: { deep: "x hunter2" } };
    expect(redactor.value(input)).toEqual({ list: ["***", 3, null], "***": { deep: "x ***" } });
    expect(input.list[0]).toBe("hunter2");
  });

  it("a longer secret containing a shorter one is hidden whole", () => {
    expect(new Redactor(["abc", "xxabcxx"]).text("1 xxabcxx 2 abc")).toBe("1 *** 2 ***");
  });
});

describe("secrets configuration", () => {
  it("defaults to the env provider; its variables are not refused as unknown settings", () => {
    const config = loadConfig({ cwd: NO_FILE, env: { FLOWLINE_SECRET_API_TOKEN: "x" } });
    expect(config.secrets).toEqual({ provider: "env", prefix: "FLOWLINE_SECRET_" });
  });

  it("a custom prefix moves the exemption with it", () => {
    const env = { FLOWLINE_SECRET_A: "x", FLOWLINE_VAULT_A: "y" };
    const overrides = { secrets: { provider: "env" as const, prefix: "FLOWLINE_VAULT_" } };
    expect(() => loadConfig({ cwd: NO_FILE, env, overrides })).toThrow(/FLOWLINE_SECRET_A/);
  });

  it("the files provider needs a directory, and then FLOWLINE_SECRET_* variables are typos again", () => {
    const files = { secrets: { provider: "files" as const } } as never;
    expect(() => loadConfig({ cwd: NO_FILE, env: {}, overrides: files })).toThrow(ConfigError);
    const overrides = { secrets: { provider: "files" as const, dir: "/run/secrets" } };
    expect(() => loadConfig({ cwd: NO_FILE, env: { FLOWLINE_SECRET_A: "x" }, overrides })).toThrow(
      /FLOWLINE_SECRET_A/,
    );
    expect(loadConfig({ cwd: NO_FILE, env: {}, overrides }).secrets).toEqual(overrides.secrets);
  });

  it("refuses a prefix that would hide every misspelt setting", () => {
    const overrides = { secrets: { provider: "env" as const, prefix: "FLOWLINE_" } };
    expect(() => loadConfig({ cwd: NO_FILE, env: {}, overrides })).toThrow(/secrets.prefix/);
  });
});

describe("placeholder credentials", () => {
  it("the shipped Kubernetes secret.yaml fails validation, naming every placeholder", async () => {
    const { readFileSync } = await import("node:fs");
    const { parse } = await import("yaml");
    const manifest = parse(
      readFileSync(new URL("../../deploy/kubernetes/secret.yaml", import.meta.url), "utf8"),
    );
    const env = manifest.stringData as Record<string, string>;
    expect(Object.keys(env).sort()).toEqual(["DATABASE_URL", "FLOWLINE_BOOTSTRAP_KEY", "REDIS_URL"]);
    let error: unknown;
    try {
      loadConfig({ cwd: NO_FILE, env });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const keys = (error as ConfigError).issues.map((i) => i.key).sort();
    expect(keys).toEqual(["auth.bootstrapKey", "database.url", "redis.url"]);
    expect((error as ConfigError).message).toMatch(/placeholder/);
    // The message does not echo the values.
    expect((error as ConfigError).message).not.toContain("generate-with-openssl");
  });

  it("a real-looking value passes; a word that merely contains the letters does not trip it", () => {
    const env = {
      FLOWLINE_BOOTSTRAP_KEY: "replacement-key-0123456789abcdef",
      DATABASE_URL: "postgres://u:changemeant@h/db",
    };
    expect(loadConfig({ cwd: NO_FILE, env }).auth.bootstrapKey).toBe(env.FLOWLINE_BOOTSTRAP_KEY);
  });
});
