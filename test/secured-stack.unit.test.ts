import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { describe, expect, it } from "vitest";

import { ConfigError } from "../config/index.js";
import { loadStackConfig, stackEndpoints } from "../stack/config.js";
import {
  aclCommandArguments,
  kafkaSecurityProperties,
  registrySecurityProperties,
  scramFormatArguments,
  unsecuredKafkaToken,
  type StackCredentials,
} from "../stack/security.js";

function configError(run: () => unknown): ConfigError {
  try {
    run();
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error("expected a ConfigError");
}

const CREDENTIALS: StackCredentials = {
  kafka: { admin: "admin-secret-1", replica: "replica-secret-1" },
  registry: { admin: { password: "registry-secret-1", role: "admin" } },
  keystorePassword: "keystore-secret-1",
};

describe("secured stack settings (STACK_SECURITY, STACK_KAFKA_USERS, STACK_REGISTRY_USERS)", () => {
  it("defaults to the plain stack, with an http registry", () => {
    const config = loadStackConfig({});
    expect(config.security).toBe("none");
    expect(stackEndpoints(config).schemaRegistryUrl).toMatch(/^http:\/\//);
  });

  it("takes sasl_ssl (any case) and serves the registry over https", () => {
    const config = loadStackConfig({ STACK_SECURITY: "SASL_SSL" });
    expect(config.security).toBe("sasl_ssl");
    expect(stackEndpoints(config).schemaRegistryUrl).toMatch(/^https:\/\/127\.0\.0\.1:/);
  });

  it("refuses another mode, naming the variable", () => {
    const error = configError(() => loadStackConfig({ STACK_SECURITY: "ssl" }));
    expect(error.key).toBe("STACK_SECURITY");
    expect(error.message).toContain("none or sasl_ssl");
  });

  it("lists admin first, then the users named, with the passwords given", () => {
    const config = loadStackConfig({ STACK_KAFKA_USERS: "replica, sink=Given-pass.1,admin" });
    expect(config.kafkaUsers).toEqual([
      { name: "admin", password: undefined },
      { name: "replica", password: undefined },
      { name: "sink", password: "Given-pass.1" },
    ]);
    expect(loadStackConfig({}).kafkaUsers.map((user) => user.name)).toEqual([
      "admin",
      "replica",
      "processor",
      "sink",
    ]);
  });

  it("gives registry users a role: admin for admin, developer unless told", () => {
    const config = loadStackConfig({ STACK_REGISTRY_USERS: "ci,reader:readonly=Read-pass-1" });
    expect(config.registryUsers).toEqual([
      { name: "admin", password: undefined, role: "admin" },
      { name: "ci", password: undefined, role: "developer" },
      { name: "reader", password: "Read-pass-1", role: "readonly" },
    ]);
    expect(configError(() => loadStackConfig({ STACK_REGISTRY_USERS: "admin:readonly" })).key).toBe(
      "STACK_REGISTRY_USERS",
    );
    expect(configError(() => loadStackConfig({ STACK_REGISTRY_USERS: "x:owner" })).message).toMatch(
      /admin, developer or readonly/,
    );
  });

  it("refuses bad names, doubles and passwords that would break the broker's settings, never echoing them", () => {
    const quote = configError(() => loadStackConfig({ STACK_KAFKA_USERS: 'replica=se"cret-pw' }));
    expect(quote.key).toBe("STACK_KAFKA_USERS");
    expect(quote.message).not.toContain('se"cret-pw');
    expect(quote.message).toContain("entry 1 (replica)");
    const comma = configError(() =>
      loadStackConfig({ STACK_KAFKA_USERS: "a=ok-password,b=has]bracket" }),
    );
    expect(comma.message).toContain("entry 2 (b)");
    expect(comma.message).not.toContain("has]bracket");
    expect(configError(() => loadStackConfig({ STACK_KAFKA_USERS: "-x" })).key).toBe(
      "STACK_KAFKA_USERS",
    );
    expect(configError(() => loadStackConfig({ STACK_KAFKA_USERS: "a,a" })).message).toContain(
      "listed twice",
    );
    expect(configError(() => loadStackConfig({ STACK_KAFKA_USERS: "a:admin" })).message).toContain(
      "expected name or name=password",
    );
  });
});

describe("secured stack's broker and registry settings", () => {
  const config = loadStackConfig({
    STACK_SECURITY: "sasl_ssl",
    STACK_DIR: "/tmp/mcpo-unit-stack",
    STACK_KAFKA_PORT: "19092",
    STACK_KAFKA_CONTROLLER_PORT: "19093",
  });

  it("has a SASL_SSL client listener, a loopback controller listener for admin alone and the StandardAuthorizer", () => {
    const lines = kafkaSecurityProperties(config, CREDENTIALS);
    expect(lines).toContain("listeners=SASL_SSL://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093");
    expect(lines).toContain(
      "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
    );
    expect(lines).toContain(
      "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER",
    );
    expect(lines).toContain("sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512");
    expect(lines).toContain(
      "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
    );
    expect(lines).toContain("allow.everyone.if.no.acl.found=false");
    // The controller listener authenticates (admin alone), so no anonymous super user.
    expect(lines).toContain("super.users=User:admin");
    expect(lines).toContain("sasl.mechanism.controller.protocol=PLAIN");
    const plain = lines.find((line) => line.startsWith("listener.name.sasl_ssl.plain."));
    expect(plain).toContain('user_replica="replica-secret-1"');
    expect(plain).toContain('user_admin="admin-secret-1"');
  });

  it("formats both SCRAM credentials of every user", () => {
    expect(scramFormatArguments(CREDENTIALS)).toEqual([
      "--add-scram",
      "SCRAM-SHA-256=[name=admin,password=admin-secret-1]",
      "--add-scram",
      "SCRAM-SHA-512=[name=admin,password=admin-secret-1]",
      "--add-scram",
      "SCRAM-SHA-256=[name=replica,password=replica-secret-1]",
      "--add-scram",
      "SCRAM-SHA-512=[name=replica,password=replica-secret-1]",
    ]);
  });

  it("makes unsigned OAUTHBEARER tokens whose sub is the principal", () => {
    const [header, payload, signature] = unsecuredKafkaToken("replica", 60).split(".");
    expect(JSON.parse(Buffer.from(header ?? "", "base64url").toString())).toEqual({ alg: "none" });
    const claims = JSON.parse(Buffer.from(payload ?? "", "base64url").toString()) as {
      sub: string;
      exp: number;
      iat: number;
    };
    expect(claims.sub).toBe("replica");
    expect(claims.exp - claims.iat).toBe(60);
    expect(signature).toBe("");
  });

  it("turns grants into AclCommand arguments, one resource and pattern each", () => {
    expect(
      aclCommandArguments({
        principal: "User:replica",
        operations: ["WRITE", "DESCRIBE"],
        topic: "mcpo.model-calls",
      }),
    ).toEqual([
      "--add",
      "--allow-principal",
      "User:replica",
      "--allow-host",
      "*",
      "--operation",
      "Write",
      "--operation",
      "Describe",
      "--topic",
      "mcpo.model-calls",
      "--resource-pattern-type",
      "literal",
    ]);
    expect(
      aclCommandArguments({
        principal: "User:processor",
        operations: ["READ"],
        group: "mcpo-",
        patternType: "PREFIXED",
        permission: "DENY",
      }),
    ).toEqual(expect.arrayContaining(["--deny-principal", "--deny-host", "--group", "prefixed"]));
    expect(() =>
      aclCommandArguments({ principal: "User:x", operations: ["READ"], topic: "t", group: "g" }),
    ).toThrow(/exactly one resource/);
    expect(() =>
      aclCommandArguments({ principal: "replica", operations: ["READ"], topic: "t" }),
    ).toThrow(/User:<name>/);
    expect(() => aclCommandArguments({ principal: "User:x", operations: [], topic: "t" })).toThrow(
      /at least one operation/,
    );
  });

  it("registry settings: HTTPS only, basic users with roles, bearer tokens checked with the stack's key", () => {
    const dir = mkdtempSync(join(tmpdir(), "mcpo-unit-stack-"));
    try {
      mkdirSync(join(dir, "tls"));
      writeFileSync(
        join(dir, "tls", "registry-token.pub"),
        "-----BEGIN PUBLIC KEY-----\nAAAA\nBBBB\n-----END PUBLIC KEY-----\n",
      );
      const text = registrySecurityProperties(
        loadStackConfig({
          STACK_SECURITY: "sasl_ssl",
          STACK_DIR: dir,
          STACK_REGISTRY_PORT: "18081",
        }),
        CREDENTIALS,
      );
      expect(text).toContain("quarkus.http.ssl-port=18081");
      expect(text).toContain("quarkus.http.insecure-requests=disabled");
      expect(text).toContain("quarkus.http.auth.basic=true");
      expect(text).toContain("quarkus.security.users.embedded.users.admin=registry-secret-1");
      expect(text).toContain("quarkus.security.users.embedded.roles.admin=sr-admin");
      expect(text).toContain("quarkus.oidc.public-key=AAAABBBB");
      expect(text).toContain("apicurio.auth.role-based-authorization=true");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
