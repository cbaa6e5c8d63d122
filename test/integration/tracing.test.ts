/**
 * One trace per run, across processes: an API and a worker process export OTLP/HTTP (JSON) to a
 * collector this test runs, and the span tree of a three-step run is checked there.
 */
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestContext, type TestContext } from "../helpers/context.ts";
import { configFileFor, engineSettings, stopProcess, testCommands } from "../helpers/engine.ts";
import { cleanEnv, freePort, type Spawned, spawnFlowline } from "../helpers/processes.ts";

interface CollectedSpan {
  service: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  attributes: Record<string, unknown>;
}

/** OTLP ids arrive as hex (JSON encoding) or base64 (protobuf-style JSON): compare them as hex. */
const hex = (id: string | undefined) =>
  !id ? "" : /^[\da-f]+$/i.test(id) ? id.toLowerCase() : Buffer.from(id, "base64").toString("hex");

const attributeValue = (v: Record<string, unknown>) =>
  v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : (v.boolValue ?? v.doubleValue));

async function body(req: IncomingMessage): Promise<string> {
  let text = "";
  for await (const chunk of req) text += chunk;
  return text;
}

async function listen(server: Server): Promise<string> {
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return `http://127.0.0.1:${(server.address() as { port: number }).port}`;
}

const spans: CollectedSpan[] = [];
const targetHeaders: Array<string | undefined> = [];
let collector: Server;
let target: Server;
let collectorBase: string;
let targetBase: string;
let ctx: TestContext;
let api: Spawned;
let worker: Spawned;
let apiBase: string;

beforeAll(async () => {
  collector = createServer(async (req, res) => {
    const text = await body(req);
    if (req.url === "/v1/traces") {
      const payload = JSON.parse(text) as { resourceSpans: any[] };
      for (const rs of payload.resourceSpans ?? []) {
        const service = rs.resource?.attributes?.find((a: any) => a.key === "service.name")?.value
          ?.stringValue;
        for (const ss of rs.scopeSpans ?? [])
          for (const s of ss.spans ?? [])
            spans.push({
              service,
              traceId: hex(s.traceId),
              spanId: hex(s.spanId),
              parentSpanId: hex(s.parentSpanId),
              name: s.name,
              attributes: Object.fromEntries(
                (s.attributes ?? []).map((a: any) => [a.key, attributeValue(a.value)]),
              ),
            });
      }
    }
    res.writeHead(200, { "content-type": "application/json" }).end("{}");
  });
  target = createServer(async (req, res) => {
    await body(req);
    targetHeaders.push(req.headers.traceparent as string | undefined);
    res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
  });
  collectorBase = await listen(collector);
  targetBase = await listen(target);
  ctx = await createTestContext((base) => ({
    ...engineSettings(base),
    commands: {
      ...testCommands,
      "print-trace": {
        argv: [
          process.execPath,
          "-e",
          "console.log(JSON.stringify({ traceparent: process.env.TRACEPARENT }))",
        ],
      },
    },
    http: { allowedHosts: ["127.0.0.1"], allowPrivateNetworks: true },
  }));
  const port = await freePort();
  apiBase = `http://127.0.0.1:${port}`;
  const otel = {
    OTEL_EXPORTER_OTLP_ENDPOINT: collectorBase,
    OTEL_BSP_SCHEDULE_DELAY: "100",
    FLOWLINE_CONFIG: configFileFor(ctx),
  };
  api = spawnFlowline(
    ["api"],
    cleanEnv({ ...otel, PORT: String(port), HOST: "127.0.0.1", FLOWLINE_BOOTSTRAP_KEY: ctx.rootKey }),
  );
  worker = spawnFlowline(["worker", "--queues", "default", "--concurrency", "4"], cleanEnv(otel));
  await Promise.all([api.waitFor(/api listening/), worker.waitFor(/worker started/)]);
});

afterAll(async () => {
  await Promise.all([api && stopProcess(api), worker && stopProcess(worker)]);
  await ctx?.close();
  for (const server of [collector, target]) {
    server?.closeAllConnections();
    server?.close();
  }
});

async function request(
  method: string,
  path: string,
  payload?: unknown,
  headers: Record<string, string> = {},
) {
  const res = await fetch(`${apiBase}${path}`, {
    method,
    headers: { authorization: `Bearer ${ctx.rootKey}`, "content-type": "application/json", ...headers },
    ...(payload === undefined ? {} : { body: JSON.stringify(payload) }),
  });
  return { status: res.status, json: (await res.json()) as any };
}

