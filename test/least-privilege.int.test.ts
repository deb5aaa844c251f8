/**
 * Least privilege for replicas against the real stack: with `autoCreateTopics: false` the
 * exporter, the processor and the sink create no topic (a missing one is a clear error naming it
 * and `mcp-observatory topics create`); with `autoRegisterSchemas: false` they write nothing to the
 * registry (they look the schema ids up; an unregistered subject is a clear error naming it). After
 * `topics create` (the CLI, run as a process of its own) the pipeline runs end to end with both
 * off, and leaves the subjects' compatibility and versions as they were.
 */
import { randomBytes, randomUUID } from "node:crypto";

import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { ModelCallEvent } from "../avro/generated.js";
import { topicNames } from "../config/index.js";
import { StreamProcessor } from "../processor/processor.js";
import { subscribeAlerts } from "../processor/subscribe.js";
import { KafkaExporter } from "../producer/exporters/kafka.js";
import type { Logger } from "../producer/logger.js";
import { Sink } from "../sink/sink.js";
import { runCli } from "./support/cli.js";
import { sampleEvent } from "./support/events.js";
import {
  createTopics,
  quietLogger,
  services,
  testKafka,
  uniqueName,
  useFreshDatabase,
} from "./support/isolation.js";
import { waitFor } from "./support/wait.js";

const PROVISION = "mcp-observatory topics create";
/** The services' logs are not read here (a copy: the services wrap the logger they are given). */
const quiet = { ...quietLogger };

/** A logger that keeps the exporter's lines. */
function keptLines(): Logger & {
  readonly lines: { level: string; message: string; context: string }[];
} {
  const lines: { level: string; message: string; context: string }[] = [];
  const keep =
    (level: string) =>
    (message: string, context: Readonly<Record<string, unknown>> = {}): void => {
      lines.push({ level, message, context: JSON.stringify(context) });
    };
  return { lines, warn: keep("warn"), error: keep("error") };
}

/** The topics whose name starts with `prefix`, as the broker lists them (read with kafkajs). */
async function topicsOf(prefix: string): Promise<string[]> {
  const admin = testKafka().admin();
  await admin.connect();
  try {
    return (await admin.listTopics()).filter((topic) => topic.startsWith(prefix)).sort();
  } finally {
    await admin.disconnect();
  }
}

/** One registry read, apart from the product: status and parsed body. */
async function registryGet(path: string): Promise<{ status: number; body: unknown }> {
  const response = await fetch(`${services().schemaRegistryUrl}${path}`, {
    headers: { accept: "application/vnd.schemaregistry.v1+json, application/json" },
  });
  return { status: response.status, body: await response.json() };
}

/** A subject's own compatibility and its versions, as the registry reports them. */
async function subjectState(
  subject: string,
): Promise<{ compatibility: unknown; versions: unknown }> {
  const config = await registryGet(`/config/${encodeURIComponent(subject)}`);
  const versions = await registryGet(`/subjects/${encodeURIComponent(subject)}/versions`);
  return {
    compatibility:
      config.status === 200
        ? (config.body as { compatibilityLevel?: unknown }).compatibilityLevel
        : `HTTP ${config.status}`,
    versions: versions.status === 200 ? versions.body : `HTTP ${versions.status}`,
  };
}

async function setSubjectLevel(subject: string, level: string): Promise<void> {
  const response = await fetch(
    `${services().schemaRegistryUrl}/config/${encodeURIComponent(subject)}`,
    {
      method: "PUT",
      headers: { "content-type": "application/vnd.schemaregistry.v1+json" },
      body: JSON.stringify({ compatibility: level }),
    },
  );
  expect(response.status, `PUT /config/${subject}`).toBe(200);
}

/** Deletes the topics and subjects of a prefix (soft, then for good). */
async function cleanUp(prefix: string): Promise<void> {
  const ours = await topicsOf(prefix);
  if (ours.length > 0) {
    const admin = testKafka().admin();
    await admin.connect();
    await admin.deleteTopics({ topics: ours }).catch(() => undefined);
    await admin.disconnect();
  }
  const subjects = (await registryGet("/subjects")).body as string[];
  for (const subject of subjects.filter((name) => name.startsWith(prefix)))
    for (const query of ["", "?permanent=true"])
      await fetch(
        `${services().schemaRegistryUrl}/subjects/${encodeURIComponent(subject)}${query}`,
        {
          method: "DELETE",
        },
      ).catch(() => undefined);
}

function event(service: string): ModelCallEvent {
  const end = Date.now() * 1000;
  return sampleEvent({
    event_id: randomUUID(),
    span_id: randomBytes(8).toString("hex"),
    service,
    service_instance: `${service}-0`,
    start_time: end - 1000,
    end_time: end,
  });
}

