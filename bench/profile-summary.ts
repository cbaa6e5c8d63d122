/**
 * Where a process's CPU went, from a V8 `.cpuprofile`: self time by place — Flowline's folders
 * under src/, each npm package, Node's internals, garbage collection, idle.
 *
 *   BENCH_PROFILE=prof npm run bench        (profiles of the wide run and the one-step runs)
 *   node --cpu-prof --cpu-prof-dir=prof …   (a whole process)
 *   node bin/run-ts.js bench/profile-summary.ts prof/*.cpuprofile
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { join } from "node:path";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** The place a frame belongs to. */
export function placeOf(frame: ProfileNode["callFrame"]): string {
  const { url, functionName } = frame;
  if (!url) {
    if (functionName === "(idle)") return "(idle)";
    if (functionName === "(garbage collector)") return "(garbage collector)";
    if (functionName === "(program)") return "(program: V8 and native)";
    return `native: ${functionName || "(anonymous)"}`;
  }
  if (url.startsWith("node:")) {
    const module = url.slice(5).split("/")[0]!;
    return `node:${module}`;
  }
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return `npm:${pkg[1]}`;
  const own = /\/(src|bench|test)\/([^/]+)/.exec(url);
  if (own) return own[1] === "src" ? `src/${own[2]!.replace(/\.ts$/, "")}` : own[1]!;
  return "other";
}

/**
 * Each node's place; time in native code and Node's internals (socket writes, say) is told apart
 * by the nearest caller of Flowline's or of a package (`native: writeBuffer ← npm:postgres`).
 */
function placesOf(profile: Profile): Map<number, string> {
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const own = new Map(profile.nodes.map((n) => [n.id, placeOf(n.callFrame)]));
  const caller = (id: number): string | undefined => {
    for (let p = parent.get(id); p !== undefined; p = parent.get(p)) {
      const place = own.get(p)!;
      if (place.startsWith("npm:") || place.startsWith("src/") || place === "bench") return place;
    }
    return undefined;
  };
  const out = new Map<number, string>();
  for (const [id, place] of own) {
    const lowLevel = place.startsWith("native: ") || place.startsWith("node:");
    const by = lowLevel && nodes.get(id)!.callFrame.url !== "(idle)" ? caller(id) : undefined;
    out.set(id, by ? `${place} ← ${by}` : place);
  }
  return out;
}

export function summarise(profile: Profile): Array<{ place: string; ms: number; share: number }> {
  const byId = placesOf(profile);
  const ms = new Map<string, number>();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const delta = (profile.timeDeltas[i] ?? 0) / 1000;
    total += delta;
    const place = byId.get(id) ?? "other";
    ms.set(place, (ms.get(place) ?? 0) + delta);
  });
  return [...ms.entries()]
    .map(([place, t]) => ({ place, ms: t, share: total > 0 ? t / total : 0 }))
    .sort((a, b) => b.ms - a.ms);
}

/**
 * Runs `work` under the CPU profiler when `BENCH_PROFILE` names a directory: the profile goes to
 * `<dir>/<name>.cpuprofile` and its summary is printed.
 */
export async function profiled<T>(name: string, work: () => Promise<T>): Promise<T> {
  const dir = process.env.BENCH_PROFILE;
  if (!dir) return work();
  const session = new Session();
  session.connect();
  await session.post("Profiler.enable");
  await session.post("Profiler.start");
  try {
    return await work();
  } finally {
    const { profile } = (await session.post("Profiler.stop")) as { profile: Profile };
    session.disconnect();
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `${name}.cpuprofile`);
    writeFileSync(file, JSON.stringify(profile));
    printSummary(file, profile);
  }
}

function printSummary(file: string, profile: Profile) {
  const rows = summarise(profile);
  const busy = rows.filter((r) => r.place !== "(idle)").reduce((sum, r) => sum + r.ms, 0);
  console.log(`\n${file}: ${(busy / 1000).toFixed(1)} s busy\n`);
  console.log("| place | self ms | share of all | share of busy |\n|---|---|---|---|");
  for (const r of rows.slice(0, 25))
    console.log(
      `| ${r.place} | ${r.ms.toFixed(0)} | ${(r.share * 100).toFixed(1)}% | ${
        r.place === "(idle)" ? "–" : `${((r.ms / busy) * 100).toFixed(1)}%`
      } |`,
    );
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const file of process.argv.slice(2))
    printSummary(file, JSON.parse(readFileSync(file, "utf8")) as Profile);
}
