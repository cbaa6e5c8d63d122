/**
 * The raw BullMQ baselines: the same work as each Flowline case, with no-op jobs and nothing
 * durable. Every case has its own queue, worker and connections, closed when it ends, so an idle
 * baseline never costs anything while Flowline is measured.
 */
import { FlowProducer, type Job, Queue, Worker } from "bullmq";
import { createRedis } from "../src/redis/connection.ts";

export interface RawOptions {
  redisUrl: string;
  prefix: string;
  concurrency: number;
}

async function withQueue<T>(
  opts: RawOptions,
  name: string,
  handler: (job: Job, queue: Queue) => Promise<unknown>,
  concurrency: number,
  body: (queue: Queue, completed: (n: number) => Promise<number>) => Promise<T>,
): Promise<T> {
  const producer = createRedis(opts.redisUrl, "consumer");
  const queue = new Queue(name, { connection: producer, prefix: opts.prefix });
  let done = 0;
  let lastAt = 0;
  const waiters: Array<{ n: number; resolve: (at: number) => void }> = [];
  const worker = new Worker(name, (job) => handler(job, queue), {
    connection: createRedis(opts.redisUrl, "consumer"),
    prefix: opts.prefix,
    concurrency,
  });
  worker.on("completed", () => {
    done++;
    lastAt = performance.now();
    for (const w of waiters.filter((w) => done >= w.n)) w.resolve(lastAt);
  });
  await worker.waitUntilReady();
  try {
    return await body(queue, (n) =>
      done >= n ? Promise.resolve(lastAt) : new Promise((r) => waiters.push({ n, resolve: r })),
    );
  } finally {
    await worker.close();
    await queue.close();
    producer.disconnect();
  }
}

/** Adds `n` no-op jobs in bulk and drains them; answers jobs/s from the first add to the last job. */
export async function rawDrain(opts: RawOptions, n: number): Promise<number> {
  return withQueue(
    opts,
    "drain",
    async () => null,
    opts.concurrency,
    async (queue, completed) => {
      const t0 = performance.now();
      for (let i = 0; i < n; i += 1000) {
        await queue.addBulk(
          Array.from({ length: Math.min(1000, n - i) }, (_, k) => ({ name: "noop", data: { k } })),
        );
      }
      const end = await completed(n);
      return n / ((end - t0) / 1000);
    },
  );
}

/** Adds `n` no-op jobs one by one, `inFlight` adds at a time, while they drain; answers jobs/s. */
export async function rawInFlight(opts: RawOptions, n: number, inFlight: number): Promise<number> {
  return withQueue(
    opts,
    "inflight",
    async () => null,
    opts.concurrency,
    async (queue, completed) => {
      let next = 0;
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: inFlight }, async () => {
          while (next < n) {
            next++;
            await queue.add("noop", {});
          }
        }),
      );
      const end = await completed(n);
      return n / ((end - t0) / 1000);
    },
  );
}

/**
 * A chain of `n` jobs where each job's handler enqueues the next. The gap is from the end of a
 * job's work (before it enqueues the next one) to the next job's start, so it includes the enqueue,
 * as a Flowline hand-off includes its own.
 */
export async function rawChain(opts: RawOptions, n: number): Promise<number[]> {
  const gaps: number[] = [];
  let previousEnd = 0;
  const handler = async (job: Job, queue: Queue) => {
    const start = performance.now();
    if (previousEnd) gaps.push(start - previousEnd);
    const k = job.data.k as number;
    previousEnd = performance.now();
    if (k + 1 < n) await queue.add("step", { k: k + 1 });
  };
  return withQueue(opts, "chain", handler, 1, async (queue, completed) => {
    await queue.add("step", { k: 0 });
    await completed(n);
    return gaps;
  });
}

/** A FlowProducer parent with `fan` no-op children: ms from adding the flow to the parent's start. */
export async function rawFlow(opts: RawOptions, fan: number): Promise<number> {
  let parentStarted = 0;
  const connection = createRedis(opts.redisUrl, "consumer");
  const parent = new Worker(
    "parent",
    async () => {
      parentStarted = performance.now();
    },
    { connection: createRedis(opts.redisUrl, "consumer"), prefix: opts.prefix },
  );
  const children = new Worker("child", async () => null, {
    connection: createRedis(opts.redisUrl, "consumer"),
    prefix: opts.prefix,
    concurrency: opts.concurrency,
  });
  const flow = new FlowProducer({ connection, prefix: opts.prefix });
  await Promise.all([parent.waitUntilReady(), children.waitUntilReady()]);
  try {
    const t0 = performance.now();
    await flow.add({
      name: "join",
      queueName: "parent",
      children: Array.from({ length: fan }, (_, i) => ({ name: "child", queueName: "child", data: { i } })),
    });
    while (!parentStarted) await new Promise((r) => setTimeout(r, 2));
    return parentStarted - t0;
  } finally {
    await Promise.all([parent.close(), children.close()]);
    await flow.close();
    connection.disconnect();
  }
}
