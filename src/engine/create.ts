import { admitQueuedRuns, releaseAssetLocks } from "./admission.ts";
import type { EngineDeps } from "./deps.ts";
import { SpecCache } from "./specs.ts";

/** Builds the engine's dependency bundle from the infrastructure a process has wired. */
export function createEngineDeps(deps: Omit<EngineDeps, "specs" | "runsEnded">): EngineDeps {
  const engine: EngineDeps = {
    ...deps,
    specs: new SpecCache(deps.db),
    runsEnded: async (runs) => {
      for (const run of runs) await releaseAssetLocks(engine, run);
      // Slots and locks were freed: start what waits for them (the supervisor retries as well).
      await admitQueuedRuns(engine);
    },
  };
  return engine;
}
