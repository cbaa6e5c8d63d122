/**
 * The deployment files: every Kubernetes manifest under deploy/kubernetes is checked against the
 * official schema of its apiVersion/kind (kubernetes-models, @kubernetes-models/keda), with
 * unknown fields refused as `kubectl apply` does, and against the rest of the deployment: the
 * objects it names exist, the numbers it mirrors from the Flowline config agree with it, and
 * every process runs a real `flowline` role. docker-compose.yml gets the same treatment where it
 * can (no schema). Reads files only.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { Job } from "kubernetes-models/batch/v1/Job";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { Secret } from "kubernetes-models/v1/Secret";
import { Service } from "kubernetes-models/v1/Service";
import { describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import {
  CONFIG_FILE_VARIABLE,
  type Config,
  ENVIRONMENT_VARIABLES,
  parseConfig,
} from "../../src/config/index.ts";

const ROOT = join(import.meta.dirname, "../..");
const MANIFESTS = join(ROOT, "deploy/kubernetes");
const ROLES = ["api", "worker", "supervisor", "migrate"];

type Obj = Record<string, any>;

/** A model class's validate(), which throws a message naming the path of every problem. */
type ModelClass = { prototype: { validate(this: unknown): void } };

/** The kinds a manifest may use, by `apiVersion/kind`; anything else is an error. */
const SCHEMAS: Record<string, ModelClass> = {
  "v1/ConfigMap": ConfigMap,
  "v1/Secret": Secret,
  "v1/Service": Service,
  "apps/v1/Deployment": Deployment,
  "batch/v1/Job": Job,
  "policy/v1/PodDisruptionBudget": PodDisruptionBudget,
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
};

/**
 * Problems with `doc` as an object of its apiVersion/kind: schema violations, and fields the
 * schema does not define. The generated validators read every property their schema defines, so
 * a field present in the document that was never read is unknown to the schema (a typo, or a
 * field at the wrong level). Objects the schema leaves free-form are not read at all and skipped.
 */
function schemaProblems(doc: Obj): string[] {
  const model = SCHEMAS[`${doc.apiVersion}/${doc.kind}`];
  if (!model) return [`unknown apiVersion/kind ${doc.apiVersion}/${doc.kind}`];
  const reads = new WeakMap<object, Set<PropertyKey>>();
  const proxies = new WeakMap<object, object>();
  const watch = (value: unknown): unknown => {
    if (value === null || typeof value !== "object") return value;
    const known = proxies.get(value);
    if (known) return known;
    const read = new Set<PropertyKey>();
    reads.set(value, read);
    const proxy = new Proxy(value, {
      get(target, key, receiver) {
        read.add(key);
        return watch(Reflect.get(target, key, receiver));
      },
      has(target, key) {
        read.add(key);
        return Reflect.has(target, key);
      },
    });
    proxies.set(value, proxy);
    return proxy;
  };
  try {
    model.prototype.validate.call(watch(doc));
  } catch (error) {
    return [(error as Error).message];
  }
  const unknown: string[] = [];
  const walk = (value: unknown, path: string) => {
    if (value === null || typeof value !== "object") return;
    if (Array.isArray(value)) {
      for (const [index, item] of value.entries()) walk(item, `${path}/${index}`);
      return;
    }
    const read = reads.get(value);
    for (const [key, child] of Object.entries(value)) {
      if (read && read.size > 0 && !read.has(key)) unknown.push(`${path}/${key}: unknown field`);
      walk(child, `${path}/${key}`);
    }
  };
  walk(doc, "");
  return unknown;
}

interface Manifest {
  file: string;
  doc: Obj;
}

