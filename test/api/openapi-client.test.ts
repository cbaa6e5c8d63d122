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

describe("OpenAPI document", () => {
  it("generates a typed client that type-checks and works against the live server", async () => {
    const spec = (await (await fetch(`${baseUrl}/openapi.json`)).json()) as any;
    // Request fields with a default are optional; openapi-typescript makes them required unless told.
    const ast = await openapiTS(spec, { defaultNonNullable: false });
    await writeFile(join(dir, "schema.ts"), astToString(ast));
    await writeFile(join(dir, "program.ts"), program);
    await writeFile(
      join(dir, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          target: "ES2023",
          module: "NodeNext",
          moduleResolution: "NodeNext",
          strict: true,
          noEmit: true,
          allowImportingTsExtensions: true,
          skipLibCheck: true,
          types: ["node"],
        },
        files: ["program.ts"],
      }),
    );
    // Resolve ESM/top-level await as a module.
    await writeFile(join(dir, "package.json"), JSON.stringify({ type: "module" }));

    const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
    const typecheck = await run(process.execPath, [tsc, "-p", join(dir, "tsconfig.json")]).catch((e) => e);
    expect(typecheck.stdout ?? "", typecheck.stdout).toBe("");

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
});
