import { describe, expect, it } from "vitest";
import { coalesceReads } from "../../src/api/routes/runs/sse.ts";

describe("shared SSE page reads", () => {
  it("shares a read among callers of one notification generation only", async () => {
    let generation = 0;
    const started: Array<(value: string) => void> = [];
    const read = coalesceReads(
      () => generation,
      () => new Promise<string>((resolve) => started.push(resolve)),
    );
    const a = read("run", 10, 500);
    const b = read("run", 10, 500);
    expect(started).toHaveLength(1);
    // News arrives while the first read is in flight: a newly woken caller needs a fresh read.
    generation = 1;
    const c = read("run", 10, 500);
    expect(started).toHaveLength(2);
    started[0]!("old");
    started[1]!("new");
    expect(await a).toBe("old");
    expect(await b).toBe("old");
    expect(await c).toBe("new");
    // Finished reads are not reused.
    void read("run", 10, 500);
    expect(started).toHaveLength(3);
  });
});
