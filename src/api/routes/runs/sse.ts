/**
 * Server-Sent Events for a run (SPEC §5). The stream replays from Postgres after Last-Event-ID and
 * then follows notifications by reading Postgres again from the last id it sent — notifications
 * carry no events, so a lost or late one can neither drop nor duplicate anything. Every heartbeat
 * reads again too, so a notification that never arrives costs one heartbeat interval. At most one page
 * of events is in memory per stream, and the next page is read only once the socket has drained,
 * so a slow client costs a bounded amount of memory. Encoding is done here (a few lines) because
 * the frames are fully under our control: `event:` is one of our own types and `id:` a number.
 */
import type { FastifyReply, FastifyRequest } from "fastify";
import type { EventRow } from "../../../db/repositories/runs.ts";
import { quotaExceeded } from "../../../domain/limits.ts";
import type { EventBus, StreamLeaseStore } from "../../../domain/ports.ts";

export const HEARTBEAT_MS = 15_000;
export const RETRY_MS = 3000;
const PAGE = 500;
const terminalRunEvents = new Set(["run.succeeded", "run.failed", "run.cancelled", "run.rolled_back"]);

export interface SseHub {
  bus: EventBus;
  readPage(runId: string, afterId: number, limit: number): Promise<EventRow[]>;
  /** Open streams (their close function → bytes waiting in their socket's buffer), for shutdown,
   * leak checks and the slow-client bound. */
  streams: Map<() => void, () => number>;
  /** Open streams per tenant across all API processes, for `quotas.streams`. */
  leases: StreamLeaseStore;
  heartbeatMs?: number;
}

export function frame(event: EventRow): string {
  const data = {
    id: event.id,
    type: event.type,
    runId: event.run_id,
    stepId: event.step_id,
    attempt: event.attempt,
    at: event.created_at.toISOString(),
    ...event.data,
  };
  return `id: ${event.id}\nevent: ${event.type}\ndata: ${JSON.stringify(data)}\n\n`;
}

export async function streamRunEvents(
  hub: SseHub,
  request: FastifyRequest,
  reply: FastifyReply,
  runId: string,
  afterId: number,
  options: {
    terminalAtStart: boolean;
    include?: (event: EventRow) => boolean;
    /** The caller's tenant and its quota of open streams: over it, 429 before anything is sent. */
    tenant?: { id: string; max: number };
  },
): Promise<void> {
  const tenant = options.tenant;
  let lease: string | undefined;
  if (tenant) {
    // Without Redis the stream still works (it reads on every heartbeat), uncounted meanwhile.
    const slot = await hub.leases.acquire(tenant.id, tenant.max).catch((error: Error) => {
      request.log.warn({ err: error.message }, "open streams not counted: Redis unreachable");
      return undefined;
    });
    if (slot && !slot.ok)
      throw quotaExceeded("streams", tenant.max, `tenant "${tenant.id}" has ${slot.open} event streams open`);
    lease = slot?.lease;
  }
  /** Renews or gives back this stream's place in the tenant's count; a failure lets it expire. */
  const leaseOp = (op: "renew" | "release") => {
    if (tenant && lease) void hub.leases[op](tenant.id, lease).catch(() => {});
  };
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    // Headers hooks have set (CORS, rate limit) would be lost with the hijacked reply otherwise.
    ...(reply.getHeaders() as Record<string, string>),
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache, no-transform",
    connection: "keep-alive",
    "x-accel-buffering": "no",
    "x-request-id": request.id,
  });
  res.write(`retry: ${RETRY_MS}\n\n`);

  let lastId = afterId;
  /**
   * The last event read was the run's terminal one; the stream ends once nothing follows it. A run
   * finished when the stream began has nothing after `afterId` to read when the client resumes at
   * its end; any event read decides again (a `run.rolling_back` means a rollback follows).
   */
  let ended = options.terminalAtStart;
  let closed = false;
  let pumping = false;
  let again = false;

  const close = () => {
    if (closed) return;
    closed = true;
    unsubscribe();
    clearInterval(heartbeat);
    hub.streams.delete(close);
    leaseOp("release");
    res.off("close", close);
    res.end();
  };
  // Subscribe before the first read, so nothing committed after that read is missed.
  const unsubscribe = hub.bus.onRun(runId, () => void pump());
  const heartbeat = setInterval(() => {
    if (closed) return;
    res.write(": heartbeat\n\n");
    leaseOp("renew");
    // A notification can be lost (Redis down or resubscribing, a dropped subscriber): read anyway.
    void pump();
  }, hub.heartbeatMs ?? HEARTBEAT_MS);
  hub.streams.set(close, () => res.writableLength);
  res.on("close", close);
  // The client may have gone while the run was being looked up: 'close' has then fired already.
  if (res.destroyed || request.raw.destroyed) {
    close();
    return;
  }

  /** Resolves when the socket can take more, or false when it closed first. */
  const drained = () =>
    new Promise<boolean>((resolve) => {
      const onDrain = () => done(true);
      const onClose = () => done(false);
      const done = (ok: boolean) => {
        res.off("drain", onDrain);
        res.off("close", onClose);
        resolve(ok);
      };
      res.on("drain", onDrain);
      res.on("close", onClose);
    });

  async function pump(): Promise<void> {
    if (pumping) {
      again = true;
      return;
    }
    pumping = true;
    try {
      do {
        again = false;
        for (;;) {
          if (closed) return;
          const page = await hub.readPage(runId, lastId, PAGE);
          for (const event of page) {
            if (closed) return;
            lastId = event.id;
            const writable = options.include && !options.include(event) ? true : res.write(frame(event));
            // A finished run may be rolled back later (run.succeeded → run.rolling_back → …), so a
            // terminal event ends the stream only when it is the last committed one.
            ended = terminalRunEvents.has(event.type);
            if (!writable && !(await drained())) return;
          }
          if (page.length < PAGE) {
            if (ended) {
              res.write("event: end\ndata: {}\n\n");
              close();
              return;
            }
            break;
          }
        }
      } while (again);
    } catch (error) {
      request.log.warn({ err: error, runId }, "event stream failed");
      close();
    } finally {
      pumping = false;
    }
  }

  void pump();
}

/**
 * Streams of one run that are caught up all ask for the same page when news arrives; one query
 * in flight per (run, after, limit) serves them all. A read may be shared only by callers notified
 * no later than it started — hence the run's notification generation in the key: a caller woken
 * by a newer notification must not receive a read that began before that news was committed.
 */
export function coalesceReads<T>(
  generation: (runId: string) => number,
  read: (runId: string, afterId: number, limit: number) => Promise<T>,
): (runId: string, afterId: number, limit: number) => Promise<T> {
  const inFlight = new Map<string, Promise<T>>();
  return (runId, afterId, limit) => {
    const key = `${runId}:${generation(runId)}:${afterId}:${limit}`;
    let pending = inFlight.get(key);
    if (!pending) {
      pending = read(runId, afterId, limit).finally(() => inFlight.delete(key));
      inFlight.set(key, pending);
    }
    return pending;
  };
}
