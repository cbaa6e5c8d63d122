import { describe, expect, it } from "vitest";
import { metricsPortOf } from "../../src/domain/scaling.ts";
import {
  eventsWritten,
  installObserver,
  type ObservedEvent,
  observedTransaction,
} from "../../src/observability/hooks.ts";

const seen: string[] = [];
const transactions: boolean[] = [];
installObserver({
  onEvents: (events: readonly ObservedEvent[]) => seen.push(...events.map((e) => e.type)),
  onTransaction: (_seconds, committed) => transactions.push(committed),
});

const tick = () => new Promise((r) => setTimeout(r, 1));

describe("engine observation hooks", () => {
  it("count a transaction's events once it commits, never those of one that rolls back", async () => {
    seen.length = 0;
    transactions.length = 0;
    await observedTransaction(async () => {
      eventsWritten([{ type: "run.queued" }]);
      await tick();
      eventsWritten([{ type: "run.started" }]);
      expect(seen).toEqual([]); // not before the commit
    });
    expect(seen).toEqual(["run.queued", "run.started"]);
    await expect(
      observedTransaction(async () => {
        eventsWritten([{ type: "run.failed" }]);
        throw new Error("serialization failure");
      }),
    ).rejects.toThrow("serialization failure");
    expect(seen).toEqual(["run.queued", "run.started"]);
    expect(transactions).toEqual([true, false]);
  });

  it("count a nested transaction's events with the outer one, and events outside any at once", async () => {
    seen.length = 0;
    eventsWritten([{ type: "step.log" }]);
    expect(seen).toEqual(["step.log"]);
    await expect(
      observedTransaction(async () => {
        await observedTransaction(async () => eventsWritten([{ type: "step.succeeded" }]));
        throw new Error("outer rolled back");
      }),
    ).rejects.toThrow();
    expect(seen).toEqual(["step.log"]);
    await observedTransaction(async () => {
      await observedTransaction(async () => eventsWritten([{ type: "step.succeeded" }]));
    });
    expect(seen).toEqual(["step.log", "step.succeeded"]);
  });

  it("keep concurrent transactions apart", async () => {
    seen.length = 0;
    await Promise.allSettled([
      observedTransaction(async () => {
        await tick();
        eventsWritten([{ type: "run.succeeded" }]);
      }),
      observedTransaction(async () => {
        eventsWritten([{ type: "run.cancelled" }]);
        await tick();
        throw new Error("rolled back");
      }),
    ]);
    expect(seen).toEqual(["run.succeeded"]);
  });
});

describe("metrics ports of pool processes", () => {
  it("are workerPort + slot, or any free port when that is asked for or past the last port", () => {
    expect([0, 1, 7].map((slot) => metricsPortOf(9465, slot))).toEqual([9465, 9466, 9472]);
    expect(metricsPortOf(0, 3)).toBe(0);
    expect(metricsPortOf(65535, 0)).toBe(65535);
    expect(metricsPortOf(65535, 1)).toBe(0);
  });
});
