import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { formatPath } from "../../src/domain/errors.ts";
import {
  type ValidationContext,
  type ValidationResult,
  validateWorkflowDefinition,
} from "../../src/domain/workflow/validate.ts";

const ctx: ValidationContext = {
  commands: new Set(["transform", "transform-undo"]),
  allowedHosts: ["api.example.com", "*.internal.example.com", "127.0.0.1", "[::1]"],
  maxSteps: 5000,
  queues: new Set(["default", "heavy"]),
  tagRoutes: { heavy: "heavy" },
  maxPriority: 10,
  maxSleepSeconds: 3600,
  maxTimeoutSeconds: 86_400,
  maxParamsBytes: 65_536,
  now: new Date("2026-11-23T00:00:00Z"),
};

/** The example of SPEC §2. */
const example = {
  name: "market-daily",
  description: "Daily market pipeline",
  params: { date: "2026-01-01" },
  schedules: [{ cron: "0 19 * * *", timezone: "UTC", params: {} }],
  concurrency: { limit: 1 },
  defaults: {
    retry: { maxAttempts: 3, backoff: "exponential", delaySeconds: 5, maxDelaySeconds: 300 },
    timeoutSeconds: 600,
    queue: "default",
  },
  assets: { market_data: { maxAgeSeconds: 86400 } },
  notify: [{ on: ["run.failed"], webhook: "https://hooks.example.com/flowline" }],
  steps: [
    {
      id: "extract",
      run: {
        type: "http",
        method: "POST",
        url: "https://api.example.com/extract",
        body: { date: "{{params.date}}" },
      },
      provides: ["market_data"],
    },
    {
      id: "transform",
      needs: ["extract"],
      run: { type: "command", command: "transform", args: ["--date", "{{params.date}}"] },
      tags: ["heavy"],
      onFailure: "rollback",
      compensate: { type: "command", command: "transform-undo", args: ["--date", "{{params.date}}"] },
    },
    { id: "report", needs: ["transform"], run: { type: "handler", name: "reports.daily" } },
  ],
};

const noop = (id: string, extra: Record<string, unknown> = {}) => ({ id, run: { type: "noop" }, ...extra });
const workflow = (steps: unknown[], extra: Record<string, unknown> = {}) => ({ name: "w", ...extra, steps });
const command = (id: string, args: string[], extra: Record<string, unknown> = {}) => ({
  id,
  run: { type: "command", command: "transform", args },
  ...extra,
});

function validate(input: unknown, context: ValidationContext = ctx): ValidationResult {
  return validateWorkflowDefinition(input, context);
}

function issuesOf(input: unknown, context: ValidationContext = ctx) {
  const result = validate(input, context);
  if (result.ok) throw new Error("expected the definition to be refused");
  for (const issue of result.issues) expect(issue.location).toBe("body");
  return result.issues.map((i) => ({ path: formatPath(i.path), message: i.message }));
}

function expectIssue(input: unknown, path: string, message: RegExp, context: ValidationContext = ctx) {
  const issues = issuesOf(input, context);
  const hit = issues.find((i) => i.path === path && message.test(i.message));
  expect(hit, `no issue at ${path} matching ${message}: ${JSON.stringify(issues)}`).toBeDefined();
}

function expectValid(input: unknown, context: ValidationContext = ctx) {
  const result = validate(input, context);
  if (!result.ok) throw new Error(`expected a valid definition: ${JSON.stringify(result.issues)}`);
  return result.spec;
}

