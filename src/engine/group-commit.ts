/**
 * Group commit: requests for the same key (a run) that arrive while a transaction for that key is
 * in flight wait and then go together in the next one. Under load this turns N lock-serialised
 * transactions on one run row into a few, with no added delay when there is no load (a lone
 * request starts at once). Different keys never wait for each other.
 */
/** A batch result that fails its own request only (the rest of the batch succeeded). */
export class ItemFailure {
  constructor(readonly error: unknown) {}
}

export class GroupCommitter<Req, Res> {
  private readonly waiting = new Map<
    string,
    Array<{ request: Req; resolve: (r: Res) => void; reject: (e: unknown) => void }>
  >();
  private readonly busy = new Set<string>();

  constructor(
    /**
     * Handles a batch (in submission order); answers one result per request, in the same order.
     * An `ItemFailure` rejects that request alone; a thrown error rejects the whole batch.
     */
    private readonly handle: (key: string, requests: Req[]) => Promise<Array<Res | ItemFailure>>,
    private readonly maxBatch = 256,
    /**
     * A batch that has not answered by then fails, and the key goes on with the next one. A
     * transaction on a connection that died without an error (a cut network path) would otherwise
     * hold the key forever, and with it every later request of that run in this process.
     */
    private readonly timeoutMs = 0,
  ) {}

  submit(key: string, request: Req): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      const queue = this.waiting.get(key) ?? [];
      queue.push({ request, resolve, reject });
      this.waiting.set(key, queue);
      if (!this.busy.has(key)) void this.drain(key);
    });
  }

  /** Requests waiting for their turn (not counting the batch in flight). */
  pending(): number {
    let n = 0;
    for (const q of this.waiting.values()) n += q.length;
    return n;
  }

  private withDeadline<T>(work: Promise<T>): Promise<T> {
    if (this.timeoutMs <= 0) return work;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`the engine did not answer within ${this.timeoutMs} ms`)),
        this.timeoutMs,
      );
    });
    work.catch(() => {}); // an answer after the deadline is dropped
    return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
  }

  private async drain(key: string): Promise<void> {
    this.busy.add(key);
    try {
      for (;;) {
        const queue = this.waiting.get(key);
        if (!queue || queue.length === 0) break;
        const batch = queue.splice(0, this.maxBatch);
        if (queue.length === 0) this.waiting.delete(key);
        try {
          const results = await this.withDeadline(
            this.handle(
              key,
              batch.map((b) => b.request),
            ),
          );
          for (const [i, b] of batch.entries()) {
            const result = results[i]!;
            if (result instanceof ItemFailure) b.reject(result.error);
            else b.resolve(result);
          }
        } catch (error) {
          for (const b of batch) b.reject(error);
        }
      }
    } finally {
      this.busy.delete(key);
    }
  }
}
