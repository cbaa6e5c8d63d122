/**
 * Redis pub/sub for two kinds of messages: "run R has new events" (read them from Postgres) and
 * control messages for workers (cancel). One subscriber connection per process fans messages out
 * to local listeners, however many SSE clients or running attempts there are.
 */
import type { Redis } from "ioredis";
import { RunFanout } from "../domain/fanout.ts";
import type { ControlMessage, EventBus } from "../domain/ports.ts";
import { redisKeys } from "./keys.ts";

export class RedisEventBus extends RunFanout implements EventBus {
  private subscribed: Promise<unknown> | undefined;

  constructor(
    private readonly publisher: Redis,
    /** A dedicated connection (a subscribed connection can do nothing else); null for publish-only. */
    private readonly subscriber: Redis | null,
    private readonly prefix: string,
  ) {
    super();
  }

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
          this.deliverControl(payload);
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
}
