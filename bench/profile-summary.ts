/**
 * Where a process's CPU went, from a V8 `.cpuprofile` (`node --cpu-prof`): self time by place —
 * Flowline's folders under src/, each npm package, Node's internals, garbage collection, idle.
 *
 *   node --cpu-prof --cpu-prof-dir=prof bin/run-ts.js bench/index.ts
 *   node bin/run-ts.js bench/profile-summary.ts prof/CPU.*.cpuprofile
 */
import { readFileSync } from "node:fs";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
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
    return "(native)";
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

export function summarise(profile: Profile): Array<{ place: string; ms: number; share: number }> {
  const byId = new Map(profile.nodes.map((n) => [n.id, placeOf(n.callFrame)]));
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

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const file of process.argv.slice(2)) {
    const rows = summarise(JSON.parse(readFileSync(file, "utf8")) as Profile);
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
}
