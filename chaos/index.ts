/**
 * `npm run chaos -- --seed N --duration S [--plant] [--faults KIND,…] [--json FILE]`: runs the
 * fault-injection history checker (see docs/reliability.md) and exits 1 when it finds any
 * violation.
 */
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { formatVerdict } from "./checker.ts";
import { FAULT_KINDS, type FaultKind } from "./faults.ts";
import { runChaos } from "./run.ts";

const { values } = parseArgs({
  options: {
    seed: { type: "string", default: "1" },
    duration: { type: "string", default: "120" },
    plant: { type: "boolean", default: false },
    json: { type: "string" },
    faults: { type: "string" },
  },
});
const seed = Number(values.seed);
const duration = Number(values.duration);
if (!Number.isInteger(seed) || !Number.isFinite(duration) || duration < 10) {
  process.stderr.write("usage: chaos --seed <integer> --duration <seconds ≥ 10> [--plant] [--json FILE]\n");
  process.exit(2);
}

const kinds = values.faults?.split(",").map((k) => k.trim()) as FaultKind[] | undefined;
const unknown = kinds?.filter((k) => !FAULT_KINDS.includes(k));
if (unknown?.length) {
  process.stderr.write(`unknown fault kind(s): ${unknown.join(", ")}\nknown: ${FAULT_KINDS.join(", ")}\n`);
  process.exit(2);
}

const result = await runChaos({
  seed,
  durationSeconds: duration,
  plant: values.plant,
  ...(kinds ? { faultKinds: kinds } : {}),
});
const s = result.summary;
process.stdout.write(
  `\nseed ${s.seed}, ${s.durationSeconds} s: ${s.runs} runs (${Object.entries(s.runsByStatus)
    .map(([k, v]) => `${v} ${k}`)
    .join(", ")}), ${s.stepAttempts} step attempts, ${s.effects} effects at the target, ` +
    `${s.sseClients} SSE clients (${s.sseReconnects} reconnects), ${Object.values(s.faultsByKind).reduce((a, b) => a + b, 0)} faults\n\n`,
);
process.stdout.write(`${formatVerdict(result.verdict)}\n`);
process.stdout.write(`history and report: ${result.dir}\n`);
if (values.json) writeFileSync(values.json, JSON.stringify({ summary: s, verdict: result.verdict }, null, 2));
process.exit(result.verdict.violations === 0 ? 0 : 1);
