/**
 * One chaos run: private stores behind proxies, the system as real processes, the recording
 * target, the workload and its SSE clients, the fault schedule; then recovery, the history read
 * back from Postgres, and the verdict.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import { RESERVED_KEY_PREFIX, scheduleSlotKey } from "../src/domain/idempotency.ts";
import { checkHistory, type History, type Verdict } from "./checker.ts";
import { type FaultKind, type FaultRecord, startFaults } from "./faults.ts";
import { createRng } from "./rng.ts";
import { startSseFleet } from "./sse.ts";
import { startStores } from "./stores.ts";
import { startSystem } from "./system.ts";
import { startTarget } from "./target.ts";
import { apiClient, type DriverState, installWorkflows, startDriver } from "./workload.ts";

export interface ChaosOptions {
  seed: number;
  /** Seconds of workload under faults (recovery and checks come after). */
  durationSeconds: number;
  /** Plant violations (an overlapping duplicate effect, a dropped SSE event): the run must fail. */
  plant: boolean;
  /** Only these fault kinds (default: all), to reproduce a finding. */
  faultKinds?: readonly FaultKind[];
  /** Seconds between a fault's recovery and the next fault. */
  faultGapSeconds?: number;
  /** New work waits while this many runs are active (default 30). */
  maxActiveRuns?: number;
  /** Seconds to wait, after the workload, for every run to end. */
  drainSeconds?: number;
  log?: (line: string) => void;
}