const connection = () => ({
  brokers: services().kafkaBrokers,
  schemaRegistryUrl: services().schemaRegistryUrl,
});

describe("autoCreateTopics: false on a prefix nobody provisioned", () => {
  const prefix = `${uniqueName("lp-fresh")}.`;
  const topics = topicNames(prefix);

  afterAll(async () => {
    await cleanUp(prefix);
  });

  it("the exporter creates no topic: connect() fails naming model-calls and `topics create`, its logger says so once, the events are dropped and counted at shutdown", async () => {
    const logger = keptLines();
    const exporter = new KafkaExporter({
      ...connection(),
      topic: topics.modelCalls,
      autoCreateTopics: false,
      retryInitialMs: 50,
      retryMaxMs: 200,
      logger,
    });
    try {
      const failure = await exporter.connect().then(
        () => undefined,
        (error: unknown) => error as Error & { code?: unknown; retriable?: unknown },
      );
      expect(failure?.message).toContain(topics.modelCalls);
      expect(failure?.message).toContain(PROVISION);
      expect(failure).toMatchObject({ code: "TOPIC_MISSING", retriable: false });

      for (let i = 0; i < 5; i++) void exporter.export(event("lp-svc"));
      // Long enough for several retries (50..200 ms apart): still one line about the topic.
      await new Promise((resolve) => setTimeout(resolve, 1500));
      expect(await exporter.shutdown(500)).toEqual({ complete: false, remaining: 5 });
      expect(exporter.stats()).toMatchObject({ sent: 0, dropped: 5, buffered: 0 });
      expect(exporter.stats().retried).toBeGreaterThan(1);
      const aboutTopic = logger.lines.filter((line) => line.context.includes(PROVISION));
      expect(aboutTopic, JSON.stringify(logger.lines)).toHaveLength(1);
      expect(aboutTopic[0]?.context).toContain(topics.modelCalls);
    } finally {
      // Whatever failed above: nothing keeps retrying after the test.
      await exporter.shutdown(500);
    }

    expect(await topicsOf(prefix)).toEqual([]);
    // It stopped before the registry too: no subject either.
    expect((await subjectState(`${topics.modelCalls}-value`)).versions).toBe("HTTP 404");
  });

  it("the exporter's events wait in its buffer while the topic is missing, and go out once an operator created it", async () => {
    // A prefix of its own: the other tests here assert theirs holds no topic.
    const later = `${uniqueName("lp-later")}.`;
    const topic = topicNames(later).modelCalls;
    const logger = keptLines();
    const exporter = new KafkaExporter({
      ...connection(),
      topic,
      autoCreateTopics: false,
      retryInitialMs: 50,
      retryMaxMs: 200,
      logger,
    });
    try {
      for (let i = 0; i < 5; i++) void exporter.export(event("lp-later"));
      await waitFor(
        "a failed delivery",
        () => exporter.stats().retried,
        (retried) => retried > 0,
      );
      expect(await topicsOf(topic)).toEqual([]);
      const admin = testKafka().admin();
      await admin.connect();
      await createTopics(admin, [{ topic, numPartitions: 1 }]);
      await admin.disconnect();
      expect(await exporter.flush(30_000)).toEqual({ complete: true, remaining: 0 });
      expect(exporter.stats()).toMatchObject({ sent: 5, dropped: 0 });
      expect(logger.lines.map((line) => line.message)).toEqual([
        "delivery failed; events stay buffered and are retried",
        "delivering again",
      ]);
    } finally {
      await exporter.shutdown(1000);
      await cleanUp(later);
    }
  });

  it("the processor does not start: the error names its missing topics and `topics create`, and no topic exists afterwards", async () => {
    const processor = new StreamProcessor({
      ...connection(),
      topicPrefix: prefix,
      partitions: 1,
      autoCreateTopics: false,
      logger: quiet,
    });
    const failure = await processor.start().then(
      () => undefined,
      (error: unknown) => error as Error,
    );
    expect(failure?.message).toContain(PROVISION);
    for (const name of [topics.modelCalls, topics.metricRollups, topics.alerts, topics.lateEvents])
      expect(failure?.message).toContain(name);
    expect(processor.state).toBe("stopped");
    expect(await topicsOf(prefix)).toEqual([]);
  });

  it("the sink does not start: the error names its missing topics and `topics create`, and no topic exists afterwards", async () => {
    const sink = new Sink({
      ...connection(),
      databaseUrl: services().databaseUrl,
      topicPrefix: prefix,
      partitions: 1,
      migrate: false,
      autoCreateTopics: false,
      logger: quiet,
    });
    const failure = await sink.start().then(
      () => undefined,
      (error: unknown) => error as Error,
    );
    expect(failure?.message).toContain(PROVISION);
    for (const name of [topics.modelCalls, topics.metricRollups, topics.alerts, topics.deadLetter])
      expect(failure?.message).toContain(name);
    expect(sink.state).toBe("stopped");
    expect(await topicsOf(prefix)).toEqual([]);
  });
});