function loadManifests(): { kustomization: Obj; files: string[]; manifests: Manifest[] } {
  const files = readdirSync(MANIFESTS)
    .filter((f) => /\.ya?ml$/.test(f) && f !== "kustomization.yaml")
    .sort();
  const manifests: Manifest[] = [];
  for (const file of files) {
    for (const document of parseAllDocuments(readFileSync(join(MANIFESTS, file), "utf8"))) {
      if (document.errors.length > 0) throw new Error(`${file}: ${document.errors[0]!.message}`);
      const doc = document.toJS();
      if (doc !== null) manifests.push({ file, doc });
    }
  }
  const kustomization = parse(readFileSync(join(MANIFESTS, "kustomization.yaml"), "utf8"));
  return { kustomization, files, manifests };
}

const { kustomization, files, manifests } = loadManifests();

function named(kind: string, name?: string): Obj[] {
  return manifests
    .map((m) => m.doc)
    .filter((d) => d.kind === kind && (name === undefined || d.metadata?.name === name));
}

function only(kind: string, name: string): Obj {
  const found = named(kind, name);
  expect(found, `${kind} ${name}`).toHaveLength(1);
  return found[0]!;
}

/** Deployments and Jobs, with their pod templates. */
const workloads = manifests
  .map((m) => m.doc)
  .filter((d) => d.kind === "Deployment" || d.kind === "Job")
  .map((d) => ({ name: `${d.kind} ${d.metadata.name}`, doc: d, pod: d.spec.template.spec as Obj }));

function containersOf(pod: Obj): Obj[] {
  return [...(pod.initContainers ?? []), ...pod.containers];
}

function roleOf(container: Obj): string {
  return container.args?.[0];
}

function deploymentsWithRole(role: string): Obj[] {
  return named("Deployment").filter((d) =>
    d.spec.template.spec.containers.some((c: Obj) => roleOf(c) === role),
  );
}

/** `--queues` of a `flowline worker` container. */
function queuesOf(container: Obj): string[] {
  const args: string[] = container.args;
  const at = args.indexOf("--queues");
  expect(at, `${container.name}: --queues`).toBeGreaterThan(0);
  return args[at + 1]!.split(",");
}

function flowlineConfig(): Config {
  const data = only("ConfigMap", "flowline-config").data ?? {};
  return parseConfig(parse(data["flowline.config.yaml"] ?? ""));
}

function labelsMatch(selector: Obj, labels: Obj): boolean {
  return Object.entries(selector).every(([key, value]) => labels[key] === value);
}

describe("the schema check itself", () => {
  const deployment = () => ({
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: "x" },
    spec: {
      selector: { matchLabels: { app: "x" } },
      template: {
        metadata: { labels: { app: "x" } },
        spec: { containers: [{ name: "x", image: "x", livenessProbe: { httpGet: { path: "/", port: 1 } } }] },
      },
    },
  });

  it("accepts a valid object", () => {
    expect(schemaProblems(deployment())).toEqual([]);
  });

  it("refuses a value of the wrong type", () => {
    const doc: Obj = deployment();
    doc.spec.replicas = "two";
    expect(schemaProblems(doc).join()).toMatch(/replicas/);
  });

  it("refuses a misspelt or misplaced field", () => {
    const doc: Obj = deployment();
    doc.spec.template.spec.containers[0].livenesProbe = doc.spec.template.spec.containers[0].livenessProbe;
    doc.spec.terminationGracePeriodSeconds = 30;
    expect(schemaProblems(doc).sort()).toEqual([
      "/spec/template/spec/containers/0/livenesProbe: unknown field",
      "/spec/terminationGracePeriodSeconds: unknown field",
    ]);
  });

  it("refuses a kind it has no schema for", () => {
    expect(schemaProblems({ apiVersion: "v1", kind: "Pod" })).toEqual(["unknown apiVersion/kind v1/Pod"]);
  });
});

