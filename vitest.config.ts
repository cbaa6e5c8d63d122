import { defineConfig } from "vitest/config";

/**
 * The files that also run on the Postgres-only stores (no Redis: BullMQ on Postgres, lease rows,
 * LISTEN/NOTIFY), as the `postgres-stores` project: the engine, event streams, supervisor failover
 * worker-loss recovery, open streams counted across API processes and tenant fairness on a
 * shared queue. The store contracts themselves (asset locks and leases with fencing,
 * counters, registry) run on both in test/integration/stores.test.ts. More files run that way with
 * `npm run test:postgres-stores` (the asset-lock end-to-end tests of materialize.test.ts among
 * them), kept out of `npm test` for time.
 */
export const POSTGRES_STORES_MATRIX = [
  "test/integration/engine.test.ts",
  "test/integration/sse.test.ts",
  "test/integration/supervisor.test.ts",
  "test/integration/recovery.test.ts",
  "test/integration/stream-quota.test.ts",
  "test/integration/fairness.test.ts",
];

export default defineConfig({
  test: {
    globalSetup: ["test/helpers/global-setup.ts"],
    pool: "forks",
    testTimeout: 30_000,
    hookTimeout: 60_000,
    reporters: ["default", "./test/helpers/summary-reporter.ts"],
    projects: [
      { extends: true, test: { name: "main", include: ["test/**/*.test.ts"] } },
      {
        extends: true,
        test: {
          name: "postgres-stores",
          include: POSTGRES_STORES_MATRIX,
          env: { FLOWLINE_TEST_STORES: "postgres" },
        },
      },
    ],
  },
});
