/**
 * What the engine needs from infrastructure, as interfaces, so that a second implementation (the
 * zero-service mode on Postgres) can be added without touching the engine.
 */

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