export interface ChaosResult {
  dir: string;
  history: History;
  verdict: Verdict;
  summary: {
    seed: number;
    durationSeconds: number;
    runs: number;
    runsByStatus: Record<string, number>;
    stepAttempts: number;
    effects: number;
    sseClients: number;
    sseReconnects: number;
    faultsByKind: Record<string, number>;
    actions: Record<string, number>;
    processRestarts: Record<string, number>;
    driverErrors: string[];
    /** Why SSE clients reconnected (first few distinct reasons). */
    sseErrors: string[];
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function runChaos(options: ChaosOptions): Promise<ChaosResult> {
  const log = options.log ?? ((line: string) => process.stdout.write(`${line}\n`));
  const started = Date.now();
  const say = (line: string) => log(`${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s  ${line}`);
  const dir = mkdtempSync("/tmp/flowline-chaos-");
  say(`seed ${options.seed}, ${options.durationSeconds} s, logs in ${dir}`);

  const stores = await startStores();
  const target = await startTarget();
  let system: Awaited<ReturnType<typeof startSystem>> | undefined;
  try {
    system = await startSystem({
      dir,
      databaseUrl: stores.databaseUrl,
      redisUrl: stores.redisUrl,
      migrateUrl: stores.pg.url,
    });
    say(`system up: APIs ${system.apis.join(", ")}`);
    let stopping = false;
    const api = apiClient(system.apis, createRng(options.seed + 1), () => stopping);
    await installWorkflows(api, target.url);
    const sse = startSseFleet(system.apis, createRng(options.seed + 2), { dropOne: options.plant });
    const sseRng = createRng(options.seed + 3);
    // Active runs, read directly from Postgres (not through the proxy), for the driver's pace.
    const direct = postgres(stores.pg.url, { max: 2, onnotice: () => {}, connect_timeout: 2 });
    let active = 0;
    const pace = setInterval(() => {
      direct<{ n: number }[]>`
        select count(*)::int as n from runs where status in ('queued', 'running', 'paused', 'rolling_back')`.then(
        ([row]) => {
          active = row!.n;
        },
        () => {},
      );
    }, 1000);
    const driver = startDriver(
      api,
      createRng(options.seed + 4),
      (run) => {
        if (sseRng.chance(0.5)) sse.follow(run.runId);
      },
      () => active >= (options.maxActiveRuns ?? 30),
    );
    // Faults start once the workload is under way.
    await sleep(3000);
    const faults = startFaults({
      system,
      stores,
      rng: createRng(options.seed + 5),
      gapSeconds: options.faultGapSeconds ?? 2,
      ...(options.faultKinds ? { kinds: options.faultKinds } : {}),
      log: say,
    });
    await sleep(Math.max(0, options.durationSeconds * 1000 - 3000));
    say("workload done; stopping faults");
    stopping = true;
    await Promise.all([driver.stop(), faults.stop()]);
    clearInterval(pace);
    if (options.plant) {
      // A duplicate of a finished effect overlapping it, as if a second attempt had run meanwhile.
      const victim = target.effects.find((e) => e.outcome === "ok");
      if (victim) target.record({ ...victim, start: victim.start + 1 });
    }

    say(`waiting for every run to end (${driver.state.runs.size} accepted)`);
    try {
      const deadline = Date.now() + (options.drainSeconds ?? 90) * 1000;
      for (;;) {
        const [row] = await direct<{ n: number }[]>`
          select count(*)::int as n from runs where status not in ('succeeded', 'failed', 'cancelled', 'rolled_back')`;
        if (row!.n === 0 || Date.now() > deadline) {
          say(`${row!.n} runs not ended`);
          break;
        }
        await sleep(500);
      }
      await sse.finish(30_000);
      const history = await readHistory(direct, driver.state, target.effects, sse.clients, faults.faults);
      const verdict = checkHistory(history);
      const summary = summarize(options, history, driver.state, sse.clients, faults.faults, system);
      writeFileSync(join(dir, "history.json"), JSON.stringify(history));
      writeFileSync(join(dir, "report.json"), JSON.stringify({ summary, verdict }, null, 2));
      return { dir, history, verdict, summary };
    } finally {
      await direct.end({ timeout: 1 });
    }
  } finally {
    await system?.stop();
    await target.close();
    await stores.stop();
  }
}

async function readHistory(
  sql: postgres.Sql,
  state: DriverState,
  effects: History["effects"],
  clients: History["sse"],
  faults: FaultRecord[],
): Promise<History> {
  const runs = await sql<History["runs"]>`
    select r.id, w.name as workflow, r.status, r.trigger,
           r.params->>'tag' as tag, r.params->>'partition' as partition
    from runs r join workflows w on w.id = r.workflow_id`;
  const fires = await sql<
    Array<{ workflowId: string; scheduleKey: string; fireAt: Date; runId: string | null }>
  >`
    select workflow_id as "workflowId", schedule_key as "scheduleKey", fire_at as "fireAt", run_id as "runId"
    from schedule_fires`;
  const slotKeys = await sql<Array<{ key: string; runId: string | null }>>`
    select key, run_id as "runId" from idempotency_keys where key like ${`${RESERVED_KEY_PREFIX}schedule:%`}`;
  const slots = new Map<string, string[]>();
  const claim = (slot: string, runId: string | null) => {
    if (runId) slots.set(slot, [...(slots.get(slot) ?? []), runId]);
  };
  for (const f of fires) claim(scheduleSlotKey(f.workflowId, f.scheduleKey, f.fireAt), f.runId);
  for (const k of slotKeys) claim(k.key, k.runId);
  const attemptsSucceeded = await sql<History["attemptsSucceeded"]>`
    select run_id as "runId", step_id as "stepId", phase, attempt
    from step_attempts where status = 'succeeded'`;
  const materializations = await sql<History["materializations"]>`
    select run_id as "runId", step_id as "stepId", asset_key as asset from materializations`;
  const events = await sql<Array<Omit<History["events"][number], "createdAt"> & { createdAt: Date }>>`
    select id::int as id, run_id as "runId", type, step_id as "stepId",
           coalesce(data->>'phase', 'execute') as phase, created_at as "createdAt"
    from events order by id`;
  return {
    runs: [...runs],
    accepted: [...state.runs.keys()],
    cancelAcks: [...state.cancelled].map(([runId, at]) => ({ runId, at })),
    idempotency: [...state.idempotency].map(([key, ids]) => ({ key, runIds: [...ids] })),
    scheduleSlots: [...slots].map(([slot, runIds]) => ({ slot, runIds })),
    attemptsSucceeded: [...attemptsSucceeded],
    materializations: [...materializations],
    events: events.map((e) => ({ ...e, createdAt: e.createdAt.getTime() })),
    effects: effects.map((e) => ({ ...e })),
    sse: clients.map((c) => ({ runId: c.runId, received: c.received, ended: c.ended, endedAt: c.endedAt })),
    faults,
  };
}

function summarize(
  options: ChaosOptions,
  history: History,
  state: DriverState,
  clients: Array<{ reconnects: number; errors: string[] }>,
  faults: FaultRecord[],
  system: Awaited<ReturnType<typeof startSystem>>,
): ChaosResult["summary"] {
  const count = <T>(items: T[], key: (t: T) => string) => {
    const out: Record<string, number> = {};
    for (const i of items) out[key(i)] = (out[key(i)] ?? 0) + 1;
    return out;
  };
  return {
    seed: options.seed,
    durationSeconds: options.durationSeconds,
    runs: history.runs.length,
    runsByStatus: count(history.runs, (r) => r.status),
    stepAttempts: history.events.filter((e) => e.type === "step.started").length,
    effects: history.effects.length,
    sseClients: clients.length,
    sseReconnects: clients.reduce((s, c) => s + c.reconnects, 0),
    faultsByKind: count(faults, (f) => f.kind),
    actions: state.actions,
    processRestarts: Object.fromEntries(system.processes.map((p) => [p.name, p.restarts])),
    driverErrors: state.errors.slice(0, 20),
    sseErrors: [...new Set(clients.flatMap((c) => c.errors))].slice(0, 10),
  };
}
