import { CUT_MARKER_ROOM, cutMarker } from "../attempt-log.ts";

/**
 * Splits a byte stream into lines with bounded memory: a line longer than `maxLineBytes` keeps
 * its beginning and ends with a marker saying how many bytes were cut (at most `maxLineBytes` in
 * all), however long it runs before its newline (readline would hold all of it).
 */
export class LineSplitter {
  private parts: Buffer[] = [];
  private kept = 0;
  private cut = 0;

  constructor(
    private readonly maxLineBytes: number,
    private readonly onLine: (line: string) => void,
  ) {}

  write(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(10, start);
      if (nl === -1) {
        this.keep(chunk.subarray(start));
        return;
      }
      this.keep(chunk.subarray(start, nl));
      this.emit();
      start = nl + 1;
    }
  }

  /** Emits what is left without a final newline. */
  end(): void {
    if (this.kept > 0 || this.cut > 0) this.emit();
  }

  private keep(bytes: Buffer): void {
    const room = this.maxLineBytes - CUT_MARKER_ROOM - this.kept;
    if (bytes.length <= room) {
      if (bytes.length > 0) this.parts.push(bytes);
      this.kept += bytes.length;
      return;
    }
    if (room > 0) this.parts.push(bytes.subarray(0, room));
    this.kept += Math.max(0, room);
    this.cut += bytes.length - Math.max(0, room);
  }

  private emit(): void {
    let line = Buffer.concat(this.parts).toString("utf8");
    if (line.endsWith("\r")) line = line.slice(0, -1);
    if (this.cut > 0) line = `${line.replace(/\uFFFD$/, "")}${cutMarker(this.cut)}`;
    this.parts = [];
    this.kept = 0;
    this.cut = 0;
    this.onLine(line);
  }
}
