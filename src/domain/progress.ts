/**
 * What happens after a step reaches a terminal state — pure, so every rule is unit-tested:
 * which children become ready, which steps are skipped or cancelled, and whether the run ends.
 */
import { downstreamClosure, type Graph, topologicalOrder } from "./dag.ts";
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
  /** Set when the run must stop taking new work and end (or, for `rollback`, undo what succeeded). */
  runOutcome?: Extract<RunStatus, "succeeded" | "failed" | "rolling_back">;
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
    // fail and rollback: stop everything else; rollback then compensates what succeeded.
    for (const id of graph.nodes) {
      if (id !== finished.stepId && !isTerminalStep(statusOf(id)))
        transitions.push({ stepId: id, to: "cancelled" });
    }
    return { ready, transitions, runOutcome: finished.onFailure === "rollback" ? "rolling_back" : "failed" };
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

/**
 * A step's compensation during a rollback. Only steps that succeeded and define `compensate` have
 * one; `pending` waits for its dependants' compensations, `cancelled` was stopped (the rollback
 * failed elsewhere or the run was cancelled) before it finished.
 */
export const compensationStatuses = [
  "pending",
  "queued",
  "running",
  "retrying",
  "succeeded",
  "failed",
  "cancelled",
] as const;
export type CompensationStatus = (typeof compensationStatuses)[number];

/**
 * Compensations that may start now, in reverse topological order: a pending compensation whose
 * step's every descendant with a compensation (transitively, through steps without one) has
 * finished compensating. `compensationOf` answers null for steps with nothing to compensate.
 * One pass over the graph in reverse topological order, so O(V + E) per call.
 */
export function compensationsReady(
  graph: Graph,
  compensationOf: (stepId: string) => CompensationStatus | null,
): string[] {
  const order = topologicalOrder(graph).reverse();
  /** Steps with a descendant whose compensation has not succeeded yet. */
  const blocked = new Set<string>();
  const ready: string[] = [];
  for (const id of order) {
    for (const child of graph.children(id)) {
      const c = compensationOf(child);
      if ((c !== null && c !== "succeeded") || blocked.has(child)) {
        blocked.add(id);
        break;
      }
    }
    if (compensationOf(id) === "pending" && !blocked.has(id)) ready.push(id);
  }
  return ready;
}

/**
 * How a rollback ends once nothing is in flight: `rolled_back` when every compensation succeeded,
 * `failed` when one failed for good, undefined while some are still to run or running.
 */
export function rollbackOutcome(
  compensations: Iterable<CompensationStatus>,
): Extract<RunStatus, "rolled_back" | "failed"> | undefined {
  let outcome: "rolled_back" | "failed" | undefined = "rolled_back";
  for (const c of compensations) {
    if (c === "failed") return "failed";
    if (c !== "succeeded") outcome = undefined;
  }
  return outcome;
}
