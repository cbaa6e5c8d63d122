import { describe, expect, it } from "vitest";
import { GroupCommitter } from "../../src/engine/group-commit.ts";

const tick = () => new Promise((r) => setTimeout(r, 0));

describe("GroupCommitter", () => {
  it("runs a lone request at once, and groups what arrives while a batch is in flight", async () => {
    const batches: Array<[string, number[]]> = [];
    let release: () => void = () => {};
    const gate = () => new Promise<void>((r) => (release = r));
    let wait = gate();
    const group = new GroupCommitter<number, number>(async (key, reqs) => {
      batches.push([key, reqs]);
      await wait;
      return reqs.map((r) => r * 10);
    });
    const first = group.submit("run-1", 1);
    await tick();
    expect(batches).toEqual([["run-1", [1]]]);
    const more = [group.submit("run-1", 2), group.submit("run-1", 3)];
    const other = group.submit("run-2", 9); // another key does not wait
    await tick();
    expect(batches).toEqual([
      ["run-1", [1]],
      ["run-2", [9]],
    ]);
    expect(group.pending()).toBe(2);
    const done = release;
    wait = gate();
    done();
    expect(await first).toBe(10);
    await tick();
    expect(batches[2]).toEqual(["run-1", [2, 3]]);
    release();
    expect(await Promise.all([...more, other])).toEqual([20, 30, 90]);
    expect(group.pending()).toBe(0);
  });

  it("fails every request of a failed batch and goes on with the next", async () => {
    let calls = 0;
    const group = new GroupCommitter<number, number>(async (_key, reqs) => {
      calls++;
      if (calls === 1) throw new Error("boom");
      return reqs;
    });
    const a = group.submit("k", 1);
    const b = group.submit("k", 2);
    await expect(a).rejects.toThrow("boom");
    expect(await b).toBe(2);
  });

  it("caps a batch at maxBatch", async () => {
    const sizes: number[] = [];
    const group = new GroupCommitter<number, number>(async (_key, reqs) => {
      sizes.push(reqs.length);
      return reqs;
    }, 3);
    const all = Array.from({ length: 8 }, (_, i) => group.submit("k", i));
    expect(await Promise.all(all)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(sizes).toEqual([1, 3, 3, 1]);
  });

  it("fails a batch that does not answer in time, and the key goes on with the next", async () => {
    let calls = 0;
    const group = new GroupCommitter<number, number>(
      async (_key, reqs) => {
        calls++;
        if (calls === 1) return new Promise<number[]>(() => {}); // a connection that died silently
        return reqs.map((r) => r + 1);
      },
      256,
      50,
    );
    await expect(group.submit("run-1", 1)).rejects.toThrow(/did not answer within 50 ms/);
    expect(await group.submit("run-1", 2)).toBe(3);
  });
});
