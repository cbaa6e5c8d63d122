import { randomBytes } from "node:crypto";

/** Standard Webhooks secrets: `whsec_` and the base64 of 32 random bytes (the key HMAC-SHA256 uses). */
export const WEBHOOK_SECRET_PREFIX = "whsec_";

export function generateWebhookSecret(): string {
  return WEBHOOK_SECRET_PREFIX + randomBytes(32).toString("base64");
}

/** How long a rotated-out secret keeps signing deliveries alongside the new one. */
export const WEBHOOK_SECRET_OVERLAP_SECONDS = 24 * 3600;
