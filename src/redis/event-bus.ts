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
  /** Per run, how many notifications arrived; a read started after generation g sees its commits. */
  private readonly generations = new Map<string, number>();
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

  /** Subscribes the process once; later calls share the subscription. */
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
      // Notifications published while the connection was down are lost: after every reconnect,
      // wake every stream so it reads Postgres again.
      let connectedOnce = false;
      sub.on("ready", () => {
        if (connectedOnce) for (const runId of [...this.runListeners.keys()]) this.wake(runId);
        connectedOnce = true;
      });
      await sub.subscribe(this.eventsChannel, this.controlChannel);
    })();
    return this.subscribed;
  }

  /** News for a run: a new generation first, so reads begun from now on are distinct. */
  private wake(runId: string): void {
    const listeners = this.runListeners.get(runId);
    if (!listeners) return;
    this.generations.set(runId, (this.generations.get(runId) ?? 0) + 1);
    for (const listener of [...listeners]) listener();
  }

  /** Calls `listener` whenever run `runId` has news; returns the unsubscribe function. */
  onRun(runId: string, listener: () => void): () => void {
    let set = this.runListeners.get(runId);
    if (!set) {
      set = new Set();
      this.runListeners.set(runId, set);
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

  /** Notifications received so far for a run that has listeners. */
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
