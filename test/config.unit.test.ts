import { describe, expect, it } from "vitest";

import { ConfigError, DEFAULTS, loadConnectionConfig, portOf } from "../config/index.js";
import { loadStackConfig, readStackVersions } from "../stack/config.js";
import { IMAGES } from "./support/images.js";

function configError(run: () => unknown): ConfigError {
  try {
    run();
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error("expected a ConfigError");
}

describe("connection config", () => {
  it("falls back to the defaults when nothing is set", () => {
    const config = loadConnectionConfig({}, {});
    expect(config.kafkaBrokers).toEqual([DEFAULTS.kafkaBrokers]);
    expect(config.schemaRegistryUrl).toBe(DEFAULTS.schemaRegistryUrl);
    expect(config.databaseUrl).toBe(DEFAULTS.databaseUrl);
    expect(Object.isFrozen(config)).toBe(true);
  });

  it("takes options over environment over defaults", () => {
    const env = {
      KAFKA_BROKERS: "a:1, b:2",
      SCHEMA_REGISTRY_URL: "http://reg:8081/apis/ccompat/v7/",
    };
    expect(loadConnectionConfig({}, env).kafkaBrokers).toEqual(["a:1", "b:2"]);
    expect(loadConnectionConfig({}, env).schemaRegistryUrl).toBe("http://reg:8081/apis/ccompat/v7");
    expect(loadConnectionConfig({ kafkaBrokers: ["c:3"] }, env).kafkaBrokers).toEqual(["c:3"]);
  });

  it("names the environment variable that is wrong", () => {
    const error = configError(() => loadConnectionConfig({}, { KAFKA_BROKERS: "no-port-here" }));
    expect(error.key).toBe("KAFKA_BROKERS");
    expect(error.message).toContain("KAFKA_BROKERS");
    expect(error.message).toContain("host:port");

    expect(configError(() => loadConnectionConfig({}, { DATABASE_URL: "mysql://x/y" })).key).toBe(
      "DATABASE_URL",
    );
    expect(
      configError(() => loadConnectionConfig({}, { SCHEMA_REGISTRY_URL: "ftp://x" })).key,
    ).toBe("SCHEMA_REGISTRY_URL");
    expect(configError(() => loadConnectionConfig({}, { MCPO_TOPIC_PREFIX: "a b" })).key).toBe(
      "MCPO_TOPIC_PREFIX",
    );
  });

  it("names the option, not the variable, when an option is wrong", () => {
    expect(configError(() => loadConnectionConfig({ databaseUrl: "nope" }, {})).key).toBe(
      "databaseUrl",
    );
  });

  it("reads ports from addresses and URLs", () => {
    expect(portOf("127.0.0.1:9092")).toBe(9092);
    expect(portOf("http://h:8081/apis")).toBe(8081);
    expect(portOf("postgresql://u@h/db")).toBe(5432);
  });
});

describe("local stack config", () => {
  it("serves the library's default addresses when nothing is set", () => {
    const config = loadStackConfig({});
    expect(config.kafkaPort).toBe(portOf(DEFAULTS.kafkaBrokers));
    expect(config.registryPort).toBe(portOf(DEFAULTS.schemaRegistryUrl));
    expect(config.databaseUrl).toBe(DEFAULTS.databaseUrl);
  });

  it("rejects a bad port, heap or a port used twice, naming the key", () => {
    expect(configError(() => loadStackConfig({ STACK_KAFKA_PORT: "70000" })).key).toBe(
      "STACK_KAFKA_PORT",
    );
    expect(configError(() => loadStackConfig({ STACK_KAFKA_HEAP: "lots" })).key).toBe(
      "STACK_KAFKA_HEAP",
    );
    const clash = configError(() => loadStackConfig({ STACK_REGISTRY_PORT: "9092" }));
    expect(clash.key).toBe("STACK_REGISTRY_PORT");
    expect(clash.message).toContain("STACK_KAFKA_PORT");
  });

  it("runs the same versions as the container images", () => {
    const versions = readStackVersions();
    expect(IMAGES.kafka).toBe(`apache/kafka:${versions.kafka}`);
    expect(IMAGES.registry).toBe(`apicurio/apicurio-registry:${versions.apicurio}`);
  });
});
