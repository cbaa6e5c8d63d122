/**
 * The shipped operations assets: the Grafana dashboard loads and has the shape Grafana imports,
 * and the dashboard, the alert rules and docs/observability.md name only metrics the code defines
 * (and the docs name all of them). `promtool check rules` / `promtool test rules` check the
 * rules' PromQL in CI (.ci/run). Reads files only.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";

const ROOT = join(import.meta.dirname, "../..");
const read = (path: string) => readFileSync(join(ROOT, path), "utf8");

function sourceFiles(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith(".ts"))
    .map((e) => join(e.parentPath, e.name));
}

/** Metric names the code registers: `name: "flowline_…"`, and the queue gauges' `gauge("flowline_…"`. */
const defined = new Set(
  sourceFiles("src").flatMap((file) =>
    [...readFileSync(file, "utf8").matchAll(/(?:name:|gauge\()\s*"(flowline_[a-z_]+)"/g)].map((m) => m[1]!),
  ),
);

/** Whether a name in a query is a defined metric (or a histogram's series, or a Node default metric). */
function known(name: string): boolean {
  if (defined.has(name)) return true;
  const base = name.replace(/_(bucket|sum|count)$/, "");
  if (base !== name && defined.has(base)) return true;
  return /^flowline_(process|nodejs)_/.test(name);
}

const metricNames = (text: string) => [...new Set(text.match(/\bflowline_[a-z_]*[a-z]\b(?!\*)/g) ?? [])];

const dashboard = JSON.parse(read("deploy/grafana/flowline-dashboard.json"));
const rules = parse(read("deploy/prometheus/alerts.yml"));

describe("observability assets", () => {
  it("the code defines the metrics this test relies on", () => {
    for (const name of [
      "flowline_runs_finished_total",
      "flowline_step_attempts_total",
      "flowline_queue_backlog",
    ])
      expect(defined).toContain(name);
  });

  it("the dashboard has the shape Grafana imports: unique ids, grid positions, queries on the chosen data source", () => {
    expect(dashboard).toMatchObject({
      title: "Flowline",
      uid: expect.any(String),
      schemaVersion: expect.any(Number),
    });
    const variables = dashboard.templating.list.map((v: { name: string }) => v.name);
    expect(variables).toEqual(expect.arrayContaining(["datasource", "queue"]));
    const ids = dashboard.panels.map((p: { id: number }) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    const rows = dashboard.panels.filter((p: { type: string }) => p.type === "row").map((p: any) => p.title);
    expect(rows).toEqual(expect.arrayContaining(["Throughput", "Latency", "Backlog", "Failures", "Scaling"]));
    for (const panel of dashboard.panels) {
      const { h, w, x, y } = panel.gridPos;
      expect([h, w, x, y].every(Number.isInteger), panel.title).toBe(true);
      expect(x + w, panel.title).toBeLessThanOrEqual(24);
      if (panel.type === "row") continue;
      expect(["timeseries", "stat"]).toContain(panel.type);
      // biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's variable syntax, not a template
      expect(panel.datasource).toEqual({ type: "prometheus", uid: "${datasource}" });
      expect(panel.targets.length, panel.title).toBeGreaterThan(0);
      for (const target of panel.targets) expect(target.expr, panel.title).toMatch(/flowline_/);
    }
  });

  it("the dashboard queries only metrics the code defines", () => {
    const exprs = dashboard.panels.flatMap((p: any) => (p.targets ?? []).map((t: any) => t.expr)).join("\n");
    expect(metricNames(exprs).filter((n) => !known(n))).toEqual([]);
  });

  it("every alert rule has a severity, a summary, a description and a runbook, and uses defined metrics", () => {
    const alerts = rules.groups.flatMap((g: any) => g.rules);
    expect(alerts.map((r: any) => r.alert)).toEqual(
      expect.arrayContaining([
        "FlowlineNoActiveSupervisor",
        "FlowlineStepsStuck",
        "FlowlineRunFailureRateHigh",
        "FlowlineBacklogGrowing",
        "FlowlineLeaseLosses",
        "FlowlineWebhookFailures",
      ]),
    );
    const docs = read("docs/observability.md");
    for (const rule of alerts) {
      expect(rule.labels?.severity, rule.alert).toMatch(/^(critical|warning)$/);
      expect(rule.annotations?.summary, rule.alert).toBeTruthy();
      expect(rule.annotations?.description, rule.alert).toBeTruthy();
      // The runbook anchor exists: the docs have a heading named after the alert.
      expect(rule.annotations?.runbook, rule.alert).toBe(`docs/observability.md#${rule.alert.toLowerCase()}`);
      expect(docs, rule.alert).toContain(`### ${rule.alert}`);
      expect(
        metricNames(rule.expr).filter((n) => !known(n)),
        rule.alert,
      ).toEqual([]);
    }
  });

  it("docs/observability.md documents every metric the code defines, and no other", () => {
    const docs = read("docs/observability.md");
    expect([...defined].filter((name) => !docs.includes(`\`${name}\``))).toEqual([]);
    expect(metricNames(docs).filter((n) => !known(n))).toEqual([]);
  });
});
