/**
 * Secrets by reference (SPEC §12), end to end: a real worker process resolves `{{secrets.NAME}}`
 * from its environment and uses the value in an http step's url, header and body and in a command
 * step's args and env. The receiving ends prove they got the value; then every API answer, every
 * log line (the API's and the worker's) and a `pg_dump` of the database are scanned for it.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { configFileFor, engineSettings, startRun, stopProcess, waitForRun } from "../helpers/engine.ts";
import { call } from "../helpers/http.ts";
import { cleanEnv, type Spawned, spawnFlowline } from "../helpers/processes.ts";

const SECRET = `s3cr3t-${randomBytes(12).toString("hex")}`;
const FILE_SECRET = `f1le-${randomBytes(12).toString("hex")}`;
const sha = (text: string) => createHash("sha256").update(text).digest("hex");

/** Prints its arguments and $TOKEN (echoing the secret), then hashes of both as its output. */
const PRINT_SECRET = [
  "const h = (t) => require('crypto').createHash('sha256').update(t).digest('hex');",
  "console.log('args: ' + process.argv.slice(1).join(' '));",
  "console.error('env: ' + process.env.TOKEN);",
  "console.log(JSON.stringify({ arg: process.argv[1], argHash: h(process.argv[1].slice(8)), envHash: h(process.env.TOKEN) }));",
].join("\n");

interface Received {
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

let ctx: TestContext;
let worker: Spawned;
let server: Server;
let base = "";
const received: Received[] = [];
const apiLog: string[] = [];
const answers: string[] = [];
let secretsDir = "";

/** Every API answer is kept for the final scan. */
async function api(method: "GET" | "POST" | "PUT" | "DELETE", url: string, body?: unknown) {
  const res = await call(ctx.app, method, url, { key: ctx.rootKey, ...(body === undefined ? {} : { body }) });
  answers.push(`${method} ${url} → ${res.statusCode} ${res.body}`);
  return res;
}

beforeAll(async () => {
  // Echoes what it received: the secret comes back in the response, so it reaches outputs and errors.
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const echo = { url: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks).toString("utf8") };
      received.push(echo);
      const status = req.url?.startsWith("/fail") ? 400 : 200;
      res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(echo));
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const logger = pino({ level: "trace" }, { write: (line: string) => void apiLog.push(line) });
  ctx = await createTestContext(
    (b) => ({
      ...engineSettings(b),
      commands: { "print-secret": { argv: [process.execPath, "-e", PRINT_SECRET, "--"] } },
      http: { allowedHosts: ["127.0.0.1"], allowPrivateNetworks: false },
    }),
    { logger },
  );
  const file = configFileFor(ctx, { log: { level: "trace" } });
  worker = spawnFlowline(
    ["worker", "--queues", "default", "--concurrency", "4"],
    cleanEnv({ FLOWLINE_CONFIG: file, FLOWLINE_SECRET_API_TOKEN: SECRET }),
  );
  await worker.waitFor(/worker started/);
  secretsDir = mkdtempSync(join(tmpdir(), "flowline-secrets-"));
});

afterAll(async () => {
  if (worker) await stopProcess(worker);
  await ctx?.close();
  server?.close();
});

