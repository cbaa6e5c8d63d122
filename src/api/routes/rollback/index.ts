/** Roll back a finished run (SPEC §3): compensate what its steps did, in reverse order. */
import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import type { EngineDeps } from "../../../engine/deps.ts";
import { rollbackRun } from "../../../engine/rollback.ts";
import { callerOf } from "../../plugins/auth.ts";
import { problemResponses } from "../../problem.ts";
import { presentRun, runSchema } from "../runs/present.ts";

const idParams = z.strictObject({ id: z.uuid() });

export const rollbackRoutes: FastifyPluginAsyncZod<{ engine: EngineDeps }> = async (app, { engine }) => {
  app.post(
    "/runs/:id/rollback",
    {
      config: { scope: "write" },
      schema: {
        tags: ["runs"],
        operationId: "rollbackRun",
        summary: "Roll back a succeeded or failed run: its steps' compensations run in reverse order",
        description:
          "202 when this request started the rollback (the run is `rolling_back`, or already `rolled_back` when " +
          "nothing needed compensating); 200 with the run as it is when it was already rolling back or rolled " +
          "back. Any other status is 409. Follow the run's events for the compensations (`data.phase: compensate`).",
        params: idParams,
        response: { 200: runSchema, 202: runSchema, ...problemResponses(404, 409) },
      },
    },
    async (request, reply) => {
      const { run, started } = await rollbackRun(engine, callerOf(request).tenantId, request.params.id);
      return reply.code(started ? 202 : 200).send(presentRun(run));
    },
  );
};
