/**
 * One event can never block the exporter, against the real broker and registry: an event larger
 * than the broker accepts is truncated by the interceptor or refused and dropped on its own, a
 * request the broker refuses as too large is split, and `shutdown()` settles in a process that
 * nothing else keeps alive.
 */
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

import type { Admin } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { ModelCallEvent } from "../../avro/generated.js";
import { ObservatoryError } from "../../config/errors.js";
import { createRecordProducer, KafkaError, RecordTooLargeError } from "../../kafka/index.js";
import { KafkaExporter } from "../../producer/exporters/kafka.js";
import { instrument } from "../../producer/interceptor.js";
import type { Logger } from "../../producer/logger.js";
import { decodeModelCalls, readWholeTopic, REPO_ROOT } from "../support/cli.js";
import { sampleEvent } from "../support/events.js";
import { createTopics, services, testKafka, uniqueName } from "../support/isolation.js";

/** The marker the interceptor ends a truncated value with. */
const MARKER = "…[truncated]";
/** The prompt digest's key (HMAC-SHA-256): without one, no digest is shipped. */
const HASH_KEY = "hostile-exporter-content-hash-key-0123456789";

/** A logger that keeps every line, with its context, as the JSON a log shipper would get. */
function recordingLogger(): Logger & { readonly lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    warn: (message, context) => lines.push(JSON.stringify({ level: "warn", message, ...context })),
    error: (message, context) =>
      lines.push(JSON.stringify({ level: "error", message, ...context })),
  };
}

/** Text that gzip cannot shrink much: base64 of random bytes, `length` characters. */
function incompressible(length: number): string {
  return randomBytes(Math.ceil((length * 3) / 4))
    .toString("base64")
    .slice(0, length);
}

const USAGE = { promptTokens: 3, completionTokens: 2 } as const;

