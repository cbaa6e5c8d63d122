#!/usr/bin/env node
/**
 * Adds lockfile entries for platform-specific optional dependencies (e.g. @biomejs/cli-darwin-arm64)
 * that the local registry mirror does not serve. npm leaves them out when it cannot fetch their
 * metadata, and `npm ci` then refuses the lockfile as out of sync on every machine. The entries
 * carry os/cpu/libc, so npm skips them on platforms they are not for, exactly as with a lockfile
 * written against the full registry. Run after `npm install`: `node scripts/complete-lockfile.mjs`.
 */
import { readFileSync, writeFileSync } from "node:fs";

const path = new URL("../package-lock.json", import.meta.url);
const lock = JSON.parse(readFileSync(path, "utf8"));
const packages = lock.packages;
const platform =
  /-(android|darwin|linux|win32|freebsd|openbsd|sunos|aix)-(arm64|x64|arm|ia32|ppc64|s390x|riscv64|loong64)(-(musl|gnu|msvc))?$/;

let added = 0;
for (const [location, entry] of Object.entries(packages)) {
  for (const [name, version] of Object.entries(entry.optionalDependencies ?? {})) {
    const m = platform.exec(name);
    if (!m) continue;
    const nested = `${location ? `${location}/` : ""}node_modules/${name}`;
    if (packages[nested] || packages[`node_modules/${name}`]) continue;
    const target = {
      version: String(version).replace(/^[\^~=]/, ""),
      cpu: [m[2]],
      ...(entry.dev ? { dev: true } : {}),
      ...(m[1] === "linux" ? { libc: [m[4] === "musl" ? "musl" : "glibc"] } : {}),
      optional: true,
      os: [m[1]],
    };
    packages[`node_modules/${name}`] = target;
    added++;
  }
}
lock.packages = Object.fromEntries(
  Object.entries(packages).sort(([a], [b]) => (a === "" ? -1 : b === "" ? 1 : a < b ? -1 : 1)),
);
writeFileSync(path, `${JSON.stringify(lock, null, 2)}\n`);
console.log(`complete-lockfile: added ${added} platform entries`);
