/**
 * The previous release, ready to run: its sources from the repository's own history (the commit
 * recorded in releases.json, so neither tags nor a network are needed when the clone has it) in a
 * directory kept under the system's temp dir between runs, and its dependencies — the current
 * node_modules linked in when its package-lock.json lists the same packages, else `npm ci`.
 */
import { execFileSync } from "node:child_process";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = fileURLToPath(new URL("../..", import.meta.url));

export interface ReleaseEntry {
  version: string;
  commit: string;
  schema: number;
}

export interface PreparedRelease extends ReleaseEntry {
  dir: string;
  bin: string;
  /** How its dependencies were provided. */
  modules: "linked" | "installed";
}

export function previousRelease(): ReleaseEntry {
  const { releases } = JSON.parse(readFileSync(join(REPO_ROOT, "releases.json"), "utf8")) as {
    releases: ReleaseEntry[];
  };
  const last = releases.at(-1);
  if (!last) throw new Error("releases.json lists no release");
  return last;
}

const git = (...args: string[]) =>
  execFileSync("git", ["-C", REPO_ROOT, ...args], { stdio: ["ignore", "pipe", "pipe"] }).toString();

function ensureCommit(commit: string): void {
  try {
    git("cat-file", "-e", `${commit}^{commit}`);
    return;
  } catch {
    // A shallow clone: fetch just that commit.
  }
  try {
    git("fetch", "--depth=1", "origin", commit);
    git("cat-file", "-e", `${commit}^{commit}`);
  } catch (error) {
    throw new Error(
      `the previous release's commit ${commit} is not in this clone and could not be fetched ` +
        `(clone with history, or \`git fetch origin ${commit}\`): ${(error as Error).message}`,
    );
  }
}

/** Same packages at the same versions (the root package's own version aside). */
function sameDependencies(a: string, b: string): boolean {
  const strip = (file: string) => {
    const lock = JSON.parse(readFileSync(file, "utf8")) as {
      version?: string;
      packages: Record<string, { version?: string }>;
    };
    const { "": root, ...rest } = lock.packages;
    const { version: _, ...rootRest } = root ?? {};
    return JSON.stringify({ root: rootRest, rest });
  };
  return strip(a) === strip(b);
}

export function preparePreviousRelease(): PreparedRelease {
  const entry = previousRelease();
  const dir = join(tmpdir(), `flowline-release-${entry.version}-${entry.commit.slice(0, 12)}`);
  if (!existsSync(join(dir, ".prepared"))) {
    ensureCommit(entry.commit);
    const partial = `${dir}.partial-${process.pid}`;
    rmSync(partial, { recursive: true, force: true });
    mkdirSync(partial, { recursive: true });
    const tar = `${partial}.tar`;
    git("archive", "--format=tar", "-o", tar, entry.commit);
    execFileSync("tar", ["-xf", tar, "-C", partial]);
    rmSync(tar);
    writeFileSync(join(partial, ".prepared"), `${entry.commit}\n`);
    rmSync(dir, { recursive: true, force: true });
    renameSync(partial, dir);
  }
  const modules = join(dir, "node_modules");
  const current = join(REPO_ROOT, "node_modules");
  if (sameDependencies(join(dir, "package-lock.json"), join(REPO_ROOT, "package-lock.json"))) {
    const linked =
      existsSync(modules) && lstatSync(modules).isSymbolicLink() && readlinkSync(modules) === current;
    if (!linked) {
      rmSync(modules, { recursive: true, force: true });
      symlinkSync(current, modules, "dir");
    }
    return { ...entry, dir, bin: join(dir, "bin", "flowline.js"), modules: "linked" };
  }
  if (!existsSync(join(modules, ".package-lock.json")) || lstatSync(modules).isSymbolicLink()) {
    rmSync(modules, { recursive: true, force: true });
    execFileSync("npm", ["ci", "--ignore-scripts", "--no-audit", "--no-fund"], { cwd: dir, stdio: "ignore" });
  }
  return { ...entry, dir, bin: join(dir, "bin", "flowline.js"), modules: "installed" };
}
