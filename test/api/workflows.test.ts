import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { call, expectProblem } from "../helpers/http.ts";

let ctx: TestContext;
beforeAll(async () => {
  ctx = await createTestContext((c) => ({
    ...c,
    commands: { transform: { argv: ["python3", "-m", "transform"] } },
    http: { allowedHosts: ["api.example.com"] },
  }));
});
afterAll(() => ctx?.close());

const diamond = {
  description: "a diamond",
  params: { date: "2026-01-01" },
  steps: [
    {
      id: "extract",
      run: { type: "http", method: "POST", url: "https://api.example.com/x", body: { d: "{{params.date}}" } },
    },
    {
      id: "left",
      needs: ["extract"],
      run: { type: "command", command: "transform", args: ["{{steps.extract.output.rows}}"] },
    },
    { id: "right", needs: ["extract"], run: { type: "noop" } },
    { id: "join", needs: ["left", "right"], run: { type: "sleep", seconds: 0 } },
  ],
};

const yamlDiamond = `
description: a diamond
params: { date: "2026-01-01" }
steps:
  - id: extract
    run: { type: http, method: POST, url: "https://api.example.com/x", body: { d: "{{params.date}}" } }
  - { id: left, needs: [extract], run: { type: command, command: transform, args: ["{{steps.extract.output.rows}}"] } }
  - { id: right, needs: [extract], run: { type: noop } }
  - { id: join, needs: [left, right], run: { type: sleep, seconds: 0 } }
`;

