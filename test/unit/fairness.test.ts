import { describe, expect, it } from "vitest";
import { assignFairTags, type FairQueueState } from "../../src/domain/fairness.ts";

const fresh = (): FairQueueState => ({ v: 0, flows: new Map() });

describe("fair-share tags", () => {
  it("let a tenant with nothing waiting start level with the head of another's backlog", () => {
    const state = fresh();
    const backlog = assignFairTags(
      state,
      null,
      Array.from({ length: 5 }, () => ({ tenantId: "a", priority: 5 })),
    );
    expect(backlog).toEqual([1, 2, 3, 4, 5]);
    // a's first step is at the head (tag 1): b's step gets the next tag, ahead of a's four others.
    expect(assignFairTags(state, 1, [{ tenantId: "b", priority: 5 }])).toEqual([1]);
  });

  it("order a tenant's own steps by priority, but give it no lead over other tenants", () => {
    const state = fresh();
    expect(
      assignFairTags(state, null, [
        { tenantId: "a", priority: 5 },
        { tenantId: "a", priority: 5 },
      ]),
    ).toEqual([1, 2]);
    // a's priority-10 step waits behind none of a's priority-5 steps…
    expect(assignFairTags(state, 1, [{ tenantId: "a", priority: 10 }])).toEqual([1]);
    // …and its next priority-5 step waits behind that one and the earlier ones.
    expect(assignFairTags(state, 1, [{ tenantId: "a", priority: 5 }])).toEqual([3]);
  });

  it("start a new epoch when nothing waits", () => {
    const state = fresh();
    assignFairTags(
      state,
      null,
      Array.from({ length: 3 }, () => ({ tenantId: "a", priority: 5 })),
    );
    expect(assignFairTags(state, null, [{ tenantId: "a", priority: 5 }])).toEqual([1]);
  });
});