describe("a valid definition", () => {
  it("accepts the SPEC example and applies defaults", () => {
    const spec = expectValid(example);
    expect(spec.steps[0]!.needs).toEqual([]);
    expect(spec.steps[1]!.run).toEqual({
      type: "command",
      command: "transform",
      args: ["--date", "{{params.date}}"],
    });
    expect(spec.steps[2]!.onFailure).toBe("fail");
    expect(spec.schedules[0]).toEqual({ cron: "0 19 * * *", timezone: "UTC", params: {}, enabled: true });
    expect(spec.defaults?.retry).toEqual({
      maxAttempts: 3,
      backoff: "exponential",
      delaySeconds: 5,
      maxDelaySeconds: 300,
    });
  });

  it("fills in the remaining defaults", () => {
    const spec = expectValid(
      workflow(
        [
          { id: "get", run: { type: "http", url: "https://api.example.com/x" }, retry: { maxAttempts: 2 } },
          { id: "run", run: { type: "command", command: "transform" } },
        ],
        { schedules: [{ cron: "@daily" }] },
      ),
    );
    expect(spec.params).toEqual({});
    expect(spec.schedules[0]).toEqual({ cron: "@daily", timezone: "UTC", enabled: true });
    expect(spec.steps[0]!.run).toEqual({ type: "http", method: "GET", url: "https://api.example.com/x" });
    expect(spec.steps[0]!.retry).toEqual({
      maxAttempts: 2,
      backoff: "exponential",
      delaySeconds: 5,
      maxDelaySeconds: 300,
    });
    expect(spec.steps[1]!.run).toEqual({ type: "command", command: "transform", args: [] });
    expect(spec.steps[1]).toMatchObject({ provides: [], requires: [], tags: [], onFailure: "fail" });
  });
});