describe("workflow definitions", () => {
  it("creates version 1, answers the same version for the same content (JSON or YAML), and bumps on change", async () => {
    const first = await call(ctx.app, "PUT", "/v1/workflows/market", { key: ctx.rootKey, body: diamond });
    expect(first.statusCode).toBe(201);
    expect(first.json()).toMatchObject({ name: "market", version: 1, created: true });

    const again = await call(ctx.app, "PUT", "/v1/workflows/market", { key: ctx.rootKey, body: diamond });
    expect(again.statusCode).toBe(200);
    expect(again.json()).toMatchObject({ version: 1, created: false, hash: first.json().hash });

    const yaml = await call(ctx.app, "PUT", "/v1/workflows/market", {
      key: ctx.rootKey,
      raw: yamlDiamond,
      contentType: "application/yaml",
    });
    expect(yaml.statusCode).toBe(200);
    expect(yaml.json()).toMatchObject({ version: 1, created: false });

    const changed = await call(ctx.app, "PUT", "/v1/workflows/market", {
      key: ctx.rootKey,
      body: { ...diamond, description: "changed" },
    });
    expect(changed.statusCode).toBe(201);
    expect(changed.json()).toMatchObject({ version: 2, created: true });

    const v1 = await call(ctx.app, "GET", "/v1/workflows/market?version=1", { key: ctx.rootKey });
    expect(v1.statusCode).toBe(200);
    expect(v1.json()).toMatchObject({ name: "market", version: 1, latestVersion: 2 });
    expect(v1.json().definition.description).toBe("a diamond");
    const latest = await call(ctx.app, "GET", "/v1/workflows/market", { key: ctx.rootKey });
    expect(latest.json()).toMatchObject({ version: 2, latestVersion: 2 });
    expect(latest.json().definition.steps).toHaveLength(4);

    const missingVersion = await call(ctx.app, "GET", "/v1/workflows/market?version=9", { key: ctx.rootKey });
    expectProblem(missingVersion, 404);
  });

  it("serialises concurrent updates into consecutive versions", async () => {
    const puts = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        call(ctx.app, "PUT", "/v1/workflows/racy", {
          key: ctx.rootKey,
          body: { ...diamond, description: `d${i}` },
        }),
      ),
    );
    expect(puts.map((p) => p.statusCode).every((s) => s === 201)).toBe(true);
    expect(puts.map((p) => p.json().version).sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it("lists with cursor pagination and hides archived workflows until restored", async () => {
    for (const name of ["page-a", "page-b", "page-c"]) {
      expect(
        (await call(ctx.app, "PUT", `/v1/workflows/${name}`, { key: ctx.rootKey, body: diamond })).statusCode,
      ).toBe(201);
    }
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const res = await call(ctx.app, "GET", `/v1/workflows?limit=2${cursor ? `&cursor=${cursor}` : ""}`, {
        key: ctx.rootKey,
      });
      expect(res.statusCode).toBe(200);
      const page = res.json();
      expect(page.items.length).toBeLessThanOrEqual(2);
      seen.push(...page.items.map((i: { name: string }) => i.name));
      cursor = page.nextCursor;
    } while (cursor);
    expect(seen).toEqual([...seen].sort());
    expect(seen).toEqual(expect.arrayContaining(["page-a", "page-b", "page-c"]));
    expect(new Set(seen).size).toBe(seen.length);

    const del = await call(ctx.app, "DELETE", "/v1/workflows/page-b", { key: ctx.rootKey });
    expect(del.statusCode).toBe(204);
    expect((await call(ctx.app, "DELETE", "/v1/workflows/page-b", { key: ctx.rootKey })).statusCode).toBe(
      204,
    );
    const listed = (await call(ctx.app, "GET", "/v1/workflows?limit=200", { key: ctx.rootKey })).json();
    expect(listed.items.map((i: { name: string }) => i.name)).not.toContain("page-b");
    const withArchived = (
      await call(ctx.app, "GET", "/v1/workflows?limit=200&archived=true", { key: ctx.rootKey })
    ).json();
    const b = withArchived.items.find((i: { name: string }) => i.name === "page-b");
    expect(b.archivedAt).not.toBeNull();
    expect(
      (await call(ctx.app, "GET", "/v1/workflows/page-b", { key: ctx.rootKey })).json().archivedAt,
    ).not.toBeNull();

    const restored = await call(ctx.app, "PUT", "/v1/workflows/page-b", { key: ctx.rootKey, body: diamond });
    expect(restored.json()).toMatchObject({ version: 1, created: false });
    expect(
      (await call(ctx.app, "GET", "/v1/workflows/page-b", { key: ctx.rootKey })).json().archivedAt,
    ).toBeNull();

    expectProblem(await call(ctx.app, "DELETE", "/v1/workflows/never-was", { key: ctx.rootKey }), 404);
    expectProblem(
      await call(ctx.app, "GET", "/v1/workflows?cursor=not-a-cursor!", { key: ctx.rootKey }),
      400,
    );
  });

  it("shows write-only fields redacted: notify secrets, literal header and env values", async () => {
    const definition = {
      notify: [{ on: ["run.failed"], webhook: "https://hooks.example.com/x", secret: "literal-hook-secret" }],
      steps: [
        {
          id: "call",
          run: {
            type: "http",
            url: "https://api.example.com/x",
            headers: {
              authorization: "Bearer literal-token-1",
              "x-ref": "Bearer {{secrets.API_TOKEN}}",
              "x-mixed": "k={{secrets.API_TOKEN}}&pw=literal-pw",
              "content-type": "application/json",
            },
          },
          compensate: {
            type: "command",
            command: "transform",
            env: { PW: "literal-pw-2", REF: "{{secrets.PW}}" },
          },
        },
      ],
    };
    expect(
      (await call(ctx.app, "PUT", "/v1/workflows/writeonly", { key: ctx.rootKey, body: definition }))
        .statusCode,
    ).toBe(201);
    const read = await call(ctx.app, "GET", "/v1/workflows/writeonly", { key: ctx.rootKey });
    expect(read.statusCode).toBe(200);
    const shown = read.json().definition;
    expect(shown.notify[0].secret).toBe("***");
    expect(shown.steps[0].run.headers).toEqual({
      authorization: "***",
      "x-ref": "Bearer {{secrets.API_TOKEN}}",
      "x-mixed": "***",
      "content-type": "application/json",
    });
    expect(shown.steps[0].compensate.env).toEqual({ PW: "***", REF: "{{secrets.PW}}" });
    expect(read.body).not.toMatch(/literal-/);
    // The stored version is unchanged: the same content is still the same version.
    const again = await call(ctx.app, "PUT", "/v1/workflows/writeonly", {
      key: ctx.rootKey,
      body: definition,
    });
    expect(again.json()).toMatchObject({ version: 1, created: false });
  });

  it("refuses invalid definitions with every issue and its path, and writes nothing", async () => {
    const before = await ctx.db.sql`select count(*)::int as n from workflow_versions`;
    const cases: Array<[unknown, string, RegExp]> = [
      [
        {
          steps: [
            { id: "a", needs: ["c"], run: { type: "noop" } },
            { id: "b", needs: ["a"], run: { type: "noop" } },
            { id: "c", needs: ["b"], run: { type: "noop" } },
          ],
        },
        "steps",
        /cycle.*a.*b.*c|cycle.*c.*a.*b|cycle.*b.*c.*a/,
      ],
      [{ steps: [{ id: "a", run: { type: "teleport" } }] }, "steps[0].run.type", /unknown executor type/],
      [{ steps: [{ id: "a", run: { type: "noop" }, retyr: {} }] }, "steps[0]", /retyr/],
      [
        { steps: [{ id: "a", run: { type: "command", command: "rm", args: ["-rf", "/"] } }] },
        "steps[0].run.command",
        /allowlist/,
      ],
      [{ steps: [{ id: "a", needs: ["ghost"], run: { type: "noop" } }] }, "steps[0].needs[0]", /ghost/],
      [
        {
          steps: [
            { id: "a", run: { type: "noop" } },
            { id: "a", run: { type: "noop" } },
          ],
        },
        "steps[1].id",
        /duplicate/i,
      ],
      [
        { schedules: [{ cron: "0 0 31 2 *" }], steps: [{ id: "a", run: { type: "noop" } }] },
        "schedules[0].cron",
        /never/i,
      ],
      [
        {
          schedules: [{ cron: "0 0 * * *", timezone: "Mars/Olympus" }],
          steps: [{ id: "a", run: { type: "noop" } }],
        },
        "schedules[0].timezone",
        /time ?zone/i,
      ],
      [
        { steps: [{ id: "a", run: { type: "http", url: "http://169.254.169.254/latest" } }] },
        "steps[0].run.url",
        /not allowed|allowedHosts|allowed/i,
      ],
    ];
    for (const [body, path, message] of cases) {
      const res = await call(ctx.app, "PUT", "/v1/workflows/bad-one", { key: ctx.rootKey, body });
      const problem = expectProblem(res, 400);
      expect(problem.code).toBe("invalid_definition");
      const issue = problem.errors.find(
        (e: { path: string }) => e.path === path || e.path.startsWith(`${path}.`),
      );
      expect(issue, `no issue at ${path} in ${JSON.stringify(problem.errors)}`).toBeDefined();
      expect(problem.errors.map((e: { message: string }) => e.message).join(" | ")).toMatch(message);
    }
    const mismatch = await call(ctx.app, "PUT", "/v1/workflows/bad-one", {
      key: ctx.rootKey,
      body: { name: "other", steps: [{ id: "a", run: { type: "noop" } }] },
    });
    expect(expectProblem(mismatch, 400).errors[0].path).toBe("name");
    const after = await ctx.db.sql`select count(*)::int as n from workflow_versions`;
    expect(after[0]!.n).toBe(before[0]!.n);
    expectProblem(await call(ctx.app, "GET", "/v1/workflows/bad-one", { key: ctx.rootKey }), 404);
  });
});
