/**
 * One hostile record among good ones, against the real stack (issue 13 item 1): a ModelCallEvent
 * whose empty `attributes` map claims a block count of 2^60. A decoder that trusts the count
 * loops on it at 100% CPU, the event loop blocks, heartbeats stop, and the partition moves to the
 * next instance, which hangs too. Bounded decoding refuses it before looping: the processor and
 * the sink each process the 10 valid events around it (5 before, 5 after, on one partition),
 * dead-letter it with its code and a reason naming the field, and stop promptly.
 */
import { randomUUID } from "node:crypto";

import type { Admin, Producer } from "kafkajs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { METRIC_ROLLUP, MODEL_CALL_EVENT } from "../../avro/contracts.js";
import type { ModelCallEvent } from "../../avro/generated.js";
import { topicNames, type TopicNames } from "../../config/index.js";
import type { ConsumedRecord } from "../../kafka/index.js";
import { StreamProcessor } from "../../processor/processor.js";
import { Sink } from "../../sink/sink.js";
import { emptyAttributesCountAt, sampleEvent } from "../support/events.js";
import {
  createTopics,
  quietLogger,
  services,
  testKafka,
  uniqueName,
  useFreshDatabase,
} from "../support/isolation.js";
import { waitForStoredPositions } from "../support/sink-positions.js";
import { readBetween, waitForRecords } from "../support/topic-records.js";

const SERVICE = "hostile-decode-mcp";
/** A minute's start: the ten valid events end within it. */
const WINDOW_START = 1_764_000_000_000_000;
/** The varint of 2^61: zigzag for a block count of 2^60 (1152921504606846976). */
const HUGE_COUNT = Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
/** What the dead letter's reason must say: the field, the count, that it cannot fit. */
const REASON =
  /^attributes: map block count 1152921504606846976 cannot fit in the \d+ byte\(s\) left \(offset \d+\)$/;
/** How long stop() may take: the event loop is free, so it is the ordinary shutdown. */
const STOP_WITHIN_MS = 15_000;

/** The ten valid calls, one second apart in one window. */
const valid: ModelCallEvent[] = Array.from({ length: 10 }, (_, i) =>
  sampleEvent({
    event_id: randomUUID(),
    span_id: (0x2000000000000000n + BigInt(i)).toString(16),
    service: SERVICE,
    start_time: WINDOW_START + (i + 1) * 1_000_000 - 850_000,
    end_time: WINDOW_START + (i + 1) * 1_000_000,
  }),
);

/** The crafted record: a valid event whose empty attributes map's count is 2^60. */
function craft(codec: AvroCodec<ModelCallEvent>): Buffer {
  const good = codec.encode(sampleEvent({ service: SERVICE, attributes: {} }));
  const at = emptyAttributesCountAt(good);
  return Buffer.concat([good.subarray(0, at), HUGE_COUNT, good.subarray(at + 1)]);
}

/** 5 valid events, the crafted record, 5 valid events, to partition 0 of model-calls, in order. */
async function produce(
  producer: Producer,
  topics: TopicNames,
  codec: AvroCodec<ModelCallEvent>,
  crafted: Buffer,
): Promise<void> {
  const message = (value: Buffer) => ({ key: SERVICE, value, partition: 0 });
  await producer.send({
    topic: topics.modelCalls,
    acks: -1,
    messages: [
      ...valid.slice(0, 5).map((event) => message(codec.encode(event))),
      message(crafted),
      ...valid.slice(5).map((event) => message(codec.encode(event))),
    ],
  });
}

/** The records of a whole topic now (its partitions from offset 0 to their ends). */
async function readAll(admin: Admin, topic: string): Promise<ConsumedRecord[]> {
  const ends = new Map(
    (await admin.fetchTopicOffsets(topic)).map((p) => [p.partition, BigInt(p.high)]),
  );
  return readBetween(services().kafkaBrokers, topic, new Map(), ends);
}

/** The dead letter of the crafted record: its bytes, code, reason and source position. */
function expectCraftedDeadLetter(dead: ConsumedRecord[], crafted: Buffer, topics: TopicNames) {
  expect(dead, "exactly one dead letter").toHaveLength(1);
  const [letter] = dead;
  expect(letter?.value?.equals(crafted), "the dead letter holds the original bytes").toBe(true);
  expect(letter?.key?.toString()).toBe(SERVICE);
  expect(letter?.headers["mcpo-dlq-code"]).toBe("MALFORMED_BODY");
  expect(letter?.headers["mcpo-dlq-reason"]).toMatch(REASON);
  expect(letter?.headers["mcpo-source-topic"]).toBe(topics.modelCalls);
  expect(letter?.headers["mcpo-source-partition"]).toBe("0");
  expect(letter?.headers["mcpo-source-offset"]).toBe("5");
}

/** Stops a service and returns how long it took, ms. */
async function timedStop(service: { stop(): Promise<void> }): Promise<number> {
  const started = Date.now();
  await service.stop();
  return Date.now() - started;
}

