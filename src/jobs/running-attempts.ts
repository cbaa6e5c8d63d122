/**
 * The attempts a worker is executing right now, keyed by attempt (run, step, phase, attempt and
 * lease token): a new attempt of a step can start here while an older one still unwinds, and the
 * old one's removal must never remove the new one, or cancel and shutdown would miss it.
 */
export interface RunningAttempt {
  runId: string;
  stepId: string;
  phase: string;
  attempt: number;
  token: string;
}

export const runningKey = (a: RunningAttempt): string =>
  `${a.runId}\u0000${a.stepId}\u0000${a.phase}\u0000${a.attempt}\u0000${a.token}`;

export class RunningAttempts<T extends { attempt: RunningAttempt; controller: AbortController }> {
  private readonly byKey = new Map<string, T>();

  add(entry: T): void {
    this.byKey.set(runningKey(entry.attempt), entry);
  }

  remove(entry: T): void {
    const key = runningKey(entry.attempt);
    if (this.byKey.get(key) === entry) this.byKey.delete(key);
  }

  get size(): number {
    return this.byKey.size;
  }

  values(): IterableIterator<T> {
    return this.byKey.values();
  }

  /** Aborts the attempts of a run (of some steps only, when named); returns how many. */
  abortRun(runId: string, stepIds: readonly string[] | undefined, reason: unknown): number {
    let n = 0;
    for (const { attempt, controller } of this.byKey.values()) {
      if (attempt.runId === runId && (!stepIds || stepIds.includes(attempt.stepId))) {
        controller.abort(reason);
        n++;
      }
    }
    return n;
  }

  abortAll(reason: unknown): void {
    for (const { controller } of this.byKey.values()) controller.abort(reason);
  }
}
