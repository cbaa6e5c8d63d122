/**
 * How client commands answer: `--format table|json|yaml` (json and yaml print the API's own
 * objects, complete), the exit codes of SPEC §11, and errors as the server's problem detail with
 * its field paths — never a stack trace.
 */
import { CommanderError } from "commander";
import { stringify } from "yaml";
import { ProblemError, UnreachableError } from "../../client/index.ts";

export const EXIT = { ok: 0, runFailed: 1, usage: 2, unreachable: 3 } as const;

export const formats = ["table", "json", "yaml"] as const;
export type Format = (typeof formats)[number];

/** Prints `data` as JSON or YAML, or else the human table `render` makes of it. */
export function print(format: Format, data: unknown, render: () => string): void {
  if (format === "json") process.stdout.write(`${JSON.stringify(data, null, 2)}\n`);
  else if (format === "yaml") process.stdout.write(stringify(data));
  else {
    const text = render();
    process.stdout.write(text.endsWith("\n") || text === "" ? text : `${text}\n`);
  }
}

/** One item of a stream (`--follow`/`--watch`): a JSON line, or a YAML document. */
export function printItem(format: Exclude<Format, "table">, item: unknown): void {
  if (format === "json") process.stdout.write(`${JSON.stringify(item)}\n`);
  else process.stdout.write(`---\n${stringify(item)}`);
}

/** Columns padded to their widest cell; `null`/`undefined` cells show as `-`. */
export function table(header: string[], rows: Array<Array<string | number | null | undefined>>): string {
  const cells = [header, ...rows.map((row) => row.map((cell) => (cell == null ? "-" : String(cell))))];
  const widths = header.map((_, i) => Math.max(...cells.map((row) => (row[i] ?? "").length)));
  return cells
    .map((row) =>
      row
        .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

/** The exit code for a run that reached `status`. */
export function exitCodeOfRun(status: string): number {
  return status === "succeeded" ? EXIT.ok : EXIT.runFailed;
}

/**
 * Prints why a command failed on stderr and answers the exit code: 3 when the server is
 * unreachable, else 2 (a refused request, an unreadable or invalid file). Commander's own usage
 * errors are rethrown for the program to handle.
 */
export function reportError(error: unknown): number {
  if (error instanceof CommanderError) throw error;
  if (error instanceof UnreachableError) {
    process.stderr.write(`flowline: ${error.message}\n`);
    return EXIT.unreachable;
  }
  if (error instanceof ProblemError) {
    const { problem } = error;
    const code = problem.code ? ` ${problem.code}` : "";
    process.stderr.write(`flowline: ${error.message} (HTTP ${error.status}${code})\n`);
    for (const issue of problem.errors ?? [])
      process.stderr.write(
        `  ${issue.location ? `${issue.location} ` : ""}${issue.path}: ${issue.message}\n`,
      );
    if (problem.instance) process.stderr.write(`  request id: ${problem.instance}\n`);
    return EXIT.usage;
  }
  process.stderr.write(`flowline: ${error instanceof Error ? error.message : String(error)}\n`);
  return EXIT.usage;
}
