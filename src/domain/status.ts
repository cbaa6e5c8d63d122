/**
 * Run and step state machines as data (SPEC §3). Every writer checks a transition through
 * `canTransitionRun` / `canTransitionStep`; these tables are also the documentation.
 */
export const runStatuses = [
  "queued",
  "running",
  "paused",
  "succeeded",
  "failed",
  "cancelled",
  "rolling_back",
  "rolled_back",
] as const;
export type RunStatus = (typeof runStatuses)[number];

export const stepStatuses = [
  "pending",
  "queued",
  "running",
  "retrying",
  "succeeded",
  "failed",
  "skipped",
  "cancelled",
  "reused",
] as const;
export type StepStatus = (typeof stepStatuses)[number];

export const runKinds = ["workflow", "materialization", "subgraph"] as const;
export type RunKind = (typeof runKinds)[number];

const runTransitions: Record<RunStatus, readonly RunStatus[]> = {
  queued: ["running", "cancelled", "failed"],
  running: ["paused", "succeeded", "failed", "cancelled", "rolling_back"],
  // Steps already running when the run was paused still finish: the last one may end the run
  // (succeeded or failed), and a step with `onFailure: rollback` may fail for good meanwhile.
  paused: ["running", "succeeded", "cancelled", "failed", "rolling_back"],
  succeeded: ["rolling_back"],
  failed: ["rolling_back"],
  cancelled: [],
  rolling_back: ["rolled_back", "failed", "cancelled"],
  rolled_back: [],
};

const stepTransitions: Record<StepStatus, readonly StepStatus[]> = {
  pending: ["queued", "skipped", "cancelled", "reused"],
  queued: ["running", "cancelled", "failed", "queued"],
  // → queued: handed back by a stopping worker, or lost and retried at once.
  running: ["succeeded", "failed", "retrying", "cancelled", "queued"],
  retrying: ["running", "queued", "cancelled", "failed"],
  succeeded: [],
  failed: [],
  skipped: [],
  cancelled: [],
  reused: [],
};

export function canTransitionRun(from: RunStatus, to: RunStatus): boolean {
  return runTransitions[from].includes(to);
}

export function canTransitionStep(from: StepStatus, to: StepStatus): boolean {
  return stepTransitions[from].includes(to);
}

/**
 * The statuses a step (or compensation) may enter `to` from: the guard of every statement in
 * `db/transitions.ts` that moves a row to `to` is derived from this, so the table is what the
 * writers check.
 */
export function stepSourcesOf(to: StepStatus): StepStatus[] {
  return stepStatuses.filter((from) => stepTransitions[from].includes(to));
}

/** The same for runs. */
export function runSourcesOf(to: RunStatus): RunStatus[] {
  return runStatuses.filter((from) => runTransitions[from].includes(to));
}

/**
 * A guard narrower than the table's, for a move with one meaning only (resume moves a `paused`
 * run to `running`, not a `queued` one): `from`, once checked to be among `sources` (the table's
 * sources of `to`). A narrowing the table does not allow throws, at the load of the module that
 * declares it.
 */
export function narrowSources<S extends string>(to: S, sources: readonly S[], from: readonly S[]): S[] {
  for (const f of from)
    if (!sources.includes(f)) throw new Error(`transition ${f} → ${to} is not in the table`);
  return [...from];
}

export const terminalRunStatuses: ReadonlySet<RunStatus> = new Set([
  "succeeded",
  "failed",
  "cancelled",
  "rolled_back",
]);
export const terminalStepStatuses: ReadonlySet<StepStatus> = new Set([
  "succeeded",
  "failed",
  "skipped",
  "cancelled",
  "reused",
]);

export const isTerminalRun = (s: RunStatus): boolean => terminalRunStatuses.has(s);
export const isTerminalStep = (s: StepStatus): boolean => terminalStepStatuses.has(s);

/** Event types of SPEC §5, the only values allowed in an SSE `event:` line. */
export const eventTypes = [
  "run.queued",
  "run.started",
  "run.paused",
  "run.resumed",
  "run.succeeded",
  "run.failed",
  "run.cancelled",
  "run.rolling_back",
  "run.rolled_back",
  "step.queued",
  "step.started",
  "step.progress",
  "step.log",
  "step.retrying",
  "step.succeeded",
  "step.failed",
  "step.skipped",
  "step.cancelled",
  "step.reused",
  "asset.materialized",
] as const;
export type EventType = (typeof eventTypes)[number];

export const scopes = ["read", "write", "admin"] as const;
export type Scope = (typeof scopes)[number];
