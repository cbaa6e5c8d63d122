import { describe, expect, it } from "vitest";
import {
  FORMATS,
  formatOf,
  judgeFormat,
  judgeRunning,
  judgeSchema,
  type SchemaState,
  stricter,
  UNANNOUNCED_RELEASE,
} from "../../src/domain/versions.ts";

const state = (s: Partial<SchemaState>): SchemaState => ({
  newest: 9,
  pending: [],
  unknown: 0,
  requires: null,
  ...s,
});
const current = { version: "0.2.0", knows: 9 };

describe("formats", () => {
  it("reads a payload without a format as format 1", () => {
    expect(formatOf({ runId: "r" })).toBe(1);
    expect(formatOf(undefined)).toBe(1);
    expect(formatOf({ format: "2" })).toBe(1);
    expect(formatOf({ format: 3 })).toBe(3);
  });

  it("understands its own and older formats and refuses newer ones, naming both", () => {
    expect(judgeFormat("job", 1)).toEqual({ understood: true });
    expect(judgeFormat("job", FORMATS.job)).toEqual({ understood: true });
    const newer = judgeFormat("job", FORMATS.job + 1);
    expect(newer.understood).toBe(false);
    if (!newer.understood) expect(newer.message).toContain(`job format ${FORMATS.job + 1}`);
  });
});

describe("judgeSchema", () => {
  it("accepts the schema it carries", () => {
    expect(judgeSchema(current, state({}))).toEqual({ ok: true });
  });

  it("refuses a schema missing its migrations and says to migrate, naming the version it needs", () => {
    const j = judgeSchema(current, state({ newest: 6, pending: ["0009_format_versions"] }));
    expect(j.ok).toBe(false);
    if (!j.ok) {
      expect(j.problem).toBe("behind");
      expect(j.message).toContain("schema is at 0006");
      expect(j.message).toContain("needs 0009");
      expect(j.message).toContain("flowline migrate");
    }
  });

  it("runs against a newer expand-only schema, with a note", () => {
    const j = judgeSchema(current, state({ newest: 12, unknown: 3 }));
    expect(j.ok).toBe(true);
    if (j.ok) expect(j.note).toContain("expand-only");
  });

  it("refuses a newer schema whose contract step needs a newer release, naming it", () => {
    const requires = { migration: 12, readersFrom: 11, readersRelease: "0.4.0", reason: "drops x" };
    const j = judgeSchema(current, state({ newest: 12, unknown: 3, requires }));
    expect(j.ok).toBe(false);
    if (!j.ok) {
      expect(j.problem).toBe("ahead");
      expect(j.message).toContain("migration 0012 (drops x) needs processes that know migration 0011");
      expect(j.message).toContain("Flowline 0.4.0 or later");
    }
  });

  it("keeps the strictest requirement", () => {
    const a = { migration: 6, readersFrom: 6, readersRelease: "0.1.0", reason: null };
    const b = { migration: 12, readersFrom: 11, readersRelease: "0.4.0", reason: null };
    expect(stricter(a, b)).toBe(b);
    expect(stricter(b, a)).toBe(b);
    expect(stricter(null, a)).toBe(a);
  });
});

describe("judgeRunning", () => {
  const target = {
    newest: 9,
    requires: { migration: 6, readersFrom: 6, readersRelease: "0.1.0", reason: null },
  };
  const announced = (schema: number, job = FORMATS.job) => ({
    version: "0.x",
    schema,
    formats: { ...FORMATS, job },
  });

  it("takes a process that announces nothing for the release before announcements", () => {
    const v = judgeRunning({ role: "worker", id: "w" }, target);
    expect(v).toMatchObject({ compatible: true, knows: UNANNOUNCED_RELEASE.knows });
    expect(v.version).toContain(UNANNOUNCED_RELEASE.version);
  });

  it("blocks a process that does not know a contract step of the target", () => {
    const strict = {
      newest: 12,
      requires: { migration: 12, readersFrom: 11, readersRelease: null, reason: null },
    };
    expect(judgeRunning({ role: "api", id: "a", release: announced(9) }, strict).compatible).toBe(false);
    expect(judgeRunning({ role: "api", id: "a", release: announced(11) }, strict).compatible).toBe(true);
  });

  it("lets an announcing process that reads an older job format run (it hands such jobs back)", () => {
    const writes = { ...FORMATS, job: 2 };
    const v = judgeRunning({ role: "worker", id: "w", release: announced(9, 1) }, target, writes);
    expect(v.compatible).toBe(true);
    expect(v.detail).toContain("hands back job format 2");
    expect(judgeRunning({ role: "worker", id: "old" }, target, writes).compatible).toBe(false);
  });
});
