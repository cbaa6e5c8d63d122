import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import { release } from "../../../config/release.ts";
import type { DbHandle } from "../../../db/client.ts";
import { readSchemaState } from "../../../db/schema-version.ts";
import { FlowlineError } from "../../../domain/errors.ts";
import { judgeSchema, migrationLabel } from "../../../domain/versions.ts";
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
        summary:
          "Readiness: Postgres and Redis (when configured) answer and the schema is one this release runs against; its version and schema",
        security: [],
        response: {
          200: z.object({
            status: z.literal("ready"),
            checks: z.object({ postgres: z.string(), redis: z.string() }),
            version: z.string().describe("This process's release (semantic version)"),
            imageTag: z.string().nullable().describe("The image tag it was built as; null outside an image"),
            schema: z.object({
              release: z.string().describe("The newest migration this release carries, e.g. 0009"),
              database: z.string().describe("The newest migration the database holds"),
            }),
          }),
          ...problemResponses(503),
        },
      },
    },
    async () => {
      let database = -1;
      const failures = (
        await Promise.all([
          check("postgres", async () => {
            const state = await readSchemaState(db.sql);
            database = state.newest;
            // Migrated under this process to a schema it cannot run against (a contract step
            // it does not know): take it out of rotation rather than serve from it.
            const judgement = judgeSchema({ version: release.version, knows: release.schema }, state);
            if (!judgement.ok) throw new Error(judgement.message);
          }),
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
        version: release.version,
        imageTag: release.imageTag,
        schema: { release: migrationLabel(release.schema), database: migrationLabel(database) },
      };
    },
  );
};