describe("autoRegisterSchemas: false with subjects nobody registered", () => {
  const prefix = `${uniqueName("lp-nosubj")}.`;
  const topics = topicNames(prefix);

  beforeAll(async () => {
    // The topics are there (created by the test); the subjects are not.
    const admin = testKafka().admin();
    await admin.connect();
    await createTopics(
      admin,
      [topics.modelCalls, topics.metricRollups, topics.alerts, topics.deadLetter].map((topic) => ({
        topic,
        numPartitions: 1,
      })),
    );
    await admin.disconnect();
  });

  afterAll(async () => {
    await cleanUp(prefix);
  });

  it("the exporter, the sink and subscribeAlerts fail naming the subject and `topics create`, and the subjects still do not exist", async () => {
    const exporter = new KafkaExporter({
      ...connection(),
      topic: topics.modelCalls,
      autoCreateTopics: false,
      autoRegisterSchemas: false,
      logger: keptLines(),
    });
    const exporterFailure = await exporter.connect().then(
      () => undefined,
      (error: unknown) => error as Error & { code?: unknown },
    );
    await exporter.shutdown(100);
    expect(exporterFailure?.message).toContain(`${topics.modelCalls}-value`);
    expect(exporterFailure?.message).toContain(PROVISION);
    expect(exporterFailure).toMatchObject({ code: "SCHEMA_NOT_REGISTERED" });

    const sink = new Sink({
      ...connection(),
      databaseUrl: services().databaseUrl,
      topicPrefix: prefix,
      migrate: false,
      autoCreateTopics: false,
      autoRegisterSchemas: false,
      logger: quiet,
    });
    const sinkFailure = await sink.start().then(
      () => undefined,
      (error: unknown) => error as Error,
    );
    expect(sinkFailure?.message).toContain(`${topics.modelCalls}-value`);
    expect(sinkFailure?.message).toContain(PROVISION);

    const subscribed = await subscribeAlerts(
      {
        ...connection(),
        topicPrefix: prefix,
        groupId: uniqueName("lp-alerts"),
        autoRegisterSchemas: false,
      },
      () => undefined,
    ).then(
      async (subscription) => {
        await subscription.stop();
        return undefined;
      },
      (error: unknown) => error as Error,
    );
    expect(subscribed?.message).toContain(`${topics.alerts}-value`);
    expect(subscribed?.message).toContain(PROVISION);

    for (const topic of [topics.modelCalls, topics.metricRollups, topics.alerts])
      expect(await subjectState(`${topic}-value`), topic).toEqual({
        compatibility: "HTTP 404",
        versions: "HTTP 404",
      });
  });

  it("a subject with another schema only (another version of the contract) is not taken: the error says so and names the subject", async () => {
    const subject = `${topics.modelCalls}-value`;
    const other = await fetch(
      `${services().schemaRegistryUrl}/subjects/${encodeURIComponent(subject)}/versions`,
      {
        method: "POST",
        headers: { "content-type": "application/vnd.schemaregistry.v1+json" },
        body: JSON.stringify({
          schema: JSON.stringify({
            type: "record",
            name: "ModelCallEvent",
            namespace: "io.mcpobservatory",
            fields: [{ name: "event_id", type: "string" }],
          }),
        }),
      },
    );
    expect(other.status).toBe(200);
    const before = await subjectState(subject);
    const exporter = new KafkaExporter({
      ...connection(),
      topic: topics.modelCalls,
      autoRegisterSchemas: false,
      logger: keptLines(),
    });
    const failure = await exporter.connect().then(
      () => undefined,
      (error: unknown) => error as Error,
    );
    await exporter.shutdown(100);
    expect(failure?.message).toContain(subject);
    expect(failure?.message).toContain("another version of the contract");
    expect(failure?.message).toContain(PROVISION);
    expect(await subjectState(subject)).toEqual(before);
  });
});

