/**
 * docker-compose.yml, the Dockerfile and the Prometheus and Grafana provisioning, checked against
 * the project's own settings (config/, the CLI's commands and their defaults), since no Docker
 * engine runs them here. prometheus.yml is also checked by Prometheus's own `promtool`.
 */
import { execFile } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { posix } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import type { Command } from "commander";
import { parse } from "yaml";
import { describe, expect, it } from "vitest";

import { buildProgram } from "../cli/main.js";
import { PROCESSOR_SETTINGS, SINK_SETTINGS } from "../cli/config.js";
import { DEFAULTS, ENV_NAMES, portOf } from "../config/index.js";
import { IMAGES } from "./support/images.js";

const run = promisify(execFile);

interface Healthcheck {
  test?: string | string[];
  disable?: boolean;
}
interface ComposeService {
  image?: string;
  build?: string | { context?: string; dockerfile?: string };
  command?: string[];
  ports?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  healthcheck?: Healthcheck;
  profiles?: string[];
  depends_on?: Record<string, { condition?: string }> | string[];
}
interface ComposeFile {
  services: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
  "x-mcp-observatory-env": Record<string, string>;
}

const root = (path: string): string => fileURLToPath(new URL(`../${path}`, import.meta.url));
const text = (path: string): string => readFileSync(root(path), "utf8");
// `<<: *anchor` merge keys, as docker compose reads them.
const yaml = (path: string): unknown => parse(text(path), { merge: true });

const compose = yaml("docker-compose.yml") as ComposeFile;
const pkg = JSON.parse(text("package.json")) as { bin: Record<string, string>; files: string[] };

function service(name: string): ComposeService {
  const found = compose.services[name];
  if (!found) throw new Error(`docker-compose.yml has no service ${name}`);
  return found;
}

/** The services that run this project's image (the CLI), by name. */
const cliServices = Object.entries(compose.services).filter(([, svc]) => svc.build !== undefined);

/** `127.0.0.1:9092:9092` → host 9092, container 9092. */
function portMapping(entry: string): { host: number; container: number } {
  const parts = entry.split(":");
  return { host: Number(parts.at(-2)), container: Number(parts.at(-1)) };
}

/** `kafka-data:/var/lib/kafka/data:ro` → source and target. */
function mount(entry: string): { source: string; target: string } {
  const [source = "", target = ""] = entry.split(":");
  return { source, target };
}

/** The CLI command a service runs (`["alerts", "forward"]`), from the program itself. */
function commandOf(args: readonly string[]): Command {
  let command: Command = buildProgram(() => undefined);
  for (const name of args.filter((arg) => !arg.startsWith("-"))) {
    const next = command.commands.find((candidate) => candidate.name() === name);
    if (!next) throw new Error(`mcp-observatory has no command ${args.join(" ")}`);
    command = next;
  }
  return command;
}

