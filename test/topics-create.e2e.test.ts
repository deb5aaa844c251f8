/**
 * `mcp-observatory topics create` and the least-privilege switches on the command line, run as real
 * processes from this repository (`node --import tsx cli/main.ts`), each on a topic prefix of its
 * own: the topics it creates and their settings, the subjects it registers, a second run that
 * changes nothing, and the processor and the sink refusing to create or register when told not to
 * (by flag and by environment variable), in one line that says what to run.
 */
import { ConfigResourceTypes } from "kafkajs";
import { afterAll, describe, expect, it } from "vitest";

import { topicNames } from "../config/index.js";
import { runCli } from "./support/cli.js";
import { createTopics, services, testKafka, uniqueName } from "./support/isolation.js";

const PROVISION = "mcp-observatory topics create";
const prefixes: string[] = [];

/** A prefix nobody else uses; its topics and subjects are deleted after the file. */
function freshPrefix(name: string): string {
  const prefix = `${uniqueName(name)}.`;
  prefixes.push(prefix);
  return prefix;
}

function envFor(prefix: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return {
    ...process.env,
    KAFKA_BROKERS: services().kafkaBrokers,
    SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
    DATABASE_URL: services().databaseUrl,
    MCPO_TOPIC_PREFIX: prefix,
    ...extra,
  };
}

async function registry(
  path: string,
  init: { method?: string; body?: unknown } = {},
): Promise<{ status: number; body: unknown }> {
  const response = await fetch(`${services().schemaRegistryUrl}${path}`, {
    method: init.method ?? "GET",
    headers: {
      accept: "application/vnd.schemaregistry.v1+json, application/json",
      "content-type": "application/vnd.schemaregistry.v1+json",
    },
    ...(init.body === undefined ? {} : { body: JSON.stringify(init.body) }),
  });
  const text = await response.text();
  return { status: response.status, body: text === "" ? undefined : (JSON.parse(text) as unknown) };
}

/** A subject's own level and versions, as the registry reports them (read apart from the product). */
async function subjectState(subject: string): Promise<{ level: unknown; versions: unknown }> {
  const config = await registry(`/config/${encodeURIComponent(subject)}`);
  const versions = await registry(`/subjects/${encodeURIComponent(subject)}/versions`);
  return {
    level:
      config.status === 200
        ? (config.body as { compatibilityLevel?: unknown }).compatibilityLevel
        : config.status,
    versions: versions.status === 200 ? versions.body : versions.status,
  };
}

/** Each topic of the prefix: partitions and the settings the project sets. */
async function topicsOf(
  prefix: string,
): Promise<Record<string, { partitions: number; config: Record<string, string> }>> {
  const admin = testKafka().admin();
  await admin.connect();
  try {
    const names = (await admin.listTopics()).filter((topic) => topic.startsWith(prefix)).sort();
    if (names.length === 0) return {};
    const metadata = await admin.fetchTopicMetadata({ topics: names });
    const described = await admin.describeConfigs({
      includeSynonyms: false,
      resources: names.map((name) => ({
        type: ConfigResourceTypes.TOPIC,
        name,
        configNames: [
          "retention.ms",
          "message.timestamp.type",
          "cleanup.policy",
          "max.message.bytes",
        ],
      })),
    });
    const result: Record<string, { partitions: number; config: Record<string, string> }> = {};
    for (const name of names) {
      const entries =
        described.resources.find((resource) => resource.resourceName === name)?.configEntries ?? [];
      result[name.slice(prefix.length)] = {
        partitions: metadata.topics.find((topic) => topic.name === name)?.partitions.length ?? 0,
        config: Object.fromEntries(entries.map((entry) => [entry.configName, entry.configValue])),
      };
    }
    return result;
  } finally {
    await admin.disconnect();
  }
}

