/**
 * Worker pools with real child processes: a small fixture stands in for `flowline worker` (it
 * runs until SIGTERM, then exits 0 by itself), and the test controls the measured backlog and,
 * where the cool-down matters, the decision clock. Every wait is for a condition, never for time.
 */
import { spawn } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { type ConfigInput, parseConfig } from "../../src/config/index.ts";
import type { QueueLoad } from "../../src/domain/scaling.ts";
import { type QueueTarget, startWorkerPools, type WorkerPools } from "../../src/jobs/pool.ts";
import { isAlive } from "../helpers/processes.ts";

const FAKE_WORKER = fileURLToPath(new URL("../fixtures/fake-worker.mjs", import.meta.url));

interface Spawned {
  queue: string;
  pid: number;
  /** The slot the pool gave it (its metrics port is workerPort + slot). */
  slot: number;
  exit?: { code: number | null; signal: NodeJS.Signals | null };
}

interface Harness {
  pools: WorkerPools;
  loads: Map<string, QueueLoad>;
  /** The decision clock (ms); it moves only when a test moves it. */
  clock: { now: number };
  /** Calls to measure() so far; a call starts only after the previous tick has been applied. */
  measured(): number;
  /** The next `times` calls to measure() fail. */
  failMeasure(times: number): void;
  spawned: Spawned[];
  /** Most fixture processes of `queue` alive at once, draining ones included. */
  peakAlive(queue: string): number;
  logs: Array<Record<string, any>>;
  published: Array<Record<string, QueueTarget>>;
}

const harnesses: Harness[] = [];

function startPools(
  queues: ConfigInput["queues"],
  options: { crashing?: string[]; stopMs?: number; graceSeconds?: number } = {},
): Harness {
  const config = parseConfig({
    queues,
    autoscaler: { intervalSeconds: 1, cooldownSeconds: 1, maxRestartDelaySeconds: 30 },
    worker: { graceSeconds: options.graceSeconds ?? 1 },
    log: { level: "silent" },
  });
  const logs: Array<Record<string, any>> = [];
  const log = pino({ level: "debug" }, { write: (line: string) => logs.push(JSON.parse(line)) });
  const loads = new Map<string, QueueLoad>();
  const clock = { now: 0 };
  const spawned: Spawned[] = [];
  const published: Array<Record<string, QueueTarget>> = [];
  let measured = 0;
  let failures = 0;
  const alive = new Map<string, number>();
  const peak = new Map<string, number>();
  const pools = startWorkerPools({
    config,
    log,
    now: () => clock.now,
    measure: async () => {
      measured++;
      if (failures > 0) {
        failures--;
        throw new Error("backlog unavailable");
      }
      return new Map(loads);
    },
    publishTargets: async (targets) => {
      published.push(targets);
    },
    spawnWorker: (queue, slot) => {
      const args = options.crashing?.includes(queue) ? ["crash"] : [];
      const child = spawn(process.execPath, [FAKE_WORKER, ...args], {
        stdio: ["pipe", "ignore", "inherit"],
        env: { ...process.env, FAKE_WORKER_STOP_MS: String(options.stopMs ?? 150) },
      });
      const record: Spawned = { queue, pid: child.pid!, slot };
      spawned.push(record);
      alive.set(queue, (alive.get(queue) ?? 0) + 1);
      peak.set(queue, Math.max(peak.get(queue) ?? 0, alive.get(queue)!));
      child.once("exit", (code, signal) => {
        record.exit = { code, signal };
        alive.set(queue, alive.get(queue)! - 1);
      });
      return child;
    },
  });
  const harness: Harness = {
    pools,
    loads,
    clock,
    measured: () => measured,
    failMeasure: (times) => {
      failures = times;
    },
    spawned,
    peakAlive: (queue) => peak.get(queue) ?? 0,
    logs,
    published,
  };
  harnesses.push(harness);
  return harness;
}

