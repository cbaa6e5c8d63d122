/**
 * Idempotency keys live in one namespace per tenant, shared by clients (`Idempotency-Key`) and by
 * Flowline itself (a cron slot's run). Keys Flowline sets start with a reserved prefix that client
 * keys may not use, so a client can never take — and thereby suppress — a schedule's slot.
 */
export const RESERVED_KEY_PREFIX = "flowline:";

export const isReservedKey = (key: string): boolean => key.startsWith(RESERVED_KEY_PREFIX);

/** The key of the run that a schedule's slot starts: one run per (workflow, schedule, slot). */
export const scheduleSlotKey = (workflowId: string, scheduleKey: string, slot: Date): string =>
  `${RESERVED_KEY_PREFIX}schedule:${workflowId}:${scheduleKey}:${slot.toISOString()}`;