afterAll(async () => {
  const admin = testKafka().admin();
  await admin.connect();
  const topics = (await admin.listTopics()).filter((topic) =>
    prefixes.some((prefix) => topic.startsWith(prefix)),
  );
  if (topics.length > 0) await admin.deleteTopics({ topics }).catch(() => undefined);
  await admin.disconnect();
  const subjects = (await registry("/subjects")).body as string[];
  for (const subject of subjects.filter((name) => prefixes.some((p) => name.startsWith(p))))
    for (const query of ["", "?permanent=true"])
      await registry(`/subjects/${encodeURIComponent(subject)}${query}`, { method: "DELETE" });
});

describe("mcp-observatory topics create", () => {
  const prefix = freshPrefix("topics-create");
  const subjects = ["model-calls", "metric-rollups", "alerts"].map((t) => `${prefix}${t}-value`);

  it("creates every topic with the settings the processor and the sink create them with, registers the three subjects with FULL_TRANSITIVE, and prints what it did", async () => {
    const result = await runCli(
      ["topics", "create", "--partitions", "3", "--model-calls-retention", "604800000"],
      envFor(prefix),
    );
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toBe("");
    const lines = result.stdout.trimEnd().split("\n");
    expect(lines).toHaveLength(10);
    for (const topic of Object.values(topicNames(prefix)))
      expect(lines.find((line) => line.includes(` ${topic} `))).toMatch(/ created \(/);
    for (const subject of subjects)
      expect(lines.find((line) => line.includes(` ${subject} `))).toMatch(
        /registered \(\w+ schema id \d+, compatibility FULL_TRANSITIVE\)/,
      );
    expect(lines.at(-1)).toBe("created 6 of 6 topics; registered or updated 3 of 3 subjects");

    expect(await topicsOf(prefix)).toEqual({
      "model-calls": {
        partitions: 3,
        config: {
          "retention.ms": "604800000",
          "message.timestamp.type": "LogAppendTime",
          "cleanup.policy": "delete",
          "max.message.bytes": expect.any(String) as string,
        },
      },
      "metric-rollups": {
        partitions: 3,
        config: expect.objectContaining({ "cleanup.policy": "compact" }) as Record<string, string>,
      },
      alerts: {
        partitions: 3,
        config: expect.objectContaining({ "cleanup.policy": "delete" }) as Record<string, string>,
      },
      "dead-letter": {
        partitions: 3,
        config: expect.objectContaining({ "cleanup.policy": "delete" }) as Record<string, string>,
      },
      "late-events": {
        partitions: 3,
        config: expect.objectContaining({ "cleanup.policy": "delete" }) as Record<string, string>,
      },
      "processor-checkpoints": {
        partitions: 1,
        config: expect.objectContaining({
          "cleanup.policy": "compact",
          "max.message.bytes": String(16 * 1024 * 1024),
        }) as Record<string, string>,
      },
    });
    for (const subject of subjects)
      expect(await subjectState(subject), subject).toEqual({
        level: "FULL_TRANSITIVE",
        versions: [1],
      });
  });

  it("a second run creates and registers nothing, says so, and leaves topics and subjects as they were", async () => {
    const topicsBefore = await topicsOf(prefix);
    const result = await runCli(["topics", "create", "--partitions", "3"], envFor(prefix));
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stdout.trimEnd().split("\n");
    expect(lines.filter((line) => / found /.test(line))).toHaveLength(9);
    expect(result.stdout).not.toMatch(/created \(|registered \(|compatibility set \(/);
    expect(lines.at(-1)).toBe("nothing new: all 6 topics and 3 subjects were already provisioned");
    expect(await topicsOf(prefix)).toEqual(topicsBefore);
    for (const subject of subjects)
      expect(await subjectState(subject), subject).toEqual({
        level: "FULL_TRANSITIVE",
        versions: [1],
      });
  });

  it("a subject whose level someone changed gets FULL_TRANSITIVE back, and the line says what it was", async () => {
    const subject = subjects[1] ?? "";
    expect(
      (
        await registry(`/config/${encodeURIComponent(subject)}`, {
          method: "PUT",
          body: { compatibility: "NONE" },
        })
      ).status,
    ).toBe(200);
    const result = await runCli(["topics", "create"], envFor(prefix));
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout.split("\n").find((line) => line.includes(` ${subject} `))).toMatch(
      /compatibility set \(MetricRollup schema id \d+, compatibility FULL_TRANSITIVE; was NONE\)/,
    );
    expect(await subjectState(subject)).toEqual({ level: "FULL_TRANSITIVE", versions: [1] });
    expect(result.stdout.trimEnd().split("\n").at(-1)).toBe(
      "created 0 of 6 topics; registered or updated 1 of 3 subjects",
    );
  });
});

describe("the least-privilege switches on the command line", () => {
  it("processor --no-auto-create-topics on a prefix nobody provisioned exits 1 with one line naming the topics and `topics create`, and creates nothing", async () => {
    const prefix = freshPrefix("lp-cli-processor");
    const result = await runCli(["processor", "--no-auto-create-topics"], envFor(prefix));
    expect(result.code).toBe(1);
    const lines = result.stderr.trimEnd().split("\n");
    expect(lines, result.stderr).toHaveLength(1);
    expect(lines[0]).toContain(`${prefix}model-calls`);
    expect(lines[0]).toContain(`${prefix}processor-checkpoints`);
    expect(lines[0]).toContain(PROVISION);
    expect(lines[0]).not.toContain("--verbose");
    expect(await topicsOf(prefix)).toEqual({});
  });

  it("the sink with MCPO_AUTO_CREATE_TOPICS=false does the same", async () => {
    const prefix = freshPrefix("lp-cli-sink");
    const result = await runCli(
      ["sink", "--metrics-port", "0"],
      envFor(prefix, { MCPO_AUTO_CREATE_TOPICS: "false" }),
    );
    expect(result.code).toBe(1);
    const lines = result.stderr.trimEnd().split("\n");
    expect(lines, result.stderr).toHaveLength(1);
    expect(lines[0]).toContain(`${prefix}dead-letter`);
    expect(lines[0]).toContain(PROVISION);
    expect(await topicsOf(prefix)).toEqual({});
  });

  it("the sink with MCPO_AUTO_REGISTER_SCHEMAS=false where the topics exist and the subjects do not exits 1 with one line naming the subject, and registers nothing", async () => {
    const prefix = freshPrefix("lp-cli-subject");
    const names = topicNames(prefix);
    const admin = testKafka().admin();
    await admin.connect();
    await createTopics(
      admin,
      [names.modelCalls, names.metricRollups, names.alerts, names.deadLetter].map((topic) => ({
        topic,
        numPartitions: 1,
      })),
    );
    await admin.disconnect();
    const result = await runCli(
      ["sink", "--no-auto-create-topics", "--metrics-port", "0"],
      envFor(prefix, { MCPO_AUTO_REGISTER_SCHEMAS: "false" }),
    );
    expect(result.code).toBe(1);
    const lines = result.stderr.trimEnd().split("\n");
    expect(lines, result.stderr).toHaveLength(1);
    expect(lines[0]).toContain(`${names.modelCalls}-value`);
    expect(lines[0]).toContain(PROVISION);
    expect(lines[0]).not.toContain("--verbose");
    expect(await subjectState(`${names.modelCalls}-value`)).toEqual({ level: 404, versions: 404 });
  });

  it("a value that is not a switch is refused, naming the variable", async () => {
    const result = await runCli(
      ["processor"],
      envFor(freshPrefix("lp-cli-bad"), { MCPO_AUTO_CREATE_TOPICS: "maybe" }),
    );
    expect(result.code).toBe(2);
    expect(result.stderr).toContain("MCPO_AUTO_CREATE_TOPICS");
    expect(result.stderr).toContain("expected true or false");
  });
});
