/**
 * The secured local stack (STACK_SECURITY=sasl_ssl), through the project's own Kafka and registry
 * clients: SASL_SSL with SCRAM-SHA-512, SCRAM-SHA-256, PLAIN and OAUTHBEARER, ACLs granted with
 * Kafka's AclCommand and enforced by the StandardAuthorizer, failures that come fast and say
 * what is wrong, and the registry over HTTPS with basic and bearer authentication.
 */
import { randomUUID, X509Certificate } from "node:crypto";
import { readFileSync, statSync } from "node:fs";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import {
  getCompatibility,
  SchemaRegistryError,
  setSubjectCompatibility,
} from "../avro/registry.js";
import {
  connectAdmin,
  createRecordProducer,
  KafkaError,
  readTopicToEnd,
  type KafkaSettings,
} from "../kafka/index.js";
import { stackTlsFiles, unsecuredKafkaToken } from "../stack/index.js";
import { uniqueName } from "./support/isolation.js";
import { startSecuredStack, type SecuredStack } from "./support/secured-stack.js";

/** Runs `action`, which must fail; returns its error and how long it took. */
async function failure(action: () => Promise<unknown>): Promise<{ error: Error; ms: number }> {
  const started = Date.now();
  try {
    await action();
  } catch (error) {
    return { error: error as Error, ms: Date.now() - started };
  }
  throw new Error("expected a failure");
}

/** The error, which must be an instance of `type`. */
function instance<T>(error: unknown, type: abstract new (...args: never[]) => T): T {
  expect(error).toBeInstanceOf(type);
  if (!(error instanceof type)) throw error;
  return error;
}

/** An error's message with its causes' (kafkajs and the retry wrap the broker's words). */
function messages(error: unknown): string {
  const parts: string[] = [];
  for (let current = error, depth = 0; current instanceof Error && depth < 6; depth++) {
    parts.push(current.message);
    current = current.cause;
  }
  return parts.join(" <- ");
}

/** Produces one record with the project's producer, then disconnects. */
async function produce(settings: KafkaSettings, topic: string, value: string): Promise<void> {
  const producer = createRecordProducer(settings);
  try {
    await producer.connect();
    await producer.send(topic, [{ key: value, value: Buffer.from(value) }], "none");
  } finally {
    await producer.disconnect();
  }
}

