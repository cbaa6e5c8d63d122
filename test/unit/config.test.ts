import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ConfigError, loadConfig, parseConfig, quotasOf } from "../../src/config/index.ts";

const directories: string[] = [];

/** A fresh directory under the OS temp dir, optionally holding `flowline.config.yaml`. */
function tempDir(yaml?: string, fileName = "flowline.config.yaml"): string {
  const dir = mkdtempSync(join(tmpdir(), "flowline-config-"));
  directories.push(dir);
  if (yaml !== undefined) writeFileSync(join(dir, fileName), yaml);
  return dir;
}

afterEach(() => {
  for (const dir of directories.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** Runs `load` expecting a ConfigError and returns it. */
function configError(load: () => unknown): ConfigError {
  try {
    load();
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error("expected a ConfigError");
}

describe("defaults", () => {
  it("runs on one machine with nothing configured", () => {
    const config = loadConfig({ env: {}, cwd: tempDir() });
    expect(config.server).toEqual({
      host: "127.0.0.1",
      port: 3000,
      bodyLimitBytes: 1_048_576,
      maxJsonDepth: 64,
      trustProxy: false,
      shutdownGraceSeconds: 10,
      requestTimeoutMs: 30_000,
      headersTimeoutMs: 10_000,
      keepAliveTimeoutMs: 72_000,
      connectionTimeoutMs: 120_000,
    });
    // No database or Redis URL: `up` starts an embedded Postgres in .flowline, and runs the
    // queues, locks and fan-out on it (SPEC §9).
    expect(config.database).toEqual({
      dataDir: ".flowline",
      poolMax: 10,
      connectTimeoutSeconds: 5,
      statementTimeoutMs: 30_000,
    });
    expect(config.redis).toEqual({ prefix: "flowline" });
    expect(config.auth.bootstrapKey).toBeUndefined();
    expect(config.rateLimit).toEqual({
      enabled: true,
      max: 1200,
      windowSeconds: 60,
      failedAuthMax: 30,
      failedAuthWindowSeconds: 300,
    });
    expect(config.log.level).toBe("info");
    expect(config.limits).toEqual({
      maxSteps: 5000,
      maxRunParamsBytes: 65_536,
      renderedInputBytes: 1_048_576,
      outputBytes: 1_048_576,
      inlineOutputBytes: 65_536,
      logLineBytes: 8192,
      logLinesPerAttempt: 10_000,
      backfillRuns: 1000,
      maxSleepSeconds: 3600,
      maxTimeoutSeconds: 86_400,
    });
    expect(config.quotas).toEqual({
      activeRuns: 1000,
      queuedSteps: 50_000,
      streams: 500,
      maxPriority: 10,
      tenants: {},
    });
    expect(config.commands).toEqual({});
    expect(config.http).toEqual({
      allowedHosts: [],
      allowPrivateNetworks: false,
      maxResponseBytes: 10_485_760,
      cors: { allowedOrigins: [] },
    });
    expect(config.queues).toEqual({ default: { concurrency: 8, min: 1, max: 4, fairShare: true } });
    expect(config.tags).toEqual({});
    expect(config.retention).toEqual({ eventsDays: 30, runsDays: 90 });
    expect(config.worker).toEqual({ stallSeconds: 30, graceSeconds: 30 });
    expect(config.supervisor).toEqual({
      leaseSeconds: 15,
      reconcileIntervalSeconds: 5,
      scheduleIntervalSeconds: 5,
      retentionIntervalSeconds: 3600,
    });
    expect(config.autoscaler).toEqual({
      intervalSeconds: 2,
      cooldownSeconds: 60,
      maxRestartDelaySeconds: 30,
    });
    expect(config.webhooks).toMatchObject({ maxAttempts: 8, timeoutSeconds: 10 });
  });

  it("parseConfig fills defaults inside partially given sections", () => {
    const config = parseConfig({
      server: { port: 8080 },
      queues: { default: {}, heavy: { concurrency: 1, min: 0 } },
    });
    expect(config.server.host).toBe("127.0.0.1");
    expect(config.server.port).toBe(8080);
    expect(config.queues.heavy).toEqual({ concurrency: 1, min: 0, max: 4, fairShare: true });
  });

  it("gives each tenant the default quotas with its own overrides", () => {
    const config = parseConfig({ quotas: { activeRuns: 10, tenants: { batch: { maxPriority: 3 } } } });
    expect(quotasOf(config, "batch")).toEqual({
      activeRuns: 10,
      queuedSteps: 50_000,
      streams: 500,
      maxPriority: 3,
    });
    expect(quotasOf(config, "other").maxPriority).toBe(10);
    expect(quotasOf(config, "constructor").maxPriority).toBe(10);
  });

  it("refuses server timeouts that would cut requests or event streams", () => {
    expect(() => parseConfig({ server: { requestTimeoutMs: 1000, headersTimeoutMs: 2000 } })).toThrow(
      /headersTimeoutMs: must not exceed server.requestTimeoutMs/,
    );
    expect(() => parseConfig({ server: { connectionTimeoutMs: 5000 } })).toThrow(/connectionTimeoutMs/);
  });

  it("accepts the shape documented in the specification", () => {
    const config = parseConfig({
      commands: {
        transform: {
          argv: ["python", "-m", "pipelines.transform"],
          cwd: "/srv/pipelines",
          env: { LOG_LEVEL: "info" },
        },
      },
      http: { allowedHosts: ["api.example.com", "*.internal.example.com", "127.0.0.1"] },
      queues: { default: { concurrency: 8, min: 1, max: 4 }, heavy: { concurrency: 1, min: 0, max: 2 } },
      tags: { heavy: "heavy" },
    });
    expect(config.commands.transform?.argv).toEqual(["python", "-m", "pipelines.transform"]);
    expect(config.tags).toEqual({ heavy: "heavy" });
  });

  it("returns a deep-frozen config", () => {
    const config = loadConfig({
      env: {},
      cwd: tempDir(),
      overrides: { commands: { echo: { argv: ["echo"] } }, http: { allowedHosts: ["a.example.com"] } },
    });
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.server)).toBe(true);
    expect(Object.isFrozen(config.queues.default)).toBe(true);
    expect(Object.isFrozen(config.commands.echo?.argv)).toBe(true);
    expect(Object.isFrozen(config.http.allowedHosts)).toBe(true);
    expect(() => {
      (config.server as { port: number }).port = 1;
    }).toThrow(TypeError);
    expect(() => (config.http.allowedHosts as string[]).push("evil.example.com")).toThrow(TypeError);
  });

  it("does not share default objects between results", () => {
    const a = parseConfig({});
    const b = parseConfig({});
    expect(a.queues).not.toBe(b.queues);
    expect(a.http.allowedHosts).not.toBe(b.http.allowedHosts);
  });
});

describe("environment", () => {
  it("maps and coerces variables", () => {
    const config = loadConfig({
      cwd: tempDir(),
      env: {
        PORT: "8080",
        HOST: "0.0.0.0",
        DATABASE_URL: "postgresql://app:secret@db.internal:5432/flowline",
        REDIS_URL: "rediss://cache.internal:6380",
        FLOWLINE_REDIS_PREFIX: "fl:prod",
        FLOWLINE_BOOTSTRAP_KEY: "k".repeat(32),
        LOG_LEVEL: "debug",
        FLOWLINE_RATE_LIMIT_MAX: " 50 ",
        FLOWLINE_RATE_LIMIT_ENABLED: "false",
        FLOWLINE_BODY_LIMIT_BYTES: "2048",
        FLOWLINE_PUBLIC_URL: "https://flowline.example.com",
        FLOWLINE_HANDLERS: "./handlers.ts",
        FLOWLINE_DATA_DIR: "/var/lib/flowline",
      },
    });
    expect(config.server.port).toBe(8080);
    expect(config.database.dataDir).toBe("/var/lib/flowline");
    expect(config.server.host).toBe("0.0.0.0");
    expect(config.server.bodyLimitBytes).toBe(2048);
    expect(config.server.publicUrl).toBe("https://flowline.example.com");
    expect(config.database.url).toBe("postgresql://app:secret@db.internal:5432/flowline");
    expect(config.redis).toEqual({ url: "rediss://cache.internal:6380", prefix: "fl:prod" });
    expect(config.auth.bootstrapKey).toBe("k".repeat(32));
    expect(config.log.level).toBe("debug");
    expect(config.rateLimit).toMatchObject({ max: 50, enabled: false });
    expect(config.worker.handlersModule).toBe("./handlers.ts");
  });

  it.each([
    ["true", true],
    ["TRUE", true],
    ["1", true],
    ["false", false],
    ["0", false],
  ])("reads the boolean %s as %s", (raw, expected) => {
    const config = loadConfig({ cwd: tempDir(), env: { FLOWLINE_RATE_LIMIT_ENABLED: raw } });
    expect(config.rateLimit.enabled).toBe(expected);
  });

  it("treats empty values as unset", () => {
    const config = loadConfig({
      cwd: tempDir(),
      env: { PORT: "", HOST: "  ", FLOWLINE_CONFIG: "", FLOWLINE_PROT: "" },
    });
    expect(config.server.port).toBe(3000);
    expect(config.server.host).toBe("127.0.0.1");
  });

  it("names the key and the variable for a bad value", () => {
    const error = configError(() => loadConfig({ cwd: tempDir(), env: { PORT: "abc" } }));
    expect(error.issues).toEqual([
      { key: "server.port", message: 'expected an integer between 1 and 65535, got "abc" (from env PORT)' },
    ]);
    expect(error.message).toBe(
      'server.port: expected an integer between 1 and 65535, got "abc" (from env PORT)',
    );
  });

  it("reports every bad value at once", () => {
    const error = configError(() =>
      loadConfig({
        cwd: tempDir(),
        env: { PORT: "70000", FLOWLINE_RATE_LIMIT_ENABLED: "yes", LOG_LEVEL: "loud", REDIS_URL: "http://x" },
      }),
    );
    const lines = error.message.split("\n");
    expect(lines).toContain(
      "server.port: expected an integer between 1 and 65535, got 70000 (from env PORT)",
    );
    expect(lines).toContain(
      'rateLimit.enabled: expected true or false, got "yes" (from env FLOWLINE_RATE_LIMIT_ENABLED)',
    );
    expect(lines.find((line) => line.startsWith("log.level:"))).toMatch(
      /expected one of .*"loud" \(from env LOG_LEVEL\)/,
    );
    expect(lines).toContain("redis.url: expected a redis:// or rediss:// URL (from env REDIS_URL)");
  });

  it("never echoes a secret back", () => {
    const error = configError(() =>
      loadConfig({
        cwd: tempDir(),
        env: { FLOWLINE_BOOTSTRAP_KEY: "too-short-secret", DATABASE_URL: "mysql://root:hunter2@db/x" },
      }),
    );
    expect(error.message).toContain("auth.bootstrapKey: expected a string of at least 24 characters");
    expect(error.message).toContain("FLOWLINE_BOOTSTRAP_KEY");
    expect(error.message).toContain(
      "database.url: expected a postgres:// or postgresql:// URL (from env DATABASE_URL)",
    );
    expect(error.message).not.toContain("too-short-secret");
    expect(error.message).not.toContain("hunter2");
  });

  it("refuses an unknown FLOWLINE_ variable", () => {
    const error = configError(() =>
      loadConfig({ cwd: tempDir(), env: { FLOWLINE_PROT: "3000", PATH: "/bin" } }),
    );
    expect(error.issues).toHaveLength(1);
    expect(error.issues[0]?.key).toBe("FLOWLINE_PROT");
    expect(error.message).toContain("unknown environment variable FLOWLINE_PROT");
  });

  it("suggests the variable that was probably meant", () => {
    const error = configError(() =>
      loadConfig({ cwd: tempDir(), env: { FLOWLINE_PORT: "3000", FLOWLINE_HANDLRES: "./h.ts" } }),
    );
    expect(error.message).toContain("unknown environment variable FLOWLINE_PORT (did you mean PORT?)");
    expect(error.message).toContain(
      "unknown environment variable FLOWLINE_HANDLRES (did you mean FLOWLINE_HANDLERS?)",
    );
  });

  it("leaves the service variables Kubernetes injects for flowline-* Services alone", () => {
    const env = {
      FLOWLINE_API_SERVICE_HOST: "10.0.0.1",
      FLOWLINE_API_SERVICE_PORT: "80",
      FLOWLINE_API_SERVICE_PORT_HTTP: "80",
      FLOWLINE_API_PORT: "tcp://10.0.0.1:80",
      FLOWLINE_API_PORT_80_TCP: "tcp://10.0.0.1:80",
      FLOWLINE_API_PORT_80_TCP_ADDR: "10.0.0.1",
      FLOWLINE_API_PORT_80_TCP_PORT: "80",
      FLOWLINE_API_PORT_80_TCP_PROTO: "tcp",
    };
    expect(() => loadConfig({ cwd: tempDir(), env })).not.toThrow();
    expect(() => loadConfig({ cwd: tempDir(), env: { ...env, FLOWLINE_API_PORTS: "80" } })).toThrow(
      /FLOWLINE_API_PORTS/,
    );
  });

  it("ignores the client's FLOWLINE_URL and FLOWLINE_KEY, so one shell can run server and CLI", () => {
    const env = { FLOWLINE_URL: "http://127.0.0.1:3000", FLOWLINE_KEY: "flk_abc" };
    expect(() => loadConfig({ cwd: tempDir(), env })).not.toThrow();
    // Still a typo next to them is refused.
    expect(() => loadConfig({ cwd: tempDir(), env: { ...env, FLOWLINE_KYE: "x" } })).toThrow(/FLOWLINE_KYE/);
  });

  it("accepts the image's FLOWLINE_IMAGE_TAG (a fact about the build, not a setting)", () => {
    const env = { FLOWLINE_IMAGE_TAG: "registry.example/flowline:0.2.0" };
    expect(() => loadConfig({ cwd: tempDir(), env })).not.toThrow();
    expect(() => loadConfig({ cwd: tempDir(), env: { FLOWLINE_IMAGE_TAGS: "x" } })).toThrow(
      /FLOWLINE_IMAGE_TAGS/,
    );
  });

  it("leaves the test suite's FLOWLINE_TEST_ variables alone", () => {
    expect(() =>
      loadConfig({ cwd: tempDir(), env: { FLOWLINE_TEST_DATABASE_URL: "postgres://x@y/z" } }),
    ).not.toThrow();
  });
});

describe("YAML file", () => {
  it("reads flowline.config.yaml from the working directory", () => {
    const cwd = tempDir(
      [
        "server:",
        "  port: 4000",
        "commands:",
        "  transform: { argv: [python, -m, pipelines.transform], cwd: /srv/pipelines, env: { LOG_LEVEL: info } }",
        "queues:",
        "  default: { concurrency: 8, min: 1, max: 4 }",
        "  heavy: { concurrency: 1, min: 0, max: 2 }",
        "tags: { heavy: heavy }",
      ].join("\n"),
    );
    const config = loadConfig({ env: {}, cwd });
    expect(config.server.port).toBe(4000);
    expect(config.commands.transform).toEqual({
      argv: ["python", "-m", "pipelines.transform"],
      cwd: "/srv/pipelines",
      env: { LOG_LEVEL: "info" },
    });
    expect(config.queues.heavy).toEqual({ concurrency: 1, min: 0, max: 2, fairShare: true });
    expect(config.tags.heavy).toBe("heavy");
  });

  it("layers defaults < file < environment < overrides", () => {
    const cwd = tempDir(
      [
        "server: { port: 4000, host: 10.0.0.1, bodyLimitBytes: 100 }",
        "http: { allowedHosts: [a.example.com, b.example.com] }",
        "log: { level: warn }",
      ].join("\n"),
    );
    const config = loadConfig({
      cwd,
      env: { PORT: "5000", LOG_LEVEL: "error" },
      overrides: { server: { port: 6000 }, http: { allowedHosts: ["c.example.com"] } },
    });
    expect(config.server.port).toBe(6000); // override beats env beats file
    expect(config.server.host).toBe("10.0.0.1"); // file beats default, objects merge
    expect(config.server.bodyLimitBytes).toBe(100);
    expect(config.server.shutdownGraceSeconds).toBe(10); // default
    expect(config.log.level).toBe("error"); // env beats file
    expect(config.http.allowedHosts).toEqual(["c.example.com"]); // arrays are replaced, not merged
  });

  it("uses the file named by FLOWLINE_CONFIG, relative to cwd", () => {
    const cwd = tempDir("server: { port: 4000 }", "custom.yaml");
    writeFileSync(join(cwd, "flowline.config.yaml"), "server: { port: 1 }");
    expect(loadConfig({ cwd, env: { FLOWLINE_CONFIG: "custom.yaml" } }).server.port).toBe(4000);
    expect(
      loadConfig({ cwd: tempDir(), env: { FLOWLINE_CONFIG: join(cwd, "custom.yaml") } }).server.port,
    ).toBe(4000);
  });

  it("refuses a FLOWLINE_CONFIG that points to a missing file", () => {
    const cwd = tempDir();
    const error = configError(() => loadConfig({ cwd, env: { FLOWLINE_CONFIG: "nope.yaml" } }));
    expect(error.issues).toHaveLength(1);
    expect(error.issues[0]?.key).toBe("FLOWLINE_CONFIG");
    expect(error.message).toContain(join(cwd, "nope.yaml"));
    expect(error.message).toContain("not found");
  });

  it("reports invalid YAML with its position", () => {
    const cwd = tempDir("server:\n  port: 4000\n  host: [unclosed\nlog: {}\n");
    const error = configError(() => loadConfig({ cwd, env: {} }));
    expect(error.issues[0]?.key).toBe("flowline.config.yaml");
    expect(error.message).toMatch(/invalid YAML at line \d+, column \d+/);
  });

  it("reports the line of a duplicate key", () => {
    const cwd = tempDir("server:\n  port: 1\n  port: 2\n");
    const error = configError(() => loadConfig({ cwd, env: {} }));
    expect(error.message).toMatch(/flowline\.config\.yaml: invalid YAML at line 3, column 3: .*unique/);
  });

  it("requires a mapping at the top level", () => {
    const error = configError(() => loadConfig({ cwd: tempDir("- a\n- b\n"), env: {} }));
    expect(error.message).toBe(
      "flowline.config.yaml: expected a mapping of settings at the top level, got a list of 2",
    );
  });

  it("treats a file holding only comments as empty", () => {
    expect(loadConfig({ cwd: tempDir("# nothing yet\n"), env: {} }).server.port).toBe(3000);
  });

  it("does not coerce strings in the file", () => {
    const error = configError(() => loadConfig({ cwd: tempDir('server: { port: "4000" }'), env: {} }));
    expect(error.message).toBe(
      'server.port: expected an integer between 1 and 65535, got "4000" (from flowline.config.yaml)',
    );
  });

  it("says which source a bad value came from", () => {
    const cwd = tempDir("server: { port: 0 }\nredis: { prefix: 'has space' }\n");
    const error = configError(() => loadConfig({ cwd, env: { PORT: "99999" } }));
    expect(error.message).toContain(
      "server.port: expected an integer between 1 and 65535, got 99999 (from env PORT)",
    );
    expect(error.message).toContain(
      'redis.prefix: expected 1-64 characters among A-Z a-z 0-9 : _ -, got "has space"',
    );
    expect(error.message).toContain("(from flowline.config.yaml)");
  });

  it.each(["__proto__", "constructor"])("refuses the key %s", (key) => {
    const cwd = tempDir(`commands:\n  ${key}: { argv: [x] }\n`);
    const error = configError(() => loadConfig({ cwd, env: {} }));
    expect(error.message).toContain(`commands.${key}: the key "${key}" is not allowed`);
    expect(({} as Record<string, unknown>).argv).toBeUndefined();
  });
});

describe("unknown keys", () => {
  it("names a top-level typo and suggests the key", () => {
    const error = configError(() => parseConfig({ queus: { default: {} } }));
    expect(error.issues).toEqual([{ key: "queus", message: 'unknown key "queus" (did you mean "queues"?)' }]);
  });

  it("names the full path of a nested typo", () => {
    const error = configError(() => parseConfig({ server: { prot: 3000 } }));
    expect(error.message).toBe('server.prot: unknown key "prot" (did you mean "port"?)');
  });

  it("finds typos inside records", () => {
    const error = configError(() =>
      parseConfig({
        queues: { default: { concurency: 2 } },
        commands: { "reports.daily": { argv: ["x"], timeout: 5 } },
      }),
    );
    expect(error.message).toContain(
      'queues.default.concurency: unknown key "concurency" (did you mean "concurrency"?)',
    );
    expect(error.message).toContain('commands["reports.daily"].timeout: unknown key "timeout"');
  });

  it("lists the accepted keys when nothing is close", () => {
    const error = configError(() => parseConfig({ log: { format: "json" } }));
    expect(error.message).toBe('log.format: unknown key "format" (expected one of: level)');
  });

  it("points into the file for an unknown key there", () => {
    const error = configError(() => loadConfig({ cwd: tempDir("databse: { url: x }\n"), env: {} }));
    expect(error.message).toBe(
      'databse: unknown key "databse" (did you mean "database"?) (from flowline.config.yaml)',
    );
  });
});

describe("cross-field rules", () => {
  it("refuses a queue whose min exceeds its max, naming the queue", () => {
    const error = configError(() => parseConfig({ queues: { default: {}, heavy: { min: 3, max: 2 } } }));
    expect(error.issues).toEqual([
      { key: "queues.heavy", message: 'queue "heavy": min (3) must not exceed max (2)' },
    ]);
  });

  it("refuses a tag that routes to an undefined queue", () => {
    const error = configError(() => parseConfig({ tags: { gpu: "gpu" } }));
    expect(error.issues).toHaveLength(1);
    expect(error.issues[0]?.key).toBe("tags.gpu");
    expect(error.issues[0]?.message).toContain('queue "gpu", which is not defined in queues');
  });

  it("requires the default queue", () => {
    const error = configError(() => parseConfig({ queues: { heavy: {} } }));
    expect(error.issues[0]?.key).toBe("queues.default");
  });

  it("validates record keys", () => {
    const error = configError(() =>
      parseConfig({ queues: { default: {}, Heavy: {} }, commands: { "-rm": { argv: ["rm"] } } }),
    );
    expect(error.message).toContain("queues.Heavy: invalid queue name");
    expect(error.message).toContain('commands["-rm"]: invalid command name');
  });

  it("validates command entries", () => {
    const error = configError(() =>
      parseConfig({ commands: { a: { argv: [] }, b: { cwd: "/tmp" }, c: { argv: ["x"], env: { N: 1 } } } }),
    );
    expect(error.message).toContain(
      "commands.a.argv: expected a non-empty list of strings, got an empty list",
    );
    expect(error.message).toContain("commands.b.argv: missing: expected a non-empty list of strings");
    expect(error.message).toContain("commands.c.env.N: expected a string");
  });

  it("refuses a section that is not a mapping", () => {
    const error = configError(() => parseConfig({ server: null }));
    expect(error.message).toBe("server: expected a mapping, got null");
  });
});
