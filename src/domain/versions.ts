/**
 * Which versions of Flowline can work side by side (pure; docs/operations.md, "Version skew").
 *
 * Three things cross between processes of different releases during a rolling upgrade, and each
 * carries a **format** number: a job payload (API/supervisor/worker → worker), an event row
 * (writer → API readers) and a step row's lease (worker ↔ reconciler). A format is raised only by
 * a change an older reader would misread; additive changes (a new optional field) keep it. A value
 * without a format was written before formats existed and is format 1.
 *
 * The database schema is judged apart: a process knows the migrations it carries; it refuses a
 * schema that lacks some of them (run `flowline migrate`) and a newer schema only when one of the
 * newer migrations says it breaks processes that do not know it (a contract step).
 */

/** The newest format of each kind this release writes and reads. */
export type FormatKind = "job" | "event" | "lease";
export type Formats = Readonly<Record<FormatKind, number>>;
export const FORMATS: Formats = Object.freeze({ job: 1, event: 1, lease: 1 });

/** A payload's format: its `format` field, or 1 when it has none (written before formats existed). */
export function formatOf(value: unknown): number {
  if (typeof value !== "object" || value === null || !("format" in value)) return 1;
  const format = (value as { format: unknown }).format;
  return typeof format === "number" && Number.isInteger(format) && format >= 1 ? format : 1;
}

export type FormatJudgement =
  | { understood: true }
  | { understood: false; format: number; newest: number; message: string };

/** Whether this release may act on a value of `format`; a newer one is for a newer release. */
export function judgeFormat(
  kind: FormatKind,
  format: number,
  newest: number = FORMATS[kind],
): FormatJudgement {
  if (format <= newest) return { understood: true };
  return {
    understood: false,
    format,
    newest,
    message: `${kind} format ${format} is newer than this release understands (up to ${newest}); a newer release must handle it`,
  };
}

/** A migration that breaks processes not knowing `readersFrom` (a contract step). */
export interface SchemaRequirement {
  migration: number;
  readersFrom: number;
  readersRelease: string | null;
  reason: string | null;
}

/** What a database's schema holds, relative to the migrations a release carries. */
export interface SchemaState {
  /** The newest migration applied that has a number this side knows (its own or recorded); -1: none. */
  newest: number;
  /** Migrations this release carries that are not applied yet. */
  pending: readonly string[];
  /** Applied migrations this release does not carry (a newer release migrated). */
  unknown: number;
  /** The strictest contract step applied, if any. */
  requires: SchemaRequirement | null;
}

export const migrationLabel = (n: number): string => String(n).padStart(4, "0");

export type SchemaJudgement =
  | { ok: true; note?: string }
  | { ok: false; problem: "behind" | "ahead"; message: string };

/** The newest of two requirements (the one asking processes to know more). */
export function stricter(a: SchemaRequirement | null, b: SchemaRequirement | null): SchemaRequirement | null {
  if (!a) return b;
  if (!b) return a;
  return b.readersFrom > a.readersFrom ? b : a;
}

/** Whether a process that knows migrations up to `knows` may run against a schema requiring `requires`. */
export const knowsEnough = (knows: number, requires: SchemaRequirement | null): boolean =>
  requires === null || knows >= requires.readersFrom;

/**
 * May a process of `release` (carrying migrations up to `knows`) run against this schema?
 * Behind (migrations missing): no, migrate first. Ahead: yes, unless a newer migration is a
 * contract step this process does not know about.
 */
export function judgeSchema(
  process: { version: string; knows: number },
  state: SchemaState,
): SchemaJudgement {
  const who = `Flowline ${process.version} (schema ${migrationLabel(process.knows)})`;
  if (state.pending.length > 0) {
    return {
      ok: false,
      problem: "behind",
      message:
        `the database schema is at ${state.newest < 0 ? "nothing" : migrationLabel(state.newest)}; ${who} needs ` +
        `${migrationLabel(process.knows)} (missing: ${state.pending.join(", ")}): run \`flowline migrate\` with this release first`,
    };
  }
  if (!knowsEnough(process.knows, state.requires)) {
    const r = state.requires!;
    return {
      ok: false,
      problem: "ahead",
      message:
        `the database schema is at ${migrationLabel(state.newest)}, and migration ${migrationLabel(r.migration)}` +
        `${r.reason ? ` (${r.reason})` : ""} needs processes that know migration ${migrationLabel(r.readersFrom)}` +
        `${r.readersRelease ? `, i.e. Flowline ${r.readersRelease} or later` : ""}; ${who} is too old: upgrade it`,
    };
  }
  if (state.unknown > 0 || state.newest > process.knows) {
    return {
      ok: true,
      note: `the database schema (${migrationLabel(state.newest)}${state.unknown > 0 ? `, ${state.unknown} migration(s) newer than this release` : ""}) is newer than ${who}; its newer migrations are expand-only, so this release runs against it`,
    };
  }
  return { ok: true };
}

/**
 * Processes of releases before 0.2.0 announce no release. The only such release is 0.1.0, which
 * carries migrations up to 0006 and reads format 1 of everything, without handing anything back.
 */
export const UNANNOUNCED_RELEASE = Object.freeze({ version: "0.1.0", knows: 6 });

export interface RunningProcess {
  role: "api" | "supervisor" | "worker";
  id: string;
  /** Absent: a release that does not announce itself (UNANNOUNCED_RELEASE). */
  release?: { version: string; schema: number; formats: { job: number; event: number; lease: number } };
}

export interface ProcessVerdict {
  compatible: boolean;
  version: string;
  knows: number;
  detail: string;
}

/**
 * Can this running process go on once the schema is `target` and processes of this release write
 * their formats? It must know the target's contract steps, and a newer job format than it reads is
 * fine only if it hands such jobs back (every announcing release does; 0.1.0 does not).
 */
export function judgeRunning(
  p: RunningProcess,
  target: { newest: number; requires: SchemaRequirement | null },
  writes: Formats = FORMATS,
): ProcessVerdict {
  const version = p.release?.version ?? `${UNANNOUNCED_RELEASE.version} (unannounced)`;
  const knows = p.release?.schema ?? UNANNOUNCED_RELEASE.knows;
  if (!knowsEnough(knows, target.requires)) {
    const r = target.requires!;
    return {
      compatible: false,
      version,
      knows,
      detail: `migration ${migrationLabel(r.migration)} needs processes that know ${migrationLabel(r.readersFrom)}; replace it before migrating`,
    };
  }
  const reads = p.release?.formats ?? { job: 1, event: 1, lease: 1 };
  const newer = (Object.keys(writes) as FormatKind[]).filter((k) => writes[k] > reads[k]);
  if (newer.length > 0 && !p.release) {
    return {
      compatible: false,
      version,
      knows,
      detail: `cannot read ${newer.map((k) => `${k} format ${writes[k]}`).join(", ")} and does not hand work back; replace it first`,
    };
  }
  if (newer.length > 0) {
    return {
      compatible: true,
      version,
      knows,
      detail: `hands back ${newer.map((k) => `${k} format ${writes[k]}`).join(", ")} to newer processes`,
    };
  }
  return {
    compatible: true,
    version,
    knows,
    detail: knows >= target.newest ? "knows the schema" : "newer migrations are expand-only for it",
  };
}
