/**
 * The event bus on Postgres: `NOTIFY` carries "run R has new events" and control messages, one
 * `LISTEN` connection per process fans them out (see `RunFanout`). Like Redis pub/sub, a
 * notification sent while a listener is disconnected is lost: every (re)established `LISTEN`
 * wakes every local listener, so streams re-read Postgres after the last moment one could have
 * been missed.
 */
import { createHash } from "node:crypto";
import type postgres from "postgres";
import { chunkRunIds, RunFanout } from "../../domain/fanout.ts";
import type { ControlMessage, EventBus } from "../../domain/ports.ts";

/** Postgres caps a notification payload below 8000 bytes. */
const MAX_PAYLOAD_BYTES = 7900;

/** A channel name for `prefix` and `kind` within Postgres's 63-byte identifier limit. */
export function channelName(prefix: string, kind: "events" | "control"): string {
  const name = `${prefix}:${kind}`;
  if (Buffer.byteLength(name) <= 63) return name;
  return `flowline:${createHash("sha256").update(prefix).digest("hex").slice(0, 32)}:${kind}`;
}

export class PgEventBus extends RunFanout implements EventBus {
  private readonly eventsChannel: string;
  private readonly controlChannel: string;
  private subscribed: Promise<unknown> | undefined;
  private stopped = false;
  private readonly unlisteners: Array<() => Promise<void>> = [];

  constructor(
    private readonly sql: postgres.Sql,
    prefix: string,
    private readonly onError: (error: Error) => void = () => {},
  ) {
    super();
    this.eventsChannel = channelName(prefix, "events");
    this.controlChannel = channelName(prefix, "control");
  }

  async notify(runIds: Iterable<string>): Promise<void> {
    for (const chunk of chunkRunIds([...runIds], MAX_PAYLOAD_BYTES)) {
      await this.sql`select pg_notify(${this.eventsChannel}, ${chunk})`;
    }
  }

  async publish(message: ControlMessage): Promise<void> {
    await this.sql`select pg_notify(${this.controlChannel}, ${JSON.stringify(message)})`;
  }

  /**
   * Listens once per process; later calls share it. postgres.js re-issues `LISTEN` after a
   * reconnect and calls back once it is in place: that is when listeners are woken.
   */
  start(): Promise<unknown> {
    this.subscribed ??= (async () => {
      for (let n = 1; !this.stopped; n++) {
        try {
          const events = await this.sql.listen(
            this.eventsChannel,
            (payload) => {
              for (const runId of payload.split(",")) this.wake(runId);
            },
            () => this.wakeAll(),
          );
          this.unlisteners.push(events.unlisten);
          const control = await this.sql.listen(
            this.controlChannel,
            (payload) => this.deliverControl(payload),
            () => this.wakeAll(),
          );
          this.unlisteners.push(control.unlisten);
          return;
        } catch (error) {
          // Postgres not reachable yet: streams still read Postgres on connect; try again.
          this.onError(error as Error);
          for (const unlisten of this.unlisteners.splice(0)) await unlisten().catch(() => {});
          await new Promise((r) => setTimeout(r, Math.min(2000, 200 * n)));
        }
      }
    })();
    return this.subscribed;
  }

  async close(): Promise<void> {
    this.stopped = true;
    for (const unlisten of this.unlisteners.splice(0)) await unlisten().catch(() => {});
  }
}