/** The variables a command reads: its options' and the program's `[env NAME …]`. */
function envNamesOf(args: readonly string[]): Set<string> {
  const names = new Set<string>();
  for (let command: Command | null = commandOf(args); command; command = command.parent)
    for (const option of command.options)
      for (const match of option.description.matchAll(/\[env ([A-Z0-9_]+)/g))
        if (match[1]) names.add(match[1]);
  return names;
}

function healthcheckText(svc: ComposeService): string {
  const test = svc.healthcheck?.test;
  return Array.isArray(test) ? test.join(" ") : (test ?? "");
}

describe("docker-compose.yml", () => {
  it("parses and has kafka, schema-registry and postgres from the harness's images", () => {
    expect(service("kafka").image).toBe(IMAGES.kafka);
    expect(service("schema-registry").image).toBe(IMAGES.registry);
    expect(service("postgres").image).toBe(IMAGES.postgres);
  });

  it("publishes Kafka on the default broker port and advertises that address to the host", () => {
    const kafka = service("kafka");
    const published = (kafka.ports ?? []).map(portMapping);
    expect(published).toContainEqual({
      host: portOf(DEFAULTS.kafkaBrokers),
      container: portOf(DEFAULTS.kafkaBrokers),
    });
    const advertised = (kafka.environment?.KAFKA_ADVERTISED_LISTENERS ?? "").split(",");
    expect(advertised).toContain(`EXTERNAL://${DEFAULTS.kafkaBrokers}`);
    // One node: internal topics must not ask for more replicas than exist.
    expect(kafka.environment?.KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR).toBe("1");
    expect(kafka.environment?.KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR).toBe("1");
  });

  it("advertises an internal listener under the service's name, the one every CLI service uses", () => {
    const env = service("kafka").environment ?? {};
    const advertised = new Map(
      (env.KAFKA_ADVERTISED_LISTENERS ?? "").split(",").map((entry) => {
        const [name = "", address = ""] = entry.split("://");
        return [name, address] as const;
      }),
    );
    const internal = advertised.get("INTERNAL");
    expect(internal, "INTERNAL in KAFKA_ADVERTISED_LISTENERS").toBeDefined();
    const [host, port] = (internal ?? "").split(":");
    expect(host).toBe("kafka");
    // Every advertised listener is bound, and each has a security protocol.
    const listeners = (env.KAFKA_LISTENERS ?? "").split(",").map((entry) => entry.split("://")[0]);
    const protocols = new Map(
      (env.KAFKA_LISTENER_SECURITY_PROTOCOL_MAP ?? "")
        .split(",")
        .map((entry) => entry.split(":") as [string, string]),
    );
    for (const name of [...advertised.keys(), "CONTROLLER"]) {
      expect(listeners, `${name} in KAFKA_LISTENERS`).toContain(name);
      expect(protocols.get(name), `${name} in KAFKA_LISTENER_SECURITY_PROTOCOL_MAP`).toBe(
        "PLAINTEXT",
      );
    }
    expect(env.KAFKA_LISTENERS).toContain(`INTERNAL://0.0.0.0:${port}`);
    expect(env.KAFKA_INTER_BROKER_LISTENER_NAME).toBe("INTERNAL");
    expect(cliServices.length).toBeGreaterThanOrEqual(4);
    for (const [name, svc] of cliServices)
      expect(svc.environment?.[ENV_NAMES.kafkaBrokers], name).toBe(internal);
  });

  it("keeps Kafka's log on its volume (KAFKA_LOG_DIRS under the mounted data folder)", () => {
    const kafka = service("kafka");
    const logDirs = (kafka.environment?.KAFKA_LOG_DIRS ?? "").split(",").filter(Boolean);
    expect(logDirs.length, "KAFKA_LOG_DIRS is set").toBeGreaterThan(0);
    const named = (kafka.volumes ?? [])
      .map(mount)
      .filter((volume) => Object.keys(compose.volumes ?? {}).includes(volume.source));
    expect(named.length, "kafka mounts a named volume").toBeGreaterThan(0);
    for (const dir of logDirs)
      expect(
        named.some(
          (volume) =>
            dir === volume.target || dir.startsWith(`${volume.target.replace(/\/$/, "")}/`),
        ),
        `${dir} is on a mounted volume`,
      ).toBe(true);
  });

  it("publishes the registry's ccompat API on the default registry port", () => {
    const published = (service("schema-registry").ports ?? []).map(portMapping);
    expect(published.map((p) => p.host)).toContain(portOf(DEFAULTS.schemaRegistryUrl));
    expect(new URL(DEFAULTS.schemaRegistryUrl).pathname).toBe("/apis/ccompat/v7");
  });

  it("creates the default database and user on the default PostgreSQL port", () => {
    const postgres = service("postgres");
    const url = new URL(DEFAULTS.databaseUrl);
    expect((postgres.ports ?? []).map(portMapping)).toContainEqual({
      host: portOf(DEFAULTS.databaseUrl),
      container: 5432,
    });
    expect(postgres.environment?.POSTGRES_DB).toBe(url.pathname.slice(1));
    expect(postgres.environment?.POSTGRES_USER).toBe(url.username);
    // date_bin, which the schema uses, is PostgreSQL 14+.
    expect(Number(/^postgres:(\d+)/.exec(postgres.image ?? "")?.[1])).toBeGreaterThanOrEqual(14);
  });

  it("documents the client settings under the project's env names and defaults", () => {
    expect(compose["x-mcp-observatory-env"]).toEqual({
      [ENV_NAMES.kafkaBrokers]: DEFAULTS.kafkaBrokers,
      [ENV_NAMES.schemaRegistryUrl]: DEFAULTS.schemaRegistryUrl,
      [ENV_NAMES.databaseUrl]: DEFAULTS.databaseUrl,
    });
  });

  it("gives every service a healthcheck, and every depends_on waits for service_healthy", () => {
    for (const [name, svc] of Object.entries(compose.services)) {
      expect(healthcheckText(svc), `${name} healthcheck`).not.toBe("");
      expect(svc.healthcheck?.disable, name).not.toBe(true);
      expect(Array.isArray(svc.depends_on), `${name} depends_on is a map with conditions`).toBe(
        false,
      );
      const deps = (svc.depends_on ?? {}) as Record<string, { condition?: string }>;
      for (const [dep, condition] of Object.entries(deps)) {
        expect(compose.services[dep], `${name} depends on a service ${dep}`).toBeDefined();
        expect(condition.condition, `${name} → ${dep}`).toBe("service_healthy");
      }
    }
  });

  it("runs the CLI's processor, sink, ingest and alerts forward from the project's image", () => {
    const commands = Object.fromEntries(
      cliServices.map(([name, svc]) => [name, (svc.command ?? []).join(" ")]),
    );
    expect(commands).toMatchObject({
      processor: "processor",
      sink: "sink",
      ingest: "ingest",
      "alerts-forward": "alerts forward",
    });
    for (const [name, svc] of cliServices) {
      const build = typeof svc.build === "string" ? svc.build : (svc.build?.context ?? "");
      expect(build, `${name} builds the repository's Dockerfile`).toBe(".");
      expect(svc.environment?.[ENV_NAMES.schemaRegistryUrl], name).toBe(
        "http://schema-registry:8080/apis/ccompat/v7",
      );
    }
    const sinkDatabase = new URL(service("sink").environment?.[ENV_NAMES.databaseUrl] ?? "");
    expect(sinkDatabase.hostname).toBe("postgres");
    expect(sinkDatabase.pathname).toBe(new URL(DEFAULTS.databaseUrl).pathname);
    expect(Object.keys(service("sink").depends_on ?? {})).toContain("postgres");
  });

  it("starts the alert forwarder only with its profile while no destination is set (it stops without one)", () => {
    const forward = service("alerts-forward");
    const destinations = ["MCPO_WEBHOOK_URL", "MCPO_ALERTMANAGER_URL"].filter(
      (name) => forward.environment?.[name] !== undefined,
    );
    expect(destinations).toEqual([]);
    expect(forward.profiles).toEqual(["alerts"]);
    // The names its comment and the README give are the command's.
    for (const name of ["MCPO_WEBHOOK_URL", "MCPO_ALERTMANAGER_URL"])
      expect(envNamesOf(["alerts", "forward"]).has(name), name).toBe(true);
    // Every other service starts with a plain `up`.
    for (const [name, svc] of Object.entries(compose.services))
      if (name !== "alerts-forward") expect(svc.profiles, name).toBeUndefined();
  });

  it("sets only variables the command of each CLI service reads", () => {
    for (const [name, svc] of cliServices) {
      const known = envNamesOf(svc.command ?? []);
      expect(known.size, `${name}: variables of ${(svc.command ?? []).join(" ")}`).toBeGreaterThan(
        3,
      );
      for (const variable of Object.keys(svc.environment ?? {}))
        expect(known.has(variable), `${name} sets ${variable}, which its command reads`).toBe(true);
    }
  });

  it("serves each CLI service's metrics on its command's default port, on every interface, and checks /readyz there", () => {
    for (const [name, svc] of cliServices) {
      // `[env MCPO_METRICS_PORT, file processor.metricsPort, default 9464]`
      const help = commandOf(svc.command ?? []).options.find((o) => o.long === "--metrics-port");
      const port = Number(/default (\d+)\]/.exec(help?.description ?? "")?.[1]);
      expect(port, `${name}: the default of --metrics-port`).toBeGreaterThan(0);
      expect(svc.environment?.MCPO_METRICS_PORT, name).toBe(String(port));
      expect(svc.environment?.MCPO_METRICS_HOST, name).toBe("0.0.0.0");
      expect(healthcheckText(svc), name).toContain(`http://127.0.0.1:${port}/readyz`);
    }
    // The processor's and sink's as a local run serves them: 9464 and 9465 on the host too.
    expect(PROCESSOR_SETTINGS.find((s) => s.name === "metricsPort")?.defaultValue).toBe(9464);
    expect(SINK_SETTINGS.find((s) => s.name === "metricsPort")?.defaultValue).toBe(9465);
    for (const [name, port] of [
      ["processor", 9464],
      ["sink", 9465],
    ] as const)
      expect((service(name).ports ?? []).map(portMapping)).toContainEqual({
        host: port,
        container: port,
      });
  });

  it("listens for OTLP in the ingest container on every interface, on its default port", () => {
    const ingest = service("ingest");
    const port = commandOf(["ingest"]).options.find((o) => o.long === "--port");
    expect(port?.description).toMatch(/\[env MCPO_INGEST_PORT, .*default 4318\]/);
    expect(ingest.environment?.MCPO_INGEST_PORT).toBe("4318");
    expect(ingest.environment?.MCPO_INGEST_HOST).toBe("0.0.0.0");
  });

  it("publishes no host port twice", () => {
    const hostPorts = Object.values(compose.services).flatMap((svc) =>
      (svc.ports ?? []).map((entry) => portMapping(entry).host),
    );
    expect(hostPorts.length).toBeGreaterThan(5);
    expect(new Set(hostPorts).size).toBe(hostPorts.length);
  });

  it("publishes ingest's OTLP/HTTP port 4318, Prometheus on 9090 and Grafana on 3000", () => {
    expect((service("ingest").ports ?? []).map(portMapping)).toContainEqual({
      host: 4318,
      container: 4318,
    });
    expect((service("prometheus").ports ?? []).map(portMapping)).toContainEqual({
      host: 9090,
      container: 9090,
    });
    expect((service("grafana").ports ?? []).map(portMapping)).toContainEqual({
      host: 3000,
      container: 3000,
    });
  });

  it("binds every published port to loopback only", () => {
    for (const [name, svc] of Object.entries(compose.services))
      for (const entry of svc.ports ?? [])
        expect(entry.startsWith("127.0.0.1:"), `${name} ${entry}`).toBe(true);
  });

  it("mounts only files and folders that exist in the repository", () => {
    for (const svc of Object.values(compose.services)) {
      for (const volume of svc.volumes ?? []) {
        const { source } = mount(volume);
        if (!source.startsWith("./")) continue;
        expect(existsSync(root(source.slice(2))), source).toBe(true);
      }
    }
  });
});