describe("deploy/kubernetes", () => {
  it("lists every manifest in kustomization.yaml and sets no namespace", () => {
    expect(kustomization.apiVersion).toBe("kustomize.config.k8s.io/v1beta1");
    expect(kustomization.kind).toBe("Kustomization");
    expect([...kustomization.resources].sort()).toEqual(files);
    expect(kustomization.namespace).toBeUndefined();
    for (const { doc } of manifests) {
      expect(doc.kind, "namespace-agnostic").not.toBe("Namespace");
      expect(doc.metadata?.namespace, `${doc.kind} ${doc.metadata?.name}`).toBeUndefined();
    }
  });

  it.each(manifests.map((m) => [`${m.file}: ${m.doc.kind} ${m.doc.metadata?.name}`, m.doc]))(
    "%s matches its schema",
    (_, doc) => {
      expect(schemaProblems(doc as Obj)).toEqual([]);
    },
  );

  it("has no two objects of the same kind and name", () => {
    const ids = manifests.map(({ doc }) => `${doc.kind}/${doc.metadata.name}`);
    expect(ids).toEqual([...new Set(ids)]);
  });

  it("ships a Flowline config that Flowline accepts", () => {
    const config = flowlineConfig();
    expect(Object.keys(config.queues).sort()).toEqual(["default", "heavy"]);
  });

  it("runs a real flowline role in every container, through the image's entrypoint", () => {
    for (const { name, pod } of workloads) {
      for (const container of containersOf(pod)) {
        expect(container.image, name).toBe("flowline");
        expect(container.command, `${name}: keep the entrypoint (node bin/flowline.js)`).toBeUndefined();
        expect(ROLES, name).toContain(roleOf(container));
      }
    }
    expect(deploymentsWithRole("api")).toHaveLength(1);
    expect(deploymentsWithRole("supervisor")).toHaveLength(1);
    expect(named("Job").flatMap((j) => j.spec.template.spec.containers.map(roleOf))).toEqual(["migrate"]);
  });

  it("references only ConfigMaps, Secrets and keys that exist", () => {
    const configMaps = new Map(named("ConfigMap").map((c) => [c.metadata.name, c]));
    const secrets = new Map(named("Secret").map((s) => [s.metadata.name, s]));
    const keysOf = (o: Obj) => [...Object.keys(o.data ?? {}), ...Object.keys(o.stringData ?? {})];
    for (const { name, pod } of workloads) {
      for (const volume of pod.volumes ?? []) {
        if (volume.configMap) {
          const configMap = configMaps.get(volume.configMap.name);
          expect(configMap, `${name}: ConfigMap ${volume.configMap.name}`).toBeDefined();
          for (const item of volume.configMap.items ?? []) expect(keysOf(configMap!)).toContain(item.key);
        }
        if (volume.secret) expect(secrets.has(volume.secret.secretName), name).toBe(true);
      }
      for (const container of containersOf(pod)) {
        const volumes = new Set((pod.volumes ?? []).map((v: Obj) => v.name));
        for (const mount of container.volumeMounts ?? []) expect(volumes, name).toContain(mount.name);
        for (const source of container.envFrom ?? []) {
          if (source.configMapRef) expect(configMaps.has(source.configMapRef.name), name).toBe(true);
          if (source.secretRef) expect(secrets.has(source.secretRef.name), name).toBe(true);
        }
        for (const variable of container.env ?? []) {
          const secretRef = variable.valueFrom?.secretKeyRef;
          if (secretRef) {
            expect(secrets.has(secretRef.name), `${name}: Secret ${secretRef.name}`).toBe(true);
            expect(keysOf(secrets.get(secretRef.name)!), `${name}: ${variable.name}`).toContain(
              secretRef.key,
            );
          }
          const configMapRef = variable.valueFrom?.configMapKeyRef;
          if (configMapRef) {
            expect(configMaps.has(configMapRef.name), `${name}: ConfigMap ${configMapRef.name}`).toBe(true);
            expect(keysOf(configMaps.get(configMapRef.name)!)).toContain(configMapRef.key);
          }
        }
      }
    }
  });

  it("sets only environment variables Flowline knows, and points FLOWLINE_CONFIG at the mounted file", () => {
    const known = new Set([CONFIG_FILE_VARIABLE, ...ENVIRONMENT_VARIABLES.map((v) => v.name)]);
    const configMap = only("ConfigMap", "flowline-config");
    for (const { name, pod } of workloads) {
      // Service links would add FLOWLINE_<SERVICE>_PORT… variables, which stop start-up.
      expect(pod.enableServiceLinks, `${name}: enableServiceLinks`).toBe(false);
      for (const container of containersOf(pod)) {
        const env = new Map<string, Obj>((container.env ?? []).map((v: Obj) => [v.name, v]));
        for (const variable of env.keys()) expect(known, `${name}: ${variable}`).toContain(variable);
        const path = env.get(CONFIG_FILE_VARIABLE)?.value;
        if (roleOf(container) === "migrate" && path === undefined) continue;
        expect(path, `${name}: ${CONFIG_FILE_VARIABLE}`).toBeDefined();
        const mount = (container.volumeMounts ?? []).find((m: Obj) => path.startsWith(`${m.mountPath}/`));
        const volume = pod.volumes.find((v: Obj) => v.name === mount?.name);
        expect(volume?.configMap?.name, `${name}: ${path} is mounted from the ConfigMap`).toBe(
          configMap.metadata.name,
        );
        expect(Object.keys(configMap.data)).toContain(path.slice(mount.mountPath.length + 1));
      }
    }
  });

  it("runs every container as non-root with a read-only root filesystem and a writable /tmp", () => {
    for (const { name, pod } of workloads) {
      expect(pod.securityContext?.runAsNonRoot, name).toBe(true);
      // The image's user is `node`, a name: Kubernetes can only verify non-root from a number.
      expect(pod.securityContext?.runAsUser, name).toBeGreaterThan(0);
      for (const container of containersOf(pod)) {
        expect(container.securityContext, name).toMatchObject({
          allowPrivilegeEscalation: false,
          readOnlyRootFilesystem: true,
          capabilities: { drop: ["ALL"] },
        });
        const tmp = container.volumeMounts?.find((m: Obj) => m.mountPath === "/tmp");
        expect(pod.volumes.find((v: Obj) => v.name === tmp?.name)?.emptyDir, `${name}: /tmp`).toBeDefined();
        expect(container.resources?.requests?.memory, name).toBeDefined();
        expect(container.resources?.limits?.memory, name).toBeDefined();
      }
    }
  });

  it("runs the API with probes on /healthz and /readyz behind a Service that selects only its pods", () => {
    const [api] = deploymentsWithRole("api");
    const pod = api!.spec.template;
    const container = pod.spec.containers[0];
    expect(api!.spec.replicas).toBe(2);
    expect(labelsMatch(api!.spec.selector.matchLabels, pod.metadata.labels)).toBe(true);

    const port = container.ports.find((p: Obj) => p.name === "http");
    const listening = Number(container.env.find((v: Obj) => v.name === "PORT")?.value ?? 3000);
    expect(port.containerPort).toBe(3000);
    expect(listening).toBe(3000);
    expect(container.livenessProbe.httpGet).toMatchObject({ path: "/healthz", port: "http" });
    expect(container.readinessProbe.httpGet).toMatchObject({ path: "/readyz", port: "http" });
    expect(container.startupProbe.httpGet).toMatchObject({ path: "/healthz", port: "http" });

    const services = named("Service");
    expect(services).toHaveLength(1);
    const service = services[0]!;
    expect(labelsMatch(service.spec.selector, pod.metadata.labels)).toBe(true);
    for (const other of workloads.filter((w) => w.doc !== api)) {
      expect(labelsMatch(service.spec.selector, other.doc.spec.template.metadata.labels), other.name).toBe(
        false,
      );
    }
    expect(service.spec.ports).toEqual([{ name: "http", port: 80, targetPort: "http" }]);
    expect(service.metadata.annotations).toMatchObject({
      "prometheus.io/scrape": "true",
      "prometheus.io/port": String(port.containerPort),
      "prometheus.io/path": "/metrics",
    });
    for (const pdb of named("PodDisruptionBudget")) {
      expect(labelsMatch(pdb.spec.selector.matchLabels, pod.metadata.labels)).toBe(true);
      expect(pdb.spec.minAvailable).toBeLessThan(api!.spec.replicas);
    }
  });

  it("gives the API time to end its streams and finish requests after the endpoint is gone", () => {
    const config = flowlineConfig();
    const pod = deploymentsWithRole("api")[0]!.spec.template.spec;
    const preStop: string[] = pod.containers[0].lifecycle.preStop.exec.command;
    expect(preStop[0]).toBe("sleep");
    // The process itself gives up shutdownGraceSeconds + 5 s after SIGTERM.
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(
      Number(preStop[1]) + config.server.shutdownGraceSeconds + 5,
    );
  });

  it("probes nothing over HTTP in processes that serve only /metrics, whose port matches the config", () => {
    const { metrics } = flowlineConfig();
    expect(metrics.host).toBe("0.0.0.0");
    for (const { name, pod, doc } of workloads) {
      for (const container of containersOf(pod)) {
        const role = roleOf(container);
        if (role === "api" || role === "migrate") continue;
        for (const probe of ["livenessProbe", "readinessProbe", "startupProbe"]) {
          expect(container[probe]?.httpGet, `${name}: ${probe}`).toBeUndefined();
        }
        const port = role === "worker" ? metrics.workerPort : metrics.supervisorPort;
        expect(container.ports, name).toEqual([{ name: "metrics", containerPort: port }]);
        expect(doc.spec.template.metadata?.annotations?.["prometheus.io/port"], name).toBe(String(port));
      }
    }
  });

  it("keeps a standby supervisor", () => {
    const supervisors = deploymentsWithRole("supervisor");
    expect(supervisors[0]!.spec.replicas).toBe(2);
  });

  it("has one worker Deployment per configured queue, stopping within the grace period", () => {
    const config = flowlineConfig();
    const workers = deploymentsWithRole("worker");
    const served = workers.flatMap((d) => queuesOf(d.spec.template.spec.containers[0]));
    expect(served.sort()).toEqual(Object.keys(config.queues).sort());
    for (const worker of workers) {
      expect(
        worker.spec.template.spec.terminationGracePeriodSeconds,
        worker.metadata.name,
      ).toBeGreaterThanOrEqual(config.worker.graceSeconds + 10);
    }
  });

  it("scales every worker Deployment with a ScaledObject that mirrors its queue's config", () => {
    const config = flowlineConfig();
    const workers = deploymentsWithRole("worker");
    const scaledObjects = named("ScaledObject");
    expect(scaledObjects).toHaveLength(workers.length);
    for (const scaled of scaledObjects) {
      const name = scaled.metadata.name;
      const target = scaled.spec.scaleTargetRef;
      expect(target.apiVersion ?? "apps/v1", name).toBe("apps/v1");
      expect(target.kind ?? "Deployment", name).toBe("Deployment");
      const deployment = workers.find((d) => d.metadata.name === target.name);
      expect(deployment, `${name}: scaleTargetRef ${target.name}`).toBeDefined();
      // KEDA owns the replica count; a replicas field would reset it on every apply.
      expect(deployment!.spec.replicas, name).toBeUndefined();

      const [queue, ...more] = queuesOf(deployment!.spec.template.spec.containers[0]);
      expect(more, `${name}: one queue per scaled Deployment`).toEqual([]);
      const pool = config.queues[queue!]!;
      expect(scaled.spec.minReplicaCount, `${name}: queues.${queue}.min`).toBe(pool.min);
      expect(scaled.spec.maxReplicaCount, `${name}: queues.${queue}.max`).toBe(pool.max);
      expect(scaled.spec.cooldownPeriod, name).toBeGreaterThan(0);

      expect(scaled.spec.triggers).toHaveLength(1);
      const trigger = scaled.spec.triggers[0];
      expect(trigger.type).toBe("prometheus");
      const perProcess =
        (pool as { targetBacklogPerProcess?: number }).targetBacklogPerProcess ?? pool.concurrency;
      expect(
        trigger.metadata.threshold,
        `${name}: queues.${queue}.targetBacklogPerProcess ?? concurrency`,
      ).toBe(String(perProcess));
      const query: string = trigger.metadata.query;
      expect(query).toContain(`flowline_queue_backlog{queue="${queue}"}`);
      const selectors = [...query.matchAll(/(flowline_\w+)\{([^}]*)\}/g)];
      for (const [, metric, labels] of selectors) {
        expect(["flowline_queue_backlog", "flowline_queue_active"], name).toContain(metric);
        expect(labels, `${name}: ${metric}`).toBe(`queue="${queue}"`);
      }
    }
  });
});

