/**
 * Hides secret values in what an attempt produces (log lines, progress messages, outputs, error
 * messages and details) before any of it leaves the worker. Each value is also hidden in the
 * encodings it commonly travels in when echoed back: URL-encoded and JSON-escaped.
 */
export const REDACTED = "***";

export class Redactor {
  /** Longest first, so a secret containing another is hidden whole. */
  private readonly needles: string[];

  constructor(values: Iterable<string>) {
    const needles = new Set<string>();
    for (const value of values) {
      if (value.length === 0) continue;
      needles.add(value);
      needles.add(encodeURIComponent(value));
      needles.add(JSON.stringify(value).slice(1, -1));
    }
    this.needles = [...needles].sort((a, b) => b.length - a.length);
  }

  get empty(): boolean {
    return this.needles.length === 0;
  }

  text(text: string): string {
    let out = text;
    for (const needle of this.needles) if (out.includes(needle)) out = out.split(needle).join(REDACTED);
    return out;
  }

  /** A copy of a JSON-like value with every string (keys included) redacted; the input is not modified. */
  value(value: unknown): unknown {
    if (this.empty) return value;
    return this.walk(value, 0);
  }

  private walk(value: unknown, depth: number): unknown {
    if (typeof value === "string") return this.text(value);
    // Outputs are bounded in size; depth is bounded too so a pathological value cannot blow the stack.
    if (depth > 1000 || value === null || typeof value !== "object") return value;
    if (Array.isArray(value)) return value.map((item) => this.walk(item, depth + 1));
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      Object.defineProperty(out, this.text(k), {
        value: this.walk(v, depth + 1),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  }
}
