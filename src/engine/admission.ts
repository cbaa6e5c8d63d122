/**
 * Admission: a run starts (`queued` → `running`) only when
 *  - its workflow's `concurrency.limit` (per rendered `concurrency.key`) has a free slot, counted in
 *    Postgres under an advisory lock, and no earlier run of that workflow and key is still waiting
 *    (first in, first out);
 *  - it holds the lock of every asset (or asset partition) its plan materializes, and no earlier
 *    queued run of the tenant waits for one of them.
 * A run that cannot start waits in `queued`; runs ending, and the supervisor every few seconds,
 * admit waiting runs in submission order.
 *
 * Asset locks are Redis leases (token = the run id) renewed by the supervisor while the run is
 * active. Every grant carries a fencing token that is stored on the run and presented with each
 * materialization; Postgres refuses a token older than the newest one that has written, so a run
 * that lost its lock (supervisor gone past the lease, Redis failover) can never record late.
 */
import {
  assetFenceTokens,
  earlierRunWantingLocks,
  raiseAssetFences,
  runsHoldingLocks,
  waitingRunIds,
} from "../db/repositories/admission.ts";
import type { RunRow, Sql } from "../db/repositories/runs.ts";
import {
  activeLockHolder,
  appendEvents,
  concurrencySlotUse,
  heldLocksOf,
  lockRun,
  readySteps,
} from "../db/repositories/runs.ts";
import { markRunStarted } from "../db/run-transitions.ts";
import { illegalRunTransition } from "../domain/errors.ts";
import type { WorkflowSpec } from "../domain/workflow/spec.ts";
import { queueSteps } from "./advance.ts";
import { AfterCommit, type EngineDeps } from "./deps.ts";
import type { LoadedSpec } from "./specs.ts";

/** The lock that guards materializing `asset` (in one partition, when given). */
export const assetLockKey = (asset: string, partition?: string | null): string =>
  partition ? `${asset}@${partition}` : asset;

export type AdmitRun = Pick<
  RunRow,
  "id" | "tenant_id" | "workflow_id" | "created_at" | "concurrency_key" | "locks_wanted"
>;

export type Admission = { ok: true; held: Record<string, number> } | { ok: false; reason: string };

/**
 * Decides inside `sql`'s transaction whether `run` may start now, taking its asset locks if so.
 * Locks taken are added to `taken` so a caller whose transaction fails can release them.
 */
export async function tryAdmit(
  deps: EngineDeps,
  sql: Sql,
  run: AdmitRun,
  spec: WorkflowSpec,
  taken: Array<{ tenantId: string; lockKey: string; token: string }>,
): Promise<Admission> {
  const limit = spec.concurrency?.limit;
  if (limit !== undefined) {
    const slot = await concurrencySlotUse(sql, run);
    if (slot.earlier > 0) return { ok: false, reason: "earlier runs of this workflow are waiting" };
    if (slot.active >= limit)
      return { ok: false, reason: `concurrency limit of ${limit} active run(s) reached` };
  }

  const wanted = run.locks_wanted;
  if (wanted.length === 0) return { ok: true, held: {} };
  const earlier = await earlierRunWantingLocks(sql, run, wanted);
  if (earlier)
    return { ok: false, reason: `run ${earlier.id}, submitted earlier, waits for the same assets` };
  // Postgres, not the lock store, says who holds a lock: after a flush or failover the store may
  // have forgotten a lock an active run still holds (SPEC §8.6).
  const holder = await activeLockHolder(sql, run.tenant_id, wanted, run.id);
  if (holder)
    return { ok: false, reason: `asset ${holder.lock_key} is being materialized by run ${holder.id}` };

  const fences = await assetFenceTokens(sql, run.tenant_id, wanted);
  const ttlMs = deps.config.assets.lockTtlSeconds * 1000;
  const held: Record<string, number> = {};
  const mine: Array<{ tenantId: string; lockKey: string; token: string }> = [];
  for (const lockKey of wanted) {
    let grant = await deps.locks.acquire(run.tenant_id, lockKey, run.id, ttlMs);
    const newest = fences.get(lockKey) ?? 0;
    if (grant && grant.fence <= newest) {
      // The lock store lost its counter (Redis flushed or failed over): move it past Postgres.
      await deps.locks.release(run.tenant_id, lockKey, run.id);
      await deps.locks.raiseFence(run.tenant_id, lockKey, newest);
      grant = await deps.locks.acquire(run.tenant_id, lockKey, run.id, ttlMs);
    }
    if (!grant) {
      const holder = await deps.locks.holder(run.tenant_id, lockKey);
      for (const t of mine) await deps.locks.release(t.tenantId, t.lockKey, t.token);
      return {
        ok: false,
        reason: `asset ${lockKey} is being materialized${holder ? ` by run ${holder}` : ""}`,
      };
    }
    held[lockKey] = grant.fence;
    mine.push({ tenantId: run.tenant_id, lockKey, token: run.id });
  }
  // Postgres learns each new token now, not at the first write: a run that lost the lock to this
  // one can no longer record, even if it finishes first.
  await raiseAssetFences(sql, run.tenant_id, held);
  taken.push(...mine);
  return { ok: true, held };
}

