/**
 * The live /openapi.json generates a typed client with a standard generator (openapi-typescript)
 * with no hand edits; a small program type-checks against it and runs against the server.
 */
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import openapiTS, { astToString } from "openapi-typescript";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";

const run = promisify(execFile);
const root = resolve(import.meta.dirname, "../..");

let ctx: TestContext;
let baseUrl: string;
let dir: string;
beforeAll(async () => {
  ctx = await createTestContext();
  baseUrl = await ctx.app.listen({ host: "127.0.0.1", port: 0 });
  // Inside the repo so the program resolves openapi-fetch from node_modules.
  dir = await mkdtemp(join(root, "node_modules", ".openapi-client-test-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
  await ctx?.close();
});

const program = `
import createClient from "openapi-fetch";
import type { paths } from "./schema.ts";

const [baseUrl, key] = process.argv.slice(2) as [string, string];
const client = createClient<paths>({ baseUrl, headers: { authorization: \`Bearer \${key}\` } });

const put = await client.PUT("/v1/workflows/{name}", {
  params: { path: { name: "generated" } },
  body: { name: "generated", steps: [{ id: "a", run: { type: "noop" } }, { id: "b", needs: ["a"], run: { type: "sleep", seconds: 0 } }] },
});
if (!put.data) throw new Error("put failed: " + JSON.stringify(put.error));
const version: number = put.data.version;

const got = await client.GET("/v1/workflows/{name}", { params: { path: { name: "generated" }, query: { version } } });
if (!got.data) throw new Error("get failed");
const stepIds: string[] = got.data.definition.steps.map((s) => s.id);

const list = await client.GET("/v1/workflows", { params: { query: { limit: 10 } } });
const names: string[] = list.data?.items.map((w) => w.name) ?? [];

const missing = await client.GET("/v1/workflows/{name}", { params: { path: { name: "nope" } } });
const problemCode: string | undefined = missing.error?.code;

const key2 = await client.POST("/v1/keys", { body: { scopes: ["read"] } });
const secret: string | undefined = key2.data?.key;

console.log(JSON.stringify({ version, stepIds, names, problemCode, status: missing.response.status, hasSecret: !!secret }));
`;

/** Type-checks one program in `dir` in strict mode; answers tsc's complaints ("" when none). */
async function typecheck(file: string, options: { lib?: string[]; types: string[] }): Promise<string> {
  const config = join(dir, `tsconfig.${file}.json`);
  await writeFile(
    config,
    JSON.stringify({
      compilerOptions: {
        target: "ES2023",
        ...(options.lib ? { lib: options.lib } : {}),
        module: "NodeNext",
        moduleResolution: "NodeNext",
        strict: true,
        noEmit: true,
        allowImportingTsExtensions: true,
        skipLibCheck: true,
        types: options.types,
      },
      files: [file],
    }),
  );
  const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
  const result = await run(process.execPath, [tsc, "-p", config]).catch((e) => e);
  return result.stdout ?? "";
}

describe("OpenAPI document", () => {
  it("generates a typed client that type-checks and works against the live server", async () => {
    const spec = (await (await fetch(`${baseUrl}/openapi.json`)).json()) as any;
    // Default options: no flag may be needed to get a client that compiles and is right.
    const ast = await openapiTS(spec);
    await writeFile(join(dir, "schema.ts"), astToString(ast));
    await writeFile(join(dir, "program.ts"), program);
    // Resolve ESM/top-level await as a module.
    await writeFile(join(dir, "package.json"), JSON.stringify({ type: "module" }));

    expect(await typecheck("program.ts", { types: ["node"] })).toBe("");

    const tsx = join(root, "bin", "run-ts.js");
    const { stdout } = await run(process.execPath, [tsx, join(dir, "program.ts"), baseUrl, ctx.rootKey]);
    const result = JSON.parse(stdout.trim().split("\n").at(-1)!);
    expect(result).toEqual({
      version: 1,
      stepIds: ["a", "b"],
      names: ["generated"],
      problemCode: "not_found",
      status: 404,
      hasSecret: true,
    });
  });

  it("declares a response schema for every route and problem responses for errors", async () => {
    const spec = (await (await fetch(`${baseUrl}/openapi.json`)).json()) as any;
    for (const [path, item] of Object.entries<Record<string, { responses?: Record<string, unknown> }>>(
      spec.paths,
    )) {
      for (const [method, op] of Object.entries(item)) {
        expect(op.responses, `${method} ${path}`).toBeDefined();
        const statuses = Object.keys(op.responses ?? {});
        expect(
          statuses.some((s) => s.startsWith("2")),
          `${method} ${path} has a 2xx`,
        ).toBe(true);
        if (path.startsWith("/v1/"))
          expect(statuses, `${method} ${path}`).toEqual(expect.arrayContaining(["400", "401", "500"]));
      }
    }
    expect(spec.components.schemas.Problem).toBeDefined();
  });

  it("names every operation, declares streams as text/event-stream and types events by `type`", async () => {
    const spec = (await (await fetch(`${baseUrl}/openapi.json`)).json()) as any;
    const ids: string[] = [];
    for (const item of Object.values<Record<string, { operationId?: string }>>(spec.paths))
      for (const op of Object.values(item)) ids.push(op.operationId ?? "");
    expect(ids.filter((id) => !/^[a-z][A-Za-z]+$/.test(id))).toEqual([]);
    expect(new Set(ids).size).toBe(ids.length);

    for (const path of ["/v1/runs/{id}/events", "/v1/runs/{id}/logs"]) {
      const content = spec.paths[path].get.responses["200"].content;
      expect(Object.keys(content).sort(), path).toEqual(["application/json", "text/event-stream"]);
      expect(content["text/event-stream"].schema.$ref).toBe("#/components/schemas/RunEventFrame");
    }
    for (const name of ["RunEvent", "RunEventFrame"]) {
      const variants = spec.components.schemas[name].oneOf as any[];
      const types = variants.map((v) => v.properties.type.const);
      expect(types, name).toContain("step.progress");
      expect(new Set(types).size, name).toBe(variants.length);
    }
    // Components no operation uses would only make generators emit dead types.
    const text = JSON.stringify(spec.paths) + JSON.stringify(spec.components);
    for (const name of Object.keys(spec.components.schemas))
      expect(text, name).toContain(`"#/components/schemas/${name}"`);
  });

  it("passes the Redocly linter (recommended rules, see redocly.yaml)", async () => {
    const file = join(dir, "openapi.json");
    await writeFile(file, await (await fetch(`${baseUrl}/openapi.json`)).text());
    const redocly = join(root, "node_modules", "@redocly", "cli", "bin", "cli.js");
    const lint = await run(
      process.execPath,
      [redocly, "lint", file, "--config", join(root, "redocly.yaml")],
      {
        cwd: root,
      },
    ).catch((e) => e);
    expect(lint.code ?? 0, `${lint.stdout}\n${lint.stderr}`).toBe(0);
    expect(lint.stderr + lint.stdout).toMatch(/valid/);
  });

  it("generates a client with a second, independent generator (@hey-api/openapi-ts) that compiles", async () => {
    const input = join(dir, "openapi.json");
    await writeFile(input, await (await fetch(`${baseUrl}/openapi.json`)).text());
    const out = join(dir, "hey-api");
    const cli = join(root, "node_modules", "@hey-api", "openapi-ts", "bin", "run.js");
    await run(
      process.execPath,
      [cli, "-i", input, "-o", out, "-c", "@hey-api/client-fetch", "--no-log-file"],
      {
        cwd: dir,
      },
    );
    await writeFile(
      join(dir, "hey-program.ts"),
      `import { createClient } from "./hey-api/client/index.ts";
import { getRun, listRuns, startRun } from "./hey-api/sdk.gen.ts";
import type { RunEventFrame } from "./hey-api/types.gen.ts";
const client = createClient({ baseUrl: "http://127.0.0.1:1" });
export const calls = [listRuns({ client, query: { limit: 5 } }), getRun({ client, path: { id: "x" } }),
  startRun({ client, path: { name: "w" }, body: { params: { a: 1 } } })];
export function label(e: RunEventFrame): string {
  switch (e.type) {
    case "step.progress": return \`\${e.stepId} \${e.progress ?? ""}\`;
    case "step.log": return e.line ?? "";
    default: return e.type;
  }
}
`,
    );
    // DOM types: the generated client is written for fetch in browsers too.
    expect(await typecheck("hey-program.ts", { lib: ["ES2023", "DOM", "DOM.Iterable"], types: [] })).toBe("");
  });
});
