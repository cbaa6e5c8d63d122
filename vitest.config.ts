import { defineConfig } from "vitest/config";

/**
 * The files that also run on the Postgres-only stores (no Redis: BullMQ on Postgres, lease rows,
 * LISTEN/NOTIFY), as the `postgres-stores` project: the engine, event streams, asset locks,
 * supervisor failover and worker-loss recovery. The store contracts themselves run on both in
 * test/integration/stores.test.ts.
 */
export const POSTGRES_STORES_MATRIX = [
  "test/integration/engine.test.ts",
  "test/integration/sse.test.ts",
  "test/integration/materialize.test.ts",
  "test/integration/supervisor.test.ts",
  "test/integration/recovery.test.ts",
];

export default defineConfig({
  test: {
    globalSetup: ["test/helpers/global-setup.ts"],
    pool: "forks",
    testTimeout: 30_000,
    hookTimeout: 60_000,
    reporters: ["default", "./test/helpers/summary-reporter.ts"],
    projects: [
      { extends: true, test: { name: "redis", include: ["test/**/*.test.ts"] } },
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