async function waitFor<T>(what: string, probe: () => T | undefined | null | false, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Waits until `ticks` more measurements have started, so at least ticks − 1 were fully applied. */
async function waitTicks(h: Harness, ticks: number) {
  const target = h.measured() + ticks;
  await waitFor(`${ticks} more ticks`, () => h.measured() >= target);
}

const pool = (h: Harness, queue = "default") => h.pools.snapshot()[queue]!;

afterEach(async () => {
  const closing = harnesses.splice(0);
  await Promise.all(closing.map((h) => h.pools.close()));
  for (const h of closing) {
    for (const { pid } of h.spawned) expect(isAlive(pid), `pid ${pid} still alive after close()`).toBe(false);
  }
});

describe("worker pools", () => {
  it("start every pool at its min at once and keep it while idle", async () => {
    const h = startPools({
      default: { concurrency: 2, min: 1, max: 3 },
      batch: { concurrency: 2, min: 2, max: 3 },
      idle: { concurrency: 2, min: 0, max: 2 },
    });
    const sizes = () =>
      Object.fromEntries(Object.entries(h.pools.snapshot()).map(([q, s]) => [q, s.live.length]));
    expect(sizes()).toEqual({ default: 1, batch: 2, idle: 0 });
    await waitTicks(h, 3);
    expect(sizes()).toEqual({ default: 1, batch: 2, idle: 0 });
    expect(h.spawned).toHaveLength(3);
    // Slots are shared by all pools: each process holds one no other holds.
    expect(h.spawned.map((s) => s.slot).sort()).toEqual([0, 1, 2]);
    expect(pool(h, "batch")).toMatchObject({ target: 2, draining: [], restarts: 0, restartPending: false });
    expect(h.published.at(-1)!.batch).toMatchObject({ target: 2, processes: 2, backlog: 0, active: 0 });
  });

  it("scale up to max on backlog and never above; a failing measurement only skips its tick", async () => {
    const h = startPools({
      default: { concurrency: 2, min: 1, max: 3 },
      idle: { concurrency: 2, min: 0, max: 2 },
    });
    h.failMeasure(1);
    h.loads.set("default", { backlog: 100, active: 0 });
    h.loads.set("idle", { backlog: 1, active: 0 });
    await waitFor("default at max", () => pool(h).live.length === 3);
    await waitFor("idle started", () => pool(h, "idle").live.length === 1);
    expect(h.logs.some((l) => l.msg === "could not measure queue backlogs: skipping this tick")).toBe(true);

    await waitTicks(h, 3);
    expect(pool(h)).toMatchObject({ target: 3, draining: [] });
    expect(pool(h).live).toHaveLength(3);
    expect(h.spawned.filter((s) => s.queue === "default")).toHaveLength(3);
    expect(h.peakAlive("default")).toBe(3);
    expect(h.peakAlive("idle")).toBe(1);
    const up = h.logs.find((l) => l.msg === "scaling up" && l.queue === "default")!;
    expect(up).toMatchObject({ from: 1, target: 3, backlog: 100 });
    expect(up.reason).toMatch(/capped at max 3/);
    const started = h.logs.filter((l) => l.msg === "worker process started" && l.queue === "default");
    expect(started.map((l) => typeof l.pid)).toEqual(["number", "number", "number"]);
    expect(h.published.at(-1)!.default).toMatchObject({ target: 3, processes: 3, backlog: 100 });
  });

  it("scale down only after the cool-down, by SIGTERM; draining processes exit by themselves", async () => {
    const h = startPools({ default: { concurrency: 2, min: 1, max: 3 } });
    h.loads.set("default", { backlog: 100, active: 0 });
    await waitFor("scaled up", () => pool(h).live.length === 3);
    const [oldest] = pool(h).live;

    // The clock stands still: however many ticks pass, the cool-down has not.
    h.loads.set("default", { backlog: 0, active: 0 });
    await waitTicks(h, 3);
    expect(pool(h).live).toHaveLength(3);
    expect(pool(h).target).toBe(3);
    expect(pool(h).reason).toMatch(/^holding 3/);

    h.clock.now += 1000;
    await waitFor("scaled down", () => pool(h).live.length === 1 && pool(h).draining.length === 0);
    expect(pool(h)).toMatchObject({ target: 1, live: [oldest], restarts: 0 });
    const drained = h.spawned.filter((s) => s.pid !== oldest);
    expect(drained).toHaveLength(2);
    // Exit 0 means each got exactly one SIGTERM and stopped by itself.
    for (const s of drained) expect(s.exit).toEqual({ code: 0, signal: null });
    const draining = h.logs.filter((l) => l.msg === "draining worker process");
    expect(draining.map((l) => l.pid).sort()).toEqual(drained.map((s) => s.pid).sort());
    expect(draining[0]).toMatchObject({ queue: "default", target: 1 });
    expect(draining[0]!.reason).toMatch(/^scale down from 3: 1 sufficed/);
    expect(h.logs.some((l) => l.msg === "worker process exited unexpectedly")).toBe(false);
  });

  it("replace a process killed with SIGKILL", async () => {
    const h = startPools({ default: { concurrency: 2, min: 2, max: 3 } });
    await waitFor("two processes", () => pool(h).live.length === 2);
    const [victim] = pool(h).live;
    process.kill(victim!, "SIGKILL");
    await waitFor(
      "a replacement",
      () => pool(h).restarts === 1 && pool(h).live.length === 2 && !pool(h).live.includes(victim!),
    );
    expect(h.spawned.find((s) => s.pid === victim)!.exit).toEqual({ code: null, signal: "SIGKILL" });
    expect(h.spawned).toHaveLength(3);
    // The replacement takes the slot (and so the metrics port) the dead process freed.
    expect(h.spawned[2]!.slot).toBe(h.spawned.find((s) => s.pid === victim)!.slot);
    const crash = h.logs.find((l) => l.msg === "worker process exited unexpectedly")!;
    expect(crash).toMatchObject({ queue: "default", pid: victim, signal: "SIGKILL", restartInMs: 500 });
    expect(h.logs.some((l) => l.msg === "worker process restarted")).toBe(true);
  });

  it("restart a crashing process with doubling delays, one at a time", async () => {
    const h = startPools(
      { broken: { concurrency: 1, min: 1, max: 2 }, default: { min: 0 } },
      { crashing: ["broken"] },
    );
    await waitFor("three restarts", () => pool(h, "broken").restarts >= 3);
    const delays = h.logs
      .filter((l) => l.msg === "worker process exited unexpectedly" && l.restartInMs !== undefined)
      .map((l) => l.restartInMs);
    expect(delays.slice(0, 3)).toEqual([500, 1000, 2000]);
    expect(h.peakAlive("broken")).toBe(1);
  });

  it("close() stops every process, draining ones included, and signals each only once", async () => {
    const h = startPools({ default: { concurrency: 2, min: 1, max: 3 } }, { stopMs: 3000 });
    h.loads.set("default", { backlog: 100, active: 0 });
    await waitFor("scaled up", () => pool(h).live.length === 3);
    // The cool-down counts from the first measurement that allowed fewer processes.
    h.loads.set("default", { backlog: 0, active: 0 });
    await waitTicks(h, 2);
    h.clock.now += 1000;
    await waitFor("draining", () => pool(h).draining.length === 2);

    await h.pools.close();
    expect(h.spawned).toHaveLength(3);
    for (const s of h.spawned) {
      expect(s.exit).toEqual({ code: 0, signal: null });
      expect(isAlive(s.pid)).toBe(false);
    }
    expect(pool(h)).toMatchObject({ live: [], draining: [] });
  });
});
