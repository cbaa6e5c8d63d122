/**
 * Layering rules: dependencies point inward (cli → api/jobs → engine → stores → db/redis/queue →
 * domain).
 * `npm run deps` fails on a circular import or on a forbidden edge below.
 */
const infra =
  "^node_modules/(fastify|@fastify|fastify-type-provider-zod|bullmq|ioredis|drizzle-orm|postgres|pino|prom-client|@opentelemetry)/";
module.exports = {
  forbidden: [
    { name: "no-circular", severity: "error", from: {}, to: { circular: true } },
    {
      name: "domain-is-pure",
      comment: "src/domain holds pure logic: no servers, queues, databases or processes.",
      severity: "error",
      from: { path: "^src/domain" },
      to: { path: [infra, "^(node:)?(child_process|net|http|https|fs|fs/promises|dns)$", "^src/(?!domain)"] },
    },
    {
      name: "core-observed-through-hooks-only",
      comment:
        "The engine and the stores call observability only through its hooks (no metrics or tracing library in them).",
      severity: "error",
      from: { path: "^src/(engine|db|redis)" },
      to: { path: ["^src/observability/(?!hooks\\.ts$)", "^node_modules/(prom-client|@opentelemetry)/"] },
    },
    {
      name: "config-imports-nothing-in-src",
      severity: "error",
      from: { path: "^src/config" },
      to: { path: "^src/(?!config)" },
    },
    {
      name: "db-redis-below-engine",
      severity: "error",
      from: { path: "^src/(db|redis|queue)" },
      to: { path: "^src/(engine|jobs|api|cli|stores)" },
    },
    {
      name: "stores-below-engine",
      comment: "src/stores picks the Redis or the Postgres implementations; it knows nothing above them.",
      severity: "error",
      from: { path: "^src/stores" },
      to: { path: "^src/(engine|jobs|api|cli)" },
    },
    {
      name: "engine-below-api-and-jobs",
      severity: "error",
      from: { path: "^src/engine" },
      to: { path: "^src/(jobs|api|cli)" },
    },
    {
      name: "api-never-jobs",
      severity: "error",
      from: { path: "^src/api" },
      to: { path: "^src/(jobs|cli)" },
    },
    {
      name: "client-stands-alone",
      comment: "src/client talks to a server over HTTP only: it can be copied out of the repository.",
      severity: "error",
      from: { path: "^src/client" },
      to: { path: "^src/(?!client)" },
    },
    {
      name: "jobs-never-api",
      severity: "error",
      from: { path: "^src/jobs" },
      to: { path: "^src/(api|cli)" },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
    enhancedResolveOptions: {
      exportsFields: ["exports"],
      conditionNames: ["import", "require", "node", "default"],
    },
  },
};
