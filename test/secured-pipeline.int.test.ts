/**
 * The whole pipeline against a secured cluster: Kafka with only a SASL_SSL listener and ACLs
 * (StandardAuthorizer, nothing allowed without an ACL), Apicurio Registry over HTTPS with basic
 * authentication, PostgreSQL that refuses TCP connections without TLS. An operator provisions
 * topics and subjects once (`topics create`); then each component runs as its own principal with
 * only the rights it needs, and a replica neither creates topics nor writes to the registry.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";

import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { topicNames, type EndpointOptions } from "../config/index.js";
import { fetchTopicIds, KafkaError, readTopicToEnd, type KafkaSettings } from "../kafka/index.js";
import { StreamProcessor } from "../processor/processor.js";
import { instrument } from "../producer/index.js";
import { KafkaExporter } from "../producer/exporters/kafka.js";
import { silentLogger } from "../producer/logger.js";
import { Sink } from "../sink/sink.js";
import { stackTlsFiles, type AclGrant } from "../stack/security.js";
import { runCli } from "./support/cli.js";
import { quietLogger, uniqueName } from "./support/isolation.js";
import { startSecuredStack, type SecuredStack } from "./support/secured-stack.js";
import { startThrowawayPostgres, type ThrowawayPostgres } from "./support/throwaway-postgres.js";
import { waitFor } from "./support/wait.js";

const EVENTS = 120;

/**
 * A component's connection options as the library takes them: Kafka as `user` (SCRAM over TLS),
 * the registry as its read-only user.
 */
function connectionAs(stack: SecuredStack, user: string): EndpointOptions {
  const kafka: KafkaSettings = stack.kafka(user);
  const registry = stack.registry("reader");
  if (!kafka.tls || !kafka.sasl || !registry.auth) throw new Error("expected TLS and SASL");
  return {
    brokers: stack.brokers,
    schemaRegistryUrl: registry.url,
    schemaRegistryAuth: registry.auth,
    schemaRegistryCa: stack.ca,
    kafkaTls: kafka.tls,
    kafkaSasl: kafka.sasl,
  };
}

