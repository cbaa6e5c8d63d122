import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type ValidationContext, validateWorkflowDefinition } from "../../src/domain/workflow/validate.ts";

const ctx: ValidationContext = {
  commands: new Set(["transform", "transform-undo"]),
  allowedHosts: ["api.example.com", "*.internal.example.com", "127.0.0.1"],
  maxSteps: 5000,
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

function issuesOf(input: unknown) {
  const result = validateWorkflowDefinition(input, ctx);
  if (result.ok) throw new Error("expected the definition to be refused");
  return result.issues.map((i) => ({ path: i.path.join("/"), message: i.message }));
}

function expectIssue(input: unknown, path: string, message: RegExp) {
  const issues = issuesOf(input);
  const hit = issues.find((i) => i.path === path);
  expect(hit, `no issue at ${path}: ${JSON.stringify(issues)}`).toBeDefined();
  expect(hit!.message).toMatch(message);
}

describe("workflow validation", () => {
  it("accepts the SPEC example and applies defaults", () => {
    const result = validateWorkflowDefinition(example, ctx);
    if (!result.ok) throw new Error(JSON.stringify(result.issues));
    expect(result.spec.steps[0]!.needs).toEqual([]);
    expect(result.spec.steps[2]!.onFailure).toBe("fail");
    expect(result.spec.schedules[0]!.enabled).toBe(true);
  });

  it("names a cycle, including one made by requires", () => {
    expectIssue(
      { name: "w", steps: [noop("a", { needs: ["b"] }), noop("b", { needs: ["a"] })] },
      "steps",
      /cycle: (a → b → a|b → a → b)/,
    );
    expectIssue(
      {
        name: "w",
        steps: [noop("a", { provides: ["x"], needs: ["b"] }), noop("b", { requires: ["x"] })],
      },
      "steps",
      /cycle/,
    );
  });

  it("refuses unknown and duplicate ids and self-needs", () => {
    expectIssue(
      { name: "w", steps: [noop("a", { needs: ["ghost"] })] },
      "steps/0/needs/0",
      /unknown step "ghost"/,
    );
    expectIssue({ name: "w", steps: [noop("a"), noop("a")] }, "steps/1/id", /duplicate step id "a"/);
    expectIssue({ name: "w", steps: [noop("a", { needs: ["a"] })] }, "steps/0/needs/0", /itself/);
  });

  it("checks assets: required but unprovided, provided twice, policies for unknown assets", () => {
    expectIssue(
      { name: "w", steps: [noop("a", { requires: ["x"] })] },
      "steps/0/requires/0",
      /no step provides/,
    );
    expectIssue(
      { name: "w", steps: [noop("a", { provides: ["x"] }), noop("b", { provides: ["x"] })] },
      "steps/1/provides/0",
      /two steps/,
    );
    expectIssue(
      { name: "w", assets: { y: { maxAgeSeconds: 5 } }, steps: [noop("a")] },
      "assets/y",
      /no step provides/,
    );
  });

  it("reports unknown fields at every depth", () => {
    expectIssue({ name: "w", stpes: [], steps: [noop("a")] }, "stpes", /unknown field "stpes"/);
    expectIssue({ name: "w", steps: [noop("a", { retyr: {} })] }, "steps/0/retyr", /unknown field/);
    expectIssue(
      { name: "w", steps: [{ id: "a", run: { type: "noop", extra: 1 } }] },
      "steps/0/run/extra",
      /unknown field/,
    );
    expectIssue(
      { name: "w", defaults: { retry: { maxAttempts: 2, jitter: true } }, steps: [noop("a")] },
      "defaults/retry/jitter",
      /unknown field/,
    );
  });

  it("gives one clear issue for an unknown or missing executor type", () => {
    const issues = issuesOf({ name: "w", steps: [{ id: "a", run: { type: "teleport" } }] });
    expect(issues).toEqual([
      {
        path: "steps/0/run/type",
        message: expect.stringMatching(/unknown executor type "teleport"; expected one of http, command/),
      },
    ]);
    expectIssue({ name: "w", steps: [{ id: "a", run: {} }] }, "steps/0/run/type", /required/);
  });

  it("refuses names with unicode look-alikes, traversal, slashes or uppercase", () => {
    for (const name of ["wоrkflow", "../etc", "a/b", "Upper", "", "a".repeat(64), "-lead"]) {
      expectIssue({ name, steps: [noop("a")] }, "name", /lowercase ASCII/);
    }
  });

  it("checks crons and time zones", () => {
    const withCron = (cron: string, timezone = "UTC") => ({
      name: "w",
      schedules: [{ cron, timezone }],
      steps: [noop("a")],
    });
    expectIssue(withCron("0 0 31 2 *"), "schedules/0/cron", /never fires/);
    expectIssue(withCron("0 0 30 2 *"), "schedules/0/cron", /never fires/);
    expectIssue(withCron("61 * * * *"), "schedules/0/cron", /invalid cron/);
    expectIssue(withCron("* * *"), "schedules/0/cron", /5 fields/);
    expectIssue(withCron("0 0 * * *", "Mars/Olympus"), "schedules/0/timezone", /unknown time zone/);
    expect(validateWorkflowDefinition(withCron("30 2 * * 1-5", "Europe/Paris"), ctx).ok).toBe(true);
  });

  it("enforces the command allowlist in run and compensate", () => {
    expectIssue(
      { name: "w", steps: [{ id: "a", run: { type: "command", command: "rm", args: ["-rf", "/"] } }] },
      "steps/0/run/command",
      /"rm" is not in the allowlist \(allowed: transform, transform-undo\)/,
    );
    expectIssue(
      {
        name: "w",
        steps: [{ id: "a", run: { type: "noop" }, compensate: { type: "command", command: "undo" } }],
      },
      "steps/0/compensate/command",
      /allowlist/,
    );
  });

  it("checks literal http hosts, schemes and credentials", () => {
    const http = (url: string) => ({ name: "w", steps: [{ id: "a", run: { type: "http", url } }] });
    expectIssue(
      http("http://169.254.169.254/latest/meta-data"),
      "steps/0/run/url",
      /not in http.allowedHosts/,
    );
    expectIssue(http("https://evil.example.com/"), "steps/0/run/url", /not in http.allowedHosts/);
    expectIssue(http("https://internal.example.com/"), "steps/0/run/url", /not in http.allowedHosts/);
    expectIssue(http("https://user:pw@api.example.com/"), "steps/0/run/url", /credentials/);
    expectIssue(http("file:///etc/passwd"), "steps/0/run/url", /http and https/);
    expectIssue(http("not a url"), "steps/0/run/url", /not a valid URL/);
    expect(
      validateWorkflowDefinition(http("https://a.internal.example.com/x?d={{params.date}}"), ctx).ok,
    ).toBe(true);
    expect(validateWorkflowDefinition(http("http://127.0.0.1:8080/hook"), ctx).ok).toBe(true);
    // A templated host is checked on the resolved address at execution time.
    expect(validateWorkflowDefinition(http("https://{{params.host}}/x"), ctx).ok).toBe(true);
    const none = validateWorkflowDefinition(http("https://api.example.com/"), { ...ctx, allowedHosts: [] });
    expect(!none.ok && none.issues[0]!.message).toMatch(/allowedHosts is empty/);
  });

  it("lets templates read outputs of upstream steps only", () => {
    const wf = (args: unknown[], needs: string[] = []) => ({
      name: "w",
      steps: [noop("a"), noop("b"), { id: "c", needs, run: { type: "command", command: "transform", args } }],
    });
    expect(validateWorkflowDefinition(wf(["{{steps.a.output.rows}}"], ["b"]), ctx).ok).toBe(false);
    expectIssue(wf(["{{steps.a.output.rows}}"], ["b"]), "steps/2/run/args/0", /"a" is not upstream of "c"/);
    expect(validateWorkflowDefinition(wf(["{{steps.a.output.rows}}"], ["a"]), ctx).ok).toBe(true);
    expectIssue(wf(["{{steps.zz.output}}"], ["a"]), "steps/2/run/args/0", /unknown step "zz"/);
    expectIssue(wf(["{{env.HOME}}"]), "steps/2/run/args/0", /unknown template root "env"/);
    expectIssue(wf(["{{steps.a}}"], ["a"]), "steps/2/run/args/0", /must read a step output/);
    expectIssue(wf(["{{params.x"]), "steps/2/run/args/0", /unbalanced/);
    expectIssue(
      { name: "w", concurrency: { limit: 1, key: "{{steps.a.output}}" }, steps: [noop("a")] },
      "concurrency/key",
      /only \{\{params/,
    );
  });

  it("reports several issues at once", () => {
    const issues = issuesOf({
      name: "w",
      schedules: [{ cron: "0 0 31 2 *" }],
      steps: [noop("a", { needs: ["ghost"] }), { id: "b", run: { type: "command", command: "rm" } }],
    });
    expect(issues.map((i) => i.path).sort()).toEqual([
      "schedules/0/cron",
      "steps/0/needs/0",
      "steps/1/run/command",
    ]);
  });

  it("refuses more steps than configured", () => {
    const steps = Array.from({ length: 11 }, (_, i) => noop(`s${i}`));
    const small = validateWorkflowDefinition({ name: "w", steps }, { ...ctx, maxSteps: 10 });
    expect(!small.ok && small.issues).toEqual([
      { location: "body", path: ["steps"], message: "at most 10 steps are allowed, got 11" },
    ]);
    expect(
      validateWorkflowDefinition({ name: "w", steps: steps.slice(0, 10) }, { ...ctx, maxSteps: 10 }).ok,
    ).toBe(true);
  });

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
            i === 0 ? [] : [...new Set([Math.floor(rand() * i), Math.floor(rand() * i)])].map((p) => `s${p}`);
          const args = needs.length > 0 ? [`{{steps.${needs[0]}.output.v}}`] : [];
          return { id: `s${i}`, needs, run: { type: "command", command: "transform", args } };
        });
        const result = validateWorkflowDefinition({ name: "big", steps }, ctx);
        if (!result.ok) throw new Error(JSON.stringify(result.issues.slice(0, 3)));
      }),
      { numRuns: 8 },
    );
  });
});
