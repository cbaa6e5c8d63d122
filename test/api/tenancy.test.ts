import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { call, expectProblem } from "../helpers/http.ts";

let ctx: TestContext;
let keyA: string;
let keyB: string;

beforeAll(async () => {
  ctx = await createTestContext();
  const make = async (tenant: string) =>
    (
      await call(ctx.app, "POST", "/v1/keys", { key: ctx.rootKey, body: { tenant, scopes: ["admin"] } })
    ).json().key;
  keyA = await make("tenant-a");
  keyB = await make("tenant-b");
});
afterAll(() => ctx?.close());

const definition = (description: string) => ({ description, steps: [{ id: "only", run: { type: "noop" } }] });

describe("tenant isolation", () => {
  it("tenant B cannot see, list, change or archive tenant A's workflows", async () => {
    expect(
      (await call(ctx.app, "PUT", "/v1/workflows/secret", { key: keyA, body: definition("A's") })).statusCode,
    ).toBe(201);

    expectProblem(await call(ctx.app, "GET", "/v1/workflows/secret", { key: keyB }), 404);
    expectProblem(await call(ctx.app, "GET", "/v1/workflows/secret?version=1", { key: keyB }), 404);
    expectProblem(await call(ctx.app, "DELETE", "/v1/workflows/secret", { key: keyB }), 404);
    const listB = (await call(ctx.app, "GET", "/v1/workflows?archived=true", { key: keyB })).json();
    expect(listB.items).toEqual([]);

    // B's PUT of the same name makes B's own workflow; A's is untouched.
    const bPut = await call(ctx.app, "PUT", "/v1/workflows/secret", { key: keyB, body: definition("B's") });
    expect(bPut.json()).toMatchObject({ version: 1, created: true });
    const aView = (await call(ctx.app, "GET", "/v1/workflows/secret", { key: keyA })).json();
    expect(aView).toMatchObject({ version: 1, archivedAt: null });
    expect(aView.definition.description).toBe("A's");
    const bView = (await call(ctx.app, "GET", "/v1/workflows/secret", { key: keyB })).json();
    expect(bView.definition.description).toBe("B's");

    // B archiving its own copy leaves A's visible.
    expect((await call(ctx.app, "DELETE", "/v1/workflows/secret", { key: keyB })).statusCode).toBe(204);
    expect(
      (await call(ctx.app, "GET", "/v1/workflows", { key: keyA }))
        .json()
        .items.map((w: { name: string }) => w.name),
    ).toEqual(["secret"]);
  });

  it("tenant B cannot see or revoke tenant A's keys", async () => {
    const aKeys = (await call(ctx.app, "GET", "/v1/keys", { key: keyA })).json().items;
    const bKeys = (await call(ctx.app, "GET", "/v1/keys", { key: keyB })).json().items;
    const aIds = new Set(aKeys.map((k: { id: string }) => k.id));
    expect(bKeys.some((k: { id: string }) => aIds.has(k.id))).toBe(false);
    for (const id of aIds) expectProblem(await call(ctx.app, "DELETE", `/v1/keys/${id}`, { key: keyB }), 404);
    expect((await call(ctx.app, "GET", "/v1/workflows", { key: keyA })).statusCode).toBe(200);
  });
});
