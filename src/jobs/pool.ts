/**
 * Per-queue pools of worker processes (`flowline workers`, and `flowline up`), sized every tick
 * by `domain/scaling.ts` from a measured backlog. This file only manages processes: what a worker
 * process is (`spawnWorker`) and how the backlog is measured (`measure`) come from the caller.
 *
 * Contract with a worker process: SIGTERM asks it to drain (stop taking steps, finish or hand
 * back the running ones) and exit by itself. It is sent exactly once per process, because a
 * second SIGTERM makes a worker exit at once; SIGKILL follows only after the worker's grace
 * period plus a margin, so a draining worker is never killed while it may still hand work back.
 *
 * Deliberately left out: scaling on anything but backlog and running steps, and spreading
 * processes over machines (on Kubernetes, KEDA/HPA scale on the same signal instead).
 */
import type { ChildProcess } from "node:child_process";
import type { Logger } from "pino";
import type { Config } from "../config/index.ts";
import {
  decideScale,
  type QueueLoad,
  type QueueTarget,
  restartDelayMs,
  type ScalingState,
} from "../domain/scaling.ts";

/** A process that stays up this long ends its pool's crash streak (the backoff starts over). */
export const STABLE_AFTER_MS = 60_000;
/** SIGKILL a stopping process this long after its worker grace period has passed. */
export const KILL_MARGIN_MS = 15_000;

/** What a tick decided for one queue, as handed to `publishTargets`. */
export type { QueueTarget };

export interface WorkerPoolsOptions {
  config: Config;
  log: Logger;
  /** Backlog and running steps per queue; a queue missing from the map counts as idle. */
  measure: () => Promise<Map<string, QueueLoad>>;
  /**
   * Starts one worker process for `queue`; it must drain and exit on SIGTERM. `slot` is the
   * smallest number no other process of any pool holds (live or draining): a stable, bounded
   * index, e.g. for the port of its `/metrics`.
   */
  spawnWorker: (queue: string, slot: number) => ChildProcess;
  /** Called after every tick with every queue's decision (e.g. for metrics); failures are logged. */
  publishTargets?: (targets: Record<string, QueueTarget>) => Promise<void>;
  /** Clock for scaling decisions (cool-down), in milliseconds; defaults to Date.now. */
  now?: () => number;
}

export interface PoolSnapshot {
  target: number;
  /** Pids of processes that count towards the target. */
  live: number[];
  /** Pids of processes told to stop, not exited yet. */
  draining: number[];
  /** Processes started to replace one that exited unexpectedly. */
  restarts: number;
  /** A replacement is waiting for its backoff delay. */
  restartPending: boolean;
  backlog: number;
  active: number;
  reason: string;
}

export interface WorkerPools {
  /** The state of every pool right now, by queue name. */
  snapshot(): Record<string, PoolSnapshot>;
  /**
   * Stops ticking, SIGTERMs every live process (draining ones already were) and resolves when
   * all have exited; any still running after the grace period is SIGKILLed.
   */
  close(): Promise<void>;
}

interface Child {
  readonly process: ChildProcess;
  readonly slot: number;
  readonly pid: number | undefined;
  readonly exited: Promise<void>;
  /** Up for STABLE_AFTER_MS. */
  stable: boolean;
  done: boolean;
  stableTimer?: NodeJS.Timeout;
  killTimer?: NodeJS.Timeout;
}

interface Pool {
  readonly queue: string;
  readonly log: Logger;
  target: number;
  scaling?: ScalingState;
  reason: string;
  load: QueueLoad;
  /** In start order: the newest is drained first. */
  readonly live: Set<Child>;
  readonly draining: Set<Child>;
  restarts: number;
  /** Unexpected exits not yet replaced; a spawn while this is positive counts as a restart. */
  replacementsDue: number;
  /** Unexpected exits since a process last stayed up STABLE_AFTER_MS. */
  crashStreak: number;
  /** While set, the pool starts no process (restart backoff). */
  restartTimer?: NodeJS.Timeout;
}

