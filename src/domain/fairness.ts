/**
 * Tenant fairness on a shared queue (SPEC §13): weighted fair queueing with one flow per
 * (tenant, priority), every step costing one unit.
 *
 * Each queue keeps a virtual clock `V` and, per tenant and priority level, the tag of the last step
 * it queued (`F[t][p]`). A step of tenant `t` with priority `p` gets the tag
 *
 *     tag = max(V, F[t][q] for every q >= p) + 1,   then F[t][p] = tag
 *
 * and the queue hands out steps in tag order (ties in arrival order). `V` follows the tag of the
 * step at the head of the queue, so a tenant that had nothing waiting starts level with the head:
 * its steps interleave with the backlog already there instead of waiting behind it. A tenant with
 * 5,000 waiting steps holds tags up to `V + 5000`; another tenant's next step gets `V + 1`.
 *
 * Priority orders a tenant's own steps: a step waits only behind that tenant's steps of the same
 * or a higher priority, so a priority-10 step of a tenant goes ahead of its priority-5 backlog.
 * Across tenants priority buys nothing by itself: a tenant that puts priority 10 on everything has
 * one flow, like one that uses 5. A tenant that mixes k priority levels on one queue has k flows
 * while steps of each level wait (at most 10).
 *
 * The tags are BullMQ priorities (lower first), bounded by BullMQ's limit: the clock starts again
 * at 0 whenever nothing waits on the queue, and a queue that never empties for about two million
 * steps hands the newest ones out in arrival order until it does.
 */

/** Flowline priorities are 1–10, higher first. */
export const PRIORITY_LEVELS = 10;

/** BullMQ's largest priority (2^21 - 1). */
export const MAX_QUEUE_PRIORITY = 2 ** 21 - 1;

/** Flowline priority 1–10 (higher first) as a BullMQ priority (1–10, lower first): arrival order within a level. */
export const plainQueuePriority = (priority: number): number =>
  PRIORITY_LEVELS + 1 - Math.min(PRIORITY_LEVELS, Math.max(1, Math.trunc(priority)));

/** A fair tag as a BullMQ priority. */
export const fairQueuePriority = (tag: number): number => Math.min(MAX_QUEUE_PRIORITY, Math.max(1, tag));

/** A step's priority clamped to 1–10, as the flows are keyed. */
export const priorityLevel = (priority: number): number =>
  Math.min(PRIORITY_LEVELS, Math.max(1, Math.trunc(priority)));

/** A queue's fairness state: the virtual clock and each flow's last tag, keyed `level:tenant`. */
export interface FairQueueState {
  v: number;
  flows: Map<string, number>;
}

/**
 * Tags for jobs about to join a queue, in order (the rule above), given the tag at the head of
 * the queue (`null`: nothing waits, so a new epoch starts from 0). Updates `state` in place.
 */
export function assignFairTags(
  state: FairQueueState,
  headTag: number | null,
  jobs: ReadonlyArray<{ tenantId: string; priority: number }>,
): number[] {
  if (headTag === null) {
    state.v = 0;
    state.flows.clear();
  } else {
    state.v = Math.max(state.v, headTag - 1);
  }
  return jobs.map((job) => {
    const level = priorityLevel(job.priority);
    let start = state.v;
    for (let q = level; q <= PRIORITY_LEVELS; q++)
      start = Math.max(start, state.flows.get(`${q}:${job.tenantId}`) ?? 0);
    const tag = start + 1;
    state.flows.set(`${level}:${job.tenantId}`, tag);
    return tag;
  });
}
