/**
 * Control records every consumer of model-calls can read. A JVM consumer that reads values as
 * Kafka Connect's AvroConverter does (Confluent wire format, writer schema from the registry's
 * Confluent-compatible API, Apache Avro's GenericDatumReader; test/jvm/avro-consumer, built here
 * with Maven) reads a log a real processor wrote — events, copies of events away from their home
 * partition, progress records, idle ticks — without a single failure: ticks and progress records
 * are null values (their fields in headers), copies the original event's bytes.
 *
 * Logs written by earlier versions (ticks and progress records with the time as decimal text)
 * are still read: a replay, the partition driver and a live processor read such a log as they
 * read the new form.
 */
import { execFile } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import type { Admin } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import {
  CONTROL_HEADER,
  PROGRESS_TIME_HEADER,
  WATERMARK_TIME_HEADER,
  progressRecord,
  readControl,
  watermarkTick,
} from "../avro/control.js";
import type { MetricRollup, ModelCallEvent } from "../avro/generated.js";
import type { ConsumedRecord } from "../kafka/index.js";
import { MICROS_PER_MILLI, windowOf } from "../metrics/index.js";
import { homeOf } from "../processor/checkpoints.js";
import { PartitionDriver } from "../processor/driver.js";
import { DEFAULT_WINDOW_SETTINGS, type PartitionOutput } from "../processor/partition.js";
import { StreamProcessor } from "../processor/processor.js";
import { replayLog, type ReplaySummary } from "../processor/replay.js";
import { sampleEvent } from "./support/events.js";
import { createTopics, quietLogger, services, testKafka, uniqueName } from "./support/isolation.js";
import { readAllRollups, readBetween, topicEnds } from "./support/topic-records.js";
import { pause, waitFor } from "./support/wait.js";

const run = promisify(execFile);

const WINDOW_MS = 2000;
const GRACE_MS = 1000;
const PARTITIONS = 3;
const SERVICES = ["alpha", "bravo", "charlie", "delta", "echo"];

const JVM_PROJECT = fileURLToPath(new URL("./jvm/avro-consumer/", import.meta.url));
const JVM_SOURCE = `${JVM_PROJECT}src/main/java/io/mcpobservatory/jvm/AvroConsumer.java`;
const JVM_CLASS = `${JVM_PROJECT}target/classes/io/mcpobservatory/jvm/AvroConsumer.class`;
const JVM_CLASSPATH = `${JVM_PROJECT}target/classpath.txt`;

/** What the JVM consumer prints. */
interface JvmCounts {
  readonly topic: string;
  readonly records: number;
  readonly nulls: number;
  readonly decoded: number;
  readonly failures: number;
  /** Per value of the `mcpo-control` header (`none`: no header). */
  readonly nullsByControl: Readonly<Record<string, number>>;
  readonly decodedByControl: Readonly<Record<string, number>>;
  readonly failuresByControl: Readonly<Record<string, number>>;
  readonly firstFailure: {
    readonly partition: number;
    readonly offset: number;
    readonly control: string;
    readonly message: string;
  } | null;
}

/**
 * Builds the JVM consumer once into its target/ (kept while the pom and the source are older and
 * every jar of its classpath is still in the local Maven repository): offline when the local
 * repository has everything, else from Maven Central. Returns its classpath.
 */
async function buildJvmConsumer(): Promise<string> {
  const built =
    existsSync(JVM_CLASS) &&
    existsSync(JVM_CLASSPATH) &&
    statSync(JVM_CLASS).mtimeMs >= statSync(JVM_SOURCE).mtimeMs &&
    statSync(JVM_CLASSPATH).mtimeMs >= statSync(`${JVM_PROJECT}pom.xml`).mtimeMs &&
    readFileSync(JVM_CLASSPATH, "utf8")
      .trim()
      .split(":")
      .every((jar) => existsSync(jar));
  const started = Date.now();
  let how = "already built";
  if (!built) {
    const mvn = (offline: boolean) =>
      run(
        "mvn",
        ["-q", "-B", ...(offline ? ["-o"] : []), "-f", `${JVM_PROJECT}pom.xml`, "compile"],
        {
          timeout: 300_000,
          maxBuffer: 16 * 1024 * 1024,
        },
      );
    try {
      await mvn(true);
      how = "built offline";
    } catch {
      try {
        await mvn(false);
        how = "built from Maven Central";
      } catch (error) {
        const failed = error as { stdout?: string; stderr?: string; message: string };
        throw new Error(
          `could not build the JVM consumer in ${JVM_PROJECT} (mvn compile): ${failed.message}\n${failed.stdout ?? ""}${failed.stderr ?? ""}`,
        );
      }
    }
  }
  process.stderr.write(`[control-records.e2e] JVM consumer ${how} in ${Date.now() - started} ms\n`);
  return `${JVM_PROJECT}target/classes:${readFileSync(JVM_CLASSPATH, "utf8").trim()}`;
}