describe("an event too large for the broker (real stack)", () => {
  let admin: Admin;
  const topics: string[] = [];

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
  });

  afterAll(async () => {
    await admin.deleteTopics({ topics }).catch(() => undefined);
    await admin.disconnect();
  });

  it("a 1.5 MB incompressible prompt then 100 normal calls: the 100 reach the topic in order, the big one arrives truncated within the maximum event size and is counted", async () => {
    const topic = uniqueName("hostile-big-prompt");
    topics.push(topic);
    const logger = recordingLogger();
    const exporter = new KafkaExporter({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topic,
      topicPartitions: 1,
      logger,
    });
    const interceptor = instrument({
      serviceName: "hostile-mcp",
      exporter,
      captureContent: true,
      estimateTokens: false,
      contentHashKey: HASH_KEY,
      logger,
    });
    const prompt = incompressible(1_500_000);
    const big = await interceptor.interceptModelCall({
      model: "gpt-4o",
      prompt,
      response: "fine",
      usage: USAGE,
    });
    const good: ModelCallEvent[] = [];
    for (let i = 0; i < 100; i++) {
      const event = await interceptor.interceptModelCall({
        model: "gpt-4o",
        prompt: `call ${i}`,
        response: "fine",
        usage: USAGE,
      });
      if (event) good.push(event);
    }
    expect(good).toHaveLength(100);

    expect(await interceptor.flush(20_000)).toEqual({ complete: true, remaining: 0 });
    const counters = interceptor.getCounters();
    expect(counters).toMatchObject({ sent: 101, dropped: 0, contentTruncated: 1, oversized: 0 });

    const records = await readWholeTopic(topic);
    const { events } = await decodeModelCalls(topic, records);
    const stored = events.map((entry) => entry.event);
    expect(stored.map((event) => event.event_id)).toEqual([
      big?.event_id,
      ...good.map((event) => event.event_id),
    ]);
    const bigRecord = records[0];
    expect(bigRecord?.value.length).toBeLessThanOrEqual(900_000);
    const bigStored = stored[0];
    // Cut to fit, with a visible marker; its size and digest still describe the whole prompt.
    expect(bigStored?.prompt_text?.endsWith(MARKER)).toBe(true);
    expect(prompt.startsWith(bigStored?.prompt_text?.slice(0, -MARKER.length) ?? "x")).toBe(true);
    expect(bigStored?.prompt_text?.length).toBeGreaterThan(800_000);
    expect(bigStored?.response_text).toBe("fine");
    expect(bigStored?.prompt_size_bytes).toBe(1_500_000);
    expect(bigStored?.prompt_sha256).toEqual(
      createHmac("sha256", HASH_KEY).update(prompt).digest(),
    );
    for (const [i, event] of stored.slice(1).entries()) expect(event.prompt_text).toBe(`call ${i}`);

    expect(await interceptor.shutdown(5_000)).toEqual({ complete: true, remaining: 0 });
    // No log line carries the content.
    for (const line of logger.lines) expect(line.length).toBeLessThan(2_000);
  });

  it("an event exported directly (no interceptor) that the broker refuses even alone is dropped and counted, with a warning that does not carry its content, and the 100 events after it are sent", async () => {
    const topic = uniqueName("hostile-direct");
    topics.push(topic);
    const logger = recordingLogger();
    const exporter = new KafkaExporter({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topic,
      topicPartitions: 1,
      retryInitialMs: 50,
      retryMaxMs: 500,
      logger,
    });
    const huge = incompressible(1_500_000);
    void exporter.export(sampleEvent({ prompt_text: huge }));
    const good = Array.from({ length: 100 }, () => sampleEvent());
    for (const event of good) void exporter.export(event);

    expect(await exporter.flush(20_000)).toEqual({ complete: true, remaining: 0 });
    expect(exporter.stats()).toMatchObject({ sent: 100, dropped: 1, tooLarge: 1, buffered: 0 });

    const { events } = await decodeModelCalls(topic, await readWholeTopic(topic));
    expect(events.map((entry) => entry.event.event_id)).toEqual(
      good.map((event) => event.event_id),
    );
    const warnings = logger.lines.filter((line) => line.includes("too large"));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.length).toBeLessThan(2_000);
    expect(warnings[0]).not.toContain(huge.slice(0, 40));
    await exporter.shutdown(5_000);
  });

  it("an event larger than maxRecordBytes encoded is dropped without being sent, counted as too large, and the events around it are sent", async () => {
    const topic = uniqueName("hostile-max-record");
    topics.push(topic);
    const logger = recordingLogger();
    const exporter = new KafkaExporter({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topic,
      topicPartitions: 1,
      maxRecordBytes: 20_000,
      logger,
    });
    const events = [
      sampleEvent(),
      sampleEvent({ prompt_text: "x".repeat(30_000) }),
      sampleEvent({ prompt_text: "y".repeat(10_000) }),
    ];
    for (const event of events) void exporter.export(event);
    expect(await exporter.flush(20_000)).toEqual({ complete: true, remaining: 0 });
    expect(exporter.stats()).toMatchObject({ sent: 2, dropped: 1, tooLarge: 1 });
    const { events: stored } = await decodeModelCalls(topic, await readWholeTopic(topic));
    expect(stored.map((entry) => entry.event.event_id)).toEqual([
      events[0]?.event_id,
      events[2]?.event_id,
    ]);
    const warnings = logger.lines.filter((line) => line.includes("too large"));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(events[1]?.event_id);
    expect(warnings[0]).not.toContain("xxxxxxxx");
    await exporter.shutdown(5_000);
  });

  it("a batch the broker refuses as too large is split and sent in halves, in order; a record it refuses alone is dropped and counted, and the records after it are sent", async () => {
    const topic = uniqueName("hostile-split");
    topics.push(topic);
    // A topic that takes at most 300 000 bytes per record batch: a request of the exporter's
    // usual size (several 100 kB records) is refused until it is split.
    await createTopics(admin, [
      { topic, numPartitions: 1, config: { "max.message.bytes": "300000" } },
    ]);
    const logger = recordingLogger();
    const exporter = new KafkaExporter({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topic,
      compression: "none",
      retryInitialMs: 50,
      retryMaxMs: 500,
      logger,
    });
    const events = Array.from({ length: 13 }, (_, i) =>
      sampleEvent({ prompt_text: incompressible(i === 6 ? 400_000 : 100_000) }),
    );
    for (const event of events) void exporter.export(event);

    expect(await exporter.flush(30_000)).toEqual({ complete: true, remaining: 0 });
    expect(exporter.stats()).toMatchObject({ sent: 12, dropped: 1, tooLarge: 1, buffered: 0 });
    const { events: stored } = await decodeModelCalls(topic, await readWholeTopic(topic));
    expect(stored.map((entry) => entry.event.event_id)).toEqual(
      events.filter((_, i) => i !== 6).map((event) => event.event_id),
    );
    expect(logger.lines.filter((line) => line.includes("too large"))).toHaveLength(1);
    await exporter.shutdown(5_000);
  });

  it("at the Kafka boundary, a record the broker refuses even alone is a typed, non-retriable error naming the topic and its size; the records before it were delivered", async () => {
    const topic = uniqueName("hostile-boundary");
    topics.push(topic);
    await createTopics(admin, [
      { topic, numPartitions: 1, config: { "max.message.bytes": "300000" } },
    ]);
    const producer = createRecordProducer({
      brokers: services().kafkaBrokers.split(","),
      clientId: uniqueName("boundary"),
    });
    await producer.connect();
    let thrown: unknown;
    try {
      await producer.send(
        topic,
        [
          { key: "k", value: Buffer.from("first") },
          { key: "k", value: randomBytes(200_000) },
          { key: "k", value: randomBytes(400_000) },
          { key: "k", value: Buffer.from("never sent") },
        ],
        "none",
      );
    } catch (error) {
      thrown = error;
    } finally {
      await producer.disconnect();
    }
    expect(thrown).toBeInstanceOf(RecordTooLargeError);
    expect(thrown).toBeInstanceOf(KafkaError);
    expect(thrown).toBeInstanceOf(ObservatoryError);
    const error = thrown as RecordTooLargeError;
    expect(error.code).toBe("RECORD_TOO_LARGE");
    expect(error.retriable).toBe(false);
    expect(error.index).toBe(2);
    expect(error.bytes).toBeGreaterThan(400_000);
    expect(error.context).toMatchObject({ topic, key: "k" });
    expect(error.message).toContain(topic);
    const stored = await readWholeTopic(topic);
    expect(stored.map((record) => record.value.length)).toEqual([5, 200_000]);
  });

  it("a refused request spanning several partitions is sent again partition by partition: the batches the broker wrote are not written twice, every record lands once and in order, and the producer goes on", async () => {
    const topic = uniqueName("hostile-partitions");
    topics.push(topic);
    await createTopics(admin, [
      { topic, numPartitions: 3, config: { "max.message.bytes": "300000" } },
    ]);
    const producer = createRecordProducer({
      brokers: services().kafkaBrokers.split(","),
      clientId: uniqueName("partitions"),
    });
    await producer.connect();
    const small = (name: string, partition?: number) => ({
      key: null,
      value: Buffer.from(name),
      ...(partition === undefined ? {} : { partition }),
    });
    try {
      // One request (under 512 KiB): partitions 1 and 2 and the keyless records are written,
      // partition 0's 400 kB batch is refused.
      await producer.send(
        topic,
        [
          small("p1-a", 1),
          small("p2-a", 2),
          ...[0, 1, 2, 3].map((i) => ({
            key: null,
            value: Buffer.concat([Buffer.from(`p0-${i}:`), randomBytes(100_000)]),
            partition: 0,
          })),
          small("free-a"),
          small("free-b"),
          small("p1-b", 1),
        ],
        "none",
      );
      // The producer's sequence numbers still match the broker's.
      await producer.send(topic, [small("p1-c", 1), small("p2-b", 2), small("free-c")], "none");
    } finally {
      await producer.disconnect();
    }
    const stored = await readWholeTopic(topic);
    const names = (partition: number): string[] =>
      stored
        .filter((record) => record.partition === partition)
        .map((record) => record.value.subarray(0, 6).toString().split(":")[0] ?? "");
    const all = stored.map((record) => record.value.subarray(0, 6).toString().split(":")[0]);
    expect(all.sort()).toEqual(
      [
        "p1-a",
        "p2-a",
        "p0-0",
        "p0-1",
        "p0-2",
        "p0-3",
        "free-a",
        "free-b",
        "p1-b",
        "p1-c",
        "p2-b",
        "free-c",
      ].sort(),
    );
    expect(names(0).filter((name) => name.startsWith("p0"))).toEqual([
      "p0-0",
      "p0-1",
      "p0-2",
      "p0-3",
    ]);
    expect(names(1).filter((name) => name.startsWith("p1"))).toEqual(["p1-a", "p1-b", "p1-c"]);
    expect(names(2).filter((name) => name.startsWith("p2"))).toEqual(["p2-a", "p2-b"]);
  });
});

