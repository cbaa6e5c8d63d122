/**
 * The dashboard and browser auth in a real browser: Debian's Chromium driven by playwright-core,
 * against real `flowline api` and `flowline worker` processes (never a downloaded browser). The
 * run writes screenshots of the main pages to docs/screenshots/.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { deleteByPattern } from "../../src/redis/connection.ts";
import { cleanEnv, freePort, type Spawned, spawnFlowline } from "../helpers/processes.ts";
import { databaseUrl, TEST_REDIS_URL } from "../helpers/services.ts";

// Code inside page.evaluate runs in the browser; this file is type-checked without the DOM library.
declare const window: any;
declare const document: any;

const CHROMIUM = process.env.FLOWLINE_TEST_CHROMIUM ?? "/usr/bin/chromium";
const SCREENSHOTS = fileURLToPath(new URL("../../docs/screenshots/", import.meta.url));
const KEY = "flk_browser_test_key_0123456789abcdefgh";
const prefix = `fltest:ui${randomBytes(3).toString("hex")}`;
const dbName = `flowline_t_${inject("runId")}_ui${randomBytes(3).toString("hex")}`;

let apiPort: number;
let base: string;
let otherOrigin: string;
let env: NodeJS.ProcessEnv;
let api: Spawned;
let worker: Spawned;
let originServer: Server;
let browser: Browser;
let page: Page;

async function startApi(): Promise<Spawned> {
  const p = spawnFlowline(["api"], env);
  try {
    await p.waitFor(/Dashboard: http/, 60_000);
  } catch (error) {
    p.child.kill("SIGKILL");
    throw error;
  }
  return p;
}

async function stop(p: Spawned | undefined): Promise<void> {
  if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill("SIGTERM");
  await p.exited;
}

async function v1(method: string, path: string, body?: unknown): Promise<any> {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${KEY}`,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  if (res.status >= 400) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function allEventIds(runId: string): Promise<number[]> {
  const ids: number[] = [];
  let after = 0;
  for (;;) {
    const page = await v1("GET", `/v1/runs/${runId}/events?after=${after}&limit=1000`);
    ids.push(...page.items.map((e: { id: number }) => e.id));
    if (page.items.length < 1000) return ids;
    after = page.nextAfter;
  }
}

async function shot(name: string): Promise<void> {
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`) });
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium`);
  mkdirSync(SCREENSHOTS, { recursive: true });
  apiPort = await freePort();
  base = `http://127.0.0.1:${apiPort}`;
  // A page on another origin (another port is another origin).
  originServer = createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>another origin</title><p>another origin</p>");
  });
  await new Promise<void>((resolve) => originServer.listen(0, "127.0.0.1", resolve));
  otherOrigin = `http://127.0.0.1:${(originServer.address() as { port: number }).port}`;

  const dir = mkdtempSync(join(tmpdir(), "flowline-ui-"));
  const configFile = join(dir, "flowline.config.yaml");
  writeFileSync(
    configFile,
    [
      "http:",
      `  cors: { allowedOrigins: ["${otherOrigin}"] }`,
      "queues:",
      "  default: { concurrency: 4 }",
      "  parked: { concurrency: 1, min: 0, max: 1 }",
      "rateLimit: { enabled: false }",
      "commands:",
      '  ticker: { argv: ["sh", "-c", "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done"] }',
      '  broken: { argv: ["sh", "-c", "echo no luck >&2; exit 3"] }',
      "",
    ].join("\n"),
  );
  env = cleanEnv({
    DATABASE_URL: databaseUrl(dbName),
    REDIS_URL: TEST_REDIS_URL,
    FLOWLINE_REDIS_PREFIX: prefix,
    FLOWLINE_BOOTSTRAP_KEY: KEY,
    FLOWLINE_CONFIG: configFile,
    PORT: String(apiPort),
    HOST: "127.0.0.1",
    LOG_LEVEL: "info",
  });
  api = await startApi();
  worker = spawnFlowline(["worker", "--queues", "default", "--concurrency", "4"], env);
  await worker.waitFor(/worker started/, 60_000);
  // From here on, only warnings: a restarted API need not be told apart by its log.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu"],
  });
  page = await browser.newPage({ viewport: { width: 1200, height: 760 } });
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await Promise.all([stop(worker), stop(api)]);
  // Not started when an earlier step of beforeAll failed: then there is nothing to wait for.
  await new Promise<void>((resolve) => (originServer ? originServer.close(() => resolve()) : resolve()));
  const redis = new Redis(TEST_REDIS_URL);
  await deleteByPattern(redis, `${prefix}:*`);
  await redis.quit();
}, 60_000);

const sleep = (seconds: number) => ({ type: "sleep", seconds });

describe("dashboard", () => {
  it("logs in with an API key, refusing a wrong one", async () => {
    await page.goto(`${base}/`);
    await page.waitForSelector("#key");
    await shot("login");
    await page.fill("#key", "flk_wrong");
    await page.click("button[type=submit]");
    await page.getByRole("alert").waitFor();
    expect(await page.getByRole("alert").textContent()).toMatch(/Unknown or revoked/);
    await page.fill("#key", KEY);
    await page.click("button[type=submit]");
    await page.waitForSelector("nav:not([hidden])");
    expect(await page.textContent("#who")).toMatch(/default · admin/);
    // The key is not kept in the page: only an HttpOnly cookie is.
    expect(await page.evaluate(() => document.cookie)).toBe("");
    const cookies = await page.context().cookies();
    expect(cookies.find((c) => c.name === "flowline_session")).toMatchObject({
      httpOnly: true,
      sameSite: "Strict",
    });
  }, 60_000);

  it("plans and submits a run, whose graph nodes turn running then succeeded without a reload", async () => {
    await v1("PUT", "/v1/workflows/demo", {
      description: "A small diamond",
      schedules: [{ cron: "0 3 * * *", timezone: "Europe/Paris", enabled: false }],
      steps: [
        { id: "extract", run: sleep(3) },
        { id: "transform", needs: ["extract"], run: sleep(1.5) },
        { id: "audit", needs: ["extract"], run: { type: "noop", output: { checked: true } } },
        { id: "load", needs: ["transform", "audit"], run: sleep(0.5) },
      ],
    });
    await page.goto(`${base}/ui/#/workflows/demo`);
    await page.evaluate(() => {
      (window as unknown as { notReloaded: boolean }).notReloaded = true;
    });
    // Schedules with their next fire times (computed in the page with croner).
    const schedule = await page.textContent("[data-testid=schedules]");
    expect(schedule).toMatch(/0 3 \* \* \*Europe\/Paris/);
    expect(schedule).toMatch(/\d{1,2}[/.]\d{1,2}[/.]\d{2,4}.*·/);
    await page.getByRole("button", { name: "Plan a run…" }).click();
    await page.waitForSelector("[data-testid=plan]");
    expect(await page.textContent("[data-testid=plan]")).toMatch(/4 of 4 steps would run/);
    await shot("workflow");
    await page.getByRole("button", { name: "Start run" }).click();
    await page.waitForURL(/#\/runs\/[0-9a-f-]{36}$/);
    await page.waitForSelector(".node[data-step=extract][data-status=running]", { timeout: 20_000 });
    await page.waitForSelector(".node[data-step=transform][data-status=running]", { timeout: 20_000 });
    await shot("run");
    await page.waitForSelector(".node[data-step=load][data-status=succeeded]", { timeout: 30_000 });
    await page.waitForSelector("[data-testid=run-status] [data-status=succeeded]");
    expect(await page.evaluate(() => (window as unknown as { notReloaded?: boolean }).notReloaded)).toBe(
      true,
    );
    // Step details: output of a finished step.
    await page.click(".node[data-step=audit]");
    await page.waitForSelector("[data-testid=step-status] [data-status=succeeded]");
    // The output is read from the step (events do not carry it) once the step is shown.
    await page.waitForFunction(() =>
      /"checked": true/.test(document.querySelector("[data-testid=details]")?.textContent ?? ""),
    );
    const stream = await page.evaluate(() => (window as unknown as { flowlineStream: any }).flowlineStream);
    expect(stream.duplicates).toBe(0);

    // A subgraph picked on the graph: the plan reuses the rest of this run, then it runs.
    const first = page.url();
    await page.click("button[data-action=pick]");
    await page.click(".node[data-step=transform]");
    await page.click(".node[data-step=load]");
    await page.getByRole("button", { name: "Plan subgraph…" }).click();
    await page.waitForSelector("[data-testid=subgraph] [data-testid=plan]");
    const plan = await page.textContent("[data-testid=subgraph] [data-testid=plan]");
    expect(plan).toMatch(/2 of 4 steps would run/);
    expect(plan).toMatch(/reuse/);
    await page.getByRole("button", { name: "Start subgraph" }).click();
    await page.waitForFunction((url) => window.location.href !== url, first);
    await page.waitForSelector(".node[data-step=extract][data-status=reused]", { timeout: 20_000 });
    await page.waitForSelector("[data-testid=run-status] [data-status=succeeded]", { timeout: 30_000 });

    // The runs list follows statuses without a reload.
    await page.goto(`${base}/ui/#/runs`);
    await page.waitForSelector("tr[data-run]");
    const listed = await v1("POST", "/v1/workflows/demo/runs", {});
    await page.waitForSelector(`tr[data-run="${listed.id}"] [data-status=running]`, { timeout: 20_000 });
    await page.waitForSelector(`tr[data-run="${listed.id}"] [data-status=succeeded]`, { timeout: 30_000 });
    await shot("runs");
    await page.goto(`${base}/ui/#/queues`);
    await page.waitForSelector("tr[data-queue=default]");
    await shot("queues");
  }, 90_000);

  it("follows a step's logs live", async () => {
    await v1("PUT", "/v1/workflows/logs-demo", {
      steps: [{ id: "tick", run: { type: "command", command: "ticker" } }],
    });
    const run = await v1("POST", "/v1/workflows/logs-demo/runs", {});
    await page.goto(`${base}/ui/#/runs/${run.id}`);
    await page.click(".node[data-step=tick]");
    // Lines show while the step still runs, and the rest follows.
    await page.waitForFunction(
      () =>
        document.querySelector("[data-testid=logs]")?.textContent.includes("tick 1") &&
        document.querySelector(".node[data-step=tick]")?.getAttribute("data-status") === "running",
      null,
      { timeout: 20_000 },
    );
    await page.waitForSelector(".node[data-step=tick][data-status=succeeded]", { timeout: 20_000 });
    await page.waitForFunction(() =>
      document.querySelector("[data-testid=logs]")?.textContent.includes("tick 6"),
    );
    const lines = (await page.textContent("[data-testid=logs]"))!.split("\n");
    expect(lines).toEqual(["tick 1", "tick 2", "tick 3", "tick 4", "tick 5", "tick 6"]);
  }, 60_000);

  it("shows a failed step's error and retries the run from the page", async () => {
    await v1("PUT", "/v1/workflows/flaky", {
      steps: [
        { id: "prepare", run: { type: "noop", output: { ready: true } } },
        { id: "publish", needs: ["prepare"], run: { type: "command", command: "broken" } },
      ],
    });
    const run = await v1("POST", "/v1/workflows/flaky/runs", {});
    await page.goto(`${base}/ui/#/runs/${run.id}`);
    await page.waitForSelector("[data-testid=run-status] [data-status=failed]", { timeout: 30_000 });
    await page.click(".node[data-step=publish]");
    await page.waitForSelector("[data-testid=step-status] [data-status=failed]");
    expect(await page.textContent("[data-testid=details]")).toMatch(/Error/);
    await page.click("button[data-action=retry]");
    await page.waitForURL((url) => !url.hash.endsWith(run.id));
    // The retry reuses what succeeded and runs the failed step again.
    await page.waitForSelector(".node[data-step=prepare][data-status=reused]", { timeout: 20_000 });
    await page.waitForSelector("[data-testid=run-status] [data-status=failed]", { timeout: 30_000 });
    expect(await page.textContent("[data-testid=run-status]")).toMatch(/failed/);
    expect(await page.textContent("h1 + .card")).toMatch(/subgraph · retry/);
  }, 60_000);

  it("shows an asset's freshness and materializes it after a dry-run plan", async () => {
    await v1("PUT", "/v1/workflows/sales", {
      steps: [
        { id: "extract", run: { type: "noop", output: { rows: 3 } } },
        { id: "report", needs: ["extract"], provides: ["sales_report"], run: { type: "noop" } },
      ],
    });
    await page.goto(`${base}/ui/#/assets`);
    await page.click("a[href='#/assets/sales_report']");
    await page.getByRole("button", { name: "Plan materialization…" }).click();
    await page.waitForSelector("[data-testid=plan]");
    expect(await page.textContent("[data-testid=plan]")).toMatch(/2 of 2 steps would run/);
    await page.getByRole("button", { name: "Materialize" }).click();
    await page.waitForURL(/#\/runs\/[0-9a-f-]{36}$/);
    await page.waitForSelector("[data-testid=run-status] [data-status=succeeded]", { timeout: 30_000 });
    await page.goto(`${base}/ui/#/assets`);
    await page.waitForSelector("[data-status=fresh]");
    await shot("assets");
  }, 60_000);

  it("offers actions only to keys that may write", async () => {
    const reader = await v1("POST", "/v1/keys", { name: "viewer", scopes: ["read"] });
    const [anyRun] = (await v1("GET", "/v1/runs?limit=1")).items;
    const context = await browser.newContext();
    const viewer = await context.newPage();
    await viewer.goto(`${base}/ui/`);
    await viewer.fill("#key", reader.key);
    await viewer.click("button[type=submit]");
    await viewer.waitForSelector("nav:not([hidden])");
    await viewer.goto(`${base}/ui/#/runs/${anyRun.id}`);
    await viewer.waitForSelector("[data-testid=run-status] .badge");
    expect(await viewer.$$("button[data-action]")).toHaveLength(0);
    // Logging out clears the cookie and returns to the login form.
    await viewer.click("#logout");
    await viewer.waitForSelector("#key");
    expect((await context.cookies()).find((c) => c.name === "flowline_session")).toBeUndefined();
    await context.close();
  }, 60_000);

  it("lets a page on another origin follow a run with a stream token and a native EventSource", async () => {
    await v1("PUT", "/v1/workflows/token-demo", {
      steps: [
        { id: "a", run: sleep(1) },
        { id: "b", needs: ["a"], run: { type: "noop" } },
      ],
    });
    const run = await v1("POST", "/v1/workflows/token-demo/runs", {});
    const other = await v1("POST", "/v1/workflows/token-demo/runs", {});
    const { url, token } = await v1("POST", `/v1/runs/${run.id}/stream-token`);
    const foreignPage = await browser.newPage();
    await foreignPage.goto(otherOrigin);
    const received = await foreignPage.evaluate(
      (streamUrl) =>
        new Promise<Array<{ id: string; type: string }>>((resolve, reject) => {
          const events: Array<{ id: string; type: string }> = [];
          const source = new EventSource(streamUrl);
          const types = [
            "run.queued",
            "run.started",
            "run.succeeded",
            "step.queued",
            "step.started",
            "step.succeeded",
          ];
          for (const type of types)
            source.addEventListener(type, (e) => events.push({ id: (e as MessageEvent).lastEventId, type }));
          source.addEventListener("end", () => {
            source.close();
            resolve(events);
          });
          source.onerror = () => {
            if (source.readyState === EventSource.CLOSED) reject(new Error("stream refused"));
          };
        }),
      url,
    );
    expect(received.map((e) => Number(e.id))).toEqual(await allEventIds(run.id));
    expect(received.at(-1)?.type).toBe("run.succeeded");

    // The same token for another run: refused (readable thanks to CORS), and EventSource gives up.
    const refused = await foreignPage.evaluate(
      async (u) => (await fetch(u, { headers: { accept: "text/event-stream" } })).status,
      `${base}/v1/runs/${other.id}/events?token=${token}`,
    );
    expect(refused).toBe(403);
    const gaveUp = await foreignPage.evaluate(
      (u) =>
        new Promise<boolean>((resolve) => {
          const source = new EventSource(u);
          source.onerror = () => resolve(source.readyState === EventSource.CLOSED);
          source.onopen = () => resolve(false);
        }),
      `${base}/v1/runs/${other.id}/events?token=${token}`,
    );
    expect(gaveUp).toBe(true);
    await foreignPage.close();
    // Tokens travel in URLs: the request log masks them.
    expect(api.stdout()).toContain("token=***");
    expect(api.stdout()).not.toContain(token);
  }, 60_000);

  it("keeps following a run across an API restart, with no duplicate event", async () => {
    await v1("PUT", "/v1/workflows/chain", {
      steps: [
        { id: "s1", run: sleep(1) },
        { id: "s2", needs: ["s1"], run: sleep(2) },
        { id: "s3", needs: ["s2"], run: sleep(2) },
        { id: "s4", needs: ["s3"], run: sleep(1) },
      ],
    });
    const run = await v1("POST", "/v1/workflows/chain/runs", {});
    await page.goto(`${base}/ui/#/runs/${run.id}`);
    await page.evaluate(() => {
      (window as unknown as { notReloaded: boolean }).notReloaded = true;
    });
    await page.waitForSelector(".node[data-step=s1][data-status=succeeded]", { timeout: 20_000 });
    const before = await page.evaluate(() => ({ ...window.flowlineStream }));
    await stop(api);
    api = await startApi();
    await page.waitForSelector(".node[data-step=s4][data-status=succeeded]", { timeout: 40_000 });
    await page.waitForSelector("[data-testid=run-status] [data-status=succeeded]");
    const stream = await page.evaluate(() => (window as unknown as { flowlineStream: any }).flowlineStream);
    expect(stream.duplicates).toBe(0);
    // The stream really dropped with the API and went on from where it was.
    expect(stream.drops).toBeGreaterThan(before.drops);
    expect(stream.lastEventId).toBeGreaterThan(before.lastEventId);
    const shown = await page.$$eval("[data-testid=events] li", (items) =>
      items.map((li) => Number(li.getAttribute("data-event-id"))),
    );
    expect(new Set(shown).size).toBe(shown.length);
    expect([...shown].sort((a, b) => a - b)).toEqual(await allEventIds(run.id));
    expect(await page.evaluate(() => (window as unknown as { notReloaded?: boolean }).notReloaded)).toBe(
      true,
    );
  }, 90_000);

  it("stays usable on a 5,000-step run and on a phone, and cancels it", async () => {
    // 50 layers of 100 steps, on a queue no worker serves: the run stays open.
    const steps = [];
    for (let layer = 0; layer < 50; layer++)
      for (let i = 0; i < 100; i++)
        steps.push({
          id: `l${layer}-s${i}`,
          queue: "parked",
          ...(layer > 0 ? { needs: [`l${layer - 1}-s${i}`] } : {}),
          run: { type: "noop" },
        });
    await v1("PUT", "/v1/workflows/wide", { steps });
    const run = await v1("POST", "/v1/workflows/wide/runs", {});
    await page.goto(`${base}/ui/#/runs/${run.id}`);
    await page.waitForSelector(".layer", { timeout: 30_000 });
    expect(await page.textContent("[data-testid=graph]")).toMatch(/5000 steps in 50 layers/);
    // The step list is virtualised: a screenful of rows exists, not 5,000.
    const rows = await page.$$eval(".vrow", (r) => r.length);
    expect(rows).toBeGreaterThan(5);
    expect(rows).toBeLessThan(100);
    await shot("run-large");
    await page.fill("input[aria-label='filter steps']", "l49-s99");
    await page.waitForSelector(".vrow[data-row=l49-s99]");
    await page.click(".vrow[data-row=l49-s99]");
    await page.waitForSelector("[data-testid=details] h2:has-text('Step l49-s99')");

    await page.setViewportSize({ width: 390, height: 844 });
    await page.evaluate(() => window.scrollTo(0, 0));
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(overflow).toBeLessThanOrEqual(0);
    await shot("run-phone");
    await page.setViewportSize({ width: 1200, height: 760 });

    await page.click("button[data-action=cancel]");
    await page.waitForSelector("[data-testid=run-status] [data-status=cancelled]", { timeout: 30_000 });
  }, 120_000);
});
