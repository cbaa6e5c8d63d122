import { randomBytes } from "node:crypto";
import type { Redis } from "ioredis";
import { redisKeys } from "./keys.ts";

/**
 * The secret every API process of a deployment signs browser sessions with, when the
 * configuration names none: the first process to ask generates it, the others read it.
 */
export async function sharedSessionSecret(redis: Redis, prefix: string): Promise<string> {
  const key = redisKeys(prefix).sessionSecret();
  await redis.set(key, randomBytes(32).toString("base64url"), "NX");
  const secret = await redis.get(key);
  if (!secret) throw new Error("the session secret vanished from Redis between SET NX and GET");
  return secret;
}