describe("shutdown() in a process nothing else keeps alive", () => {
  let dir: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "mcpo-shutdown-"));
  });

  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  /**
   * Runs a script that instruments, records five calls and awaits `shutdown()` at top level
   * (an unsettled top-level await makes Node exit with code 13, printing nothing).
   */
  async function runChild(
    brokers: string,
    topic: string,
    timeoutMs: number,
  ): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
    const url = (path: string): string => pathToFileURL(join(REPO_ROOT, path)).href;
    const script = join(dir, `${uniqueName("child")}.mts`);
    writeFileSync(
      script,
      `
import { KafkaExporter } from ${JSON.stringify(url("producer/exporters/kafka.ts"))};
import { instrument } from ${JSON.stringify(url("producer/interceptor.ts"))};
import { silentLogger } from ${JSON.stringify(url("producer/logger.ts"))};
const exporter = new KafkaExporter({
  brokers: ${JSON.stringify(brokers)},
  schemaRegistryUrl: ${JSON.stringify(services().schemaRegistryUrl)},
  topic: ${JSON.stringify(topic)},
  topicPartitions: 1,
  retryInitialMs: 50,
  retryMaxMs: 200,
  logger: silentLogger,
});
const interceptor = instrument({ serviceName: "shutdown-child", exporter, estimateTokens: false, logger: silentLogger });
for (let i = 0; i < 5; i++)
  await interceptor.interceptModelCall({ model: "gpt-4o", usage: { promptTokens: i + 1, completionTokens: 1 } });
const result = await interceptor.shutdown(${timeoutMs});
process.stdout.write(JSON.stringify({ result, counters: interceptor.getCounters() }) + "\\n");
`,
    );
    const started = Date.now();
    const child = spawn(process.execPath, ["--import", "tsx", script], {
      cwd: REPO_ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    // A child that hangs fails the test rather than the run.
    const killer = setTimeout(() => child.kill("SIGKILL"), 90_000);
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    clearTimeout(killer);
    return { code, stdout, stderr, ms: Date.now() - started };
  }

  it("with the broker up: exits 0 after printing a complete result, the five calls on the topic", async () => {
    const topic = uniqueName("hostile-shutdown");
    const run = await runChild(services().kafkaBrokers, topic, 20_000);
    try {
      expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 0, stderr: "" });
      const printed = JSON.parse(run.stdout) as {
        result: unknown;
        counters: Record<string, number>;
      };
      expect(printed.result).toEqual({ complete: true, remaining: 0 });
      expect(printed.counters).toMatchObject({ recorded: 5, sent: 5, dropped: 0, buffered: 0 });
      const { events } = await decodeModelCalls(topic, await readWholeTopic(topic));
      expect(events.map((entry) => entry.event.prompt_tokens)).toEqual([1, 2, 3, 4, 5]);
    } finally {
      const admin = testKafka().admin();
      await admin.connect();
      await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
      await admin.disconnect();
    }
  }, 120_000);

  it("with no broker: exits 0 after its timeout, printing an incomplete result and the five calls dropped", async () => {
    const run = await runChild("127.0.0.1:1", uniqueName("hostile-shutdown-dead"), 1_500);
    expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 0, stderr: "" });
    const printed = JSON.parse(run.stdout) as {
      result: unknown;
      counters: Record<string, number>;
    };
    expect(printed.result).toEqual({ complete: false, remaining: 5 });
    expect(printed.counters).toMatchObject({ recorded: 5, sent: 0, dropped: 5, buffered: 0 });
  }, 120_000);
});
