/**
 * The log buffer of one running attempt: lines wait here until the next write to Postgres. Its
 * memory is bounded whatever the step prints:
 * - a line longer than `maxLineBytes` is cut, with a marker saying how much was cut;
 * - past `maxLines` lines per attempt, lines are counted, not kept; one summary line says so;
 * - at most one write is in flight; while `highWater` lines wait, `push` answers false and the
 *   producer should pause until `drained()` resolves (the command executor stops reading the
 *   child's pipes, so the child blocks on write); a producer that ignores that is cut off at
 *   `4 × highWater` waiting lines, which are dropped and counted;
 * - text Postgres cannot store (NUL, unpaired surrogates) is replaced by U+FFFD.
 */
import { storableText } from "../domain/limits.ts";

export type LogStream = "stdout" | "stderr" | "log";
export interface LogLine {
  stream: LogStream;
  line: string;
}

export interface AttemptLogOptions {
  maxLineBytes: number;
  maxLines: number;
  highWater: number;
  /** Writes a batch; a rejection is reported through `onError` and the lines are dropped. */
  write(lines: LogLine[]): Promise<void>;
  onError(error: unknown): void;
}

export class AttemptLog {
  private waiting: LogLine[] = [];
  private accepted = 0;
  private droppedOverCap = 0;
  private droppedFull = 0;
  private pumping: Promise<void> | undefined;
  private drainWaiters: Array<() => void> = [];

  constructor(private readonly options: AttemptLogOptions) {}

  /** Adds a line; false when the producer should wait for `drained()`. */
  push(line: string, stream: LogStream): boolean {
    if (this.accepted >= this.options.maxLines) {
      this.droppedOverCap++;
      return true;
    }
    if (this.waiting.length >= this.options.highWater * 4) {
      this.droppedFull++;
      return false;
    }
    this.accepted++;
    this.waiting.push({ stream, line: storableText(cutLine(line, this.options.maxLineBytes)) });
    if (this.waiting.length >= this.options.highWater) {
      void this.flush();
      return false;
    }
    return true;
  }

  /** Lines waiting to be written (not counting a write in flight). */
  get buffered(): number {
    return this.waiting.length;
  }

  /** Resolves once fewer than `highWater` lines wait. */
  drained(): Promise<void> {
    if (this.waiting.length < this.options.highWater) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /**
   * Writes what waits, one batch at a time (callers share the write loop in flight). `final`
   * first adds the summary of dropped lines.
   */
  flush(final = false): Promise<void> {
    if (final) {
      if (this.droppedOverCap > 0)
        this.waiting.push({
          stream: "log",
          line: `[flowline] ${this.droppedOverCap} more log lines dropped; at most ${this.options.maxLines} are kept per attempt (limits.logLinesPerAttempt)`,
        });
      if (this.droppedFull > 0)
        this.waiting.push({
          stream: "log",
          line: `[flowline] ${this.droppedFull} lines dropped: the step wrote faster than its log could be recorded`,
        });
      this.droppedOverCap = 0;
      this.droppedFull = 0;
    }
    this.pumping ??= this.pump().finally(() => {
      this.pumping = undefined;
    });
    return this.pumping;
  }

  private async pump(): Promise<void> {
    while (this.waiting.length > 0) {
      const batch = this.waiting;
      this.waiting = [];
      await this.options.write(batch).catch((error) => this.options.onError(error));
      this.wake();
    }
    this.wake();
  }

  private wake(): void {
    if (this.waiting.length >= this.options.highWater) return;
    for (const resolve of this.drainWaiters.splice(0)) resolve();
  }
}

/** Room kept for the marker of a cut line, so that a cut line with its marker fits the limit. */
export const CUT_MARKER_ROOM = 64;
export const cutMarker = (bytes: number) => ` … [cut: ${bytes} more bytes (limits.logLineBytes)]`;

/**
 * Cuts a line to at most `maxBytes` bytes of UTF-8 (never inside a character), marker included.
 * A line already cut to the limit (by the command executor's line splitter) is left alone.
 */
export function cutLine(line: string, maxBytes: number): string {
  if (line.length <= maxBytes / 3) return line; // fast path: cannot exceed maxBytes
  const bytes = Buffer.byteLength(line);
  if (bytes <= maxBytes) return line;
  let kept = Buffer.from(line)
    .subarray(0, maxBytes - CUT_MARKER_ROOM)
    .toString("utf8");
  if (kept.endsWith("\uFFFD")) kept = kept.slice(0, -1);
  return `${kept}${cutMarker(bytes - Buffer.byteLength(kept))}`;
}