describe("Dockerfile", () => {
  // Read in each test: a missing file fails its tests, not the whole file's collection.
  const stagesOf = (): string[] =>
    text("Dockerfile")
      .split(/^FROM /m)
      .slice(1);

  it("builds with npm ci and npm run build on node:20, and runs on a slim node:20 with production dependencies only", () => {
    const stages = stagesOf();
    const [builder = "", runtime = ""] = stages;
    expect(stages).toHaveLength(2);
    expect(builder).toMatch(/^node:20[\w.-]* AS build\b/);
    expect(builder).toMatch(/^RUN npm ci\b/m);
    expect(builder).toMatch(/^RUN npm run build\b/m);
    expect(runtime).toMatch(/^node:20[\w.-]*-slim\b/);
    expect(runtime).toMatch(/^RUN npm ci --omit=dev\b/m);
    expect(runtime).toMatch(/^COPY --from=build \/app\/dist \.\/dist$/m);
  });

  it("runs as a user other than root", () => {
    const runtime = stagesOf()[1] ?? "";
    const user = /^USER (\S+)$/m.exec(runtime)?.[1];
    expect(user).toBeDefined();
    expect(["root", "0"]).not.toContain(user);
    // After the last RUN: nothing runs as root at start.
    expect(runtime.lastIndexOf("\nUSER ")).toBeGreaterThan(runtime.lastIndexOf("\nRUN "));
  });

  it("starts the package's bin, and ships what the package ships for running", () => {
    const runtime = stagesOf()[1] ?? "";
    const entrypoint = JSON.parse(/^ENTRYPOINT (.+)$/m.exec(runtime)?.[1] ?? "[]") as string[];
    expect(entrypoint[0]).toBe("node");
    expect(posix.normalize(entrypoint[1] ?? "")).toBe(
      posix.normalize(pkg.bin["mcp-observatory"] ?? "-"),
    );
    const copied = [...runtime.matchAll(/^COPY (?:--[\w=/-]+ )*(\S+) /gm)].map(
      (m) => m[1]?.split("/*")[0],
    );
    const docs = ["README.md", "ARCHITECTURE.md", "LICENSE", "docker-compose.yml"];
    // Each entry up to its first pattern: `avro/*.avsc` is in the folder avro.
    const shipped = pkg.files.filter((file) => !docs.includes(file)).map((f) => f.split("/*")[0]);
    for (const entry of shipped)
      expect(
        copied.some((source) => source === entry || source === `/app/${entry}`),
        `${entry} in the runtime image`,
      ).toBe(true);
  });

  it("keeps the build context small: no node_modules, dist or local stack", () => {
    const ignored = text(".dockerignore").split("\n");
    for (const entry of ["node_modules", "dist", ".stack", ".git"])
      expect(ignored).toContain(entry);
  });
});

