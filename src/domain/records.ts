/**
 * Lookups of user-given names in plain objects. `record[name]` walks the prototype chain, so a
 * tag, queue, handler or command named `constructor` or `toString` would find a function of
 * `Object.prototype`; these helpers see own properties only.
 */

/** The value stored under `key` itself, or undefined (never an inherited property). */
export function ownValue<T>(
  record: Readonly<Record<string, T>> | null | undefined,
  key: string,
): T | undefined {
  return record != null && Object.hasOwn(record, key) ? record[key] : undefined;
}
