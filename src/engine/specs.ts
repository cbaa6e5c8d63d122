import { and, eq } from "drizzle-orm";
import type { DbHandle } from "../db/client.ts";
import { workflows, workflowVersions } from "../db/schema.ts";
import type { Graph } from "../domain/dag.ts";
import type { StepSpec, WorkflowSpec } from "../domain/workflow/spec.ts";
import { stepGraph } from "../domain/workflow/validate.ts";

export interface LoadedSpec {
  workflowId: string;
  version: number;
  spec: WorkflowSpec;
  graph: Graph;
  steps: ReadonlyMap<string, StepSpec>;
  /** Declaration order of each step, for stable listings. */
  order: ReadonlyMap<string, number>;
  /** Run-level event types the workflow's `notify` entries deliver: only these go to the outbox. */
  notifyOn: ReadonlySet<string>;
}

/** Workflow versions are immutable, so a process may keep them; a small LRU bounds the memory. */
export class SpecCache {
  private readonly entries = new Map<string, Promise<LoadedSpec>>();
  constructor(
    private readonly db: DbHandle,
    private readonly capacity = 200,
  ) {}

  load(workflowId: string, version: number): Promise<LoadedSpec> {
    const key = `${workflowId}@${version}`;
    let entry = this.entries.get(key);
    if (entry) {
      this.entries.delete(key);
      this.entries.set(key, entry);
      return entry;
    }
    entry = this.fetch(workflowId, version);
    entry.catch(() => this.entries.delete(key));
    this.entries.set(key, entry);
    if (this.entries.size > this.capacity) this.entries.delete(this.entries.keys().next().value!);
    return entry;
  }

  private async fetch(workflowId: string, version: number): Promise<LoadedSpec> {
    const [row] = await this.db.db
      .select({ spec: workflowVersions.spec })
      .from(workflowVersions)
      .innerJoin(workflows, eq(workflows.id, workflowVersions.workflowId))
      .where(and(eq(workflowVersions.workflowId, workflowId), eq(workflowVersions.version, version)));
    if (!row) throw new Error(`workflow version ${workflowId}@${version} not found`);
    return loadedSpec(workflowId, version, row.spec as WorkflowSpec);
  }
}

export function loadedSpec(workflowId: string, version: number, spec: WorkflowSpec): LoadedSpec {
  return {
    workflowId,
    version,
    spec,
    graph: stepGraph(spec),
    steps: new Map(spec.steps.map((s) => [s.id, s])),
    order: new Map(spec.steps.map((s, i) => [s.id, i])),
    notifyOn: new Set((spec.notify ?? []).flatMap((n) => n.on)),
  };
}