describe("shape", () => {
  it("reports unknown fields at every depth, each at the path of the field", () => {
    const input = {
      name: "w",
      stpes: [],
      schedules: [{ cron: "0 * * * *", tz: "UTC" }],
      concurrency: { limit: 1, keys: "x" },
      defaults: { retry: { maxAttempts: 2, jitter: true } },
      assets: { a: { maxAge: 5 } },
      notify: [{ on: ["run.failed"], webhook: "https://h.example.com", headers: {} }],
      steps: [noop("a", { retyr: {} }), { id: "b", run: { type: "noop", extra: 1 } }],
    };
    const issues = issuesOf(input);
    expect(issues).toEqual(
      expect.arrayContaining([
        { path: "stpes", message: 'unknown field "stpes"' },
        { path: "schedules[0].tz", message: 'unknown field "tz"' },
        { path: "concurrency.keys", message: 'unknown field "keys"' },
        { path: "defaults.retry.jitter", message: 'unknown field "jitter"' },
        { path: "assets.a.maxAge", message: 'unknown field "maxAge"' },
        { path: "notify[0].headers", message: 'unknown field "headers"' },
        { path: "steps[0].retyr", message: 'unknown field "retyr"' },
        { path: "steps[1].run.extra", message: 'unknown field "extra"' },
      ]),
    );
    expect(issues).toHaveLength(8);
  });

  it("gives one clear issue for an unknown, missing or mistyped executor type", () => {
    expect(issuesOf(workflow([{ id: "a", run: { type: "teleport", url: "x" } }]))).toEqual([
      {
        path: "steps[0].run.type",
        message: 'unknown executor type "teleport"; expected one of http, command, handler, sleep, noop',
      },
    ]);
    expect(issuesOf(workflow([{ id: "a", run: {} }]))).toEqual([
      {
        path: "steps[0].run.type",
        message: "executor type is required; expected one of http, command, handler, sleep, noop",
      },
    ]);
    expectIssue(workflow([{ id: "a", run: { type: 5 } }]), "steps[0].run.type", /unknown executor type 5/);
    expectIssue(
      workflow([noop("a", { compensate: { type: "shell" } })]),
      "steps[0].compensate.type",
      /"shell"/,
    );
    expectIssue(workflow([{ id: "a", run: "noop" }]), "steps[0].run", /expected an object, got a string/);
  });

  it("refuses names with unicode look-alikes, traversal, slashes, dots or uppercase", () => {
    for (const name of [
      "wоrkflow",
      "../etc",
      "..",
      "a/b",
      "a.b",
      "Upper",
      "",
      "a".repeat(64),
      "-lead",
      "a b",
    ]) {
      expectIssue({ name, steps: [noop("a")] }, "name", /lowercase ASCII/);
    }
    expectValid({ name: "a".repeat(63), steps: [noop("a")] });
    expectValid({ name: "0_a-b", steps: [noop("a")] });
    expectIssue(workflow([noop("Extract")]), "steps[0].id", /lowercase ASCII/);
    expectIssue(workflow([noop("a", { queue: "q/1" })]), "steps[0].queue", /lowercase ASCII/);
  });

  it("words zod's generic problems for people", () => {
    expectIssue(workflow([{ run: { type: "noop" } }]), "steps[0].id", /^required$/);
    expectIssue({ steps: [noop("a")] }, "name", /^required$/);
    expectIssue(workflow([noop("a", { priority: 11 })]), "steps[0].priority", /^must be at most 10$/);
    expectIssue(
      workflow([noop("a", { retry: { maxAttempts: 1.5 } })]),
      "steps[0].retry.maxAttempts",
      /integer/,
    );
    expectIssue(workflow([noop("a", { needs: "b" })]), "steps[0].needs", /expected an array, got a string/);
    expectIssue(
      workflow([noop("a", { onFailure: "explode" })]),
      "steps[0].onFailure",
      /"fail", "continue", "rollback"/,
    );
    expectIssue(workflow([]), "steps", /at least one step/);
    expectIssue(workflow([noop("a")], { concurrency: { limit: 0 } }), "concurrency.limit", /at least 1/);
    expectIssue(
      workflow([{ id: "a", run: { type: "sleep", seconds: "5" } }]),
      "steps[0].run.seconds",
      /got a string/,
    );
    expectIssue(null, "(root)", /expected an object, got null/);
  });

  it("requires maxAttempts in a retry policy", () => {
    expectIssue(
      workflow([noop("a", { retry: { backoff: "fixed" } })]),
      "steps[0].retry.maxAttempts",
      /required/,
    );
  });

  it("checks asset keys, including '..'", () => {
    expectIssue(workflow([noop("a", { provides: ["a..b"] })]), "steps[0].provides[0]", /'\.\.'/);
    expectIssue(workflow([noop("a", { provides: ["Market"] })]), "steps[0].provides[0]", /lowercase ASCII/);
    expectIssue(
      workflow([noop("a")], { assets: { "a..b": {} } }),
      'assets["a..b"]',
      /invalid key "a..b": .*'\.\.'/,
    );
    expectValid(workflow([noop("a", { provides: ["market.eu_daily-1"] })]));
  });

  it("refuses params that JSON cannot carry or whose names are reserved", () => {
    expectIssue(
      workflow([noop("a")], { params: { x: Number.POSITIVE_INFINITY } }),
      "params.x",
      /finite number/,
    );
    expectIssue(
      workflow([noop("a")], { params: { x: { when: new Date(0) } } }),
      "params.x",
      /non-plain object/,
    );
    expectIssue(workflow([noop("a")], { params: { x: [1, undefined] } }), "params.x", /undefined/);
    const cyclic: Record<string, unknown> = { a: 1 };
    cyclic.self = { again: cyclic };
    expectIssue(workflow([noop("a")], { params: { x: cyclic } }), "params.x", /contains itself/);
    // A value shared through a YAML alias is fine.
    const shared = { region: "eu" };
    expectValid(workflow([noop("a")], { params: { a: shared, b: [shared, shared] } }));
    expectIssue(workflow([noop("a")], { params: { constructor: 1 } }), "params.constructor", /reserved/);
    expectIssue(workflow([noop("a")], { params: { "my key": 1 } }), 'params["my key"]', /invalid key/);
    expectIssue(
      workflow([{ id: "a", run: { type: "noop", output: { n: Number.NaN } } }]),
      "steps[0].run.output",
      /finite number/,
    );
  });

  it("refuses header names and values that could split a request", () => {
    const http = (headers: Record<string, string>) =>
      workflow([{ id: "a", run: { type: "http", url: "https://api.example.com/", headers } }]);
    expectIssue(http({ "X-A": "a\r\nHost: evil" }), "steps[0].run.headers.X-A", /line breaks/);
    expectIssue(http({ "X A": "v" }), 'steps[0].run.headers["X A"]', /HTTP header name/);
    expectValid(http({ Authorization: "Bearer {{params.token}}" }));
  });

  it("checks the output path, tags, expected statuses and notifications", () => {
    expectIssue(workflow([noop("a", { output: "stats..rows" })]), "steps[0].output", /dotted path/);
    expectValid(workflow([noop("a", { output: "stats.rows.0" })]));
    expectIssue(workflow([noop("a", { tags: ["gpu large"] })]), "steps[0].tags[0]", /letters, digits/);
    const expecting = (expectStatus: unknown) =>
      workflow([{ id: "a", run: { type: "http", url: "https://api.example.com/", expectStatus } }]);
    expectIssue(expecting("200"), "steps[0].run.expectStatus", /status code 100–599/);
    expectIssue(expecting([200, 700]), "steps[0].run.expectStatus[1]", /at most 599/);
    expectValid(expecting([200, 204]));
    const notify = (entry: unknown) => workflow([noop("a")], { notify: [entry] });
    expectIssue(
      notify({ on: ["step.failed"], webhook: "https://h.example.com" }),
      "notify[0].on[0]",
      /run\.failed/,
    );
    expectIssue(notify({ on: [], webhook: "https://h.example.com" }), "notify[0].on", /must not be empty/);
    expectIssue(
      notify({ on: ["run.failed"], webhook: "ftp://h.example.com" }),
      "notify[0].webhook",
      /http\(s\)/,
    );
    expectIssue(
      notify({ on: ["run.failed"], webhook: "javascript:alert(1)" }),
      "notify[0].webhook",
      /http\(s\)/,
    );
  });
});

