/**
 * What this build is: its semantic version (package.json), the image tag it was built as
 * (`FLOWLINE_IMAGE_TAG`, set by the Dockerfile's build argument; null outside an image) and the
 * newest migration it carries (drizzle/meta/_journal.json). Printed by `flowline --version`,
 * answered by `/readyz`, announced by every process so `flowline migrate --check` can judge them.
 */
import { readFileSync } from "node:fs";

export const IMAGE_TAG_VARIABLE = "FLOWLINE_IMAGE_TAG";

interface JournalEntry {
  idx: number;
  when: number;
  tag: string;
}

const readJson = (path: string): unknown => JSON.parse(readFileSync(new URL(path, import.meta.url), "utf8"));

const pkg = readJson("../../package.json") as { version: string };
const journal = readJson("../../drizzle/meta/_journal.json") as { entries: JournalEntry[] };

/** The migrations this build carries, in order. */
export const knownMigrations: readonly Readonly<JournalEntry>[] = Object.freeze(
  journal.entries.map((e) => Object.freeze({ idx: e.idx, when: e.when, tag: e.tag })),
);

export interface Release {
  version: string;
  imageTag: string | null;
  /** The newest migration this build carries and so the newest schema it understands fully. */
  schema: number;
}

export const release: Release = Object.freeze({
  version: pkg.version,
  imageTag: process.env[IMAGE_TAG_VARIABLE]?.trim() || null,
  schema: knownMigrations.at(-1)?.idx ?? 0,
});
