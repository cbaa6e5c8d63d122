import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import type { DbHandle } from "../../../db/client.ts";
import { FlowlineError } from "../../../domain/errors.ts";
import type { Stores } from "../../../stores/index.ts";
import { problemResponses } from "../../problem.ts";

const CHECK_TIMEOUT_MS = 2000;

async function check(name: string, probe: () => Promise<unknown>): Promise<string | null> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      probe(),
      new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no answer within ${CHECK_TIMEOUT_MS} ms`)),
          CHECK_TIMEOUT_MS,
        );
      }),
    ]);
    return null;
  } catch (error) {
    return `${name}: ${(error as Error).message || "unreachable"}`;
  } finally {
    clearTimeout(timer);
  }
}

export const healthRoutes: FastifyPluginAsyncZod<{ db: DbHandle; stores: Stores }> = async (
  app,
  { db, stores },
) => {
  app.get(
    "/healthz",
    {
      config: { public: true },
      schema: {
        tags: ["health"],
        operationId: "getHealth",
        summary: "Liveness: the process is up",
        security: [],
        response: { 200: z.object({ status: z.literal("ok") }) },
      },
    },
    async () => ({ status: "ok" as const }),
  );

  app.get(
    "/readyz",
    {
      config: { public: true },
      schema: {
        tags: ["health"],
        operationId: "getReadiness",
        summary: "Readiness: Postgres and Redis (when configured) answer",
        security: [],
        response: {
          200: z.object({
            status: z.literal("ready"),
            checks: z.object({ postgres: z.string(), redis: z.string() }),
          }),
          ...problemResponses(503),
        },
      },
    },
    async () => {
      const failures = (
        await Promise.all([
          check("postgres", () => db.ping()),
          stores.kind === "redis" ? check("redis", () => stores.ping()) : null,
        ])
      ).filter((f): f is string => f !== null);
      if (failures.length > 0) {
        throw new FlowlineError("service_unavailable", `Not ready: ${failures.join("; ")}`, {
          retryAfterSeconds: 5,
        });
      }
      // Without Redis, queues and fan-out run on Postgres: its check covers them.
      return {
        status: "ready" as const,
        checks: { postgres: "ok", redis: stores.kind === "redis" ? "ok" : "not used" },
      };
    },
  );
};