describe("secured local stack (SASL_SSL, ACLs, registry over HTTPS with auth)", () => {
  let stack: SecuredStack;
  const topic = uniqueName("secured");
  const writer = "replica";
  const reader = "processor";
  const stranger = "sink";

  beforeAll(async () => {
    stack = await startSecuredStack({
      kafkaUsers: [writer, reader, stranger],
      registryUsers: ["reader:readonly"],
    });
    process.stderr.write(`[secured-stack] up in ${stack.startMs} ms\n`);
    const admin = await connectAdmin(stack.kafka("admin"));
    try {
      await admin.ensureTopics([{ name: topic, partitions: 1 }]);
    } finally {
      await admin.close();
    }
    await stack.grantAcls([
      // The writer: WRITE on its topic (and DESCRIBE for metadata), nothing else.
      { principal: `User:${writer}`, operations: ["WRITE", "DESCRIBE"], topic },
      // The reader: READ on the topic, and its consumer groups, named after its client id.
      { principal: `User:${reader}`, operations: ["READ", "DESCRIBE"], topic },
      {
        principal: `User:${reader}`,
        operations: ["READ", "DESCRIBE", "DELETE"],
        group: `test-${reader}`,
        patternType: "PREFIXED",
      },
    ]);
  });

  afterAll(async () => {
    await (stack as SecuredStack | undefined)?.dispose();
  });

  it("keeps its keys and passwords to its owner and its certificate valid for 127.0.0.1", () => {
    const tls = stackTlsFiles(stack.config);
    const files = [
      tls.caKey,
      tls.serverKey,
      tls.keystore,
      tls.credentials,
      tls.adminClientProperties,
      stack.endpoints.clientKeyFile,
      stack.endpoints.tokenPrivateKeyFile,
      ...Object.values(stack.endpoints.passwordFiles.kafka),
      ...Object.values(stack.endpoints.passwordFiles.registry),
    ];
    for (const file of files) expect(statSync(file).mode & 0o777, file).toBe(0o600);
    const ca = new X509Certificate(stack.ca);
    expect(ca.ca).toBe(true);
    const server = new X509Certificate(readFileSync(tls.serverCert));
    expect(server.verify(ca.publicKey)).toBe(true);
    expect(server.checkIP("127.0.0.1")).toBe("127.0.0.1");
    expect(server.checkHost("localhost")).toBe("localhost");
    expect(Object.keys(stack.credentials.kafka).sort()).toEqual(
      ["admin", reader, stranger, writer].sort(),
    );
  });

  for (const mechanism of ["scram-sha-512", "scram-sha-256", "plain"] as const) {
    it(`a ${mechanism} user with the CA produces, another reads the record back (ACLs granted)`, async () => {
      const value = `${mechanism}-${randomUUID()}`;
      await produce(stack.kafka(writer, mechanism), topic, value);
      const records = await readTopicToEnd(stack.kafka(reader, mechanism), topic);
      expect(records.map((record) => record.value?.toString())).toContain(value);
    });
  }

  it("a client presenting the stack's client certificate (mutual TLS) is accepted", async () => {
    const value = `mtls-${randomUUID()}`;
    const settings = stack.kafka(writer);
    await produce(
      {
        ...settings,
        tls: {
          ...settings.tls,
          cert: readFileSync(stack.endpoints.clientCertFile, "utf8"),
          key: readFileSync(stack.endpoints.clientKeyFile, "utf8"),
        },
      },
      topic,
      value,
    );
    const records = await readTopicToEnd(stack.kafka(reader), topic);
    expect(records.map((record) => record.value?.toString())).toContain(value);
  });

  it("OAUTHBEARER with an unsigned token (the stack's test-only validator) names the principal by its sub", async () => {
    const value = `oauth-${randomUUID()}`;
    const settings: KafkaSettings = {
      ...stack.kafka(writer),
      sasl: {
        mechanism: "oauthbearer",
        oauthBearerProvider: () => Promise.resolve({ value: unsecuredKafkaToken(writer) }),
      },
    };
    await produce(settings, topic, value);
    const records = await readTopicToEnd(stack.kafka(reader), topic);
    expect(records.map((record) => record.value?.toString())).toContain(value);
    // The same token for a principal without ACLs is authenticated, then refused.
    const { error } = await failure(() =>
      produce(
        {
          ...settings,
          sasl: {
            mechanism: "oauthbearer",
            oauthBearerProvider: () => Promise.resolve({ value: unsecuredKafkaToken(stranger) }),
          },
        },
        topic,
        "never",
      ),
    );
    expect(messages(error)).toMatch(/not authorized|authorization/i);
  });

  it("a wrong password fails within seconds with an authentication error, not a retry loop", async () => {
    for (const mechanism of ["scram-sha-512", "plain"] as const) {
      const settings = stack.kafka(writer, mechanism);
      const { error, ms } = await failure(() =>
        connectAdmin({
          ...settings,
          sasl: { mechanism, username: writer, password: "not-the-password" },
        }),
      );
      // The broker's own error type, and its words.
      expect(instance(error, KafkaError).code).toBe("SASL_AUTHENTICATION_FAILED");
      expect(error.message).toMatch(/authentication failed/i);
      expect(instance(error, KafkaError).retriable).toBe(false);
      expect(error.message).not.toContain("not-the-password");
      expect(ms).toBeLessThan(5000);
    }
  });

  it("a plaintext client against the SASL_SSL port fails within seconds", async () => {
    const { tls: _tls, ...plaintext } = stack.kafka(writer);
    const { error, ms } = await failure(() =>
      connectAdmin({ ...plaintext, connectionTimeoutMs: 2000, requestTimeoutMs: 3000 }),
    );
    // The broker waits for a TLS handshake and drops the connection at the first plain bytes.
    expect(error).toBeInstanceOf(KafkaError);
    expect(messages(error)).toMatch(/Closed connection/);
    expect(ms).toBeLessThan(10_000);
  });

  it("a client that does not trust the stack's CA fails the TLS check", async () => {
    const { error, ms } = await failure(() =>
      connectAdmin({ ...stack.kafka(writer), tls: {}, connectionTimeoutMs: 2000 }),
    );
    expect(messages(error)).toMatch(/self[- ]signed certificate/i);
    expect(ms).toBeLessThan(10_000);
  });

  it("a user without ACLs is refused: no rights at all, or rights on another topic only", async () => {
    // No ACL at all: the idempotent producer's first request (InitProducerId) needs WRITE on
    // some topic (or IDEMPOTENT_WRITE on the cluster).
    const none = await failure(() => produce(stack.kafka(stranger), topic, "never"));
    expect(instance(none.error, KafkaError).code).toBe("CLUSTER_AUTHORIZATION_FAILED");
    expect(none.ms).toBeLessThan(5000);
    // WRITE on another topic: the producer starts, and this topic is refused.
    await stack.grantAcls([
      { principal: `User:${stranger}`, operations: ["WRITE", "DESCRIBE"], topic: `${topic}-other` },
    ]);
    const other = await failure(() => produce(stack.kafka(stranger), topic, "never"));
    expect(other.error).toBeInstanceOf(KafkaError);
    expect(other.error.message).toMatch(/Not authorized to access topics/);
    expect(other.ms).toBeLessThan(15_000);
  });

  it("grantAcls reports an ACL the tool refuses, with the tool's words", async () => {
    const { error } = await failure(() =>
      stack.grantAcls([{ principal: `User:${stranger}`, operations: ["WRITE"], group: "g" }]),
    );
    expect(error.message).toMatch(/granting ACL 1 \(User:sink\) failed/);
    expect(error.message).toMatch(/ResourceType GROUP only supports operations/);
  });

  it("the registry answers over HTTPS with the CA and the right basic credentials, and only then", async () => {
    const admin = stack.registry("admin");
    expect(admin.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/apis\/ccompat\/v7$/);
    // The stack set the global level with the same credentials at start.
    expect(await getCompatibility(admin)).toBe("BACKWARD");

    const { error: anonymous } = await failure(() =>
      getCompatibility({ url: admin.url, ca: stack.ca }),
    );
    expect(instance(anonymous, SchemaRegistryError).status).toBe(401);

    const { error: wrong } = await failure(() =>
      getCompatibility({
        ...admin,
        auth: { kind: "basic", username: "admin", password: "not-the-password" },
      }),
    );
    expect(instance(wrong, SchemaRegistryError).status).toBe(401);

    const { error: untrusted } = await failure(() =>
      getCompatibility({ url: admin.url, ...(admin.auth ? { auth: admin.auth } : {}) }),
    );
    // The registry sends its own certificate only (Kafka sends the chain, hence "self-signed").
    expect(messages(untrusted)).toMatch(/unable to verify the first certificate/i);
  });

  it("the registry's roles hold: a read-only user reads but may not change compatibility", async () => {
    const readOnly = stack.registry("reader");
    expect(await getCompatibility(readOnly)).toBe("BACKWARD");
    const { error } = await failure(() =>
      setSubjectCompatibility(readOnly, `${topic}-value`, "FULL"),
    );
    expect(instance(error, SchemaRegistryError).status).toBe(403);
  });

  it("the registry takes bearer tokens signed with the stack's key, with their roles", async () => {
    const url = stack.registryUrl;
    const adminToken = stack.registryToken("operator", ["admin"]);
    await setSubjectCompatibility(
      { url, ca: stack.ca, auth: { kind: "bearer", token: adminToken } },
      `${topic}-value`,
      "BACKWARD",
    );
    const readerToken = stack.registryToken("auditor", ["readonly"]);
    const readerEndpoint = {
      url,
      ca: stack.ca,
      auth: { kind: "bearer", token: readerToken },
    } as const;
    expect(await getCompatibility(readerEndpoint, `${topic}-value`)).toBe("BACKWARD");
    const { error: refused } = await failure(() =>
      setSubjectCompatibility(readerEndpoint, `${topic}-value`, "FULL"),
    );
    expect(instance(refused, SchemaRegistryError).status).toBe(403);
    // A token whose signature does not verify is no authentication at all.
    const forged = `${adminToken.slice(0, -4)}AAAA`;
    const { error: invalid } = await failure(() =>
      getCompatibility({ url, ca: stack.ca, auth: { kind: "bearer", token: forged } }),
    );
    expect(instance(invalid, SchemaRegistryError).status).toBe(401);
  });
});
