import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import { stackExports } from "../cli/commands/run.js";
import { readConfigFile, SettingsResolver, type SettingSpec } from "../cli/config.js";
import {
  ConfigError,
  DEFAULTS,
  forgetSecrets,
  loadConnectionConfig,
  portOf,
  redactSecrets,
  shownValue,
} from "../config/index.js";
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

describe("config errors never echo a secret", () => {
  const SECRET = "S3cr3t-Cfg-4e1a";
  const scratch = mkdtempSync(join(tmpdir(), "mcpo-config-secrets-"));
  afterAll(() => {
    rmSync(scratch, { recursive: true, force: true });
    forgetSecrets();
  });

  it("connection settings: the value is shown with its password and secret parameters redacted", () => {
    const cases: [Record<string, string>, string, string][] = [
      [
        { DATABASE_URL: `mysql://u:${SECRET}@db:3306/obs?sslmode=require` },
        "DATABASE_URL",
        '"mysql://u:***@db:3306/obs?sslmode=require"',
      ],
      [
        { DATABASE_URL: `mysql://db/obs?password=${SECRET}&sslpassword=${SECRET}` },
        "DATABASE_URL",
        '"mysql://db/obs?password=***&sslpassword=***"',
      ],
      [{ SCHEMA_REGISTRY_URL: `https://u:${SECRET}@` }, "SCHEMA_REGISTRY_URL", '"https://u:***@"'],
      [
        { SCHEMA_REGISTRY_URL: `ftp://u:${SECRET}@reg` },
        "SCHEMA_REGISTRY_URL",
        '"ftp://u:***@reg"',
      ],
    ];
    for (const [env, key, shown] of cases) {
      const error = configError(() => loadConnectionConfig({}, env));
      expect(error.key).toBe(key);
      expect(error.message).toContain(`(got ${shown})`);
      expect(error.message).not.toContain(SECRET);
      expect(error.stack).not.toContain(SECRET);
    }
  });

  it("shownValue: a secret setting's value never, any other redacted", () => {
    for (const name of [
      "KAFKA_SASL_PASSWORD",
      "KAFKA_SASL_OAUTHBEARER_TOKEN",
      "KAFKA_SSL_KEY_PASSWORD",
      "SCHEMA_REGISTRY_PASSWORD",
      "SCHEMA_REGISTRY_TOKEN",
      "kafka.saslPassword in ./x.yaml",
    ])
      expect(shownValue(name, "plain-looking"), name).toBe("a secret, not shown");
    expect(shownValue("DATABASE_URL", `postgres://u:${SECRET}@h/db`)).toBe(
      '"postgres://u:***@h/db"',
    );
    expect(shownValue("--window", 12)).toBe("12");
    expect(shownValue("metrics", { webhook: { token: SECRET } })).toBe(
      '{"webhook":{"token":"***"}}',
    );
    expect(shownValue("anything", "x", true)).toBe("a secret, not shown");
  });

  it("CLI settings: a secret setting's value is never in the message, another's without its secrets", () => {
    const setting = (
      fields: Partial<SettingSpec> & Pick<SettingSpec, "name" | "kind">,
    ): SettingSpec => ({
      key: `test.${fields.name}`,
      flag: `--${fields.name}`,
      option: fields.name,
      env: undefined,
      defaultText: "none",
      defaultValue: undefined,
      description: fields.name,
      ...fields,
    });
    const token = setting({ name: "hashToken", kind: "int", env: "MCPO_HASH_TOKEN" });
    const marked = setting({ name: "opaque", kind: "duration", env: "MCPO_OPAQUE", secret: true });
    const window = setting({ name: "window", kind: "duration", env: "MCPO_WINDOW" });
    const flag = setting({ name: "enabled", kind: "boolean", env: "MCPO_ENABLED" });
    const env = {
      MCPO_HASH_TOKEN: SECRET,
      MCPO_OPAQUE: SECRET,
      MCPO_WINDOW: `postgres://u:${SECRET}@h`,
      MCPO_ENABLED: `token=${SECRET}`,
    };
    const resolver = new SettingsResolver({}, undefined, env);
    const messages = [
      configError(() => resolver.int(token)).message,
      configError(() => resolver.duration(marked)).message,
      configError(() => resolver.duration(window)).message,
      configError(() => resolver.boolean(flag)).message,
      configError(() =>
        new SettingsResolver({ logLevel: `password=${SECRET}` }, undefined, {}).logLevel(),
      ).message,
    ];
    expect(messages[0]).toBe(
      `invalid configuration MCPO_HASH_TOKEN: expected an integer from ${Number.MIN_SAFE_INTEGER} to ${Number.MAX_SAFE_INTEGER} (got a secret, not shown)`,
    );
    expect(messages[1]).toContain("(got a secret, not shown)");
    expect(messages[2]).toContain('(got "postgres://u:***@h")');
    expect(messages[3]).toContain('(got "token=***")');
    expect(messages[4]).toContain('(got "password=***")');
    for (const message of messages) expect(message).not.toContain(SECRET);
  });

  it("a config file that does not parse is reported without its text", () => {
    const cases: [string, string][] = [
      ["bad.yaml", `kafka:\n  saslPassword: ${SECRET}\n   bad: [\n`],
      ["quote.yaml", `kafka:\n  saslPassword: "${SECRET}\n  other: 1\n`],
      ["bad.json", `{"kafka": {"saslPassword": ${SECRET}}}`],
      ["cut.json", `{"kafka": {"saslPassword": "${SECRET}"}`],
    ];
    for (const [name, text] of cases) {
      const path = join(scratch, name);
      writeFileSync(path, text);
      const error = configError(() => readConfigFile(path));
      expect(error.message, name).toMatch(/is not valid (YAML|JSON): \S/);
      expect(error.message, name).not.toContain(SECRET);
      expect(error.message, name).not.toContain(SECRET.slice(0, 4));
    }
  });

  it("a config file's secrets are redacted wherever they would appear", () => {
    const path = join(scratch, "secrets.yaml");
    writeFileSync(
      path,
      `kafka:\n  saslPassword: ${SECRET}\ndatabaseUrl: postgresql://u:Other-${SECRET}@db/obs\n`,
    );
    readConfigFile(path);
    expect(redactSecrets(`auth failed with ${SECRET} and Other-${SECRET}`)).toBe(
      "auth failed with *** and ***",
    );
  });

  it("stack up prints a DATABASE_URL with a password without it, and does not export it", () => {
    const endpoints = {
      kafkaBrokers: "127.0.0.1:9092",
      schemaRegistryUrl: "http://127.0.0.1:8081/apis/ccompat/v7",
    };
    expect(
      stackExports({ ...endpoints, databaseUrl: "postgresql://postgres@127.0.0.1:5432/x" }),
    ).toEqual([
      "export KAFKA_BROKERS=127.0.0.1:9092",
      "export SCHEMA_REGISTRY_URL=http://127.0.0.1:8081/apis/ccompat/v7",
      "export DATABASE_URL=postgresql://postgres@127.0.0.1:5432/x",
    ]);
    for (const databaseUrl of [
      `postgresql://u:${SECRET}@db:5432/x`,
      `postgresql://u@db:5432/x?password=${SECRET}`,
    ]) {
      const lines = stackExports({ ...endpoints, databaseUrl });
      expect(lines.join("\n")).not.toContain(SECRET);
      expect(lines[2]).toMatch(
        /^# DATABASE_URL: postgresql:\/\/u(:\*\*\*)?@db:5432\/x.*not printed/,
      );
    }
  });
});