describe("a record whose map count is 2^60, among valid ones", () => {
  const database = useFreshDatabase("mcpo_hostile_decode");
  const prefixes: string[] = [];
  const running: { stop(): Promise<void> }[] = [];
  let admin: Admin;
  let producer: Producer;

  /** A topic prefix of this test's own (its topics are deleted afterwards). */
  const newTopics = (name: string): TopicNames => {
    const prefix = `${uniqueName(name)}.`;
    prefixes.push(prefix);
    return topicNames(prefix);
  };

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
  });

  afterAll(async () => {
    await Promise.allSettled(running.map((service) => service.stop()));
    await producer.disconnect();
    const ours = (await admin.listTopics()).filter((topic) =>
      prefixes.some((prefix) => topic.startsWith(prefix)),
    );
    if (ours.length > 0) await admin.deleteTopics({ topics: ours }).catch(() => undefined);
    await admin.disconnect();
  });

  it("the processor counts the 10 valid events around it, dead-letters it naming the field, and stops promptly", async () => {
    const topics = newTopics("hostile-decode-proc");
    await createTopics(admin, [{ topic: topics.modelCalls, numPartitions: 1 }]);
    const registryUrl = services().schemaRegistryUrl;
    const eventCodec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl,
      subject: valueSubject(topics.modelCalls),
    });
    const rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
      registryUrl,
      subject: valueSubject(topics.metricRollups),
    });
    const crafted = craft(eventCodec);
    await produce(producer, topics, eventCodec, crafted);

    const processor = new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: registryUrl,
      topicPrefix: topics.modelCalls.slice(0, -"model-calls".length),
      groupId: uniqueName("hostile-decode-proc"),
      partitions: 1,
      windowSizeMs: 60_000,
      graceMs: 10_000,
      // No window is open once the events are read: an idle tick closes the one they are in.
      idleTimeoutMs: 500,
      checkpointIntervalMs: 200,
      metrics: { rules: [] },
      logger: quietLogger,
    });
    running.push(processor);
    await processor.start();
    // Two rollups: the service's total and its model's, of the one window.
    const rollupEnds = await waitForRecords(admin, topics.metricRollups, new Map(), 2, 60_000);
    await waitForRecords(admin, topics.deadLetter, new Map(), 1, 60_000);
    expect(processor.stats()).toMatchObject({ events: 10, deadLettered: 1 });
    expect(await timedStop(processor), "stop() took, ms").toBeLessThan(STOP_WITHIN_MS);

    const rollupRecords = await readBetween(
      services().kafkaBrokers,
      topics.metricRollups,
      new Map(),
      rollupEnds,
    );
    const rollups = [];
    for (const record of rollupRecords) {
      const decoded = await rollupCodec.decode(record.value ?? Buffer.alloc(0));
      if (!decoded.ok) throw new Error(`rollup ${record.offset}: ${decoded.error.message}`);
      rollups.push(decoded.value);
    }
    expect(
      rollups.map((r) => ({ service: r.service, model: r.model, calls: r.counts.calls })),
    ).toEqual(
      expect.arrayContaining([
        { service: SERVICE, model: null, calls: 10 },
        { service: SERVICE, model: "gpt-4o", calls: 10 },
      ]),
    );
    expect(rollups).toHaveLength(2);
    expectCraftedDeadLetter(await readAll(admin, topics.deadLetter), crafted, topics);
  });

  it("the sink stores the 10 valid spans around it, dead-letters it naming the field, and stops promptly", async () => {
    const topics = newTopics("hostile-decode-sink");
    await createTopics(admin, [
      { topic: topics.modelCalls, numPartitions: 1 },
      { topic: topics.metricRollups, numPartitions: 1, config: { "cleanup.policy": "compact" } },
      { topic: topics.alerts, numPartitions: 1 },
      { topic: topics.deadLetter, numPartitions: 1 },
    ]);
    const registryUrl = services().schemaRegistryUrl;
    const eventCodec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl,
      subject: valueSubject(topics.modelCalls),
    });
    const crafted = craft(eventCodec);
    await produce(producer, topics, eventCodec, crafted);

    const group = uniqueName("hostile-decode-sink");
    const sink = new Sink({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: registryUrl,
      databaseUrl: database.current.url,
      topicPrefix: topics.modelCalls.slice(0, -"model-calls".length),
      groupId: group,
      logger: quietLogger,
    });
    running.push(sink);
    await sink.start();
    const client = new pg.Client({ connectionString: database.current.url });
    await client.connect();
    try {
      await waitForStoredPositions(admin, client, group, [
        topics.modelCalls,
        topics.metricRollups,
        topics.alerts,
      ]);
      const { rows } = await client.query<{ event_id: string }>(
        "select event_id::text from spans where service = $1 order by end_time",
        [SERVICE],
      );
      expect(rows.map((row) => row.event_id)).toEqual(valid.map((event) => event.event_id));
    } finally {
      await client.end();
    }
    await waitForRecords(admin, topics.deadLetter, new Map(), 1, 30_000);
    expect(sink.stats()).toMatchObject({ spansInserted: 10, deadLettered: 1 });
    expect(await timedStop(sink), "stop() took, ms").toBeLessThan(STOP_WITHIN_MS);
    expectCraftedDeadLetter(await readAll(admin, topics.deadLetter), crafted, topics);
  });
});
