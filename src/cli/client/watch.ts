/**
 * `--watch` / `--follow`: rides a run's event stream (watchRun resumes with Last-Event-ID after a
 * drop, so nothing is lost or shown twice) until the run ends, and answers the exit code of its
 * final status. Three displays: json/yaml print every event as it comes (json: one per line); on a
 * terminal a live view redraws one line per step (log-update); elsewhere one plain line per event.
 */
import { createLogUpdate } from "log-update";
import {
  type ClientOptions,
  createFlowlineClient,
  type RunDetails,
  type RunEventFrame,
  unwrap,
  watchRun,
} from "../../client/index.ts";
import { EXIT, exitCodeOfRun, type Format, printItem } from "./output.ts";

export interface FollowOptions {
  format: Format;
  /** The live view: only when stdout is a terminal and the format is the table. */
  tty: boolean;
  /** `logs --follow`: only step.log frames, optionally of one step. */
  logsOf?: { step?: string };
}

export async function followRun(
  client: ClientOptions,
  runId: string,
  options: FollowOptions,
): Promise<number> {
  const api = createFlowlineClient(client);
  const details = unwrap(await api.GET("/v1/runs/{id}", { params: { path: { id: runId } } }));
  const live =
    options.tty && options.format === "table" && !options.logsOf ? new LiveView(details) : undefined;
  let lastRunEvent: string | undefined;
  try {
    const frames = watchRun(client, runId, {
      ...(options.logsOf ? { stream: { kind: "logs" as const, ...options.logsOf } } : {}),
      onReconnect: (after, cause) => {
        live?.note(`connection lost (${cause}); resuming after event ${after}`);
        if (!live)
          process.stderr.write(`flowline: connection lost (${cause}); resuming after event ${after}\n`);
      },
    });
    for await (const frame of frames) {
      if (frame.type.startsWith("run.")) lastRunEvent = frame.type;
      if (options.format !== "table") printItem(options.format, frame);
      else if (live) live.apply(frame);
      else process.stdout.write(`${plainLine(frame)}\n`);
    }
  } finally {
    live?.stop();
  }
  if (options.logsOf) return EXIT.ok;
  // The stream ended after the run's terminal event: its status now is the outcome.
  const final = await api.GET("/v1/runs/{id}", { params: { path: { id: runId } } }).catch(() => undefined);
  const status = final?.data?.status ?? lastRunEvent?.slice("run.".length) ?? "failed";
  if (options.format === "table" && !live) process.stdout.write(`run ${runId} ${status}\n`);
  return exitCodeOfRun(status);
}

/** `12:00:01.250 step.progress load 40% reading rows`. */
export function plainLine(frame: RunEventFrame): string {
  const time = frame.at.slice(11, 23);
  const step = frame.stepId ? ` ${frame.stepId}` : "";
  const phase = "phase" in frame && frame.phase ? ` (${frame.phase})` : "";
  return `${time} ${frame.type}${step}${phase}${detailOf(frame)}`;
}

function detailOf(frame: RunEventFrame): string {
  switch (frame.type) {
    case "step.progress":
      return ` ${percent(frame.progress)}${frame.message ? ` ${frame.message}` : ""}`;
    case "step.log":
      return ` [${frame.stream ?? "log"}] ${frame.line ?? ""}`;
    case "step.queued":
      return ` queue=${frame.queue ?? "?"} attempt=${frame.attempt ?? 1}${frame.warning ? ` warning: ${frame.warning}` : ""}`;
    case "step.started":
      return ` attempt=${frame.attempt ?? "?"}`;
    case "step.retrying":
      return ` attempt=${frame.attempt ?? "?"} in ${frame.delayMs ?? 0}ms${errorText(frame.error)}`;
    case "step.failed":
    case "run.failed":
      return errorText(frame.error);
    case "step.skipped":
    case "step.reused":
    case "step.cancelled":
      return frame.reason ? ` (${frame.reason})` : "";
    case "asset.materialized":
      return ` ${frame.asset ?? ""}${frame.partition ? `[${frame.partition}]` : ""}`;
    default:
      return "";
  }
}