/** Runs the JVM consumer over `topic`, from its start to its end offsets now. */
async function jvmConsume(classpath: string, topic: string): Promise<JvmCounts> {
  const started = Date.now();
  const { stdout } = await run(
    "java",
    [
      "-cp",
      classpath,
      "io.mcpobservatory.jvm.AvroConsumer",
      services().kafkaBrokers,
      services().schemaRegistryUrl,
      topic,
    ],
    { timeout: 180_000, maxBuffer: 16 * 1024 * 1024 },
  );
  const counts = JSON.parse(stdout.trim().split("\n").at(-1) ?? "") as JvmCounts;
  process.stderr.write(
    `[control-records.e2e] JVM consumer over ${topic} in ${Date.now() - started} ms: ${JSON.stringify(counts)}\n`,
  );
  return counts;
}

/** The log's records by kind, from the `mcpo-control` header alone. */
function kinds(records: readonly ConsumedRecord[]): Record<string, number> {
  const counts: Record<string, number> = { event: 0, copy: 0, watermark: 0, progress: 0 };
  for (const record of records) {
    const kind = record.headers[CONTROL_HEADER] ?? "event";
    counts[kind] = (counts[kind] ?? 0) + 1;
  }
  return counts;
}

/**
 * A record as versions before null-valued control records wrote it: a tick's or a progress
 * record's time as decimal text in the value, and only the headers those versions wrote.
 */
function oldForm(record: ConsumedRecord): ConsumedRecord {
  const control = readControl(record.headers, record.value);
  if (control.type === "tick")
    return {
      ...record,
      headers: { [CONTROL_HEADER]: "watermark" },
      value: Buffer.from(String(control.eventTimeMicros)),
    };
  if (control.type === "progress") {
    const { sourcePartition, lastOffset, sourceTimeMicros } = control.progress;
    return {
      ...record,
      headers: {
        [CONTROL_HEADER]: "progress",
        "mcpo-progress-source-partition": String(sourcePartition),
        ...(lastOffset === null ? {} : { "mcpo-progress-last-offset": lastOffset }),
      },
      value: Buffer.from(String(sourceTimeMicros)),
    };
  }
  return record;
}

/** A rollup's window and counts (what two runs over the same events must agree on). */
const comparable = (rollup: MetricRollup) => ({
  key: `${rollup.service}|${rollup.model ?? "*"}|${rollup.window_start}`,
  counts: rollup.counts,
});

