import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import { readConfigFile, SECURITY, SettingsResolver } from "../cli/config.js";
import { ConfigError, endpointOptionsOf, loadConnectionConfig } from "../config/index.js";
import { kafkaSettingsOf } from "../kafka/index.js";

const dir = mkdtempSync(join(tmpdir(), "mcpo-security-config-"));
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

const CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

function configError(action: () => unknown): ConfigError {
  try {
    action();
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error("expected a ConfigError");
}

describe("Kafka security settings", () => {
  it("nothing set: plaintext, no SASL, no registry credentials", () => {
    const connection = loadConnectionConfig({}, {});
    expect(connection.kafkaTls).toBeUndefined();
    expect(connection.kafkaSasl).toBeUndefined();
    expect(connection.schemaRegistry).toEqual({ url: connection.schemaRegistryUrl });
    expect(kafkaSettingsOf(connection, "c")).toEqual({
      brokers: connection.kafkaBrokers,
      clientId: "c",
    });
  });

  it("SCRAM over TLS from the environment, the password from a file, the CA read", () => {
    const connection = loadConnectionConfig(
      {},
      {
        KAFKA_SECURITY_PROTOCOL: "sasl_ssl",
        KAFKA_SASL_MECHANISM: "SCRAM-SHA-512",
        KAFKA_SASL_USERNAME: "replica",
        KAFKA_SASL_PASSWORD_FILE: file("password", "p4ss\n"),
        KAFKA_SSL_CA_FILE: file("ca.pem", CA),
      },
    );
    expect(connection.kafkaSasl).toEqual({
      mechanism: "scram-sha-512",
      username: "replica",
      password: "p4ss",
    });
    expect(connection.kafkaTls).toEqual({ ca: CA, verifyHostname: true });
    const settings = kafkaSettingsOf(connection, "x");
    expect(settings.tls?.ca).toBe(CA);
    expect(settings.sasl?.mechanism).toBe("scram-sha-512");
    // The component options carry the same objects on.
    expect(loadConnectionConfig(endpointOptionsOf(connection), {}).kafkaSasl).toEqual(
      connection.kafkaSasl,
    );
  });

  it("a mechanism alone means SASL_SSL; a CA alone means SSL", () => {
    const sasl = loadConnectionConfig(
      {},
      { KAFKA_SASL_MECHANISM: "PLAIN", KAFKA_SASL_USERNAME: "u", KAFKA_SASL_PASSWORD: "p" },
    );
    expect(sasl.kafkaTls).toEqual({ verifyHostname: true });
    expect(sasl.kafkaSasl?.mechanism).toBe("plain");
    const tls = loadConnectionConfig({}, { KAFKA_SSL_CA_FILE: file("ca2.pem", CA) });
    expect(tls.kafkaTls?.ca).toBe(CA);
    expect(tls.kafkaSasl).toBeUndefined();
  });

  it("OAUTHBEARER from a token file reads the file at each authentication (rotation)", async () => {
    const tokenFile = file("token", "first\n");
    const connection = loadConnectionConfig(
      {},
      { KAFKA_SASL_MECHANISM: "OAUTHBEARER", KAFKA_SASL_OAUTHBEARER_TOKEN_FILE: tokenFile },
    );
    const sasl = connection.kafkaSasl;
    if (sasl?.mechanism !== "oauthbearer") throw new Error("expected oauthbearer");
    expect(await sasl.oauthBearerProvider()).toEqual({ value: "first" });
    writeFileSync(tokenFile, "second");
    expect(await sasl.oauthBearerProvider()).toEqual({ value: "second" });
  });

  it("the library's token provider and TLS objects replace the environment's settings", async () => {
    const connection = loadConnectionConfig(
      {
        kafkaSasl: {
          mechanism: "oauthbearer",
          oauthBearerProvider: () => Promise.resolve({ value: "t" }),
        },
        kafkaTls: { ca: CA },
      },
      { KAFKA_SASL_MECHANISM: "PLAIN" },
    );
    expect(connection.kafkaTls).toEqual({ ca: CA });
    const sasl = connection.kafkaSasl;
    if (sasl?.mechanism !== "oauthbearer") throw new Error("expected oauthbearer");
    expect(await sasl.oauthBearerProvider()).toEqual({ value: "t" });
  });

  it("hostname verification can be turned off (the chain is still checked)", () => {
    const connection = loadConnectionConfig(
      {},
      { KAFKA_SECURITY_PROTOCOL: "SSL", KAFKA_SSL_VERIFY_HOSTNAME: "false" },
    );
    expect(connection.kafkaTls).toEqual({ verifyHostname: false });
  });

  it.each([
    [
      { KAFKA_SECURITY_PROTOCOL: "SASL_SSL" },
      "KAFKA_SECURITY_PROTOCOL",
      /SASL_SSL needs a SASL mechanism \(KAFKA_SASL_MECHANISM\)/,
    ],
    [
      { KAFKA_SECURITY_PROTOCOL: "TLS" },
      "KAFKA_SECURITY_PROTOCOL",
      /expected one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL \(got "TLS"\)/,
    ],
    [
      { KAFKA_SASL_MECHANISM: "GSSAPI" },
      "KAFKA_SASL_MECHANISM",
      /expected PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER/,
    ],
    [{ KAFKA_SASL_MECHANISM: "SCRAM-SHA-256" }, "KAFKA_SASL_USERNAME", /needs a user name/],
    [
      { KAFKA_SASL_MECHANISM: "SCRAM-SHA-256", KAFKA_SASL_USERNAME: "u" },
      "KAFKA_SASL_PASSWORD",
      /needs a password: set KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE/,
    ],
    [{ KAFKA_SASL_MECHANISM: "OAUTHBEARER" }, "KAFKA_SASL_OAUTHBEARER_TOKEN", /needs a token/],
    [
      { KAFKA_SECURITY_PROTOCOL: "PLAINTEXT", KAFKA_SASL_MECHANISM: "PLAIN" },
      "KAFKA_SASL_MECHANISM",
      /needs KAFKA_SECURITY_PROTOCOL SASL_SSL or SASL_PLAINTEXT \(it is PLAINTEXT\)/,
    ],
    [
      { KAFKA_SECURITY_PROTOCOL: "SSL", KAFKA_SSL_CERT_FILE: "/nonexistent/cert.pem" },
      "KAFKA_SSL_CERT_FILE",
      /needs both KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE/,
    ],
    [
      { KAFKA_SECURITY_PROTOCOL: "SSL", KAFKA_SSL_CA_FILE: "/nonexistent/ca.pem" },
      "KAFKA_SSL_CA_FILE",
      /cannot read the file "\/nonexistent\/ca.pem" \(ENOENT\)/,
    ],
    [
      {
        KAFKA_SASL_MECHANISM: "PLAIN",
        KAFKA_SASL_USERNAME: "u",
        KAFKA_SASL_PASSWORD: "hunter2-secret",
        KAFKA_SASL_PASSWORD_FILE: "/x",
      },
      "KAFKA_SASL_PASSWORD_FILE",
      /give either KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both/,
    ],
  ])("%o is refused naming %s", (env, key, message) => {
    const error = configError(() => loadConnectionConfig({}, env));
    expect(error.key).toBe(key);
    expect(error.message).toMatch(message);
    expect(error.message).not.toContain("hunter2-secret");
  });
});

describe("registry credentials", () => {
  it("basic from the environment, bearer from a file, CA read", () => {
    const basic = loadConnectionConfig(
      {},
      {
        SCHEMA_REGISTRY_URL: "https://registry.example:8081/apis/ccompat/v7/",
        SCHEMA_REGISTRY_USERNAME: "reader",
        SCHEMA_REGISTRY_PASSWORD: "pw",
        SCHEMA_REGISTRY_CA_FILE: file("reg-ca.pem", CA),
      },
    );
    expect(basic.schemaRegistry).toEqual({
      url: "https://registry.example:8081/apis/ccompat/v7",
      auth: { kind: "basic", username: "reader", password: "pw" },
      ca: CA,
    });
    const bearer = loadConnectionConfig(
      {},
      { SCHEMA_REGISTRY_TOKEN_FILE: file("reg-token", "tok\n") },
    );
    expect(bearer.schemaRegistry.auth).toEqual({ kind: "bearer", token: "tok" });
  });

  it("credentials in the URL become basic authentication and leave the URL", () => {
    const connection = loadConnectionConfig(
      {},
      { SCHEMA_REGISTRY_URL: "https://us%40er:p%3Ass@registry.example/apis/ccompat/v7" },
    );
    expect(connection.schemaRegistryUrl).toBe("https://registry.example/apis/ccompat/v7");
    expect(connection.schemaRegistry.auth).toEqual({
      kind: "basic",
      username: "us@er",
      password: "p:ss",
    });
  });

  it("a token and a password together are refused, without echoing either", () => {
    const error = configError(() =>
      loadConnectionConfig(
        {},
        {
          SCHEMA_REGISTRY_USERNAME: "u",
          SCHEMA_REGISTRY_PASSWORD: "pw-secret-1",
          SCHEMA_REGISTRY_TOKEN: "tok-secret-2",
        },
      ),
    );
    expect(error.key).toBe("SCHEMA_REGISTRY_TOKEN");
    expect(error.message).not.toMatch(/secret-1|secret-2/);
  });
});

describe("the CLI's settings", () => {
  it("flags and the config file's kafka and schemaRegistry sections; errors name the flag or file key", () => {
    const config = file(
      "settings.yaml",
      [
        "kafka:",
        "  saslMechanism: SCRAM-SHA-256",
        "  saslUsername: from-file",
        `  saslPasswordFile: ${file("pw-from-file", "file-pw")}`,
        "  sslVerifyHostname: false",
        "schemaRegistry:",
        "  username: reg",
        "  password: reg-pw",
        "",
      ].join("\n"),
    );
    const connection = new SettingsResolver(
      { kafkaSaslUsername: "from-flag" },
      readConfigFile(config),
      {},
    ).connection();
    expect(connection.kafkaSasl).toEqual({
      mechanism: "scram-sha-256",
      username: "from-flag",
      password: "file-pw",
    });
    expect(connection.kafkaTls).toEqual({ verifyHostname: false });
    expect(connection.schemaRegistry.auth).toEqual({
      kind: "basic",
      username: "reg",
      password: "reg-pw",
    });

    const wrong = configError(() =>
      new SettingsResolver({ kafkaSaslMechanism: "KERBEROS" }, undefined, {}).connection(),
    );
    expect(wrong.key).toBe("--kafka-sasl-mechanism");
    const fromFile = configError(() =>
      new SettingsResolver(
        {},
        { path: "f.yaml", data: { kafka: { securityProtocol: "SASL_SSL" } } },
        {},
      ).connection(),
    );
    expect(fromFile.key).toBe("kafka.securityProtocol in f.yaml");
    expect(fromFile.message).toMatch(/needs a SASL mechanism \(KAFKA_SASL_MECHANISM\)/);
  });

  it("an unknown key in the kafka section is refused", () => {
    const path = file("bad.yaml", "kafka:\n  saslPasword: x\n");
    expect(() => readConfigFile(path)).toThrow(/kafka\.saslPasword in .*unknown key/);
  });

  it("secrets have no flag", () => {
    const secret = Object.values(SECURITY)
      .filter((setting) => setting.secret === true)
      .map((setting) => setting.env);
    expect(secret.sort()).toEqual([
      "KAFKA_SASL_OAUTHBEARER_TOKEN",
      "KAFKA_SASL_PASSWORD",
      "KAFKA_SSL_KEY_PASSWORD",
      "SCHEMA_REGISTRY_PASSWORD",
      "SCHEMA_REGISTRY_TOKEN",
    ]);
  });
});
