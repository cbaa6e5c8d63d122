/**
 * `http` steps with SSRF protection. The host must be allowed by `http.allowedHosts`, and the
 * address it resolves to is checked on the very lookup the connection uses (no window for DNS
 * rebinding): link-local and cloud-metadata addresses are always refused unless the IP itself is
 * listed; private and loopback ones unless `http.allowPrivateNetworks` or the host is listed
 * exactly. Redirects are not followed.
 */

import { lookup as dnsLookup } from "node:dns";
import http from "node:http";
import https from "node:https";
import { BlockList, isIP, type LookupFunction } from "node:net";
import { hostAllowed } from "../../domain/workflow/validate.ts";
import { traceHeaders } from "../../observability/tracing.ts";
import { ExecutionError, type ExecutorFn } from "./types.ts";

const metadata = new BlockList();
metadata.addSubnet("169.254.0.0", 16, "ipv4"); // link-local, incl. 169.254.169.254
metadata.addAddress("100.100.100.200", "ipv4"); // Alibaba metadata
metadata.addSubnet("fe80::", 10, "ipv6");
metadata.addAddress("fd00:ec2::254", "ipv6");

const privateRanges = new BlockList();
for (const [net, bits] of [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["172.16.0.0", 12],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["224.0.0.0", 4],
  ["240.0.0.0", 4],
] as const) {
  privateRanges.addSubnet(net, bits, "ipv4");
}
privateRanges.addAddress("::", "ipv6");
privateRanges.addAddress("::1", "ipv6");
privateRanges.addSubnet("fc00::", 7, "ipv6");
// NAT64 and 6to4 embed IPv4 addresses, including private and metadata ones.
privateRanges.addSubnet("64:ff9b::", 96, "ipv6");
privateRanges.addSubnet("64:ff9b:1::", 48, "ipv6");
privateRanges.addSubnet("2002::", 16, "ipv6");

/** `::ffff:7f00:1` and friends are IPv4 in disguise. */
function normalise(address: string): { address: string; family: "ipv4" | "ipv6" } {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return { address: mapped[1]!, family: "ipv4" };
  const hexMapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(address);
  if (hexMapped) {
    const hi = Number.parseInt(hexMapped[1]!, 16);
    const lo = Number.parseInt(hexMapped[2]!, 16);
    return { address: `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`, family: "ipv4" };
  }
  return { address, family: isIP(address) === 6 ? "ipv6" : "ipv4" };
}

export function addressRefusal(
  hostname: string,
  rawAddress: string,
  allowedHosts: readonly string[],
  allowPrivateNetworks: boolean,
): string | null {
  const { address, family } = normalise(rawAddress);
  const listedExactly = allowedHosts.some((h) => h.toLowerCase() === hostname.toLowerCase() || h === address);
  if (metadata.check(address, family) && !allowedHosts.includes(address)) {
    return `address ${address} of "${hostname}" is link-local or a cloud metadata endpoint`;
  }
  if (privateRanges.check(address, family) && !allowPrivateNetworks && !listedExactly) {
    return `address ${address} of "${hostname}" is private or loopback (allow it with http.allowPrivateNetworks or list the host exactly)`;
  }
  return null;
}

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
  let refusal: string | null = null;
  const checkedLookup: LookupFunction = (host, options, callback) => {
    dnsLookup(host, { ...options, all: true }, (error, addresses) => {
      if (error) return callback(error, "", 0);
      const list = addresses as Array<{ address: string; family: number }>;
      for (const a of list) {
        refusal = addressRefusal(hostname, a.address, allowedHosts, allowPrivateNetworks);
        if (refusal) return callback(new Error(refusal), "", 0);
      }
      const first = list[0]!;
      if ((options as { all?: boolean }).all)
        return (callback as unknown as (e: null, a: typeof list) => void)(null, list);
      callback(null, first.address, first.family);
    });
  };
  // A literal IP never goes through lookup, so check it here.
  if (isIP(hostname)) {
    refusal = addressRefusal(hostname, hostname, allowedHosts, allowPrivateNetworks);
    if (refusal) throw new ExecutionError(refusal, false, "ssrf_refused");
  }
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
      { method: executor.method, headers, lookup: checkedLookup, signal },
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
