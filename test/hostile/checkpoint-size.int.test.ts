/**
 * A partition with many open series, for real: 20 000 (service, model) series open in one
 * partition make a state of 26 MB of JSON, 1.6 MB gzipped. Before, its checkpoint went out as
 * one record the broker refused (over the topic's 1 MB default message limit, which a checkpoint
 * topic created by an operator or a managed cluster has), so the processor never checkpointed
 * again and a restart rebuilt everything from the log's start. Now the checkpoint is compressed
 * and, when still too large, split into parts named by a manifest: a restarted processor restores
 * it exactly (its outputs equal an uninterrupted run's, byte for byte) and no record of the
 * checkpoint topic is over the limit.
 */
import type { Admin, Producer } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from "vitest";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import type { ModelCallEvent } from "../../avro/generated.js";
import { createRecordProducer, readTopicToEnd, type RecordProducer } from "../../kafka/index.js";
import {
  checkpointKey,
  checkpointPartKey,
  CheckpointStore,
  type Checkpoint,
} from "../../processor/checkpoints.js";
import { PartitionState } from "../../processor/partition.js";
import { StreamProcessor } from "../../processor/processor.js";
import { sampleEvent } from "../support/events.js";
import {
  createTopics,
  recordingLogger,
  services,
  testKafka,
  uniqueName,
} from "../support/isolation.js";
import { readBetween, topicEnds, waitForRecords } from "../support/topic-records.js";
import { waitFor } from "../support/wait.js";

const SECOND = 1_000_000;
/** A minute boundary. */
const ORIGIN = 1_764_000_000 * SECOND;
/** The broker's default message size limit (message.max.bytes). */
const BROKER_LIMIT = 1_048_588;
const SERVICES = 1_000;
const MODELS = 20;

/**
 * Minute 0: every service calls each of its models twice (20 000 model series, 1 000 totals),
 * with varied latencies, costs and tokens, as real calls are (so their rates and sketches do not
 * compress to nothing).
 */
function minuteZero(): ModelCallEvent[] {
  let seed = 12_345;
  const next = (bound: number): number => {
    seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
    return seed % bound;
  };
  const events: ModelCallEvent[] = [];
  for (let s = 0; s < SERVICES; s++)
    for (let m = 0; m < MODELS; m++)
      for (let call = 0; call < 2; call++) {
        const at = ORIGIN + next(50 * SECOND);
        events.push(
          sampleEvent({
            event_id: `00000000-0000-4000-8000-${String((s * MODELS + m) * 2 + call).padStart(12, "0")}`,
            service: `svc-${String(s).padStart(4, "0")}`,
            model: `model-${m}-${(s * 31 + m * 17) % 997}`,
            start_time: at - 1_000 - next(30 * SECOND),
            end_time: at,
            prompt_tokens: next(20_000),
            completion_tokens: next(4_000),
            cost_nano_usd: next(50_000_000),
            confidence: next(1_000) / 1_000,
            prompt_diff_score: next(1_000) / 1_000,
            retries: next(3),
          }),
        );
      }
  return events;
}

