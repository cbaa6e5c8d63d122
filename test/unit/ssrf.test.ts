import { describe, expect, it } from "vitest";
import { addressRefusal } from "../../src/jobs/egress.ts";

describe("resolved-address checks of http steps", () => {
  const refused = (address: string, allowed: string[] = ["api.example.com"], allowPrivate = false) =>
    addressRefusal("api.example.com", address, allowed, allowPrivate);

  it("refuses metadata and link-local addresses, however they are written", () => {
    for (const a of [
      "169.254.169.254",
      "::ffff:169.254.169.254",
      "::ffff:a9fe:a9fe",
      "fd00:ec2::254",
      "fe80::1",
      "100.100.100.200",
    ]) {
      expect(refused(a), a).toMatch(/link-local|metadata/);
    }
    // Even with private networks allowed, metadata stays refused.
    expect(refused("169.254.169.254", ["api.example.com"], true)).toMatch(/metadata/);
  });

  it("refuses private, loopback and embedded-IPv4 addresses unless allowed", () => {
    for (const a of [
      "127.0.0.1",
      "10.1.2.3",
      "172.16.0.1",
      "192.168.1.1",
      "::1",
      "fc00::1",
      "0.0.0.0",
      "64:ff9b::a9fe:a9fe",
      "2002:a9fe:a9fe::1",
    ]) {
      expect(refused(a, ["*.example.com"]), a).toMatch(/private or loopback|link-local|metadata/);
    }
    expect(refused("10.1.2.3", ["*.example.com"], true)).toBeNull();
    // A host listed exactly may resolve to a private address (an internal service).
    expect(refused("10.1.2.3", ["api.example.com"])).toBeNull();
  });

  it("lets public addresses through", () => {
    for (const a of ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
      expect(refused(a, ["*.example.com"]), a).toBeNull();
  });
});
