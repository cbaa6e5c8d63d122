/**
 * Which methods a path has routes for, so that a known path asked with another method answers
 * 405 with `Allow` instead of 404. Fastify's router answers "no route" for both.
 */
import type { FastifyInstance } from "fastify";

interface IndexedRoute {
  pattern: RegExp;
  methods: readonly string[];
}

/** `/v1/runs/:id/events` → /^\/v1\/runs\/[^/]+\/events\/?$/; `*` matches the rest of the path. */
function patternOf(url: string): RegExp {
  const source = url
    .split("/")
    .map((part) => {
      if (part.startsWith(":")) return "[^/]+";
      if (part === "*") return ".*";
      return part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    })
    .join("/");
  return new RegExp(`^${source}/?$`);
}

/** Must be called before routes are added; answers the methods routed for a concrete path. */
export function registerRouteIndex(app: FastifyInstance): (path: string) => string[] {
  const routes: IndexedRoute[] = [];
  app.addHook("onRoute", (route) => {
    const methods = (Array.isArray(route.method) ? route.method : [route.method]).filter(
      // CORS answers preflights on every path (`OPTIONS *`): that says nothing about which paths exist.
      (m) => !(m === "OPTIONS" && route.url.endsWith("*")),
    );
    if (methods.length > 0) routes.push({ pattern: patternOf(route.url), methods });
  });
  return (path) => [...new Set(routes.filter((r) => r.pattern.test(path)).flatMap((r) => r.methods))].sort();
}
