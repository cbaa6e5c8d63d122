/**
 * The log lines of one attempt, bounded (SPEC §13): a line longer than `limits.logLineBytes` is
 * cut and marked; lines past `limits.logLinesPerAttempt` are dropped, and one summary line at the
 * end of the attempt says how many.
 */
import type { ExecutionContext } from "./types.ts";

type Sink = ExecutionContext["log"];

export class LogLimiter {
  private kept = 0;
  private dropped = 0;

  constructor(
    private readonly sink: Sink,
    private readonly maxLineBytes: number,
    private readonly maxLines: number,
  ) {}

  readonly log: Sink = (line, stream) => {
    if (this.kept >= this.maxLines) {
      this.dropped++;
      return;
    }
    this.kept++;
    this.sink(this.cut(line), stream);
  };

  /** Writes the summary line when lines were dropped; idempotent. */
  finish(): void {
    if (this.dropped === 0) return;
    this.sink(
      `[flowline: ${this.dropped} more log lines dropped; at most ${this.maxLines} are kept per attempt (limits.logLinesPerAttempt)]`,
      "log",
    );
    this.dropped = 0;
  }

  private cut(line: string): string {
    const bytes = Buffer.byteLength(line);
    if (bytes <= this.maxLineBytes) return line;
    // Cut on a byte boundary; a character split there decodes as U+FFFD, which is dropped.
    const head = Buffer.from(line)
      .subarray(0, this.maxLineBytes)
      .toString("utf8")
      .replace(/\uFFFD$/, "");
    return `${head} [flowline: line cut, ${bytes} bytes; at most ${this.maxLineBytes} are kept (limits.logLineBytes)]`;
  }
}
