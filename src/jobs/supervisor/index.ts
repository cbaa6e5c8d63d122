/**
 * The supervisor process. Any number may run; exactly one is *active* at a time, the holder of a
 * lease (a Redis key, or a Postgres row without Redis) that it renews every third of its length.
 * A standby tries to take the lease at the same pace, so it takes over within about
 * `leaseSeconds` of the active one dying or freezing.
 *
 * A holder that was frozen (GC pause, SIGSTOP) may wake up after its lease expired and another
 * supervisor took over. It must not act on stale authority: "active" is judged on a monotonic
 * clock (which keeps running while the process is stopped) against the moment the lease was last
 * confirmed, minus a safety margin, and every duty asks before each action. The duties are also
 * safe to repeat (unique fire records, fenced step updates), so a race at the edge costs nothing.
 */
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { performance } from "node:perf_hooks";
import type { Logger } from "pino";
import type { Config } from "../../config/index.ts";
import { createDb } from "../../db/client.ts";
import { assertFence, claimFence, StaleFenceError } from "../../db/repositories/fences.ts";
import type { Sql } from "../../db/repositories/runs.ts";
import type { LockGrant as Grant } from "../../domain/ports.ts";
import { admitQueuedRuns, renewAssetLocks } from "../../engine/admission.ts";
import { createEngineDeps } from "../../engine/create.ts";
import type { EngineDeps } from "../../engine/deps.ts";
import { reconcile } from "../../engine/reconcile.ts";
import { autoMaterialize } from "../../engine/requests.ts";
import { countReport, supervisorMetricsOf, trackSupervisor } from "../../observability/metrics.ts";
import { thisRelease } from "../../redis/processes.ts";
import { openStores } from "../../stores/index.ts";
import { pruneOldData } from "./retention.ts";
import { fireDueSchedules } from "./schedules.ts";
import { deliverDueWebhooks, queueWebhookDeliveries } from "./webhooks.ts";

export interface Duty {
  name: string;
  intervalMs: number;
  run(stillActive: () => boolean): Promise<unknown>;
}

export interface RunningSupervisor {
  id: string;
  /** True while this instance holds a lease it has confirmed recently enough to act on. */
  isActive(): boolean;
  close(): Promise<void>;
}

const MAX_DUTY_BACKOFF_MS = 60_000;
const FENCE = "supervisor";

export function supervisorDuties(deps: EngineDeps, guard: (sql: Sql) => Promise<void>): Duty[] {
  const { supervisor, worker } = deps.config;
  const metrics = supervisorMetricsOf();
  return [
    {
      name: "reconcile",
      intervalMs: supervisor.reconcileIntervalSeconds * 1000,
      run: async () => {
        const report = await reconcile(deps, {
          minAgeSeconds: Math.max(5, supervisor.reconcileIntervalSeconds),
          // BullMQ's stall check normally recovers a dead worker's step first; this is the backstop.
          leaseGraceSeconds: Math.max(2, Math.ceil(worker.stallSeconds / 2)),
        });
        countReport(metrics.repairs, "kind", report);
        return report;
      },
    },
    {
      // Keeps active runs' asset locks alive and starts queued runs whose slots or locks freed up
      // (runs ending do that themselves; this catches what a crash or lost message left).
      name: "admission",
      intervalMs: Math.min(5000, (deps.config.assets.lockTtlSeconds * 1000) / 3),
      run: async () => {
        await renewAssetLocks(deps);
        return admitQueuedRuns(deps);
      },
    },
    {
      name: "auto-materialize",
      intervalMs: supervisor.scheduleIntervalSeconds * 1000,
      run: (stillActive) => autoMaterialize(deps, stillActive, guard),
    },
    {
      name: "schedules",
      intervalMs: supervisor.scheduleIntervalSeconds * 1000,
      run: (stillActive) => fireDueSchedules(deps, { stillActive, guard }),
    },
    // Two loops: deliveries are created from the outbox while a delivery pass still waits on a
    // slow receiver, and that pass keeps sending other tenants' deliveries as they come due.
    {
      name: "webhook-outbox",
      intervalMs: 1000,
      run: () => queueWebhookDeliveries(deps),
    },
    {
      name: "webhooks",
      intervalMs: 1000,
      run: async () => {
        const result = await deliverDueWebhooks(deps);
        countReport(metrics.webhooks, "outcome", result);
        return result;
      },
    },
    {
      name: "retention",
      intervalMs: supervisor.retentionIntervalSeconds * 1000,
      run: (stillActive) => pruneOldData(deps, stillActive),
    },
  ];
}