/** Moves an admitted run to `running` and queues its ready steps (the run row is locked). */
export async function startAdmittedRun(
  deps: EngineDeps,
  sql: Sql,
  run: RunRow,
  loaded: LoadedSpec,
  held: Record<string, number>,
  after: AfterCommit,
): Promise<RunRow> {
  const started = await markRunStarted(sql, run.id, held);
  if (!started) throw illegalRunTransition(run, "running");
  const events = [
    { type: "run.started" as const, data: Object.keys(held).length > 0 ? { locks: held } : {} },
  ];
  await queueSteps(deps, sql, started, loaded, await readySteps(sql, run.id), after, events);
  await appendEvents(sql, run.tenant_id, run.id, events, loaded.notifyOn);
  after.runs.add(run.id);
  return started;
}

/**
 * Starts waiting runs that can start now, oldest first. Called when runs end (their slots and
 * locks free up) and periodically by the supervisor. Returns how many started.
 */
export async function admitQueuedRuns(deps: EngineDeps, limit = 100): Promise<number> {
  // The oldest waiting runs, and the head of every (workflow, concurrency key) queue: a long queue
  // of one workflow must not hide another's first run from this pass.
  const waiting = await waitingRunIds(deps.db.sql, limit);
  let started = 0;
  for (const id of waiting) {
    const after = new AfterCommit();
    const taken: Array<{ tenantId: string; lockKey: string; token: string }> = [];
    try {
      const admitted = await deps.db.sql.begin(async (sql) => {
        const run = await lockRun(sql, id);
        if (run?.status !== "queued") return false;
        const loaded = await deps.specs.load(run.workflow_id, run.workflow_version);
        const admission = await tryAdmit(deps, sql, run, loaded.spec, taken);
        if (!admission.ok) return false;
        await startAdmittedRun(deps, sql, run, loaded, admission.held, after);
        deps.log.info({ runId: id, locks: admission.held }, "queued run started");
        return true;
      });
      if (admitted) started++;
    } catch (error) {
      await releaseTaken(deps, taken);
      deps.log.warn({ err: error, runId: id }, "could not admit a queued run");
      continue;
    }
    await after.flush(deps);
  }
  return started;
}

/**
 * Renews the asset locks of active runs (supervisor duty). A lock the store lost (flush,
 * failover, lease expired) is taken again for its holder: admission refuses it to anyone else
 * anyway, and the store should say so too. Returns the locks it could neither renew nor re-take.
 */
export async function renewAssetLocks(deps: EngineDeps): Promise<number> {
  const active = await runsHoldingLocks(deps.db.sql);
  const ttlMs = deps.config.assets.lockTtlSeconds * 1000;
  let lost = 0;
  for (const run of active) {
    for (const lockKey of Object.keys(run.locks_held)) {
      if (await deps.locks.renew(run.tenant_id, lockKey, run.id, ttlMs)) continue;
      // The run keeps writing with the fencing token it was granted; the new grant's token only
      // keeps the store's counter moving.
      const grant = await deps.locks.acquire(run.tenant_id, lockKey, run.id, ttlMs);
      if (grant) {
        deps.log.warn({ runId: run.id, lock: lockKey }, "asset lock was lost by the lock store; taken again");
        continue;
      }
      lost++;
      const holder = await deps.locks.holder(run.tenant_id, lockKey);
      // Its materializations will be refused if another run has written since (fencing).
      deps.log.warn({ runId: run.id, lock: lockKey, holder }, "run lost an asset lock to another holder");
    }
  }
  return lost;
}

/**
 * Gives back locks taken by a transaction that then failed. A failure can also be a lost
 * acknowledgement of a commit that happened: locks of a run Postgres shows active are kept, and
 * when Postgres cannot be asked, none are released (they expire unless their run renews them).
 */
export async function releaseTaken(
  deps: EngineDeps,
  taken: ReadonlyArray<{ tenantId: string; lockKey: string; token: string }>,
): Promise<void> {
  if (taken.length === 0) return;
  let held: Set<string>;
  try {
    held = await heldLocksOf(deps.db.sql, [...new Set(taken.map((t) => t.token))]);
  } catch (error) {
    deps.log.warn({ err: error }, "could not check which locks a failed transaction left held; they expire");
    return;
  }
  for (const t of taken) {
    if (held.has(`${t.tenantId}\u0000${t.lockKey}\u0000${t.token}`)) continue;
    await deps.locks.release(t.tenantId, t.lockKey, t.token).catch(() => false);
  }
}

/** Frees a finished run's asset locks (after its final state committed). */
export async function releaseAssetLocks(
  deps: EngineDeps,
  run: Pick<RunRow, "id" | "tenant_id" | "locks_held">,
): Promise<void> {
  for (const lockKey of Object.keys(run.locks_held ?? {})) {
    await deps.locks
      .release(run.tenant_id, lockKey, run.id)
      .catch((error) => deps.log.warn({ err: error, runId: run.id, lock: lockKey }, "lock release failed"));
  }
}
