import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/index.ts";
import {
  csrfTokenFor,
  csrfTokenMatches,
  signSession,
  signStreamToken,
  verifySession,
  verifyStreamToken,
} from "../../src/domain/browser-auth.ts";

const secret = "s".repeat(40);
const keyId = "0b6c3f3e-8a7a-4a55-9d7c-2f0e8d1b6a11";
const runId = "5f0d9a9c-1e2b-4c3d-8e4f-a1b2c3d4e5f6";

describe("session values", () => {
  it("verify what was signed until it expires", () => {
    const value = signSession(secret, { keyId, expiresAt: 2000 });
    expect(verifySession(secret, value, 1999)).toEqual({ keyId, expiresAt: 2000 });
    expect(verifySession(secret, value, 2000)).toBeNull();
    expect(verifySession("t".repeat(40), value, 1)).toBeNull();
  });

  it("refuse any change and any other shape", () => {
    const value = signSession(secret, { keyId, expiresAt: 2000 });
    expect(verifySession(secret, value.replace(".2000.", ".9000."), 1)).toBeNull();
    for (const bad of ["", "s1", "s1.a.b.c", `${value}.x`, value.replace("s1", "t1"), "s1.x.1.%%%"])
      expect(verifySession(secret, bad, 1)).toBeNull();
    // A stream token is not a session, even for the same key and expiry.
    expect(verifySession(secret, signStreamToken(secret, { runId, keyId, expiresAt: 2000 }), 1)).toBeNull();
  });

  it("have a CSRF token bound to the session value", () => {
    const a = signSession(secret, { keyId, expiresAt: 2000 });
    const b = signSession(secret, { keyId, expiresAt: 2001 });
    expect(csrfTokenMatches(secret, a, csrfTokenFor(secret, a))).toBe(true);
    expect(csrfTokenMatches(secret, a, csrfTokenFor(secret, b))).toBe(false);
    expect(csrfTokenMatches(secret, a, "")).toBe(false);
  });
});

describe("stream tokens", () => {
  it("name one run and expire", () => {
    const token = signStreamToken(secret, { runId, keyId, expiresAt: 500 });
    expect(token).toMatch(/^[A-Za-z0-9._-]+$/);
    expect(verifyStreamToken(secret, token, 499)).toEqual({ runId, keyId, expiresAt: 500 });
    expect(verifyStreamToken(secret, token, 500)).toBeNull();
    expect(verifyStreamToken(secret, token.replace(runId, keyId), 1)).toBeNull();
  });
});

describe("http.cors.allowedOrigins", () => {
  it("takes origins and refuses URLs with a path, naming the key", () => {
    expect(
      parseConfig({ http: { cors: { allowedOrigins: ["https://app.example.com"] } } }).http.cors,
    ).toEqual({
      allowedOrigins: ["https://app.example.com"],
    });
    expect(() => parseConfig({ http: { cors: { allowedOrigins: ["https://app.example.com/"] } } })).toThrow(
      /http\.cors\.allowedOrigins\[0\]: expected an origin/,
    );
  });
});