function errorText(error: unknown): string {
  if (error === undefined || error === null) return "";
  const message = (error as { message?: unknown }).message;
  return `: ${typeof message === "string" ? message : JSON.stringify(error)}`;
}

// ---------------------------------------------------------------------------------------------

const SPINNER = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
const SYMBOL: Record<string, string> = {
  succeeded: "✔",
  failed: "✖",
  cancelled: "⊘",
  skipped: "↷",
  reused: "♻",
  pending: "·",
  queued: "…",
};

interface StepView {
  status: string;
  attempt: number | null;
  progress: number | null;
  message: string | null;
  startedAt: number | null;
  finishedAt: number | null;
  compensation: string | null;
}

/** The terminal display: one header line and one line per step, redrawn in place. */
class LiveView {
  private readonly update = createLogUpdate(process.stdout);
  private readonly steps = new Map<string, StepView>();
  private status: string;
  private notice = "";
  private tick = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly run: RunDetails) {
    this.status = run.status;
    for (const step of run.steps)
      this.steps.set(step.id, {
        status: step.status,
        attempt: step.attempt,
        progress: step.progress,
        message: step.progressMessage,
        startedAt: step.startedAt ? Date.parse(step.startedAt) : null,
        finishedAt: step.finishedAt ? Date.parse(step.finishedAt) : null,
        compensation: step.compensation?.status ?? null,
      });
    this.timer = setInterval(() => {
      this.tick++;
      this.render();
    }, 100);
    this.render();
  }

  apply(frame: RunEventFrame): void {
    if (frame.type.startsWith("run.")) this.status = frame.type.slice("run.".length);
    const step = frame.stepId ? this.steps.get(frame.stepId) : undefined;
    if (step) {
      const at = Date.parse(frame.at);
      const status = frame.type.slice("step.".length);
      if ("phase" in frame && frame.phase === "compensate") {
        if (frame.type !== "step.log" && frame.type !== "step.progress") step.compensation = status;
      } else if (frame.type === "step.progress") {
        step.progress = frame.progress ?? null;
        step.message = frame.message ?? null;
      } else if (frame.type !== "step.log") {
        step.status = status === "started" ? "running" : status;
        if (frame.attempt != null) step.attempt = frame.attempt;
        if (status === "started") step.startedAt = at;
        if (["succeeded", "failed", "cancelled", "skipped", "reused"].includes(status)) step.finishedAt = at;
      }
    }
    this.render();
  }

  note(text: string): void {
    this.notice = text;
    this.render();
  }

  stop(): void {
    clearInterval(this.timer);
    this.notice = "";
    this.render();
    this.update.done();
  }

  private render(): void {
    const width = Math.max(...[...this.steps.keys()].map((id) => id.length), 4);
    const done = [...this.steps.values()].filter((s) => s.finishedAt !== null).length;
    const lines = [
      `run ${this.run.id}  ${this.run.workflow.name} v${this.run.workflow.version}  ${this.status}  ${done}/${this.steps.size} steps`,
    ];
    for (const [id, step] of this.steps) {
      const symbol = SYMBOL[step.status] ?? SPINNER[this.tick % SPINNER.length];
      const parts = [`${symbol} ${id.padEnd(width)}  ${step.status.padEnd(9)}`];
      if (step.status === "running" && step.progress != null) parts.push(percent(step.progress));
      if (step.status === "running" && step.message) parts.push(step.message);
      if ((step.attempt ?? 1) > 1) parts.push(`attempt ${step.attempt}`);
      if (step.startedAt !== null) parts.push(seconds((step.finishedAt ?? Date.now()) - step.startedAt));
      if (step.compensation) parts.push(`compensation ${step.compensation}`);
      lines.push(parts.join("  "));
    }
    if (this.notice) lines.push(this.notice);
    this.update(lines.join("\n"));
  }
}

/** Progress is a fraction from 0 to 1. */
export const percent = (progress: number | null | undefined) =>
  progress == null ? "?" : `${Math.round(progress * 100)}%`;

const seconds = (ms: number) => `${(Math.max(0, ms) / 1000).toFixed(1)}s`;