describe("after `mcp-observatory topics create`, the pipeline runs with autoCreateTopics and autoRegisterSchemas false", () => {
  const prefix = `${uniqueName("lp-provisioned")}.`;
  const topics = topicNames(prefix);
  const subjects = [topics.modelCalls, topics.metricRollups, topics.alerts].map(
    (t) => `${t}-value`,
  );
  const database = useFreshDatabase("mcpo_lp");
  const env = (): NodeJS.ProcessEnv => ({
    ...process.env,
    KAFKA_BROKERS: services().kafkaBrokers,
    SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
    MCPO_TOPIC_PREFIX: prefix,
  });
  let first: { code: number; stdout: string; stderr: string };

  beforeAll(async () => {
    first = await runCli(["topics", "create", "--partitions", "2"], env());
  });

  afterAll(async () => {
    await cleanUp(prefix);
  });

  it("topics create (a process of its own) created every topic and registered the three subjects; a second run reports nothing new", async () => {
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout.match(/ created \(/g)).toHaveLength(6);
    expect(first.stdout.match(/ registered \(/g)).toHaveLength(3);
    expect(await topicsOf(prefix)).toEqual(
      [
        topics.alerts,
        topics.deadLetter,
        topics.lateEvents,
        topics.metricRollups,
        topics.modelCalls,
        `${prefix}processor-checkpoints`,
      ].sort(),
    );
    for (const subject of subjects)
      expect(await subjectState(subject), subject).toEqual({
        compatibility: "FULL_TRANSITIVE",
        versions: [1],
      });

    const second = await runCli(["topics", "create", "--partitions", "2"], env());
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).not.toMatch(/ created \(| registered \(| compatibility set \(/);
    expect(second.stdout.match(/ found /g)).toHaveLength(9);
    expect(second.stdout).toContain("nothing new");
    for (const subject of subjects)
      expect(await subjectState(subject), subject).toEqual({
        compatibility: "FULL_TRANSITIVE",
        versions: [1],
      });
  });

  it("exporter, processor and sink with both options false carry events to PostgreSQL, create no topic and leave the subjects' compatibility and versions as they were", async () => {
    // A level of the subjects' own that the components would overwrite if they wrote any.
    for (const subject of subjects) await setSubjectLevel(subject, "BACKWARD_TRANSITIVE");
    const before = await Promise.all(subjects.map((subject) => subjectState(subject)));
    expect(before.map((state) => state.compatibility)).toEqual(
      subjects.map(() => "BACKWARD_TRANSITIVE"),
    );
    const topicsBefore = await topicsOf(prefix);

    const leastPrivilege = { autoCreateTopics: false, autoRegisterSchemas: false } as const;
    const processor = new StreamProcessor({
      ...connection(),
      topicPrefix: prefix,
      ...leastPrivilege,
      windowSizeMs: 1000,
      graceMs: 200,
      idleTimeoutMs: 500,
      checkpointIntervalMs: 200,
      logger: quiet,
    });
    const sink = new Sink({
      ...connection(),
      databaseUrl: database.current.url,
      topicPrefix: prefix,
      ...leastPrivilege,
      logger: quiet,
    });
    const exporter = new KafkaExporter({
      ...connection(),
      topic: topics.modelCalls,
      ...leastPrivilege,
      logger: keptLines(),
    });
    const services_ = ["lp-payments", "lp-search"];
    const count = 40;
    try {
      await processor.start();
      await sink.start();
      await exporter.connect();
      for (let i = 0; i < count; i++) void exporter.export(event(services_[i % 2] ?? ""));
      expect(await exporter.flush(30_000)).toEqual({ complete: true, remaining: 0 });
      expect(exporter.stats()).toMatchObject({ sent: count, dropped: 0 });

      const stored = await waitFor(
        "every span and the rollups of every call in PostgreSQL",
        async () => {
          const client = new pg.Client({ connectionString: database.current.url });
          await client.connect();
          try {
            const spans = await client.query<{ n: string }>(
              "select count(*)::text as n from spans",
            );
            const calls = await client.query<{ n: string | null }>(
              "select sum(calls)::text as n from metric_rollups where scope = 'service'",
            );
            return { spans: Number(spans.rows[0]?.n), calls: Number(calls.rows[0]?.n ?? 0) };
          } finally {
            await client.end();
          }
        },
        (seen) => seen.spans >= count && seen.calls >= count,
        { timeoutMs: 60_000, intervalMs: 500 },
      );
      expect(stored).toEqual({ spans: count, calls: count });
      expect(processor.stats().events).toBe(count);
    } finally {
      await exporter.shutdown(5000);
      await sink.stop();
      await processor.stop();
    }

    expect(await topicsOf(prefix)).toEqual(topicsBefore);
    const after = await Promise.all(subjects.map((subject) => subjectState(subject)));
    expect(after).toEqual(before);

    // The control: a component allowed to register sets the subject's level back, so the
    // comparison above would have seen a write.
    const registering = new KafkaExporter({
      ...connection(),
      topic: topics.modelCalls,
      logger: keptLines(),
    });
    try {
      await registering.connect();
    } finally {
      await registering.shutdown(1000);
    }
    expect((await subjectState(subjects[0] ?? "")).compatibility).toBe("FULL_TRANSITIVE");
  });
});
