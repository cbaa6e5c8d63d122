/**
 * Retention: finished runs older than `retention.runsDays` are deleted with everything that hangs
 * off them (steps, attempts, events, deliveries cascade); events of finished runs older than
 * `retention.eventsDays` are deleted earlier. Audit log entries live as long as runs. Runs still in progress keep all their events, which
 * SSE replay needs. Deletes go in bounded batches so a large backlog never holds long locks.
 *
 * A finished run can start again at any moment (a rollback moves it to `rolling_back`), and every
 * writer locks the run row first. So the batches lock the runs they judge and skip locked ones: a
 * run being changed is judged on a later pass, and a change committed since this statement began
 * is re-checked on the locked row instead of being missed.
 */
import { pruneAudit } from "../../db/repositories/audit.ts";
import type { EngineDeps } from "../../engine/deps.ts";

const BATCH = 5000;

export interface RetentionReport {
  runs: number;
  events: number;
  idempotencyKeys: number;
  /** Audit log entries older than `retention.runsDays`. */
  auditEntries: number;
}

export async function pruneOldData(
  deps: EngineDeps,
  stillActive: () => boolean,
  options: { maxBatches?: number } = {},
): Promise<RetentionReport> {
  const sql = deps.db.sql;
  const { eventsDays, runsDays } = deps.config.retention;
  const report: RetentionReport = { runs: 0, events: 0, idempotencyKeys: 0, auditEntries: 0 };
  const maxBatches = options.maxBatches ?? 100;
  for (let i = 0; i < maxBatches && stillActive(); i++) {
    const runs = await sql`
      delete from runs where id in (
        select id from runs where finished_at < now() - make_interval(days => ${runsDays})
          and status in ('succeeded', 'failed', 'cancelled', 'rolled_back')
        limit ${BATCH} for update skip locked)`;
    report.runs += runs.count;
    if (runs.count < BATCH) break;
  }
  for (let i = 0; i < maxBatches && stillActive(); i++) {
    const events = await sql`
      delete from events where id in (
        select e.id from events e join runs r on r.id = e.run_id
        where e.created_at < now() - make_interval(days => ${eventsDays}) and r.finished_at is not null
        limit ${BATCH} for share of r skip locked)`;
    report.events += events.count;
    if (events.count < BATCH) break;
  }
  if (stillActive()) {
    const keys = await sql`delete from idempotency_keys where expires_at < now()`;
    report.idempotencyKeys = keys.count;
    // Old fire records, keeping each schedule's latest (its "last fired" mark).
    await sql`
      delete from schedule_fires f where f.fire_at < now() - make_interval(days => ${runsDays})
        and exists (select 1 from schedule_fires g where g.workflow_id = f.workflow_id
          and g.schedule_key = f.schedule_key and g.fire_at > f.fire_at)`;
  }
  for (let i = 0; i < maxBatches && stillActive(); i++) {
    const pruned = await pruneAudit(sql, runsDays, BATCH);
    report.auditEntries += pruned;
    if (pruned < BATCH) break;
  }
  if (report.runs + report.events + report.idempotencyKeys + report.auditEntries > 0)
    deps.log.info(report, "retention pruned old data");
  return report;
}