describe("steps and the graph", () => {
  it("refuses unknown, duplicate and self needs", () => {
    expectIssue(workflow([noop("a", { needs: ["ghost"] })]), "steps[0].needs[0]", /unknown step "ghost"/);
    expectIssue(
      workflow([noop("a"), noop("b"), noop("a")]),
      "steps[2].id",
      /duplicate step id "a" \(first used by steps\[0\]\)/,
    );
    expectIssue(workflow([noop("a", { needs: ["a"] })]), "steps[0].needs[0]", /"a" cannot need itself/);
  });

  it("names a cycle at `steps`", () => {
    expect(
      issuesOf(
        workflow([noop("a", { needs: ["c"] }), noop("b", { needs: ["a"] }), noop("c", { needs: ["b"] })]),
      ),
    ).toEqual([{ path: "steps", message: "cycle: a → b → c → a" }]);
  });

  it("follows the implicit edges of requires, both into cycles and into upstream outputs", () => {
    expectIssue(
      workflow([noop("a", { provides: ["x"], needs: ["b"] }), noop("b", { requires: ["x"] })]),
      "steps",
      /^cycle: (a → b → a|b → a → b)$/,
    );
    expectValid(
      workflow([
        noop("a", { provides: ["x"] }),
        command("b", ["{{steps.a.output.rows}}"], { requires: ["x"] }),
      ]),
    );
  });

  it("reports only the cycle, not every template, when the graph is cyclic", () => {
    const issues = issuesOf(
      workflow([
        command("a", ["{{steps.b.output}}"], { needs: ["b"] }),
        command("b", ["{{steps.a.output}}"], { needs: ["a"] }),
      ]),
    );
    expect(issues.map((i) => i.path)).toEqual(["steps"]);
  });

  it("checks assets: required but unprovided, provided twice, required by its provider, policy without provider", () => {
    expectIssue(
      workflow([noop("a", { requires: ["x"] })]),
      "steps[0].requires[0]",
      /"x" is required but no step provides it/,
    );
    expectIssue(
      workflow([noop("a", { provides: ["x"] }), noop("b", { provides: ["x"] })]),
      "steps[1].provides[0]",
      /provided by two steps: "a" and "b"/,
    );
    expectIssue(
      workflow([noop("a", { provides: ["x"], requires: ["x"] })]),
      "steps[0].requires[0]",
      /provides itself/,
    );
    expectIssue(
      workflow([noop("a")], { assets: { y: { maxAgeSeconds: 5 } } }),
      "assets.y",
      /no step provides/,
    );
  });

  it("refuses more steps than configured", () => {
    const steps = Array.from({ length: 11 }, (_, i) => noop(`s${i}`));
    expect(issuesOf(workflow(steps), { ...ctx, maxSteps: 10 })).toEqual([
      { path: "steps", message: "at most 10 steps are allowed (limits.maxSteps), got 11" },
    ]);
    expectValid(workflow(steps.slice(0, 10)), { ...ctx, maxSteps: 10 });
  });
});

