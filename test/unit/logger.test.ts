import { PassThrough } from "node:stream";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../src/observability/logger.ts";

function capture(isTTY: boolean) {
  const stream = Object.assign(new PassThrough(), { isTTY });
  let text = "";
  stream.on("data", (chunk) => {
    text += chunk;
  });
  const log = createLogger({ level: "info", base: { role: "worker" }, destination: stream });
  return { log, text: () => text };
}

const record = {
  runId: "r-1",
  stepId: "a",
  authorization: "Bearer flk_secret",
  req: { headers: { cookie: "s=1" } },
};

describe("process logs", () => {
  it("are JSON lines when stdout is not a terminal, with secrets redacted", () => {
    const { log, text } = capture(false);
    log.info(record, "attempt started");
    const line = JSON.parse(text().trim());
    expect(line).toMatchObject({ role: "worker", runId: "r-1", stepId: "a", msg: "attempt started" });
    expect(line.authorization).toBe("[redacted]");
    expect(line.req.headers.cookie).toBe("[redacted]");
  });

  it("are readable on a terminal, with the same fields and the same redaction", () => {
    const { log, text } = capture(true);
    log.info(record, "attempt started");
    // biome-ignore lint/suspicious/noControlCharactersInRegex: colours are escape sequences
    const out = text().replace(/\u001b\[[0-9;]*m/g, "");
    expect(() => JSON.parse(out.trim())).toThrow();
    expect(out).toContain("attempt started");
    expect(out).toMatch(/runId: "r-1"/);
    expect(out).toMatch(/stepId: "a"/);
    expect(out).not.toContain("flk_secret");
    expect(out).toContain("[redacted]");
  });
});