interface PrometheusConfig {
  scrape_configs: { job_name: string; static_configs: { targets: string[] }[] }[];
}

describe("Prometheus and Grafana provisioning", () => {
  it("scrapes every CLI service that serves metrics, at its service name and configured port", () => {
    const prometheus = yaml("deploy/prometheus/prometheus.yml") as PrometheusConfig;
    const targets = prometheus.scrape_configs.flatMap((job) =>
      job.static_configs.flatMap((c) => c.targets),
    );
    const serving = cliServices
      .filter(([, svc]) => svc.environment?.MCPO_METRICS_PORT !== undefined)
      .map(([name, svc]) => `${name}:${svc.environment?.MCPO_METRICS_PORT}`);
    expect(serving).toEqual(
      expect.arrayContaining(["processor:9464", "sink:9465", "ingest:9467", "alerts-forward:9466"]),
    );
    expect(targets.sort()).toEqual(serving.sort());
    expect(service("prometheus").volumes?.map(mount)).toContainEqual({
      source: "./deploy/prometheus/prometheus.yml",
      target: "/etc/prometheus/prometheus.yml",
    });
  });

  it("is a valid Prometheus configuration (promtool check config)", async () => {
    const { stdout, stderr } = await run("promtool", [
      "check",
      "config",
      root("deploy/prometheus/prometheus.yml"),
    ]);
    expect(`${stdout}${stderr}`).toContain("SUCCESS");
  });

  interface Datasource {
    name: string;
    type: string;
    uid: string;
    url: string;
    user?: string;
    jsonData?: { database?: string; sslmode?: string };
  }
  it("provisions Grafana's datasources with the dashboards' uids: PostgreSQL (the project's database) and Prometheus", () => {
    const datasources = yaml("deploy/grafana/provisioning/datasources/mcp-observatory.yml") as {
      apiVersion: number;
      datasources: Datasource[];
    };
    expect(datasources.apiVersion).toBe(1);
    const byUid = new Map(datasources.datasources.map((ds) => [ds.uid, ds]));
    expect([...byUid.keys()].sort()).toEqual(["mcpo-postgres", "mcpo-prometheus"]);
    const postgres = byUid.get("mcpo-postgres");
    expect(postgres?.type).toBe("grafana-postgresql-datasource");
    expect(postgres?.url).toBe(`postgres:${portOf(DEFAULTS.databaseUrl)}`);
    expect(postgres?.jsonData?.database).toBe(new URL(DEFAULTS.databaseUrl).pathname.slice(1));
    expect(postgres?.user).toBe(new URL(DEFAULTS.databaseUrl).username);
    const prom = byUid.get("mcpo-prometheus");
    expect(prom?.type).toBe("prometheus");
    expect(prom?.url).toBe("http://prometheus:9090");
  });

  it("loads dashboards from deploy/grafana/dashboards, mounted where the provider looks", () => {
    const dashboards = yaml("deploy/grafana/provisioning/dashboards/mcp-observatory.yml") as {
      apiVersion: number;
      providers: { type: string; options: { path: string } }[];
    };
    expect(dashboards.apiVersion).toBe(1);
    const mounts = (service("grafana").volumes ?? []).map(mount);
    expect(mounts).toContainEqual({
      source: "./deploy/grafana/provisioning",
      target: "/etc/grafana/provisioning",
    });
    const folder = mounts.find((m) => m.source === "./deploy/grafana/dashboards");
    expect(folder, "deploy/grafana/dashboards is mounted").toBeDefined();
    expect(dashboards.providers.map((p) => [p.type, p.options.path])).toEqual([
      ["file", folder?.target],
    ]);
    expect(statSync(root("deploy/grafana/provisioning/datasources")).isDirectory()).toBe(true);
  });
});
