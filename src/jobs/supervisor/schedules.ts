/**
 * Cron schedules: each (workflow, schedule, slot) starts exactly one run, even with two
 * supervisors acting at once or a crash between starting the run and recording the fire.
 *
 * The run is submitted with an idempotency key derived from the slot, so a repeat of the same
 * fire answers the run already started; the `schedule_fires` row (primary key workflow, schedule,
 * slot) then records it and moves the schedule's "last fired" mark.
 */
import { createHash } from "node:crypto";
import { StaleFenceError } from "../../db/repositories/fences.ts";
import type { Sql } from "../../db/repositories/runs.ts";
import { FlowlineError } from "../../domain/errors.ts";
import { scheduleSlotKey } from "../../domain/idempotency.ts";
import { dueSlot, scheduleIdentity } from "../../domain/schedules.ts";
import type { WorkflowSpec } from "../../domain/workflow/spec.ts";
import type { EngineDeps } from "../../engine/deps.ts";
import { requestHash, submitRun } from "../../engine/runs.ts";

interface ScheduledWorkflow {
  workflow_id: string;
  tenant_id: string;
  name: string;
  version_created_at: Date;
  spec: WorkflowSpec;
}

export interface Fire {
  workflow: string;
  scheduleKey: string;
  slot: Date;
  runId: string;
  created: boolean;
}

export const scheduleKeyOf = (schedule: WorkflowSpec["schedules"][number]): string =>
  createHash("sha256").update(scheduleIdentity(schedule)).digest("hex").slice(0, 32);

/**
 * Fires every schedule that is due at `now`. `stillActive` is asked before each fire, so a
 * supervisor that lost its lease mid-pass stops at once.
 */
export async function fireDueSchedules(
  deps: EngineDeps,
  authority: { stillActive: () => boolean; guard?: (sql: Sql) => Promise<void> },
  now = new Date(),
): Promise<Fire[]> {
  const sql = deps.db.sql;
  const workflows = await sql<ScheduledWorkflow[]>`
    select w.id as workflow_id, w.tenant_id, w.name, v.created_at as version_created_at, v.spec
    from workflows w join workflow_versions v on v.workflow_id = w.id and v.version = w.latest_version
    where w.archived_at is null and jsonb_array_length(coalesce(v.spec->'schedules', '[]'::jsonb)) > 0`;
  if (workflows.length === 0) return [];
  const last = await sql<{ workflow_id: string; schedule_key: string; fire_at: Date }[]>`
    select workflow_id, schedule_key, max(fire_at) as fire_at from schedule_fires
    where workflow_id in ${sql(workflows.map((w) => w.workflow_id))}
    group by workflow_id, schedule_key`;
  const lastFire = new Map(last.map((r) => [`${r.workflow_id}/${r.schedule_key}`, r.fire_at]));
  const fires: Fire[] = [];
  for (const wf of workflows) {
    for (const schedule of wf.spec.schedules) {
      if (!schedule.enabled) continue;
      const key = scheduleKeyOf(schedule);
      const since = lastFire.get(`${wf.workflow_id}/${key}`) ?? wf.version_created_at;
      const slot = dueSlot(schedule, since, now);
      if (!slot || !authority.stillActive()) continue;
      const fire = await fireOnce(deps, wf, schedule, key, slot, authority.guard);
      if (fire) fires.push(fire);
    }
  }
  return fires;
}

async function fireOnce(
  deps: EngineDeps,
  wf: ScheduledWorkflow,
  schedule: WorkflowSpec["schedules"][number],
  key: string,
  slot: Date,
  guard?: (sql: Sql) => Promise<void>,
): Promise<Fire | undefined> {
  const log = deps.log.child({ workflow: wf.name, scheduleKey: key, slot: slot.toISOString() });
  const body = { schedule: key, slot: slot.toISOString(), params: schedule.params ?? {} };
  try {
    const { run, created } = await submitRun(
      deps,
      { tenantId: wf.tenant_id, workflow: wf.name, params: schedule.params ?? {}, trigger: "schedule" },
      {
        key: scheduleSlotKey(wf.workflow_id, key, slot),
        hash: requestHash("schedule", body),
      },
      guard ? { guard } : {},
    );
    await deps.db.sql`
      insert into schedule_fires (workflow_id, schedule_key, fire_at, run_id)
      values (${wf.workflow_id}, ${key}, ${slot}, ${run.id})
      on conflict do nothing`;
    log.info({ runId: run.id, created }, created ? "schedule fired" : "schedule fire recorded (run existed)");
    return { workflow: wf.name, scheduleKey: key, slot, runId: run.id, created };
  } catch (error) {
    if (error instanceof StaleFenceError) {
      log.warn({ err: error.message }, "schedule not fired: this supervisor is no longer the active one");
      return undefined;
    }
    // One broken workflow must not stop the others. A refusal (archived meanwhile, params too
    // large, the tenant over a quota) is final: the slot is recorded without a run, as skipped,
    // so it is not tried again every pass; anything else (a store unreachable) is retried on the
    // next pass.
    if (error instanceof FlowlineError)
      log.warn(
        { tenantId: wf.tenant_id, code: error.code, reason: error.message },
        "schedule slot skipped: its run was refused",
      );
    else log.error({ err: error }, "schedule fire failed");
    if (error instanceof FlowlineError) {
      await deps.db.sql`
        insert into schedule_fires (workflow_id, schedule_key, fire_at, run_id)
        values (${wf.workflow_id}, ${key}, ${slot}, null) on conflict do nothing`;
    }
    return undefined;
  }
}
