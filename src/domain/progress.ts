/**
 * What happens after a step reaches a terminal state — pure, so every rule is unit-tested:
 * which children become ready, which steps are skipped or cancelled, and whether the run ends.
 */
import { downstreamClosure, type Graph } from "./dag.ts";
import { isTerminalStep, type RunStatus, type StepStatus } from "./status.ts";

export type FailurePolicy = "fail" | "continue" | "rollback";

export interface Transition {
  stepId: string;
  to: StepStatus;
}

export interface Progress {
  /** Pending steps whose needs are all satisfied: queue them. */
  ready: string[];
  /** Steps to move to skipped or cancelled. */
  transitions: Transition[];
  /** Set when the run must stop taking new work and end. */
  runOutcome?: Extract<RunStatus, "succeeded" | "failed">;
}

const satisfied = (s: StepStatus | undefined) => s === "succeeded" || s === "reused";

/**
 * `statusOf` answers the current status of any step (after the change being processed).
 * `finished` is the step that just reached a terminal state.
 */
export function progressAfter(
  graph: Graph,
  finished: { stepId: string; status: StepStatus; onFailure: FailurePolicy },
  statusOf: (stepId: string) => StepStatus,
): Progress {
  const transitions: Transition[] = [];
  const ready: string[] = [];
  if (satisfied(finished.status)) {
    for (const child of graph.children(finished.stepId)) {
      if (statusOf(child) !== "pending") continue;
      if (graph.parents(child).every((p) => satisfied(statusOf(p)))) ready.push(child);
    }
    return { ready, transitions };
  }
  if (finished.status === "failed" && finished.onFailure === "continue") {
    for (const id of downstreamClosure(graph, [finished.stepId])) {
      if (id !== finished.stepId && statusOf(id) === "pending")
        transitions.push({ stepId: id, to: "skipped" });
    }
    return { ready, transitions };
  }
  if (finished.status === "failed") {
    // fail (and, until compensation exists, rollback): stop everything else.
    for (const id of graph.nodes) {
      if (id !== finished.stepId && !isTerminalStep(statusOf(id)))
        transitions.push({ stepId: id, to: "cancelled" });
    }
    return { ready, transitions, runOutcome: "failed" };
  }
  return { ready, transitions };
}

/**
 * The outcome of a run whose steps are all terminal: failed if a step failed or was cancelled.
 * Skipped steps alone do not fail a run: a plan skips steps on purpose (fresh assets, steps outside
 * a subgraph), and a step skipped because of a failure comes with that failed step.
 */
export function outcomeOf(statuses: Iterable<StepStatus>): "succeeded" | "failed" {
  for (const s of statuses) if (s === "failed" || s === "cancelled") return "failed";
  return "succeeded";
}
