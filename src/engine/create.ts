import { admitQueuedRuns, releaseAssetLocks } from "./admission.ts";
import type { EngineDeps } from "./deps.ts";
import { SpecCache } from "./specs.ts";

/** Builds the engine's dependency bundle from the infrastructure a process has wired. */
export function createEngineDeps(deps: Omit<EngineDeps, "specs" | "runsEnded">): EngineDeps {
  const engine: EngineDeps = {
    ...deps,
    specs: new SpecCache(deps.db),
    runsEnded: async (runs) => {
      let freed = false;
      for (const run of runs) {
        // Locks it held are free now; runs queued behind it for the same locks may go first now.
        if (Object.keys(run.locks_held ?? {}).length > 0 || (run.locks_wanted ?? []).length > 0) freed = true;
        await releaseAssetLocks(engine, run);
        const loaded = await engine.specs.load(run.workflow_id, run.workflow_version);
        if (loaded.spec.concurrency) freed = true;
      }
      // A slot or a lock was freed: start what waits for it (the supervisor retries as well). A
      // run that held neither frees nothing anyone waits for.
      // Not awaited: the worker that ended the run goes on with its next batch meanwhile.
      if (freed)
        void admitQueuedRuns(engine).catch((error) =>
          engine.log.warn({ err: error }, "admitting queued runs failed"),
        );
    },
  };
  return engine;
}