describe("the pipeline over SASL_SSL with ACLs, HTTPS registry auth and PostgreSQL over TLS", () => {
  const prefix = `${uniqueName("secured")}.`;
  const topics = topicNames(prefix);
  let stack: SecuredStack;
  let postgres: ThrowawayPostgres;
  let databaseUrl: string;
  let processor: StreamProcessor | undefined;
  let sink: Sink | undefined;
  const connectAs = (user: string): EndpointOptions => connectionAs(stack, user);

  beforeAll(async () => {
    stack = await startSecuredStack({
      kafkaUsers: ["replica", "processor", "sink"],
      registryUsers: ["reader:readonly"],
    });
    const tls = stackTlsFiles(stack.config);
    postgres = await startThrowawayPostgres({
      tls: { certFile: tls.serverCert, keyFile: tls.serverKey },
    });
    databaseUrl = `${postgres.url}?sslmode=verify-full&sslrootcert=${encodeURIComponent(stack.caFile)}`;

    const topic = (
      name: string,
      operations: AclGrant["operations"],
    ): Omit<AclGrant, "principal"> => ({ topic: name, operations });
    const grants = (principal: string, list: Omit<AclGrant, "principal">[]): AclGrant[] =>
      list.map((grant) => ({ principal: `User:${principal}`, ...grant }));
    await stack.grantAcls([
      // A replica writes events, nothing else.
      ...grants("replica", [topic(topics.modelCalls, ["WRITE", "DESCRIBE"])]),
      // The processor reads events and its checkpoints; writes ticks, rollups, alerts and the rest.
      ...grants("processor", [
        topic(topics.modelCalls, ["READ", "WRITE", "DESCRIBE"]),
        topic(`${prefix}processor-checkpoints`, ["READ", "WRITE", "DESCRIBE"]),
        topic(topics.metricRollups, ["WRITE", "DESCRIBE"]),
        topic(topics.alerts, ["WRITE", "DESCRIBE"]),
        topic(topics.lateEvents, ["WRITE", "DESCRIBE"]),
        topic(topics.deadLetter, ["WRITE", "DESCRIBE"]),
        { group: prefix, patternType: "PREFIXED", operations: ["READ", "DESCRIBE", "DELETE"] },
      ]),
      // The sink reads events, rollups and alerts, and dead-letters what PostgreSQL refuses.
      ...grants("sink", [
        topic(topics.modelCalls, ["READ", "DESCRIBE"]),
        topic(topics.metricRollups, ["READ", "DESCRIBE"]),
        topic(topics.alerts, ["READ", "DESCRIBE"]),
        topic(topics.deadLetter, ["WRITE", "DESCRIBE"]),
        { group: `${prefix}sink`, operations: ["READ", "DESCRIBE"] },
      ]),
    ]);
  });

  afterAll(async () => {
    await sink?.stop().catch(() => undefined);
    await processor?.stop().catch(() => undefined);
    // Either may be missing when beforeAll failed part way.
    await (postgres as ThrowawayPostgres | undefined)?.dispose();
    await (stack as SecuredStack | undefined)?.dispose();
  });

  it("the operator provisions topics and subjects once; a second run changes nothing", async () => {
    const env = {
      ...process.env,
      ...stack.env("admin", "admin"),
      DATABASE_URL: databaseUrl,
      MCPO_TOPIC_PREFIX: prefix,
    };
    const first = await runCli(["topics", "create", "--partitions", "2"], env, 120_000);
    expect(first.stderr).toBe("");
    expect(first.code).toBe(0);
    expect(first.stdout).toContain(topics.modelCalls);
    const second = await runCli(["topics", "create", "--partitions", "2"], env, 120_000);
    expect(second.code).toBe(0);
    expect(second.stdout).not.toMatch(/\bcreated\b|\bregistered\b/);
    // The raw Metadata connection authenticates with each mechanism as well.
    for (const mechanism of ["scram-sha-512", "scram-sha-256", "plain"] as const) {
      const ids = await fetchTopicIds(stack.kafka("processor", mechanism), [topics.modelCalls]);
      expect(ids.get(topics.modelCalls), mechanism).toMatch(/^[A-Za-z0-9_-]{22}$/);
    }
  });

  it("a replica without CREATE and registry write rights exports; processor and sink, each as its own principal, store every event over TLS", async () => {
    processor = new StreamProcessor({
      ...connectAs("processor"),
      topicPrefix: prefix,
      groupId: `${prefix}processor`,
      clientId: `${prefix}processor-client`,
      partitions: 2,
      windowSizeMs: 1000,
      graceMs: 500,
      idleTimeoutMs: 500,
      checkpointIntervalMs: 500,
      autoCreateTopics: false,
      autoRegisterSchemas: false,
      logger: quietLogger,
    });
    await processor.start();
    sink = new Sink({
      ...connectAs("sink"),
      databaseUrl,
      topicPrefix: prefix,
      groupId: `${prefix}sink`,
      partitions: 2,
      autoCreateTopics: false,
      autoRegisterSchemas: false,
      logger: quietLogger,
    });
    await sink.start();

    const exporter = new KafkaExporter({
      ...connectAs("replica"),
      topic: topics.modelCalls,
      autoCreateTopics: false,
      autoRegisterSchemas: false,
      logger: silentLogger,
    });
    const interceptor = instrument({ serviceName: "secured-mcp", exporter, logger: silentLogger });
    for (let i = 0; i < EVENTS; i++)
      await interceptor.interceptModelCall({
        model: "gpt-4o",
        usage: { promptTokens: 10, completionTokens: 2 },
      });
    expect(await exporter.shutdown()).toEqual({ complete: true, remaining: 0 });
    expect(exporter.stats()).toMatchObject({ sent: EVENTS, dropped: 0 });

    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    try {
      const spans = await waitFor(
        "every span in PostgreSQL",
        async () =>
          Number((await client.query<{ n: string }>("select count(*) as n from spans")).rows[0]?.n),
        (count) => count === EVENTS,
        { timeoutMs: 60_000, intervalMs: 500 },
      );
      expect(spans).toBe(EVENTS);
      const calls = await waitFor(
        "every call counted in the stored rollups",
        async () =>
          Number(
            (
              await client.query<{ n: string | null }>(
                "select sum(calls) as n from metric_rollups where scope = 'service'",
              )
            ).rows[0]?.n ?? 0,
          ),
        (count) => count === EVENTS,
        { timeoutMs: 60_000, intervalMs: 500 },
      );
      expect(calls).toBe(EVENTS);
      // Every connection to this server is TLS (it refuses others); the sink's are among them.
      const ssl = await client.query<{ ssl: boolean }>(
        "select ssl from pg_stat_ssl join pg_stat_activity using (pid) where datname = current_database()",
      );
      expect(ssl.rows.length).toBeGreaterThan(1);
      expect(ssl.rows.every((row) => row.ssl)).toBe(true);
    } finally {
      await client.end();
    }
  });

  it("a reader without rights on its consumer group gets the refusal as an error, not an unhandled rejection", async () => {
    // The sink may read model-calls, but only in its own group: a range read's throwaway group
    // (named after the client id) is refused.
    const started = Date.now();
    const error = await readTopicToEnd(stack.kafka("sink"), topics.modelCalls).then(
      () => undefined,
      (failure: unknown) => failure,
    );
    expect(error).toBeInstanceOf(KafkaError);
    expect((error as Error).message).toMatch(/reading .*model-calls/);
    expect(Date.now() - started).toBeLessThan(60_000);
  });

  it("a replica with the default options (create topics, register schemas) fails with a clear message", async () => {
    const errors: string[] = [];
    const exporter = new KafkaExporter({
      ...connectAs("replica"),
      topic: `${prefix}not-provisioned`,
      retryMaxMs: 200,
      logger: {
        warn: (message, context) => errors.push(`${message} ${JSON.stringify(context)}`),
        error: (message, context) => errors.push(`${message} ${JSON.stringify(context)}`),
      },
    });
    const interceptor = instrument({ serviceName: "secured-mcp", exporter, logger: silentLogger });
    await interceptor.interceptModelCall({ model: "gpt-4o" });
    await waitFor(
      "the exporter's failure",
      () => errors.join("\n"),
      (text) => text !== "",
      {
        timeoutMs: 30_000,
        intervalMs: 100,
      },
    );
    await exporter.shutdown(1000);
    expect(errors.join("\n")).toMatch(
      /TOPIC_AUTHORIZATION_FAILED.*may not create topics: have an operator run `mcp-observatory topics create`/,
    );
  });

  it("a wrong password, a plaintext client and a missing CA each stop a command at once with one line", async () => {
    const wrong = join(stack.config.dir, "wrong-password");
    writeFileSync(wrong, "not-the-password\n");
    const base = { ...process.env, ...stack.env("processor"), MCPO_TOPIC_PREFIX: prefix };
    const cases: { name: string; env: NodeJS.ProcessEnv; line: RegExp }[] = [
      {
        name: "wrong password",
        env: { ...base, KAFKA_SASL_PASSWORD_FILE: wrong },
        line: /authenticating to 127\.0\.0\.1:\d+ with SASL SCRAM-SHA-512 as processor failed: .*(Authentication failed|invalid credentials)/,
      },
      {
        name: "plaintext client",
        env: {
          ...base,
          KAFKA_SECURITY_PROTOCOL: "",
          KAFKA_SASL_MECHANISM: "",
          KAFKA_SSL_CA_FILE: "",
        },
        line: /closed the connection without answering.*set KAFKA_SECURITY_PROTOCOL/,
      },
      {
        name: "no CA",
        env: { ...base, KAFKA_SSL_CA_FILE: "" },
        line: /TLS with 127\.0\.0\.1:\d+ failed: .*KAFKA_SSL_CA_FILE/,
      },
    ];
    for (const { name, env, line } of cases) {
      const started = Date.now();
      const result = await runCli(["alerts", "tail", "--max-messages", "1"], env, 60_000);
      const elapsed = Date.now() - started;
      expect(result.code, `${name}: ${result.stderr}`).toBe(2);
      expect(result.stderr.trim().split("\n"), name).toHaveLength(1);
      expect(result.stderr, name).toMatch(line);
      expect(elapsed, name).toBeLessThan(20_000);
      expect(result.stderr + result.stdout, name).not.toContain(
        stack.credentials.kafka.processor ?? "",
      );
    }
  });
});
