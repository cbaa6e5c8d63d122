/**
 * A worker's memory per attempt is bounded whatever the step prints: the log buffer, the running
 * map and the command executor's line splitter.
 */
import { describe, expect, it } from "vitest";
import { AttemptLog, cutLine, type LogLine } from "../../src/jobs/attempt-log.ts";
import { LineSplitter } from "../../src/jobs/executors/lines.ts";
import { RunningAttempts } from "../../src/jobs/running-attempts.ts";

describe("AttemptLog", () => {
  it("keeps one write in flight, asks the producer to pause, and bounds what waits", async () => {
    const written: LogLine[][] = [];
    let release: () => void = () => {};
    const slowDatabase = new Promise<void>((r) => {
      release = r;
    });
    const log = new AttemptLog({
      maxLineBytes: 100,
      maxLines: 1_000_000,
      highWater: 10,
      write: async (lines) => {
        written.push(lines);
        await slowDatabase;
      },
      onError: () => {},
    });
    // The first 10 lines start a write that does not finish (a slow database).
    for (let i = 0; i < 9; i++) expect(log.push(`line ${i}`, "stdout")).toBe(true);
    expect(log.push("line 9", "stdout")).toBe(false);
    expect(written).toHaveLength(1);
    // A producer that ignores the pause fills at most 4 × highWater, then lines are dropped.
    for (let i = 0; i < 1000; i++) log.push(`more ${i}`, "stdout");
    expect(log.buffered).toBe(40);
    let drained = false;
    void log.drained().then(() => {
      drained = true;
    });
    expect(drained).toBe(false);
    release();
    await log.flush(true);
    expect(drained).toBe(true);
    const lines = written.flat().map((l) => l.line);
    expect(lines).toHaveLength(10 + 40 + 1);
    expect(lines.at(-1)).toMatch(/\[flowline\] 960 lines dropped/);
  });

  it("keeps at most maxLines lines per attempt and says how many it dropped", async () => {
    const written: LogLine[] = [];
    const log = new AttemptLog({
      maxLineBytes: 100,
      maxLines: 5,
      highWater: 1000,
      write: async (lines) => {
        written.push(...lines);
      },
      onError: () => {},
    });
    for (let i = 0; i < 12; i++) log.push(`l${i}`, "log");
    await log.flush(true);
    expect(written.map((l) => l.line)).toEqual([
      "l0",
      "l1",
      "l2",
      "l3",
      "l4",
      "[flowline] 7 more log lines dropped; at most 5 are kept per attempt (limits.logLinesPerAttempt)",
    ]);
  });

  it("cuts long lines to the limit, marker included, never inside a character", () => {
    const cut = cutLine("é".repeat(1000), 200);
    expect(Buffer.byteLength(cut)).toBeLessThanOrEqual(200);
    expect(cut).toMatch(/^é+ … \[cut: \d+ more bytes \(limits.logLineBytes\)\]$/);
    expect(cutLine("short", 200)).toBe("short");
  });
});

describe("LineSplitter", () => {
  it("holds at most the line limit of a line that never ends, and splits on newlines", () => {
    const lines: string[] = [];
    const splitter = new LineSplitter(256, (l) => lines.push(l));
    const mb = Buffer.alloc(1 << 20, "x");
    for (let i = 0; i < 20; i++) splitter.write(mb);
    splitter.write(Buffer.from("\nsecond\r\nthi"));
    splitter.write(Buffer.from("rd"));
    splitter.end();
    expect(lines).toHaveLength(3);
    expect(Buffer.byteLength(lines[0]!)).toBeLessThanOrEqual(256);
    expect(lines[0]).toMatch(/^x+ … \[cut: \d+ more bytes \(limits.logLineBytes\)\]$/);
    expect(lines.slice(1)).toEqual(["second", "third"]);
  });
});

describe("RunningAttempts", () => {
  const entry = (attempt: number, token: string) => ({
    attempt: { runId: "r", stepId: "s", phase: "execute", attempt, token },
    controller: new AbortController(),
  });

  it("an old attempt of a step unwinding does not remove the new one, which cancel still reaches", () => {
    const running = new RunningAttempts();
    const old = entry(1, "t1");
    const current = entry(2, "t2");
    running.add(old);
    running.add(current);
    running.remove(old);
    expect(running.size).toBe(1);
    expect(running.abortRun("r", undefined, new Error("cancelled"))).toBe(1);
    expect(current.controller.signal.aborted).toBe(true);
  });
});