export async function startSupervisor(options: { config: Config; log: Logger }): Promise<RunningSupervisor> {
  const { config } = options;
  const id = `${hostname()}:${process.pid}:${randomBytes(2).toString("hex")}`;
  const log = options.log.child({ supervisorId: id });
  const leaseMs = config.supervisor.leaseSeconds * 1000;
  // Act only well inside the lease: a tenth of it (at least half a second) absorbs clock rate
  // differences between this process and Redis, and the time a renewal takes to come back.
  const marginMs = Math.max(500, leaseMs / 10);
  const db = createDb({
    ...config.database,
    applicationName: "flowline-supervisor",
    // A transaction left open by a frozen supervisor must not wait for it to wake up and commit.
    idleInTransactionTimeoutMs: marginMs,
  });
  const onError = (error: Error) => log.warn({ err: error.message }, "store connection error");
  const stores = await openStores(config, {
    name: "flowline-supervisor",
    flavour: "consumer",
    subscribe: false,
    sql: db.sql,
    onError,
  });
  const { bus, dispatcher } = stores;
  const deps = createEngineDeps({
    db,
    config,
    dispatcher,
    notifier: bus,
    control: bus,
    locks: stores.locks,
    log,
  });
  const lease = stores.supervisorLease;

  let grant: Grant | null = null;
  let confirmedUntil = 0; // performance.now() value until which acting is safe
  const isActive = () => grant !== null && performance.now() < confirmedUntil;

  async function leaseTick(): Promise<void> {
    const startedAt = performance.now();
    try {
      if (grant) {
        if (await lease.renew(grant.token, leaseMs)) {
          confirmedUntil = startedAt + leaseMs - marginMs;
        } else {
          log.warn(
            { fence: grant.fence },
            "supervisor lease lost: another supervisor is active; standing by",
          );
          grant = null;
          confirmedUntil = 0;
        }
      } else {
        const token = `${id}:${randomBytes(8).toString("hex")}`;
        const granted = await lease.acquire(token, leaseMs);
        // Postgres learns the new fencing token before this supervisor acts, so whatever a former
        // leader tries to write from now on is refused there (see `assertFence`).
        if (granted) {
          const claim = await claimFence(db.sql, FENCE, granted.fence, id);
          if (claim.ok) {
            grant = granted;
            confirmedUntil = startedAt + leaseMs - marginMs;
            log.info({ fence: granted.fence }, "this supervisor is now active");
          } else {
            // The lease store lost its counter (a Redis flush or failover): move it past what Postgres has seen.
            await lease.raiseFence(claim.newest);
            await lease.release(token);
            log.warn(
              { fence: granted.fence, newest: claim.newest },
              "stale fencing token from the lease store; raised it",
            );
          }
        }
      }
    } catch (error) {
      // The lease store unreachable: keep what we had; `isActive` turns false by itself when it runs out.
      log.warn({ err: (error as Error).message }, "supervisor lease check failed");
    }
  }

  const guard = async (sql: Sql) => {
    if (!grant || !isActive()) throw new StaleFenceError(grant?.fence ?? 0, -1);
    await assertFence(sql, FENCE, grant.fence);
  };
  const duties = supervisorDuties(deps, guard).map((duty) => ({ duty, nextAt: 0, failures: 0 }));
  const metrics = supervisorMetricsOf();
  const untrack = trackSupervisor(isActive);
  let stopped = false;
  const sleepers = new Set<() => void>();
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        sleepers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      sleepers.add(done);
    });

  const leaseLoop = (async () => {
    while (!stopped) {
      await leaseTick();
      await sleep(Math.max(200, leaseMs / 3));
    }
  })();

  // Each duty has a loop of its own: a slow one (webhooks to a hanging endpoint, a large retention
  // pass) never delays another (asset-lock renewal, the reconciler).
  const dutyLoops = duties.map((entry) =>
    (async () => {
      while (!stopped) {
        if (isActive() && performance.now() >= entry.nextAt) {
          const started = performance.now();
          const duty = entry.duty.name;
          try {
            await entry.duty.run(isActive);
            entry.failures = 0;
            entry.nextAt = started + entry.duty.intervalMs;
            metrics.duties.inc({ duty, outcome: "ok" });
          } catch (error) {
            metrics.duties.inc({ duty, outcome: "error" });
            entry.failures++;
            const backoff = Math.min(
              MAX_DUTY_BACKOFF_MS,
              entry.duty.intervalMs * 2 ** Math.min(entry.failures, 10),
            );
            entry.nextAt = performance.now() + backoff;
            log.error({ err: error, duty: entry.duty.name, retryInMs: backoff }, "supervisor duty failed");
          } finally {
            metrics.dutySeconds.observe({ duty }, (performance.now() - started) / 1000);
          }
        }
        await sleep(250);
      }
    })(),
  );

  const unannounce = stores.processes.keepAnnounced(
    {
      id,
      role: "supervisor",
      pid: process.pid,
      host: hostname(),
      startedAt: new Date().toISOString(),
      release: thisRelease(),
    },
    (error) => log.debug({ err: error.message }, "process announcement failed"),
  );
  log.info({ leaseSeconds: config.supervisor.leaseSeconds, ...thisRelease() }, "supervisor started");
  let closing: Promise<void> | undefined;
  return {
    id,
    isActive,
    close: () => {
      closing ??= (async () => {
        stopped = true;
        await unannounce();
        untrack();
        for (const done of [...sleepers]) done();
        await Promise.allSettled([leaseLoop, ...dutyLoops]);
        // Hand over at once instead of making the standby wait out the lease.
        if (grant) await lease.release(grant.token).catch(() => false);
        grant = null;
        await stores.close();
        await db.close();
        log.info("supervisor stopped");
      })();
      return closing;
    },
  };
}
