/**
 * The one egress policy of the server's outbound requests, `http` steps and webhook deliveries
 * alike (SPEC §12): the address a connection actually uses is checked on the very lookup the
 * connection makes (no window for DNS rebinding). Link-local and cloud-metadata addresses are
 * refused unless the IP itself is listed in `http.allowedHosts`; private and loopback ones unless
 * `http.allowPrivateNetworks` or the host (or IP) is listed exactly. Which host names an `http`
 * step may call at all (`http.allowedHosts`, wildcards included) is checked by the executor.
 */
import { lookup as dnsLookup } from "node:dns";
import { BlockList, isIP, type LookupFunction } from "node:net";

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

export interface EgressPolicy {
  allowedHosts: readonly string[];
  allowPrivateNetworks: boolean;
}

/**
 * A lookup for `http.request` that refuses addresses the policy forbids, and the refusal it last
 * made (a request that fails on it should report the refusal, not a generic network error).
 * A literal IP never goes through a lookup: `literalRefusal` checks it up front.
 */
export function checkedLookup(
  hostname: string,
  policy: EgressPolicy,
): { lookup: LookupFunction; refusal: () => string | null; literalRefusal: () => string | null } {
  let refusal: string | null = null;
  const check = (address: string) =>
    addressRefusal(hostname, address, policy.allowedHosts, policy.allowPrivateNetworks);
  const lookup: LookupFunction = (host, options, callback) => {
    dnsLookup(host, { ...options, all: true }, (error, addresses) => {
      if (error) return callback(error, "", 0);
      const list = addresses as Array<{ address: string; family: number }>;
      for (const a of list) {
        refusal = check(a.address);
        if (refusal) return callback(new Error(refusal), "", 0);
      }
      const first = list[0]!;
      if ((options as { all?: boolean }).all)
        return (callback as unknown as (e: null, a: typeof list) => void)(null, list);
      callback(null, first.address, first.family);
    });
  };
  return {
    lookup,
    refusal: () => refusal,
    literalRefusal: () => (isIP(hostname) ? check(hostname) : null),
  };
}
