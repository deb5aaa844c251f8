import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import { parse } from "yaml";
import { describe, expect, it } from "vitest";

import { DEFAULTS, ENV_NAMES, portOf } from "../config/index.js";
import { IMAGES } from "./support/images.js";

interface ComposeService {
  image?: string;
  ports?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
}
interface ComposeFile {
  services: Record<string, ComposeService>;
  "x-mcp-observatory-env": Record<string, string>;
}

const composePath = fileURLToPath(new URL("../docker-compose.yml", import.meta.url));
const compose = parse(readFileSync(composePath, "utf8")) as ComposeFile;

function service(name: string): ComposeService {
  const found = compose.services[name];
  if (!found) throw new Error(`docker-compose.yml has no service ${name}`);
  return found;
}

/** `127.0.0.1:9092:9092` → host 9092, container 9092. */
function portMapping(entry: string): { host: number; container: number } {
  const parts = entry.split(":");
  return { host: Number(parts.at(-2)), container: Number(parts.at(-1)) };
}

describe("docker-compose.yml", () => {
  it("parses and has kafka, schema-registry and postgres from the harness's images", () => {
    expect(service("kafka").image).toBe(IMAGES.kafka);
    expect(service("schema-registry").image).toBe(IMAGES.registry);
    expect(service("postgres").image).toBe(IMAGES.postgres);
  });

  it("publishes Kafka on the default broker port and advertises that address", () => {
    const kafka = service("kafka");
    const published = (kafka.ports ?? []).map(portMapping);
    expect(published).toContainEqual({
      host: portOf(DEFAULTS.kafkaBrokers),
      container: portOf(DEFAULTS.kafkaBrokers),
    });
    expect(kafka.environment?.KAFKA_ADVERTISED_LISTENERS).toBe(
      `PLAINTEXT://${DEFAULTS.kafkaBrokers}`,
    );
    // One node: internal topics must not ask for more replicas than exist.
    expect(kafka.environment?.KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR).toBe("1");
    expect(kafka.environment?.KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR).toBe("1");
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
  });

  it("documents the client settings under the project's env names and defaults", () => {
    expect(compose["x-mcp-observatory-env"]).toEqual({
      [ENV_NAMES.kafkaBrokers]: DEFAULTS.kafkaBrokers,
      [ENV_NAMES.schemaRegistryUrl]: DEFAULTS.schemaRegistryUrl,
      [ENV_NAMES.databaseUrl]: DEFAULTS.databaseUrl,
    });
  });

  it("mounts only files that exist in the repository", () => {
    for (const svc of Object.values(compose.services)) {
      for (const volume of svc.volumes ?? []) {
        const source = volume.split(":")[0] ?? "";
        if (!source.startsWith("./")) continue;
        expect(() => readFileSync(new URL(`../${source.slice(2)}`, import.meta.url))).not.toThrow();
      }
    }
  });
});
