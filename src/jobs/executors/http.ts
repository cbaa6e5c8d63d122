/**
 * `http` steps with SSRF protection. The host must be allowed by `http.allowedHosts`, and the
 * address it resolves to must pass the egress policy shared with webhooks (../egress.ts).
 * Redirects are not followed.
 */

import http from "node:http";
import https from "node:https";
import { hostAllowed } from "../../domain/workflow/validate.ts";
import { traceHeaders } from "../../observability/tracing.ts";
import { checkedLookup } from "../egress.ts";
import { ExecutionError, type ExecutorFn } from "./types.ts";

export const runHttp: ExecutorFn<"http"> = async (executor, ctx) => {
  let url: URL;
  try {
    url = new URL(executor.url);
  } catch {
    throw new ExecutionError(`invalid URL "${executor.url.slice(0, 200)}"`, false, "invalid_url");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new ExecutionError("only http and https URLs are allowed", false, "ssrf_refused");
  }
  if (url.username || url.password)
    throw new ExecutionError("URLs with credentials are not allowed", false, "ssrf_refused");
  const { allowedHosts, allowPrivateNetworks, maxResponseBytes } = ctx.config.http;
  const hostname = url.hostname.replace(/^\[|\]$/g, "");
  if (!hostAllowed(hostname, allowedHosts)) {
    throw new ExecutionError(`host "${hostname}" is not in http.allowedHosts`, false, "ssrf_refused");
  }
  const egress = checkedLookup(hostname, { allowedHosts, allowPrivateNetworks });
  const literal = egress.literalRefusal();
  if (literal) throw new ExecutionError(literal, false, "ssrf_refused");
  const timeoutMs = (executor.timeoutSeconds ?? 30) * 1000;
  const signal = AbortSignal.any([ctx.signal, AbortSignal.timeout(timeoutMs)]);
  const body = executor.body === undefined ? undefined : JSON.stringify(executor.body);
  // The step's own trace context goes with the request (W3C `traceparent`), unless it sets one.
  const headers: Record<string, string> = {
    accept: "application/json",
    ...traceHeaders(),
    ...executor.headers,
  };
  if (body !== undefined && !Object.keys(headers).some((h) => h.toLowerCase() === "content-type")) {
    headers["content-type"] = "application/json";
  }
  const response = await new Promise<{ status: number; type: string; text: string }>((resolve, reject) => {
    const request = (url.protocol === "https:" ? https : http).request(
      url,
      { method: executor.method, headers, lookup: egress.lookup, signal },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (chunk: Buffer) => {
          size += chunk.length;
          if (size > maxResponseBytes) {
            res.destroy(
              new ExecutionError(
                `response larger than ${maxResponseBytes} bytes`,
                false,
                "response_too_large",
              ),
            );
            return;
          }
          chunks.push(chunk);
        });
        res.on("error", reject);
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            type: String(res.headers["content-type"] ?? ""),
            text: Buffer.concat(chunks).toString("utf8"),
          }),
        );
      },
    );
    request.on("error", (error) => {
      const refusal = egress.refusal();
      if (refusal) reject(new ExecutionError(refusal, false, "ssrf_refused"));
      else if (ctx.signal.aborted) reject(ctx.signal.reason);
      else if (signal.aborted)
        reject(new ExecutionError(`request timed out after ${timeoutMs} ms`, true, "http_timeout"));
      else reject(new ExecutionError(`request failed: ${error.message}`, true, "http_error"));
    });
    request.end(body);
  });
  const expected = executor.expectStatus;
  const ok =
    expected === undefined
      ? response.status >= 200 && response.status < 300
      : Array.isArray(expected)
        ? expected.includes(response.status)
        : expected === response.status;
  if (!ok) {
    throw new ExecutionError(
      `unexpected HTTP status ${response.status}`,
      response.status >= 500 || response.status === 429,
      "http_status",
      {
        status: response.status,
        body: response.text.slice(0, 2000),
      },
    );
  }
  if (/json/i.test(response.type) && response.text.length > 0) {
    try {
      return JSON.parse(response.text);
    } catch {
      throw new ExecutionError("response says JSON but does not parse", false, "http_bad_json");
    }
  }
  return response.text.length > 0 ? { body: response.text } : null;
};