describe("secrets by reference", () => {
  it("a definition refers to secrets by name; bad references are refused at definition time", async () => {
    const res = await api("PUT", "/v1/workflows/bad-secrets", {
      concurrency: { limit: 1, key: "{{secrets.API_TOKEN}}" },
      steps: [
        { id: "a", run: { type: "noop", output: "{{secrets.API_TOKEN}}" } },
        { id: "b", run: { type: "http", url: `${base}/x`, headers: { x: "{{secrets.a.b}}" } } },
        { id: "c", run: { type: "command", command: "print-secret", args: ["{{secrets.../etc/passwd}}"] } },
      ],
    });
    expect(res.statusCode).toBe(400);
    const paths = res.json().errors.map((e: { path: string }) => e.path);
    expect(paths).toEqual(
      expect.arrayContaining([
        "concurrency.key",
        "steps[0].run.output",
        "steps[1].run.headers.x",
        "steps[2].run.args[0]",
      ]),
    );
  });

  it("resolves in url, header, body, args and env, and the value appears nowhere afterwards", async () => {
    const ref = "{{secrets.API_TOKEN}}";
    await api("PUT", "/v1/workflows/leaky", {
      steps: [
        {
          id: "call",
          run: {
            type: "http",
            method: "POST",
            url: `${base}/echo/${ref}?token=${ref}`,
            headers: { authorization: `Bearer ${ref}`, "x-token": ref },
            body: { token: ref, nested: [`prefix-${ref}`] },
          },
        },
        {
          id: "cmd",
          run: { type: "command", command: "print-secret", args: [`--token=${ref}`], env: { TOKEN: ref } },
        },
        {
          id: "refused",
          onFailure: "continue",
          run: { type: "http", url: `${base}/fail/${ref}`, headers: { "x-token": ref } },
        },
        {
          id: "missing",
          onFailure: "continue",
          run: { type: "http", url: `${base}/never`, headers: { "x-token": "{{secrets.NOT_SET}}" } },
        },
      ],
    });
    const run = (await startRun(ctx, "leaky")).id as string;
    const done = await waitForRun(ctx, run);
    answers.push(JSON.stringify(done));
    const step = (id: string) => done.steps.find((s: { id: string }) => s.id === id);

    // The far ends received the real value, in every position.
    const call1 = received.find((r) => r.url.startsWith("/echo/"))!;
    expect(call1.url).toBe(`/echo/${SECRET}?token=${SECRET}`);
    expect(call1.headers.authorization).toBe(`Bearer ${SECRET}`);
    expect(call1.headers["x-token"]).toBe(SECRET);
    expect(JSON.parse(call1.body)).toEqual({ token: SECRET, nested: [`prefix-${SECRET}`] });
    expect(step("cmd"), JSON.stringify(step("cmd"))).toMatchObject({ status: "succeeded" });
    expect(step("cmd").output).toMatchObject({
      argHash: sha(SECRET),
      envHash: sha(SECRET),
      arg: "--token=***",
    });

    // What came back is stored redacted.
    expect(step("call").status).toBe("succeeded");
    expect(step("call").output.url).toBe("/echo/***?token=***");
    expect(step("call").output.headers.authorization).toBe("Bearer ***");
    expect(step("refused").status).toBe("failed");
    expect(step("refused").error.code).toBe("http_status");
    expect(step("refused").error.body).toContain("/fail/***");
    expect(step("missing").status).toBe("failed");
    expect(step("missing").error).toMatchObject({ code: "secret_missing", secret: "NOT_SET" });
    expect(step("missing").error.message).toContain("FLOWLINE_SECRET_NOT_SET");
    expect(received.some((r) => r.url === "/never")).toBe(false);

    const logs = await api("GET", `/v1/runs/${run}/logs?limit=1000`);
    expect(logs.body).toContain("args: --token=***");
    expect(logs.body).toContain("env: ***");
    for (const url of [
      `/v1/runs/${run}`,
      `/v1/runs/${run}/events?limit=1000`,
      `/v1/runs/${run}/steps/call/output`,
      `/v1/runs/${run}/steps/cmd/output`,
      "/v1/runs",
      "/v1/workflows/leaky",
      "/v1/workflows",
    ])
      await api("GET", url);

    // The scan: API answers, the API's and the worker's log lines, and the whole database.
    const { stdout: dump } = await promisify(execFile)("pg_dump", ["--data-only", ctx.database.url], {
      maxBuffer: 64 * 1024 * 1024,
    });
    expect(dump).toContain("***"); // the redacted output and logs are there…
    expect(dump).toContain(run);
    const workerLog = worker.stdout() + worker.stderr();
    expect(workerLog).toContain("FLOWLINE_SECRET_NOT_SET");
    for (const [where, text] of [
      ["API answers", answers.join("\n")],
      ["API log", apiLog.join("")],
      ["worker log", workerLog],
      ["pg_dump", dump],
    ] as const) {
      expect(text.includes(SECRET), `${where} holds the secret`).toBe(false);
      expect(text.includes(encodeURIComponent(SECRET)), `${where} holds the secret`).toBe(false);
    }
  });

  it("the files provider reads <dir>/NAME; a trailing newline is not part of the value", async () => {
    const { secretProvider } = await import("../../src/jobs/executors/secrets.ts");
    writeFileSync(join(secretsDir, "db-password"), `${FILE_SECRET}\n`);
    writeFileSync(join(secretsDir, "empty"), "");
    const provider = secretProvider({ provider: "files", dir: secretsDir });
    expect(await provider.get("db-password")).toBe(FILE_SECRET);
    expect(await provider.get("empty")).toBeUndefined();
    expect(await provider.get("absent")).toBeUndefined();
    expect(await provider.get("../etc")).toBeUndefined();
    expect(provider.describe("absent")).toBe(`file ${join(secretsDir, "absent")}`);
  });
});
