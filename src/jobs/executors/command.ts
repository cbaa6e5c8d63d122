/**
 * `command` steps: the program comes from the allowlist in config; the step's args are appended as
 * separate argv items and never pass through a shell. stdout/stderr lines become step.log events;
 * the last stdout line that parses as JSON is the output. On abort the process group gets SIGTERM,
 * then SIGKILL after a grace period.
 */
import { spawn } from "node:child_process";
import { ownValue } from "../../domain/records.ts";
import { traceEnv } from "../../observability/tracing.ts";
import { LineSplitter } from "./lines.ts";
import { ExecutionError, type ExecutorFn } from "./types.ts";

export const KILL_GRACE_MS = 5000;

export const runCommand: ExecutorFn<"command"> = (executor, ctx) => {
  const entry = ownValue(ctx.config.commands, executor.command);
  if (!entry) {
    return Promise.reject(
      new ExecutionError(
        `command "${executor.command}" is not in this worker's allowlist`,
        false,
        "command_not_allowed",
      ),
    );
  }
  const [program, ...prefix] = entry.argv;
  return new Promise((resolve, reject) => {
    const child = spawn(program!, [...prefix, ...executor.args], {
      cwd: entry.cwd,
      // The allowlist entry's env and PATH win over the step's, and spec.ts refuses variables that
      // change what runs (PATH, LD_PRELOAD, NODE_OPTIONS…): a step picks arguments, not programs.
      // TRACEPARENT: the step's trace context, for a program that traces its own work.
      env: { ...executor.env, ...traceEnv(), PATH: process.env.PATH ?? "/usr/bin:/bin", ...entry.env },
      shell: false,
      detached: true, // its own process group, so aborting also stops what it started
      stdio: ["ignore", "pipe", "pipe"],
    });
    let lastJson: unknown;
    let hasJson = false;
    let killTimer: NodeJS.Timeout | undefined;
    const killGroup = (signal: NodeJS.Signals) => {
      try {
        if (child.pid) process.kill(-child.pid, signal);
      } catch {
        // already gone
      }
    };
    const onAbort = () => {
      killGroup("SIGTERM");
      killTimer = setTimeout(() => killGroup("SIGKILL"), KILL_GRACE_MS);
    };
    if (ctx.signal.aborted) onAbort();
    else ctx.signal.addEventListener("abort", onAbort, { once: true });

    // Lines are bounded in length, and when the attempt's log buffer is full both pipes stop
    // being read until it drains: the child then blocks on write instead of the worker's memory
    // growing.
    const pipes = [child.stdout!, child.stderr!];
    let paused = false;
    const record = (line: string, stream: "stdout" | "stderr") => {
      if (ctx.log(line, stream) || paused) return;
      paused = true;
      for (const p of pipes) p.pause();
      void ctx.logDrained().then(() => {
        paused = false;
        for (const p of pipes) p.resume();
      });
    };
    const out = new LineSplitter(ctx.maxLineBytes, (line) => {
      record(line, "stdout");
      const trimmed = line.trim();
      if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
        try {
          lastJson = JSON.parse(trimmed);
          hasJson = true;
        } catch {
          // not JSON: only a log line
        }
      }
    });
    const err = new LineSplitter(ctx.maxLineBytes, (line) => record(line, "stderr"));
    child.stdout!.on("data", (chunk: Buffer) => out.write(chunk));
    child.stderr!.on("data", (chunk: Buffer) => err.write(chunk));
    const outEnded = new Promise<void>((r) => child.stdout!.once("close", () => r()));
    const errEnded = new Promise<void>((r) => child.stderr!.once("close", () => r()));

    child.on("error", (error) => {
      ctx.signal.removeEventListener("abort", onAbort);
      reject(new ExecutionError(`could not start "${program}": ${error.message}`, false, "spawn_failed"));
    });
    child.on("close", async (code, signal) => {
      await Promise.all([outEnded, errEnded]);
      out.end();
      err.end();
      ctx.signal.removeEventListener("abort", onAbort);
      clearTimeout(killTimer);
      if (ctx.signal.aborted) return reject(ctx.signal.reason);
      if (code === 0) return resolve(hasJson ? lastJson : null);
      reject(
        new ExecutionError(
          signal ? `command killed by ${signal}` : `command exited with code ${code}`,
          true,
          "command_failed",
          { exitCode: code, signal },
        ),
      );
    });
  });
};
