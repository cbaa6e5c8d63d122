/**
 * What the engine needs from infrastructure, as interfaces, so that a second implementation (the
 * zero-service mode on Postgres) can be added without touching the engine.
 */

import type { QueueTarget } from "./scaling.ts";

/** The message that asks a worker to run one attempt of one step. */
export interface StepJob {
  tenantId: string;
  runId: string;
  stepId: string;
  attempt: number;
  queue: string;
  /** 1–10, higher first. */
  priority: number;
  /** Run no earlier than this many milliseconds from now (retries with backoff). */
  delayMs?: number;
  /** Makes the job id unique again for an attempt handed back by a stopping worker. */
  jobSuffix?: string;
  /**
   * `compensate`: the job runs attempt N of the step's compensation during a rollback, not of the
   * step itself. Its attempts are counted apart from the step's (see engine/rollback.ts).
   */
  phase?: "compensate";
  /** The run's W3C `traceparent`, when it was traced: the job carries it to the worker. */
  traceparent?: string;
}

/**
 * The job id of an attempt: deterministic, so enqueueing the same attempt twice is a no-op. The
 * engine records it on the step; only the recorded job may start the attempt. A compensation's
 * attempt is `c<N>`, which no step attempt can be.
 */
export const stepJobId = (
  job: Pick<StepJob, "runId" | "stepId" | "attempt" | "jobSuffix" | "phase">,
): string =>
  `${job.runId}.${job.stepId}.${job.phase === "compensate" ? "c" : ""}${job.attempt}${job.jobSuffix ? `.${job.jobSuffix}` : ""}`;

export interface StepDispatcher {
  /** Enqueues jobs; a job whose (run, step, attempt) was enqueued before is not duplicated. */
  dispatch(jobs: readonly StepJob[]): Promise<void>;
  /** Of these jobs, the ids that still exist and have not finished (waiting, delayed or active). */
  liveJobs(jobs: ReadonlyArray<{ queue: string; jobId: string }>): Promise<Set<string>>;
}

/** Announces that a run has new events (the events themselves are read from Postgres). */
export interface EventNotifier {
  notify(runIds: Iterable<string>): Promise<void>;
}

export type ControlMessage = { type: "cancel"; runId: string; stepIds?: string[] };

export interface ControlBus {
  publish(message: ControlMessage): Promise<void>;
}

/** A granted lock and its fencing token (larger for every grant of the same lock). */
export interface LockGrant {
  token: string;
  fence: number;
}

/**
 * Per-tenant named locks with fencing tokens (asset materialization locks). Implemented on Redis;
 * the store that receives a lock holder's writes checks the fencing token.
 */
export interface LockService {
  acquire(tenantId: string, lockKey: string, token: string, ttlMs: number): Promise<LockGrant | null>;
  renew(tenantId: string, lockKey: string, token: string, ttlMs: number): Promise<boolean>;
  release(tenantId: string, lockKey: string, token: string): Promise<boolean>;
  /** The current holder's token, or null. */
  holder(tenantId: string, lockKey: string): Promise<string | null>;
  /** Makes the next grant's fence larger than `atLeast` (after the lock store lost its counters). */
  raiseFence(tenantId: string, lockKey: string, atLeast: number): Promise<void>;
}

/**
 * One named lease with fencing (the active supervisor's). Same contract as `LockService`, for a
 * single name: `acquire` grants only when nobody holds it, and every grant's fence is larger.
 */
export interface Lease {
  acquire(token: string, ttlMs: number): Promise<LockGrant | null>;
  renew(token: string, ttlMs: number): Promise<boolean>;
  release(token: string): Promise<boolean>;
  raiseFence(atLeast: number): Promise<void>;
  /** The current holder's token, or null when nobody holds it. */
  holder(): Promise<string | null>;
}

/**
 * The process-local side of run news and control messages: however many SSE streams or running
 * attempts listen, one subscription per process feeds them (see `RunFanout`).
 */
export interface EventBus extends EventNotifier, ControlBus {
  /** Subscribes the process; resolves once the first subscription is confirmed. */
  start(): Promise<unknown>;
  /** Calls `listener` whenever run `runId` has news; returns the unsubscribe function. */
  onRun(runId: string, listener: () => void): () => void;
  /** The generation of a run's latest news: a read started after generation g saw its commits. */
  generation(runId: string): number;
  onControl(listener: (message: ControlMessage) => void): () => void;
  stats(): { runs: number; runListeners: number; controlListeners: number };
}

/**
 * Failed authentications per client address. Store errors fail open (an outage of the store must
 * not lock every client out; readiness reports it).
 */
export interface FailureLimiter {
  /** Seconds until the address may try again, or null when it may try now. */
  blockedFor(address: string): Promise<number | null>;
  recordFailure(address: string): Promise<void>;
}

export type StreamSlot = { ok: true; lease: string } | { ok: false; open: number };

/**
 * Open event streams per tenant, counted across every API process (`quotas.streams`): each
 * stream holds a lease that its heartbeat renews and that it gives back when it ends; the leases
 * of a process that died expire within `ttlMs`.
 */
export interface StreamLeaseStore {
  readonly ttlMs: number;
  /** A lease for one more stream of the tenant, or how many are open when it is at `max`. */
  acquire(tenantId: string, max: number): Promise<StreamSlot>;
  renew(tenantId: string, lease: string): Promise<void>;
  release(tenantId: string, lease: string): Promise<void>;
}

export interface WorkerStep {
  tenantId: string;
  runId: string;
  stepId: string;
  attempt: number;
  startedAt: string;
}

/** A process's release as it announces it (see redis/processes.ts). */
export interface ProcessRelease {
  version: string;
  imageTag: string | null;
  /** The newest migration this process carries. */
  schema: number;
  formats: { job: number; event: number; lease: number };
}

export interface WorkerInfo {
  id: string;
  pid: number;
  host: string;
  queues: string[];
  concurrency: number;
  startedAt: string;
  steps: WorkerStep[];
  /** Stamped by `announce`; absent in announcements of releases before 0.2.0. */
  release?: ProcessRelease;
  /** Where the process serves its Prometheus metrics, when it does. */
  metricsUrl?: string;
}

/**
 * Who is online (workers announce themselves with an expiry) and the autoscaler's latest decision
 * per queue. Read by `GET /v1/queues` and the metrics; nothing depends on it for correctness.
 */
export interface WorkerDirectory {
  announce(info: WorkerInfo, ttlMs: number): Promise<void>;
  remove(id: string): Promise<void>;
  /** Workers whose last announcement has not expired. */
  online(): Promise<WorkerInfo[]>;
  publishTargets(targets: Record<string, QueueTarget>, ttlMs: number): Promise<void>;
  targets(): Promise<Record<string, QueueTarget>>;
}