describe("checkpoints of a partition with many open series", () => {
  let admin: Admin;
  let producer: Producer;
  const running: StreamProcessor[] = [];

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
  });

  afterAll(async () => {
    await Promise.allSettled(running.map((instance) => instance.stop()));
    await producer.disconnect();
    await admin.disconnect();
  });

  async function prefixWith(name: string): Promise<{
    prefix: string;
    produce: (events: readonly ModelCallEvent[]) => Promise<void>;
    processor: (log: ReturnType<typeof recordingLogger>) => StreamProcessor;
  }> {
    const prefix = `${uniqueName(name)}.`;
    const topic = `${prefix}model-calls`;
    await createTopics(admin, [
      { topic, numPartitions: 1 },
      // Created beforehand with the broker's default limit, as an operator or a managed cluster
      // does (the processor keeps a topic it finds).
      {
        topic: `${prefix}processor-checkpoints`,
        numPartitions: 1,
        config: { "cleanup.policy": "compact", "max.message.bytes": String(BROKER_LIMIT) },
      },
    ]);
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    return {
      prefix,
      async produce(events) {
        for (let at = 0; at < events.length; at += 2_000)
          await producer.send({
            topic,
            acks: -1,
            messages: events
              .slice(at, at + 2_000)
              .map((event) => ({ key: event.service, value: codec.encode(event) })),
          });
      },
      processor(log) {
        const instance = new StreamProcessor({
          brokers: services().kafkaBrokers,
          schemaRegistryUrl: services().schemaRegistryUrl,
          topicPrefix: prefix,
          groupId: `${prefix}processor`,
          partitions: 1,
          windowSizeMs: 60_000,
          graceMs: 10_000,
          // No idle ticks: windows close by event time only, the same in both runs.
          idleTimeoutMs: 600_000,
          checkpointIntervalMs: 200,
          metricsPort: 0,
          logger: log,
        });
        running.push(instance);
        return instance;
      },
    };
  }

  /** A prefix's rollup records, raw, in offset order: `key → value` as hex. */
  async function rawRollups(prefix: string): Promise<string[]> {
    const topic = `${prefix}metric-rollups`;
    const records = await readBetween(
      services().kafkaBrokers,
      topic,
      new Map(),
      await topicEnds(admin, topic),
    );
    return records.map(
      (record) =>
        `${record.partition} ${record.key?.toString() ?? ""} ${record.value?.toString("hex") ?? ""}`,
    );
  }

  it("20 000 open series: the checkpoint fits the broker, a restart restores it and continues bit for bit", async () => {
    const first = minuteZero();
    // One call at 75 s: the watermark reaches 65 s and minute 0 closes.
    const closing = [
      sampleEvent({
        event_id: "00000000-0000-4000-8000-999999999999",
        service: "svc-0000",
        model: "model-0",
        start_time: ORIGIN + 75 * SECOND - 500,
        end_time: ORIGIN + 75 * SECOND,
      }),
    ];
    const rollupsOfMinuteZero = SERVICES * (MODELS + 1);

    // The uninterrupted run.
    const whole = await prefixWith("ckpt-size-whole");
    await whole.produce([...first, ...closing]);
    const wholeLog = recordingLogger();
    const uninterrupted = whole.processor(wholeLog);
    await uninterrupted.start();
    await waitForRecords(admin, `${whole.prefix}metric-rollups`, new Map(), rollupsOfMinuteZero);
    await uninterrupted.stop();

    // The restarted run: minute 0 read, checkpointed, the processor stopped.
    const split = await prefixWith("ckpt-size-restart");
    await split.produce(first);
    const log = recordingLogger();
    onTestFailed(() => {
      console.log(
        log.lines
          .filter((line) => line.level !== "info")
          .map((line) => `${line.level} ${line.msg} ${JSON.stringify(line.fields)}`)
          .join("\n")
          .slice(0, 4_000),
      );
    });
    const before = split.processor(log);
    await before.start();
    await waitFor(
      "the processor to read minute 0",
      () => before.stats().events,
      (n) => n === first.length,
      { timeoutMs: 120_000 },
    );
    expect(before.stats().openSeries).toBe(rollupsOfMinuteZero);
    await before.stop();
    // Before: 0 (the broker refused every checkpoint: "The request included a message larger
    // than the max message size the server will accept").
    expect(before.stats().checkpoints).toBeGreaterThan(0);

    // No record of the checkpoint topic is over the broker's limit.
    const stored = await readTopicToEnd(
      { brokers: services().kafkaBrokers.split(","), clientId: "mcpo-test" },
      `${split.prefix}processor-checkpoints`,
    );
    expect(stored.length).toBeGreaterThan(0);
    const largest = Math.max(
      ...stored.map((record) => (record.key?.length ?? 0) + (record.value?.length ?? 0)),
    );
    expect(largest).toBeLessThan(BROKER_LIMIT);

    // The restart restores the checkpoint (it reads the closing call only) and closes minute 0.
    await split.produce(closing);
    const restartLog = recordingLogger();
    const after = split.processor(restartLog);
    await after.start();
    await waitForRecords(admin, `${split.prefix}metric-rollups`, new Map(), rollupsOfMinuteZero);
    await waitFor(
      "the restarted processor to read the closing call",
      () => after.stats().events,
      (n) => n >= closing.length,
    );
    expect(after.stats().events).toBe(closing.length);
    expect(restartLog.lines.filter((line) => line.msg.includes("has no checkpoint"))).toEqual([]);
    await after.stop();

    const expected = await rawRollups(whole.prefix);
    const actual = await rawRollups(split.prefix);
    expect(expected).toHaveLength(rollupsOfMinuteZero);
    expect(actual).toEqual(expected);
  }, 300_000);

  it("parts of two generations are never combined; a write that stopped among its parts leaves the previous checkpoint; replaced parts are tombstoned; plain JSON of earlier versions is read", async () => {
    const prefix = `${uniqueName("ckpt-parts")}.`;
    const topic = `${prefix}processor-checkpoints`;
    await createTopics(admin, [
      {
        topic,
        numPartitions: 1,
        config: { "cleanup.policy": "compact", "max.message.bytes": String(BROKER_LIMIT) },
      },
    ]);
    const kafka = { brokers: services().kafkaBrokers.split(","), clientId: "mcpo-test" };
    const records: RecordProducer = createRecordProducer(kafka);
    await records.connect();
    try {
      const group = `${prefix}processor`;
      const calls = `${prefix}model-calls`;
      const checkpointAt = (nextOffset: number, events: readonly ModelCallEvent[]): Checkpoint => {
        const state = new PartitionState();
        for (const event of events) state.accept(event);
        return {
          version: 1,
          group,
          topic: calls,
          partition: 0,
          nextOffset: String(nextOffset),
          state: state.snapshot(),
        };
      };
      const events = minuteZero();
      // 4 096-byte records: a few hundred series take several parts.
      const store = new CheckpointStore(kafka, topic, records, 4_096);

      // Plain JSON, as earlier versions wrote it (the sums as JSON numbers), is read: the sums
      // as bigints.
      const legacy = checkpointAt(10, events.slice(0, 10));
      const legacyJson = JSON.stringify(legacy, (_key, value: unknown) =>
        typeof value === "bigint" ? Number(value) : value,
      );
      await records.send(
        topic,
        [{ key: checkpointKey(group, calls, 0), value: Buffer.from(legacyJson) }],
        "none",
      );
      expect((await store.loadAll(group, calls)).get(0)).toEqual(legacy);

      // A checkpoint in parts is read back whole.
      const first = checkpointAt(600, events.slice(0, 600));
      await store.save(first);
      const afterFirst = await readTopicToEnd(kafka, topic);
      const firstParts = afterFirst
        .map((record) => record.key?.toString() ?? "")
        .filter((key) => key.includes("|part|"));
      expect(firstParts.length).toBeGreaterThan(2);
      expect(
        Math.max(...afterFirst.slice(1).map((record) => record.value?.length ?? 0)),
      ).toBeLessThanOrEqual(4_096);
      expect((await store.loadAll(group, calls)).get(0)).toEqual(first);

      // A writer stopped after writing some parts of the next checkpoint, before its manifest
      // (and parts reusing the first generation's indices under another generation): the first
      // checkpoint stays in force.
      const generation = firstParts[0]?.split("|part|")[1]?.split("|")[0] ?? "";
      await records.send(
        topic,
        [0, 1].map((index) => ({
          key: checkpointPartKey(group, calls, 0, `700-${generation.slice(-12)}ff`, index),
          value: Buffer.from("not a part of anything"),
        })),
        "none",
      );
      const reader = new CheckpointStore(kafka, topic, records, 4_096);
      expect((await reader.loadAll(group, calls)).get(0)).toEqual(first);

      // A manifest naming a part that is not there is not a checkpoint: the first stays.
      await records.send(
        topic,
        [
          {
            key: checkpointKey(group, calls, 0),
            value: Buffer.from(
              JSON.stringify({
                version: 1,
                kind: "manifest",
                group,
                topic: calls,
                partition: 0,
                nextOffset: "800",
                generation: "800-0000",
                parts: 2,
                bytes: 10,
              }),
            ),
          },
        ],
        "none",
      );
      expect((await reader.loadAll(group, calls)).get(0)).toEqual(first);

      // The next checkpoint (written by the store that read the first) replaces it, and the
      // first's parts are tombstoned.
      const second = checkpointAt(900, events.slice(0, 900));
      await reader.save(second);
      expect(
        (await new CheckpointStore(kafka, topic, records).loadAll(group, calls)).get(0),
      ).toEqual(second);
      const afterSecond = await readTopicToEnd(kafka, topic);
      const tombstoned = afterSecond
        .filter((record) => record.value === null)
        .map((record) => record.key?.toString());
      expect(tombstoned.sort()).toEqual([...firstParts].sort());

      // A small checkpoint is one gzipped record; the second's parts are tombstoned in turn.
      const third = checkpointAt(950, events.slice(0, 3));
      await reader.save(third);
      const small = (await readTopicToEnd(kafka, topic))
        .filter((record) => record.value !== null)
        .at(-1);
      expect(small?.key?.toString()).toBe(checkpointKey(group, calls, 0));
      expect(small?.value?.subarray(0, 2)).toEqual(Buffer.from([0x1f, 0x8b]));
      expect((await store.loadAll(group, calls)).get(0)).toEqual(third);

      // --reset-state discards the checkpoint and every part left (the stopped writer's too).
      expect(await store.discard(group, calls)).toBe(1);
      expect((await store.loadAll(group, calls)).size).toBe(0);
      const live = new Map<string, boolean>();
      for (const record of await readTopicToEnd(kafka, topic))
        live.set(record.key?.toString() ?? "", record.value !== null);
      expect([...live].filter(([, present]) => present)).toEqual([]);
    } finally {
      await records.disconnect();
      await admin.deleteTopics({ topics: [topic] });
    }
  });
});
