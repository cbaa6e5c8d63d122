/** Pause and resume a run (SPEC §3). Both idempotent; any other state answers 409. */
import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import { pauseRun, resumeRun } from "../../../engine/control.ts";
import type { EngineDeps } from "../../../engine/deps.ts";
import { callerOf } from "../../plugins/auth.ts";
import { problemResponses } from "../../problem.ts";
import { presentRun, runSchema } from "../runs/present.ts";

const idParams = z.strictObject({ id: z.uuid() });

export const controlRoutes: FastifyPluginAsyncZod<{ engine: EngineDeps }> = async (app, { engine }) => {
  app.post(
    "/runs/:id/pause",
    {
      config: { scope: "write" },
      schema: {
        tags: ["runs"],
        operationId: "pauseRun",
        summary: "Pause a running run: no new steps start; running ones finish (idempotent)",
        params: idParams,
        response: { 200: runSchema, ...problemResponses(404, 409) },
      },
    },
    async (request) => presentRun(await pauseRun(engine, callerOf(request).tenantId, request.params.id)),
  );
  app.post(
    "/runs/:id/resume",
    {
      config: { scope: "write" },
      schema: {
        tags: ["runs"],
        operationId: "resumeRun",
        summary: "Resume a paused run: what became ready meanwhile starts (idempotent)",
        params: idParams,
        response: { 200: runSchema, ...problemResponses(404, 409) },
      },
    },
    async (request) => presentRun(await resumeRun(engine, callerOf(request).tenantId, request.params.id)),
  );
};