/** Distinct rollups by key (a batch written again repeats some), in key order. */
function distinctRollups(rollups: readonly MetricRollup[]): ReturnType<typeof comparable>[] {
  const byKey = new Map(rollups.map((rollup) => [comparable(rollup).key, comparable(rollup)]));
  return [...byKey.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

describe("control records: the new form and the old", () => {
  it("a tick and a progress record are null values with their fields in headers", () => {
    const tick = watermarkTick(1_764_000_000_000_123);
    expect(tick.value).toBeNull();
    expect(tick.headers).toEqual({
      [CONTROL_HEADER]: "watermark",
      [WATERMARK_TIME_HEADER]: "1764000000000123",
    });
    expect(readControl(tick.headers, tick.value)).toEqual({
      type: "tick",
      eventTimeMicros: 1_764_000_000_000_123,
    });
    const progress = progressRecord({
      sourcePartition: 4,
      lastOffset: "17",
      sourceTimeMicros: 1_764_000_000_000_456,
    });
    expect(progress.value).toBeNull();
    expect(progress.headers[PROGRESS_TIME_HEADER]).toBe("1764000000000456");
    expect(readControl(progress.headers, progress.value)).toEqual({
      type: "progress",
      progress: { sourcePartition: 4, lastOffset: "17", sourceTimeMicros: 1_764_000_000_000_456 },
    });
    // A reader that maps a null value to an empty buffer reads them the same.
    expect(readControl(tick.headers, Buffer.alloc(0))).toEqual(readControl(tick.headers, null));
  });

  it("the old form (time as decimal text in the value) still reads; a tick without any time does not", () => {
    expect(readControl({ [CONTROL_HEADER]: "watermark" }, Buffer.from("1764000000000123"))).toEqual(
      { type: "tick", eventTimeMicros: 1_764_000_000_000_123 },
    );
    expect(
      readControl(
        { [CONTROL_HEADER]: "progress", "mcpo-progress-source-partition": "2" },
        Buffer.from("0"),
      ),
    ).toEqual({
      type: "progress",
      progress: { sourcePartition: 2, lastOffset: null, sourceTimeMicros: 0 },
    });
    expect(readControl({ [CONTROL_HEADER]: "watermark" }, null).type).toBe("unknown");
    expect(
      readControl({ [CONTROL_HEADER]: "watermark", [WATERMARK_TIME_HEADER]: "-5" }, null).type,
    ).toBe("unknown");
    expect(
      readControl({ [CONTROL_HEADER]: "progress", "mcpo-progress-source-partition": "2" }, null)
        .type,
    ).toBe("unknown");
  });
});

describe("control records a JVM Avro consumer (Kafka Connect's AvroConverter) reads", () => {
  let admin: Admin;
  let classpath: string;
  const prefixes: string[] = [];
  const processors: StreamProcessor[] = [];

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    classpath = await buildJvmConsumer();
  }, 360_000);

  afterAll(async () => {
    await Promise.allSettled(processors.map((processor) => processor.stop()));
    const topics = (await admin.listTopics()).filter((name) =>
      prefixes.some((prefix) => name.startsWith(prefix)),
    );
    if (topics.length > 0) await admin.deleteTopics({ topics }).catch(() => undefined);
    await admin.disconnect();
  });

  function newProcessor(prefix: string, idleTimeoutMs: number): StreamProcessor {
    const processor = new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      groupId: `${prefix}processor`,
      partitions: PARTITIONS,
      windowSizeMs: WINDOW_MS,
      graceMs: GRACE_MS,
      idleTimeoutMs,
      checkpointIntervalMs: 500,
      metadataMaxAgeMs: 500,
      metricsPort: 0,
      logger: quietLogger,
    });
    processors.push(processor);
    return processor;
  }

  /** Waits until `prefix`'s rollups topic holds a service total of every window in `windows`. */
  async function waitForWindows(prefix: string, windows: ReadonlySet<string>, what: string) {
    return waitFor(
      `${what}: a service total of each of the ${windows.size} windows the events fall in`,
      async () => {
        const rollups = await readAllRollups(
          admin,
          services().kafkaBrokers,
          services().schemaRegistryUrl,
          prefix,
        );
        const seen = new Set(
          rollups.filter((r) => r.model === null).map((r) => `${r.service}|${r.window_start}`),
        );
        return { missing: [...windows].filter((window) => !seen.has(window)), rollups };
      },
      (state) => state.missing.length === 0,
      { timeoutMs: 60_000, intervalMs: 500 },
    ).then((state) => state.rollups);
  }

  it("reads every record of a log a live processor wrote: ticks and progress records as nulls, events and copies decoded; a log in the old form still replays and runs the same", async () => {
    const prefix = `${uniqueName("ctl")}.`;
    prefixes.push(prefix);
    const topic = `${prefix}model-calls`;
    await createTopics(admin, [{ topic, numPartitions: PARTITIONS }]);
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    const live = newProcessor(prefix, 1000);
    await live.start();

    // Events in real time, each service's mostly at its home partition and some on the next
    // partition (copied home, with progress records), then nothing: idle ticks close the rest.
    const home = homeOf(PARTITIONS);
    const producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const sent: ModelCallEvent[] = [];
    try {
      for (let round = 0; round < 6; round++) {
        const messages = SERVICES.flatMap((service, i) =>
          [0, 1, 2].map((n) => {
            const end = Date.now() * MICROS_PER_MILLI - 20_000 * n;
            const event = sampleEvent({
              event_id: crypto.randomUUID(),
              service,
              start_time: end - 300_000,
              end_time: end,
            });
            sent.push(event);
            const away = n === 2 && (round + i) % 2 === 0;
            return {
              key: service,
              value: codec.encode(event),
              partition: (home(service) + (away ? 1 : 0)) % PARTITIONS,
            };
          }),
        );
        await producer.send({ topic, acks: -1, messages });
        await pause(400);
      }
    } finally {
      await producer.disconnect();
    }
    const windows = new Set(
      sent.map((e) => `${e.service}|${windowOf(e.end_time, WINDOW_MS * 1000).start}`),
    );
    const liveRollups = await waitForWindows(prefix, windows, "the live processor");
    await waitFor(
      "ticks and progress records on model-calls",
      async () =>
        kinds(
          await readBetween(
            services().kafkaBrokers,
            topic,
            new Map(),
            await topicEnds(admin, topic),
          ),
        ),
      (counts) => (counts.watermark ?? 0) > 0 && (counts.progress ?? 0) > 0,
      { timeoutMs: 30_000, intervalMs: 500 },
    );
    expect(live.stats().forwarded, "events copied to their home partition").toBeGreaterThan(0);
    await live.stop();

    const ends = await topicEnds(admin, topic);
    const records = await readBetween(services().kafkaBrokers, topic, new Map(), ends);
    const log = kinds(records);
    expect(log.event, "events in the log").toBe(sent.length);
    const control = (log.watermark ?? 0) + (log.progress ?? 0);

    // What a Kafka Connect pipeline with the AvroConverter sees: nothing it cannot convert.
    const jvm = await jvmConsume(classpath, topic);
    expect(jvm.firstFailure, "the first record the JVM consumer could not read").toBeNull();
    expect({
      records: jvm.records,
      failures: jvm.failures,
      nulls: jvm.nulls,
      nullsByControl: jvm.nullsByControl,
      decoded: jvm.decoded,
      decodedByControl: jvm.decodedByControl,
    }).toEqual({
      records: records.length,
      failures: 0,
      nulls: control,
      nullsByControl: { watermark: log.watermark, progress: log.progress },
      decoded: (log.event ?? 0) + (log.copy ?? 0),
      decodedByControl: { none: log.event, copy: log.copy },
    });

    // The same log as an earlier version wrote it: ticks and progress records with text values.
    const oldPrefix = `${uniqueName("ctl-old")}.`;
    prefixes.push(oldPrefix);
    const oldTopic = `${oldPrefix}model-calls`;
    await createTopics(admin, [{ topic: oldTopic, numPartitions: PARTITIONS }]);
    const copier = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await copier.connect();
    try {
      for (let partition = 0; partition < PARTITIONS; partition++) {
        const messages = records
          .filter((record) => record.partition === partition)
          .map(oldForm)
          .map((record) => ({
            key: record.key,
            value: record.value,
            headers: record.headers,
            partition,
          }));
        for (let at = 0; at < messages.length; at += 500)
          await copier.send({ topic: oldTopic, acks: -1, messages: messages.slice(at, at + 500) });
      }
    } finally {
      await copier.disconnect();
    }
    const oldEnds = await topicEnds(admin, oldTopic);
    expect(new Map(oldEnds), "the old-form log has the same offsets").toEqual(new Map(ends));
    const oldRecords = await readBetween(services().kafkaBrokers, oldTopic, new Map(), oldEnds);
    expect(
      oldRecords.filter((r) => r.headers[CONTROL_HEADER] === "watermark" && r.value !== null)
        .length,
      "old-form ticks (text values)",
    ).toBe(log.watermark);

    // The JVM consumer fails on exactly those: what the new form fixes.
    const oldJvm = await jvmConsume(classpath, oldTopic);
    expect({
      failures: oldJvm.failures,
      failuresByControl: oldJvm.failuresByControl,
      message: oldJvm.firstFailure?.message,
    }).toEqual({
      failures: control,
      failuresByControl: { watermark: log.watermark, progress: log.progress },
      message: "Unknown magic byte!",
    });

    // A replay reads both forms the same.
    const replay = async (replayPrefix: string) => {
      const rollups: MetricRollup[] = [];
      const summary = await replayLog({
        brokers: services().kafkaBrokers,
        schemaRegistryUrl: services().schemaRegistryUrl,
        topicPrefix: replayPrefix,
        windowSizeMs: WINDOW_MS,
        graceMs: GRACE_MS,
        onOutputs: (outputs) => {
          rollups.push(...outputs.rollups);
          return Promise.resolve();
        },
      });
      return { summary, rollups };
    };
    const counted = (summary: ReplaySummary) => ({
      records: summary.records,
      events: summary.events,
      copies: summary.copies,
      ticks: summary.ticks,
      progress: summary.progress,
      invalid: summary.invalid,
      late: summary.late,
      windows: summary.windows,
      rollups: summary.rollups,
      openSeries: summary.openSeries,
    });
    const [newReplay, oldReplay] = [await replay(prefix), await replay(oldPrefix)];
    expect(counted(newReplay.summary), "the replay of the new form").toEqual({
      records: records.length,
      events: log.event,
      copies: log.copy,
      ticks: log.watermark,
      progress: log.progress,
      invalid: {},
      late: 0,
      windows: newReplay.summary.windows,
      rollups: newReplay.summary.rollups,
      openSeries: 0,
    });
    expect(counted(oldReplay.summary), "the replay of the old form").toEqual(
      counted(newReplay.summary),
    );
    expect(distinctRollups(newReplay.rollups), "replayed rollups = live rollups").toEqual(
      distinctRollups(liveRollups),
    );
    expect(distinctRollups(oldReplay.rollups), "old-form replay = live rollups").toEqual(
      distinctRollups(liveRollups),
    );

    // The partition driver (the live processor's and the replay's) reads both forms the same,
    // record by record.
    const settings = {
      ...DEFAULT_WINDOW_SETTINGS,
      windowSizeMicros: WINDOW_MS * MICROS_PER_MILLI,
      graceMicros: GRACE_MS * MICROS_PER_MILLI,
    };
    const drive = async (list: readonly ConsumedRecord[], partition: number) => {
      const driver = new PartitionDriver(
        settings,
        { partition, homePartitions: PARTITIONS, homeOf: homeOf(PARTITIONS) },
        codec,
      );
      const fed: (string | PartitionOutput[])[] = [];
      for (const record of list.filter((r) => r.partition === partition)) {
        const result = await driver.feed(record);
        fed.push(result.type === "applied" ? result.outputs : result.type);
      }
      return fed;
    };
    for (let partition = 0; partition < PARTITIONS; partition++) {
      const fromNew = await drive(records, partition);
      expect(
        fromNew.filter((result) => typeof result === "string"),
        `partition ${partition}`,
      ).toEqual([]);
      expect(await drive(oldRecords, partition), `partition ${partition}, old form`).toEqual(
        fromNew,
      );
    }

    // A live processor (a new group) reading the old-form log closes the same windows, without
    // ticks of its own (its idle timeout is far off) and without dead letters.
    const upgraded = newProcessor(oldPrefix, 600_000);
    await upgraded.start();
    const upgradedRollups = await waitForWindows(oldPrefix, windows, "a processor on the old form");
    expect(distinctRollups(upgradedRollups), "live rollups from the old form").toEqual(
      distinctRollups(liveRollups),
    );
    const read = await waitFor(
      "the processor on the old form reading every tick",
      () => upgraded.stats(),
      (stats) => stats.ticks >= (log.watermark ?? 0),
      { timeoutMs: 30_000, intervalMs: 200 },
    );
    expect(read.ticks, "old-form ticks the processor read").toBe(log.watermark);
    expect(read.deadLettered, "dead letters").toBe(0);
  }, 300_000);
});