describe("docker-compose.yml", () => {
  const compose = parse(readFileSync(join(ROOT, "docker-compose.yml"), "utf8"), { merge: true });
  const all: Record<string, Obj> = compose.services;
  /** The services `docker compose up` starts (no profile): the Redis deployment. */
  const services: Record<string, Obj> = Object.fromEntries(
    Object.entries(all).filter(([, s]) => s.profiles === undefined),
  );
  const flowline = Object.entries(services).filter(([, s]) => s.build !== undefined);
  const postgresOnly = Object.entries(all).filter(([, s]) => s.profiles?.includes("postgres-only"));

  it("runs Postgres, Redis and each Flowline process as its own service", () => {
    expect(Object.keys(services).sort()).toEqual(["api", "postgres", "redis", "supervisor", "workers"]);
    expect(Object.fromEntries(flowline.map(([name, s]) => [name, s.command[0]]))).toEqual({
      api: "api",
      supervisor: "supervisor",
      workers: "workers",
    });
    expect(services.api!.ports).toEqual(["3000:3000"]);
  });

  it("runs Redis so that it never evicts and persists every second", () => {
    const command: string[] = services.redis!.command;
    const flag = (name: string) => command[command.indexOf(name) + 1];
    expect(flag("--maxmemory-policy")).toBe("noeviction");
    expect(flag("--appendonly")).toBe("yes");
    expect(flag("--appendfsync")).toBe("everysec");
  });

  it("starts each service after what it needs is healthy", () => {
    for (const [name, service] of Object.entries(services)) {
      for (const [dependency, { condition }] of Object.entries<Obj>(service.depends_on ?? {})) {
        expect(services[dependency], `${name} → ${dependency}`).toBeDefined();
        expect(condition, `${name} → ${dependency}`).toBe("service_healthy");
        // A dependency must have a health check that is not switched off.
        const check = services[dependency]!.healthcheck;
        expect(check === undefined ? dependency === "api" : check.disable !== true, dependency).toBe(true);
      }
    }
    for (const [name, service] of flowline) {
      expect(Object.keys(service.depends_on ?? {}), name).toEqual(
        expect.arrayContaining(["postgres", "redis"]),
      );
      expect(service.init, `${name}: init`).toBe(true);
    }
    expect(Object.keys(services.supervisor!.depends_on)).toContain("api");
    expect(Object.keys(services.workers!.depends_on)).toContain("api");
  });

  it("has a postgres-only profile: the same roles on Postgres alone, with no Redis anywhere", () => {
    expect(Object.fromEntries(postgresOnly.map(([name, s]) => [name, s.command[0]]))).toEqual({
      "api-pg": "api",
      "supervisor-pg": "supervisor",
      "workers-pg": "workers",
    });
    for (const [name, service] of postgresOnly) {
      expect(service.environment.DATABASE_URL, name).toMatch(/@postgres:5432\//);
      expect(service.environment.REDIS_URL, name).toBeUndefined();
      expect(service.init, `${name}: init`).toBe(true);
      for (const [dependency, { condition }] of Object.entries<Obj>(service.depends_on ?? {})) {
        expect(["postgres", "api-pg"], `${name} → ${dependency}`).toContain(dependency);
        expect(condition).toBe("service_healthy");
      }
    }
  });
});