async function until<T>(check: () => T | undefined | false, what: string, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("tracing", () => {
  it("a run is one trace: the submitting request, the run, each attempt and its executor, across processes", async () => {
    const put = await request("PUT", "/v1/workflows/traced", {
      steps: [
        { id: "call", run: { type: "http", method: "GET", url: `${targetBase}/hello` } },
        { id: "print", needs: ["call"], run: { type: "command", command: "print-trace" } },
        { id: "own", needs: ["print"], run: { type: "handler", name: "test.traced", input: {} } },
      ],
    });
    expect(put.status).toBeLessThan(300);
    // The caller's trace: the run must join it.
    const callerTrace = randomBytes(16).toString("hex");
    const callerSpan = randomBytes(8).toString("hex");
    const submitted = await request(
      "POST",
      "/v1/workflows/traced/runs",
      {},
      { traceparent: `00-${callerTrace}-${callerSpan}-01` },
    );
    expect(submitted.status).toBe(202);
    const runId = submitted.json.id as string;
    let details: any;
    const deadline = Date.now() + 20_000;
    do {
      details = (await request("GET", `/v1/runs/${runId}`)).json;
      if (["succeeded", "failed"].includes(details.status)) break;
      await new Promise((r) => setTimeout(r, 100));
    } while (Date.now() < deadline);
    expect(details.status).toBe("succeeded");
    expect(details.traceId).toBe(callerTrace);

    // The executors got the trace: the HTTP target a traceparent header, the command TRACEPARENT,
    // and the handler ran inside the trace (its own span is active and in the same trace).
    expect(targetHeaders).toHaveLength(1);
    expect(targetHeaders[0]).toMatch(new RegExp(`^00-${callerTrace}-[\\da-f]{16}-01$`));
    const step = (id: string) => details.steps.find((s: any) => s.id === id);
    expect(step("print").output.traceparent).toMatch(new RegExp(`^00-${callerTrace}-[\\da-f]{16}-01$`));
    expect(step("own").output).toMatchObject({ traceId: callerTrace, active: true });

    // The span tree, as the collector received it from both processes.
    const inTrace = () => spans.filter((s) => s.traceId === callerTrace);
    const stepSpans = await until(() => {
      const found = inTrace().filter((s) => s.name.startsWith("step "));
      const executes = inTrace().filter((s) => s.name.startsWith("execute "));
      return found.length === 3 && executes.length === 3 && inTrace().some((s) => s.name === "handler work")
        ? found
        : undefined;
    }, "the spans of three attempts");
    const all = inTrace();
    const byId = new Map(all.map((s) => [s.spanId, s]));
    const named = (name: string) => all.filter((s) => s.name === name);

    const [requestSpan] = all.filter((s) => s.name === "POST /v1/workflows/:name/runs");
    expect(requestSpan).toMatchObject({ service: "flowline-api", parentSpanId: callerSpan });
    const [runSpan] = named("flowline.run");
    expect(runSpan).toMatchObject({ service: "flowline-api", parentSpanId: requestSpan!.spanId });
    expect(runSpan!.attributes["flowline.run_id"]).toBe(runId);
    // The run was created in a traced transaction of the request.
    expect(
      named("db.transaction").some(
        (s) => s.service === "flowline-api" && s.parentSpanId === requestSpan!.spanId,
      ),
    ).toBe(true);

    expect(stepSpans.map((s) => s.attributes["flowline.step_id"]).sort()).toEqual(["call", "own", "print"]);
    for (const s of stepSpans) {
      expect(s).toMatchObject({ service: "flowline-worker", parentSpanId: runSpan!.spanId });
      expect(s.attributes).toMatchObject({ "flowline.run_id": runId, "flowline.outcome": "succeeded" });
      const children = all.filter((c) => c.parentSpanId === s.spanId).map((c) => c.name);
      // Execution is a span of its own; the engine's transactions (start, finish) nest in the attempt.
      expect(children).toContain(
        `execute ${s.name === "step call" ? "http" : s.name === "step print" ? "command" : "handler"}`,
      );
      expect(children).toContain("db.transaction");
    }
    // The first step came through the queue: its wait is a span of its own.
    const first = stepSpans.find((s) => s.attributes["flowline.step_id"] === "call")!;
    expect(all.filter((c) => c.parentSpanId === first.spanId).map((c) => c.name)).toContain("queue.wait");
    // The handler's own span nests in the execution span of its step.
    const [handlerWork] = named("handler work");
    expect(byId.get(handlerWork!.parentSpanId)?.name).toBe("execute handler");
  });
});