export function startWorkerPools(options: WorkerPoolsOptions): WorkerPools {
  const { config, spawnWorker } = options;
  const now = options.now ?? Date.now;
  const log = options.log.child({ component: "autoscaler" });
  const intervalMs = config.autoscaler.intervalSeconds * 1000;
  const cooldownMs = config.autoscaler.cooldownSeconds * 1000;
  const maxRestartDelayMs = config.autoscaler.maxRestartDelaySeconds * 1000;
  const killAfterMs = config.worker.graceSeconds * 1000 + KILL_MARGIN_MS;

  let closing = false;
  let closed: Promise<void> | undefined;
  let tickTimer: NodeJS.Timeout | undefined;
  let publishing: Promise<void> = Promise.resolve();

  const pools = Object.entries(config.queues).map(
    ([queue, bounds]): Pool => ({
      queue,
      log: log.child({ queue }),
      target: bounds.min,
      reason: `starting at min ${bounds.min}`,
      load: { backlog: 0, active: 0 },
      live: new Set(),
      draining: new Set(),
      restarts: 0,
      replacementsDue: 0,
      crashStreak: 0,
    }),
  );

  /** The smallest slot no live or draining process of any pool holds. */
  function freeSlot(): number {
    const taken = new Set(pools.flatMap((p) => [...p.live, ...p.draining].map((c) => c.slot)));
    let slot = 0;
    while (taken.has(slot)) slot++;
    return slot;
  }

  function spawnChild(pool: Pool): boolean {
    let proc: ChildProcess;
    const slot = freeSlot();
    try {
      proc = spawnWorker(pool.queue, slot);
    } catch (error) {
      pool.log.error({ err: error, target: pool.target }, "could not start a worker process");
      exitedUnexpectedly(pool, undefined, null, null);
      return false;
    }
    let markExited!: () => void;
    const exited = new Promise<void>((resolve) => {
      markExited = resolve;
    });
    const child: Child = { process: proc, slot, pid: proc.pid, exited, stable: false, done: false };
    const restart = pool.replacementsDue > 0;
    if (restart) {
      pool.replacementsDue--;
      pool.restarts++;
    }
    pool.live.add(child);
    child.stableTimer = setTimeout(() => {
      child.stable = true;
      pool.crashStreak = 0;
    }, STABLE_AFTER_MS);

    const finish = (code: number | null, signal: NodeJS.Signals | null) => {
      if (child.done) return;
      child.done = true;
      clearTimeout(child.stableTimer);
      clearTimeout(child.killTimer);
      const wasDraining = pool.draining.delete(child);
      pool.live.delete(child);
      markExited();
      if (wasDraining || closing) {
        pool.log.info({ pid: child.pid, code, signal, target: pool.target }, "worker process stopped");
        return;
      }
      exitedUnexpectedly(pool, child, code, signal);
    };
    proc.once("exit", finish);
    proc.on("error", (error) => {
      // Without a pid the process never started, and no exit event follows.
      if (proc.pid === undefined) {
        pool.log.error({ err: error, target: pool.target }, "could not start a worker process");
        finish(null, null);
      } else {
        pool.log.warn({ err: error, pid: child.pid }, "worker process error");
      }
    });
    pool.log.info(
      {
        pid: child.pid,
        slot,
        target: pool.target,
        reason: restart ? "replacing an exited process" : pool.reason,
      },
      restart ? "worker process restarted" : "worker process started",
    );
    return true;
  }

  function exitedUnexpectedly(
    pool: Pool,
    child: Child | undefined,
    code: number | null,
    signal: NodeJS.Signals | null,
  ): void {
    if (child?.stable) pool.crashStreak = 0;
    pool.crashStreak++;
    pool.replacementsDue++;
    const delayMs = restartDelayMs(pool.crashStreak, maxRestartDelayMs);
    const fields = {
      pid: child?.pid,
      code,
      signal,
      target: pool.target,
      crashes: pool.crashStreak,
      restartInMs: pool.restartTimer ? undefined : delayMs,
    };
    if (code === 0 && signal === null) pool.log.info(fields, "worker process exited by itself");
    else pool.log.warn(fields, "worker process exited unexpectedly");
    // Every start waits for the backoff, not only this replacement: when processes keep
    // crashing, starting more of them at once would only crash more.
    if (pool.restartTimer || closing) return;
    pool.restartTimer = setTimeout(() => {
      pool.restartTimer = undefined;
      reconcile(pool);
    }, delayMs);
  }

  function drain(pool: Pool, child: Child, reason: string): void {
    pool.live.delete(child);
    pool.draining.add(child);
    pool.log.info({ pid: child.pid, target: pool.target, reason }, "draining worker process");
    signal(pool, child, "SIGTERM");
    child.killTimer = setTimeout(() => {
      pool.log.warn(
        { pid: child.pid, target: pool.target, afterMs: killAfterMs },
        "worker process did not stop in time: SIGKILL",
      );
      signal(pool, child, "SIGKILL");
    }, killAfterMs);
  }

  function signal(pool: Pool, child: Child, name: NodeJS.Signals): void {
    try {
      child.process.kill(name);
    } catch (error) {
      pool.log.warn({ err: error, pid: child.pid, signal: name }, "could not signal worker process");
    }
  }

  /** Brings the pool's live processes to its target: drains the newest extras, starts missing ones. */
  function reconcile(pool: Pool): void {
    if (closing) return;
    while (pool.live.size > pool.target) {
      const newest = [...pool.live].at(-1)!;
      drain(pool, newest, pool.reason);
    }
    if (pool.live.size >= pool.target) {
      // Exited processes the pool no longer needs are not replaced.
      pool.replacementsDue = 0;
      return;
    }
    while (pool.live.size < pool.target && !pool.restartTimer) {
      if (!spawnChild(pool)) break;
    }
  }

  function decide(pool: Pool, loads: Map<string, QueueLoad>): QueueTarget {
    const bounds = config.queues[pool.queue]!;
    const load = loads.get(pool.queue) ?? { backlog: 0, active: 0 };
    const processes = pool.live.size;
    const decision = decideScale({
      bounds,
      load,
      processes,
      now: now(),
      cooldownMs,
      previous: pool.scaling,
    });
    const from = pool.target;
    pool.scaling = decision.state;
    pool.target = decision.target;
    pool.reason = decision.reason;
    pool.load = { backlog: load.backlog, active: load.active };
    const fields = {
      target: decision.target,
      processes,
      backlog: load.backlog,
      active: load.active,
      reason: decision.reason,
    };
    if (decision.change === "none") pool.log.debug(fields, "pool size unchanged");
    else pool.log.info({ ...fields, from }, decision.change === "up" ? "scaling up" : "scaling down");
    reconcile(pool);
    return { ...fields, updatedAt: new Date(now()).toISOString() };
  }

  async function tick(): Promise<void> {
    let loads: Map<string, QueueLoad>;
    try {
      loads = await options.measure();
    } catch (error) {
      log.warn({ err: error }, "could not measure queue backlogs: skipping this tick");
      return;
    }
    if (closing) return;
    const targets: Record<string, QueueTarget> = {};
    for (const pool of pools) targets[pool.queue] = decide(pool, loads);
    if (options.publishTargets) {
      publishing = options.publishTargets(targets).catch((error) => {
        log.warn({ err: error }, "could not publish pool targets");
      });
      await publishing;
    }
  }

  function loop(): void {
    tick()
      .catch((error) => log.error({ err: error }, "autoscaler tick failed"))
      .finally(() => {
        if (!closing) tickTimer = setTimeout(loop, intervalMs);
      });
  }

  for (const pool of pools) reconcile(pool);
  log.info(
    { queues: Object.fromEntries(pools.map((p) => [p.queue, p.target])), intervalMs, cooldownMs },
    "worker pools started",
  );
  loop();

  return {
    snapshot() {
      const pids = (children: Set<Child>) =>
        [...children].flatMap((c) => (c.pid === undefined ? [] : [c.pid]));
      return Object.fromEntries(
        pools.map((pool): [string, PoolSnapshot] => [
          pool.queue,
          {
            target: pool.target,
            live: pids(pool.live),
            draining: pids(pool.draining),
            restarts: pool.restarts,
            restartPending: pool.restartTimer !== undefined,
            backlog: pool.load.backlog,
            active: pool.load.active,
            reason: pool.reason,
          },
        ]),
      );
    },
    close() {
      closed ??= (async () => {
        closing = true;
        clearTimeout(tickTimer);
        for (const pool of pools) {
          clearTimeout(pool.restartTimer);
          pool.restartTimer = undefined;
          for (const child of [...pool.live]) drain(pool, child, "shutting down");
        }
        const children = pools.flatMap((pool) => [...pool.draining]);
        await Promise.all([...children.map((c) => c.exited), publishing]);
        log.info("worker pools stopped");
      })();
      return closed;
    },
  };
}
