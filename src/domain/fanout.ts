/**
 * The process-local half of an event bus, whatever carries the messages between processes (Redis
 * pub/sub or Postgres LISTEN/NOTIFY): listeners per run, news generations, control listeners. A
 * transport calls `wake` for a run's news, `wakeAll` once a (re)subscription is confirmed (news
 * published before it took effect was never delivered), and `deliverControl` for a control message.
 */
import type { ControlMessage } from "./ports.ts";

export class RunFanout {
  private readonly runListeners = new Map<string, Set<() => void>>();
  /**
   * Per run with listeners, the generation of its latest news: a read started after generation g
   * sees the commits announced by g. Drawn from one process-wide counter that never goes back, so
   * a run whose listeners all left and came back never reuses a generation an older read has.
   */
  private readonly generations = new Map<string, number>();
  private lastGeneration = 0;
  private readonly controlListeners = new Set<(message: ControlMessage) => void>();

  /** Wakes every listener: news may have been missed. */
  protected wakeAll(): void {
    for (const runId of [...this.runListeners.keys()]) this.wake(runId);
  }

  /** News for a run: a new generation first, so reads begun from now on are distinct. */
  protected wake(runId: string): void {
    const listeners = this.runListeners.get(runId);
    if (!listeners) return;
    this.generations.set(runId, ++this.lastGeneration);
    for (const listener of [...listeners]) listener();
  }

  /** A control message as received on the wire; malformed ones are dropped. */
  protected deliverControl(payload: string): void {
    let message: ControlMessage;
    try {
      message = JSON.parse(payload) as ControlMessage;
    } catch {
      return;
    }
    for (const listener of this.controlListeners) listener(message);
  }

  /** Calls `listener` whenever run `runId` has news; returns the unsubscribe function. */
  onRun(runId: string, listener: () => void): () => void {
    let set = this.runListeners.get(runId);
    if (!set) {
      set = new Set();
      this.runListeners.set(runId, set);
      this.generations.set(runId, ++this.lastGeneration);
    }
    set.add(listener);
    return () => {
      const current = this.runListeners.get(runId);
      if (!current) return;
      current.delete(listener);
      if (current.size === 0) {
        this.runListeners.delete(runId);
        this.generations.delete(runId);
      }
    };
  }

  /** The generation of a run's latest news (or of its first listener's arrival). */
  generation(runId: string): number {
    return this.generations.get(runId) ?? 0;
  }

  onControl(listener: (message: ControlMessage) => void): () => void {
    this.controlListeners.add(listener);
    return () => this.controlListeners.delete(listener);
  }

  /** Listener counts, for leak checks and metrics. */
  stats(): { runs: number; runListeners: number; controlListeners: number } {
    let runListeners = 0;
    for (const set of this.runListeners.values()) runListeners += set.size;
    return { runs: this.runListeners.size, runListeners, controlListeners: this.controlListeners.size };
  }
}

/** Run ids per notification payload: Postgres caps a NOTIFY payload at 8000 bytes. */
export function chunkRunIds(ids: readonly string[], maxBytes: number): string[] {
  const chunks: string[] = [];
  let current = "";
  for (const id of ids) {
    const next = current ? `${current},${id}` : id;
    if (current && Buffer.byteLength(next) > maxBytes) {
      chunks.push(current);
      current = id;
    } else {
      current = next;
    }
  }
  if (current) chunks.push(current);
  return chunks;
}