describe("schedules", () => {
  const withCron = (cron: string, timezone = "UTC") =>
    workflow([noop("a")], { schedules: [{ cron, timezone }] });

  it("refuses crons that never fire, or not within five years", () => {
    expectIssue(withCron("0 0 31 2 *"), "schedules[0].cron", /never fires/);
    expectIssue(withCron("0 0 30 2 *"), "schedules[0].cron", /never fires/);
    expectIssue(withCron("0 0 31 4,6,9,11 *"), "schedules[0].cron", /never fires/);
    // A fifth Monday in February: next in 2044.
    expectIssue(
      withCron("0 0 * 2 1#5"),
      "schedules[0].cron",
      /does not fire within 5 years \(next: 2044-02-29/,
    );
    expectValid(withCron("0 0 29 2 *"));
  });

  it("refuses invalid patterns and field counts", () => {
    expectIssue(withCron("61 * * * *"), "schedules[0].cron", /invalid cron "61 \* \* \* \*": .*minute/);
    expectIssue(withCron("*/0 * * * *"), "schedules[0].cron", /invalid cron/);
    expectIssue(withCron("* * *"), "schedules[0].cron", /5 fields/);
    expectIssue(withCron("0 0 0 1 1 * 2030"), "schedules[0].cron", /5 fields/);
    expectIssue(withCron("@reboot"), "schedules[0].cron", /invalid cron/);
    expectIssue(withCron("every day"), "schedules[0].cron", /5 fields|invalid cron/);
  });

  it("accepts 5 fields, 6 with seconds, names and nicknames", () => {
    for (const cron of [
      "30 2 * * 1-5",
      "*/15 * * * *",
      "0 30 2 * * *",
      "0 9 * JAN-MAR MON",
      "@hourly",
      "0 0 L * *",
    ])
      expectValid(withCron(cron, "Europe/Paris"));
  });

  it("checks the time zone and still checks the cron", () => {
    expect(issuesOf(withCron("61 * * * *", "Mars/Olympus")).map((i) => i.path)).toEqual([
      "schedules[0].timezone",
      "schedules[0].cron",
    ]);
    expectIssue(
      withCron("0 0 * * *", "Mars/Olympus"),
      "schedules[0].timezone",
      /unknown time zone "Mars\/Olympus"/,
    );
    expectValid(withCron("0 0 * * *", "America/New_York"));
  });

  it("checks fifty never-firing schedules in bounded time", () => {
    const schedules = Array.from({ length: 50 }, (_, i) => ({
      cron: i % 2 ? "59 59 23 31 2 *" : "* * 30 2 *",
      timezone: i % 3 ? "Asia/Kathmandu" : "UTC",
    }));
    const issues = issuesOf(workflow([noop("a")], { schedules }));
    expect(issues).toHaveLength(50);
    expect(issues.every((i) => /never fires/.test(i.message))).toBe(true);
    // croner stops its search at a fixed year: an unbounded search would run into the test's timeout.
  });
});

describe("executors", () => {
  it("enforces the command allowlist in run and compensate", () => {
    expectIssue(
      workflow([{ id: "a", run: { type: "command", command: "rm", args: ["-rf", "/"] } }]),
      "steps[0].run.command",
      /^command "rm" is not in the allowlist \(allowed: transform, transform-undo\)$/,
    );
    expectIssue(
      workflow([noop("a", { compensate: { type: "command", command: "undo" } })]),
      "steps[0].compensate.command",
      /"undo" is not in the allowlist/,
    );
    expectIssue(example, "steps[1].run.command", /\(the allowlist is empty\)/, {
      ...ctx,
      commands: new Set(),
    });
  });

  describe("http hosts", () => {
    const http = (url: string) => workflow([{ id: "a", run: { type: "http", url } }]);
    const refused = (url: string, message: RegExp) => expectIssue(http(url), "steps[0].run.url", message);

    it("refuses hosts outside http.allowedHosts", () => {
      refused(
        "http://169.254.169.254/latest/meta-data",
        /host "169.254.169.254" is not in http.allowedHosts/,
      );
      refused("https://evil.example.com/", /not in http.allowedHosts \(api.example.com, /);
      refused("https://api.example.com.evil.io/", /not in http.allowedHosts/);
      refused("https://internal.example.com/", /not in http.allowedHosts/);
      refused("http:evil.com/x", /host "evil.com"/);
      refused("https://evil.com/{{params.path}}", /host "evil.com"/);
      refused("http://localhost:8080/", /not in http.allowedHosts/);
    });

    it("accepts exact hosts, IPs and subdomains of wildcard entries", () => {
      expectValid(http("https://API.Example.com/extract"));
      expectValid(http("https://a.internal.example.com/x?d={{params.date}}"));
      expectValid(http("https://a.b.internal.example.com:8443/x"));
      expectValid(http("http://127.0.0.1:8080/hook"));
      expectValid(http("http://[::1]:8080/hook"));
    });

    it("refuses credentials, other schemes and invalid URLs", () => {
      refused("https://user:pw@api.example.com/", /credentials/);
      refused("https://{{params.user}}@api.example.com/", /credentials/);
      refused("file:///etc/passwd", /only http and https/);
      refused("ftp://api.example.com/", /only http and https/);
      refused("not a url", /"not a url" is not a valid URL/);
      refused("/relative/{{params.x}}", /not a valid URL/);
    });

    it("leaves URLs whose scheme, host or port come from a template to execution time", () => {
      for (const url of [
        "https://{{params.host}}/x",
        "{{params.baseUrl}}/x",
        "https://api.example.com{{params.suffix}}/x",
        "https://api.example.com:{{params.port}}/x",
        "http{{params.s}}://api.example.com/",
        "https://{{steps.a.output.host}}/x",
      ]) {
        const result = validate(workflow([noop("a"), { id: "b", needs: ["a"], run: { type: "http", url } }]));
        expect(result.ok, `${url}: ${JSON.stringify(!result.ok && result.issues)}`).toBe(true);
      }
    });

    it("says so when http.allowedHosts is empty", () => {
      expectIssue(http("https://api.example.com/"), "steps[0].run.url", /allowedHosts is empty/, {
        ...ctx,
        allowedHosts: [],
      });
    });
  });
});

describe("templates", () => {
  const wf = (args: string[], needs: string[] = []) =>
    workflow([noop("a"), noop("b", { needs: ["a"] }), noop("x"), command("c", args, { needs })]);

  it("lets a step read outputs of its transitive upstream only", () => {
    expectValid(wf(["{{steps.a.output.rows}}"], ["a"]));
    expectValid(wf(["{{steps.a.output.rows}}"], ["b"]));
    expectIssue(
      wf(["--in", "{{steps.x.output.rows}}"], ["b"]),
      "steps[3].run.args[1]",
      /^step "x" is not upstream of "c"; its output is not available/,
    );
    expectIssue(wf(["{{steps.zz.output}}"], ["a"]), "steps[3].run.args[0]", /unknown step "zz"/);
  });

  it("lets a compensation, and only a compensation, read its own step's output", () => {
    expectIssue(wf(["{{steps.c.output}}"]), "steps[3].run.args[0]", /"c" is not upstream of "c"/);
    expectValid(
      workflow([
        command("c", [], {
          onFailure: "rollback",
          compensate: { type: "command", command: "transform-undo", args: ["{{steps.c.output.id}}"] },
        }),
      ]),
    );
  });

  it("finds templates anywhere in an executor", () => {
    expectIssue(
      workflow([
        noop("a"),
        {
          id: "b",
          run: {
            type: "http",
            method: "POST",
            url: "https://api.example.com/x",
            headers: { "X-Run": "{{steps.a.output.id}}" },
            body: { deep: [{ v: "{{steps.a.output.v}}" }] },
          },
        },
      ]),
      "steps[1].run.body.deep[0].v",
      /"a" is not upstream of "b"/,
    );
    expectIssue(
      workflow([{ id: "a", run: { type: "handler", name: "h.x", input: { k: "{{vault.KEY}}" } } }]),
      "steps[0].run.input.k",
      /unknown template root "vault"/,
    );
    expectIssue(
      workflow([{ id: "a", run: { type: "handler", name: "h.x", input: { k: "{{secrets.KEY}}" } } }]),
      "steps[0].run.input.k",
      /may be used only in http and command steps, not handler/,
    );
  });

  it("refuses unknown roots, missing .output and unterminated templates", () => {
    expectIssue(wf(["{{env.HOME}}"]), "steps[3].run.args[0]", /unknown template root "env"/);
    expectIssue(wf(["{{steps.a}}"], ["a"]), "steps[3].run.args[0]", /must read a step output/);
    expectIssue(wf(["{{params.x"]), "steps[3].run.args[0]", /unterminated template/);
    expectValid(wf(['{"json":{"nested":true}}']));
  });

  it("allows only params in concurrency.key", () => {
    expectValid(workflow([noop("a")], { concurrency: { limit: 1, key: "{{params.account}}" } }));
    expectIssue(
      workflow([noop("a")], { concurrency: { limit: 1, key: "{{steps.a.output}}" } }),
      "concurrency.key",
      /only \{\{params/,
    );
    expectIssue(
      workflow([noop("a")], { concurrency: { limit: 1, key: "{{ nope }}" } }),
      "concurrency.key",
      /unknown template root/,
    );
  });
});

describe("reporting", () => {
  it("reports every semantic issue at once", () => {
    const issues = issuesOf(
      workflow(
        [
          noop("a", { needs: ["ghost"] }),
          { id: "b", run: { type: "command", command: "rm" } },
          { id: "c", run: { type: "http", url: "https://evil.com/" } },
          command("d", ["{{steps.b.output}}"]),
          noop("a"),
        ],
        { schedules: [{ cron: "0 0 31 2 *" }], assets: { orphan: {} } },
      ),
    );
    expect(issues.map((i) => i.path).sort()).toEqual([
      "assets.orphan",
      "schedules[0].cron",
      "steps[0].needs[0]",
      "steps[1].run.command",
      "steps[2].run.url",
      "steps[3].run.args[0]",
      "steps[4].id",
    ]);
  });

  it("reports every shape issue at once", () => {
    const issues = issuesOf({
      name: "W",
      steps: [
        { id: "a", run: { type: "nope" } },
        { id: 7, run: { type: "noop" } },
      ],
    });
    expect(issues.map((i) => i.path)).toEqual(["name", "steps[0].run.type", "steps[1].id"]);
  });
});

describe("large definitions", () => {
  it("property: random valid DAGs of up to 5,000 steps validate", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 5000 }), fc.integer(), (n, seed) => {
        let x = seed >>> 0 || 1;
        const rand = () => {
          x ^= x << 13;
          x ^= x >>> 17;
          x ^= x << 5;
          return (x >>> 0) / 4294967296;
        };
        const steps = Array.from({ length: n }, (_, i) => {
          const needs =
            i === 0 ? [] : [...new Set([0, 1, 2, 3].map(() => Math.floor(rand() * i)))].map((p) => `s${p}`);
          const args = needs.length > 0 ? [`{{steps.${needs[0]}.output.v}}`, "{{params.date}}"] : [];
          return {
            id: `s${i}`,
            needs,
            provides: i % 10 === 0 ? [`asset-${i}`] : [],
            requires: i % 10 === 5 ? [`asset-${i - 5}`] : [],
            run: { type: "command", command: "transform", args },
          };
        });
        const result = validate({ name: "big", steps });
        if (!result.ok) throw new Error(JSON.stringify(result.issues.slice(0, 3)));
      }),
      { numRuns: 8 },
    );
  });

  it("validates a 5,000-step definition where every step reads a distant upstream output", () => {
    const steps = Array.from({ length: 5000 }, (_, i) =>
      command(`s${i}`, i === 0 ? [] : [`{{steps.s0.output}}`, `{{steps.s${Math.floor(i / 2)}.output.v}}`], {
        needs: i === 0 ? [] : [`s${i - 1}`],
      }),
    );
    expectValid({ name: "chain", steps });
  });

  it("refuses queues the configuration does not define, listing the configured ones", () => {
    const listed = /is not configured \(configured queues: default, heavy\)/;
    expectIssue(workflow([noop("a", { queue: "nowhere" })]), "steps[0].queue", listed);
    expectIssue(workflow([noop("a")], { defaults: { queue: "constructor" } }), "defaults.queue", listed);
    // A tag routed by config reaches a configured queue; through defaults.queue only one issue.
    expectValid(workflow([noop("a", { queue: "heavy" }), noop("b", { tags: ["heavy", "constructor"] })]));
    const tagged = { ...ctx, tagRoutes: { gpu: "gpu" } };
    expectIssue(
      workflow([noop("a", { tags: ["gpu"] })]),
      "steps[0].tags",
      /queue "gpu", which is not configured/,
      tagged,
    );
    expect(issuesOf(workflow([noop("a")], { defaults: { queue: "x" } }))).toHaveLength(1);
  });

  it("holds priorities, sleeps, timeouts and params under their ceilings, naming the setting", () => {
    const low = { ...ctx, maxPriority: 5 };
    expectIssue(
      workflow([noop("a", { priority: 6 })]),
      "steps[0].priority",
      /ceiling of 5 \(quotas.maxPriority\)/,
      low,
    );
    expectIssue(
      workflow([noop("a")], { defaults: { priority: 9 } }),
      "defaults.priority",
      /ceiling of 5/,
      low,
    );
    expectValid(workflow([noop("a", { priority: 5 })]), low);
    expectIssue(
      workflow([{ id: "a", run: { type: "sleep", seconds: 7200 } }]),
      "steps[0].run.seconds",
      /sleeps 7200 s; the limit is 3600 s \(limits.maxSleepSeconds\)/,
    );
    expectIssue(
      workflow([noop("a", { compensate: { type: "sleep", seconds: 4000 } })]),
      "steps[0].compensate.seconds",
      /limits.maxSleepSeconds/,
    );
    const short = { ...ctx, maxTimeoutSeconds: 60 };
    expectIssue(
      workflow([noop("a", { timeoutSeconds: 61 })]),
      "steps[0].timeoutSeconds",
      /limits.maxTimeoutSeconds/,
      short,
    );
    expectIssue(
      workflow([noop("a")], { defaults: { timeoutSeconds: 600 } }),
      "defaults.timeoutSeconds",
      /60 s/,
      short,
    );
    expectIssue(
      workflow([{ id: "a", run: { type: "http", url: "https://api.example.com/x", timeoutSeconds: 120 } }]),
      "steps[0].run.timeoutSeconds",
      /limits.maxTimeoutSeconds/,
      short,
    );
    expectIssue(
      workflow([noop("a")], { params: { big: "x".repeat(100) } }),
      "params",
      /bytes as JSON; the limit is 50 \(limits.maxRunParamsBytes\)/,
      { ...ctx, maxParamsBytes: 50 },
    );
  });
});
