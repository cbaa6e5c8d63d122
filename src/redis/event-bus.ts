/**
 * Redis pub/sub for two kinds of messages: "run R has new events" (read them from Postgres) and
 * control messages for workers (cancel). One subscriber connection per process fans messages out
 * to local listeners, however many SSE clients or running attempts there are.
 */
import type { Redis } from "ioredis";
import type { ControlBus, ControlMessage, EventNotifier } from "../domain/ports.ts";
import { redisKeys } from "./keys.ts";

export class RedisEventBus implements EventNotifier, ControlBus {
  private readonly runListeners = new Map<string, Set<() => void>>();
  /**
   * Per run with listeners, the generation of its latest news: a read started after generation g
   * sees the commits announced by g. Drawn from one process-wide counter that never goes back, so
   * a run whose listeners all left and came back never reuses a generation an older read has.
   */
  private readonly generations = new Map<string, number>();
  private lastGeneration = 0;
  private readonly controlListeners = new Set<(message: ControlMessage) => void>();
  private subscribed: Promise<unknown> | undefined;

  constructor(
    private readonly publisher: Redis,
    /** A dedicated connection (a subscribed connection can do nothing else); null for publish-only. */
    private readonly subscriber: Redis | null,
    private readonly prefix: string,
  ) {}

  private get eventsChannel() {
    return redisKeys(this.prefix).eventsChannel();
  }
  private get controlChannel() {
    return redisKeys(this.prefix).controlChannel();
  }

  async notify(runIds: Iterable<string>): Promise<void> {
    const ids = [...runIds];
    if (ids.length > 0) await this.publisher.publish(this.eventsChannel, ids.join(","));
  }

  async publish(message: ControlMessage): Promise<void> {
    await this.publisher.publish(this.controlChannel, JSON.stringify(message));
  }

  /**
   * Subscribes the process once; later calls share the subscription. After the subscription is
   * confirmed — the first one and every one after a reconnect — every listener is woken, because
   * notifications published before it took effect were never delivered.
   */
  start(): Promise<unknown> {
    if (!this.subscriber) throw new Error("this event bus has no subscriber connection");
    const sub = this.subscriber;
    this.subscribed ??= (async () => {
      sub.on("message", (channel: string, payload: string) => {
        if (channel === this.eventsChannel) {
          for (const runId of payload.split(",")) this.wake(runId);
        } else if (channel === this.controlChannel) {
          let message: ControlMessage;
          try {
            message = JSON.parse(payload) as ControlMessage;
          } catch {
            return;
          }
          for (const listener of this.controlListeners) listener(message);
        }
      });
      // ioredis emits 'ready' after a reconnect once it has *sent* its own re-subscription, not
      // once Redis confirmed it: subscribing again (a no-op for Redis) and waiting for the reply
      // is what tells us notifications reach us again.
      let first = true;
      sub.on("ready", () => {
        if (first) return;
        this.subscribe(sub).catch(() => {
          // The connection dropped again; its next 'ready' tries again.
        });
      });
      await this.subscribe(sub);
      first = false;
    })();
    return this.subscribed;
  }

  private async subscribe(sub: Redis): Promise<void> {
    await sub.subscribe(this.eventsChannel, this.controlChannel);
    this.wakeAll();
  }

  /** Wakes every listener: news may have been missed. */
  private wakeAll(): void {
    for (const runId of [...this.runListeners.keys()]) this.wake(runId);
  }

  /** News for a run: a new generation first, so reads begun from now on are distinct. */
  private wake(runId: string): void {
    const listeners = this.runListeners.get(runId);
    if (!listeners) return;
    this.generations.set(runId, ++this.lastGeneration);
    for (const listener of [...listeners]) listener();
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
