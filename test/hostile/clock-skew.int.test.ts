/**
 * One bad clock can never move anyone's watermark (issue 13 item 2), with the real stack. A
 * partition's watermark is its largest event time minus grace: before, one event dated 2100 from
 * one service closed every open window of its partition and made every later event late, for
 * every service there, and a replay repeated it. Now model-calls is created with the broker's
 * clock as every record's timestamp (LogAppendTime), and an event more than `maxClockSkewMs`
 * ahead of its record's log time is dead-lettered (CLOCK_SKEW), never applied; a forged watermark
 * tick ahead of its log time is ignored and counted. The probe: 50 calls at now, one call of
 * another service on the same partition dated 2100, 100 calls at now, then 100 more: none late,
 * every window of the good service emitted and equal to the oracle, the 2100 call on the
 * dead-letter topic, a replay of the log deciding the same, and no watermark ticks once every
 * window is closed.
 */
import { randomBytes, randomUUID } from "node:crypto";

import type { Admin, Producer } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import { CONTROL_HEADER, WATERMARK_TICK, watermarkTick } from "../../avro/control.js";
import type { MetricRollup, ModelCallEvent } from "../../avro/generated.js";
import { topicNames } from "../../config/index.js";
import { StreamProcessor } from "../../processor/processor.js";
import { replayLog, type ReplaySummary } from "../../processor/replay.js";
import { sampleEvent } from "../support/events.js";
import {
  createTopics,
  quietLogger,
  recordingLogger,
  services,
  testKafka,
  uniqueName,
} from "../support/isolation.js";
import {
  expectMatchesOracle,
  oracleKey,
  oracleRollups,
  type ComparableRollup,
} from "../support/oracle.js";
import { readAllRollups, readBetween, topicEnds } from "../support/topic-records.js";
import { pause, waitFor } from "../support/wait.js";

const { ConfigResourceTypes } = (await import("kafkajs")).default;

const GOOD = "clock-good-mcp";
const BAD = "clock-broken-mcp";
const WINDOW_MS = 1000;
const GRACE_MS = 3000;
const IDLE_MS = 1000;
/** 2100-01-01T00:00:00Z, µs. */
const YEAR_2100 = Date.UTC(2100, 0, 1) * 1000;
const SETTINGS = { windowSizeMs: WINDOW_MS, graceMs: GRACE_MS } as const;

/** A call of `service` that ended at `endMicros` (default: now). */
function call(service: string, endMicros = Date.now() * 1000): ModelCallEvent {
  return sampleEvent({
    event_id: randomUUID(),
    span_id: randomBytes(8).toString("hex"),
    service,
    start_time: endMicros - 3000,
    end_time: endMicros,
  });
}

/** `count` calls of the good service at now, a few µs apart (end times never decrease). */
function goodCalls(count: number): ModelCallEvent[] {
  const now = Date.now() * 1000;
  return Array.from({ length: count }, (_, i) => call(GOOD, now + i));
}

const asComparable = (rollup: MetricRollup): ComparableRollup => ({
  service: rollup.service,
  model: rollup.model,
  windowStart: rollup.window_start,
  counts: rollup.counts,
  rates: rollup.rates,
});

/** Rollups by series and window (each must be there once). */
function bySeries(rollups: readonly MetricRollup[]): Map<string, MetricRollup> {
  const map = new Map<string, MetricRollup>();
  for (const rollup of rollups) {
    const key = oracleKey(rollup.service, rollup.model, rollup.window_start);
    expect(map.has(key), `${key.split("\u0000").join("/")} twice`).toBe(false);
    map.set(key, rollup);
  }
  return map;
}

describe("a clock that is wrong, on one partition shared by two services", () => {
  const prefix = `${uniqueName("clock-skew")}.`;
  const topics = topicNames(prefix);
  let admin: Admin;
  let producer: Producer;
  let codec: AvroCodec<ModelCallEvent>;
  let processor: StreamProcessor;
  /** Every good call produced, in order. */
  const good: ModelCallEvent[] = [];
  let bad: ModelCallEvent;

  const newProcessor = (options: { readonly maxEventAgeMs?: number } = {}) =>
    new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      partitions: 1,
      ...SETTINGS,
      idleTimeoutMs: IDLE_MS,
      checkpointIntervalMs: 200,
      logger: quietLogger,
      ...options,
    });

  /** Produces events to partition 0, in order. */
  const send = async (events: readonly ModelCallEvent[]) => {
    await producer.send({
      topic: topics.modelCalls,
      acks: -1,
      messages: events.map((event) => ({
        key: event.service,
        value: codec.encode(event),
        partition: 0,
      })),
    });
  };

  /**
   * Waits until the processor has read `records` records of model-calls and written their
   * outputs: a checkpoint after it read them (it follows the batch's outputs; idle ticks bring
   * one when nothing else does).
   */
  const readUpTo = async (records: number) => {
    const read = await waitFor(
      `the processor reading ${records} records`,
      () => processor.stats(),
      (stats) => stats.records >= records,
      { timeoutMs: 60_000 },
    );
    await waitFor(
      `a checkpoint after the processor read ${records} records`,
      () => processor.stats(),
      (stats) => stats.checkpoints > read.checkpoints,
      { timeoutMs: 30_000 },
    );
  };

  const replay = async (): Promise<{ summary: ReplaySummary; rollups: MetricRollup[] }> => {
    const rollups: MetricRollup[] = [];
    const summary = await replayLog({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      ...SETTINGS,
      onOutputs: (outputs) => {
        rollups.push(...outputs.rollups);
        return Promise.resolve();
      },
    });
    return { summary, rollups };
  };

  /** The records the processor's ticks wrote into model-calls, between two end offsets. */
  const ticksWritten = async (since: Map<number, bigint>, until: Map<number, bigint>) =>
    (await readBetween(services().kafkaBrokers, topics.modelCalls, since, until)).filter(
      (record) => record.headers[CONTROL_HEADER] === WATERMARK_TICK,
    ).length;

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    // The product creates the topics (model-calls with the broker's clock as its timestamps).
    processor = newProcessor();
    await processor.start();
    codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topics.modelCalls),
    });
  });

  afterAll(async () => {
    await processor.stop();
    await producer.disconnect();
    const ours = (await admin.listTopics()).filter((topic) => topic.startsWith(prefix));
    if (ours.length > 0) await admin.deleteTopics({ topics: ours }).catch(() => undefined);
    await admin.disconnect();
  });

  it("keeps the good service's windows whole: none late, all emitted, equal to the oracle; the 2100 call dead-lettered", async () => {
    const first = goodCalls(50);
    good.push(...first);
    await send(first);
    bad = call(BAD, YEAR_2100);
    await send([bad]);
    const second = goodCalls(100);
    good.push(...second);
    await send(second);
    await readUpTo(151);
    expect(processor.stats().late, "late events after the 2100 call").toBe(0);
    const third = goodCalls(100);
    good.push(...third);
    await send(third);
    await readUpTo(251);
    expect(processor.stats().late, "late events, 100 more calls later").toBe(0);

    // Every window of the good service closes (idle ticks at the wall clock) and is emitted.
    const expected = oracleRollups(good, WINDOW_MS * 1000);
    const rollups = await waitFor(
      "every window of the good service on the rollups topic",
      () => readAllRollups(admin, services().kafkaBrokers, services().schemaRegistryUrl, prefix),
      (list) => list.length >= expected.size,
      { timeoutMs: 60_000, intervalMs: 500 },
    );
    expect(
      rollups.filter((r) => r.service === BAD),
      "rollups of the 2100 call",
    ).toEqual([]);
    expect(rollups.every((r) => r.counts.late === 0 && r.revision === 0)).toBe(true);
    expectMatchesOracle(rollups.map(asComparable), expected, "live rollups");
    expect((await topicEnds(admin, topics.lateEvents)).get(0), "late-events topic").toBe(0n);

    // The 2100 call: on the dead-letter topic, its bytes, code and why.
    const dead = await readBetween(
      services().kafkaBrokers,
      topics.deadLetter,
      new Map(),
      await topicEnds(admin, topics.deadLetter),
    );
    expect(dead, "dead letters").toHaveLength(1);
    const [letter] = dead;
    expect(letter?.headers["mcpo-dlq-code"]).toBe("CLOCK_SKEW");
    expect(letter?.headers["mcpo-dlq-reason"]).toContain(String(YEAR_2100));
    expect(letter?.headers["mcpo-dlq-reason"]).toContain("maxClockSkewMs 300000");
    expect(letter?.headers["mcpo-source-offset"]).toBe("50");
    expect(letter?.value?.equals(codec.encode(bad)), "the original bytes").toBe(true);
    expect(processor.stats()).toMatchObject({ rejectedEvents: 1, deadLettered: 1, late: 0 });
  }, 120_000);

  it("ignores and counts a forged tick dated 2100; no tick is written once every window is closed", async () => {
    // The forger stamps its record with 2100 too: the broker's clock replaces it (on a topic of
    // producers' timestamps, Kafka 3.6 and later would refuse it instead, as more than
    // log.message.timestamp.after.max.ms ahead).
    await producer.send({
      topic: topics.modelCalls,
      acks: -1,
      messages: [
        {
          partition: 0,
          key: null,
          timestamp: String(YEAR_2100 / 1000),
          ...watermarkTick(YEAR_2100),
        },
      ],
    });
    await waitFor(
      "the forged tick counted as ignored",
      () => processor.stats(),
      (stats) => stats.ignoredTicks >= 1,
      { timeoutMs: 30_000 },
    );
    const after = goodCalls(20);
    good.push(...after);
    await send(after);
    const expected = oracleRollups(good, WINDOW_MS * 1000);
    await waitFor(
      "the windows of the calls after the forged tick",
      () => readAllRollups(admin, services().kafkaBrokers, services().schemaRegistryUrl, prefix),
      (list) => list.length >= expected.size,
      { timeoutMs: 60_000, intervalMs: 500 },
    );
    expect(processor.stats()).toMatchObject({ late: 0, ignoredTicks: 1, openSeries: 0 });

    // Every window is closed: over four idle timeouts the processor writes no tick (before, the
    // window the watermark of 2100 sat in never closed, and it wrote one every idle timeout).
    const since = await topicEnds(admin, topics.modelCalls);
    const ticksRead = processor.stats().ticks;
    // Elapsed time is what is measured here: nothing may happen during it.
    await pause(4 * IDLE_MS + 500);
    const until = await topicEnds(admin, topics.modelCalls);
    expect(await ticksWritten(since, until), "ticks written over four idle timeouts").toBe(0);
    expect(processor.stats().ticks - ticksRead, "ticks read over four idle timeouts").toBe(0);
  }, 120_000);

  it("a replay of the log decides the same: the same rollups, the 2100 call and the forged tick refused", async () => {
    const live = await readAllRollups(
      admin,
      services().kafkaBrokers,
      services().schemaRegistryUrl,
      prefix,
    );
    const { summary, rollups } = await replay();
    expect(summary.invalid).toEqual({ CLOCK_SKEW: 1 });
    expect(summary.ignoredTicks).toBe(1);
    expect(summary.late).toBe(0);
    expect(summary.openSeries).toBe(0);
    expect(bySeries(rollups)).toEqual(bySeries(live));
    expectMatchesOracle(rollups.map(asComparable), oracleRollups(good, WINDOW_MS * 1000), "replay");
  }, 120_000);

  it("model-calls is created with the broker's clock as its records' timestamps", async () => {
    const described = await admin.describeConfigs({
      includeSynonyms: false,
      resources: [
        {
          type: ConfigResourceTypes.TOPIC,
          name: topics.modelCalls,
          configNames: ["message.timestamp.type"],
        },
      ],
    });
    expect(described.resources[0]?.configEntries[0]?.configValue).toBe("LogAppendTime");
  });
});

describe("with maxEventAgeMs, a call older than that", () => {
  const prefix = `${uniqueName("clock-age")}.`;
  const topics = topicNames(prefix);
  let admin: Admin;
  let producer: Producer;
  let processor: StreamProcessor | undefined;
  const AGE_MS = 3_600_000;

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
  });

  afterAll(async () => {
    await processor?.stop();
    await producer.disconnect();
    const ours = (await admin.listTopics()).filter((topic) => topic.startsWith(prefix));
    if (ours.length > 0) await admin.deleteTopics({ topics: ours }).catch(() => undefined);
    await admin.disconnect();
  });

  it("is dead-lettered as TOO_OLD, live and in a replay, and the rest is counted", async () => {
    const options = { ...SETTINGS, maxEventAgeMs: AGE_MS };
    processor = new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      partitions: 1,
      idleTimeoutMs: IDLE_MS,
      checkpointIntervalMs: 200,
      logger: quietLogger,
      ...options,
    });
    await processor.start();
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topics.modelCalls),
    });
    const now = Date.now() * 1000;
    const old = call(GOOD, now - 2 * AGE_MS * 1000);
    const fresh = [call(GOOD, now), call(GOOD, now + 1)];
    await producer.send({
      topic: topics.modelCalls,
      acks: -1,
      messages: [fresh[0], old, fresh[1]].map((event) => ({
        key: GOOD,
        value: codec.encode(event as ModelCallEvent),
        partition: 0,
      })),
    });
    const dead = await waitFor(
      "the old call on the dead-letter topic",
      async () =>
        readBetween(
          services().kafkaBrokers,
          topics.deadLetter,
          new Map(),
          await topicEnds(admin, topics.deadLetter),
        ),
      (records) => records.length >= 1,
      { timeoutMs: 60_000, intervalMs: 300 },
    );
    expect(dead.map((record) => record.headers["mcpo-dlq-code"])).toEqual(["TOO_OLD"]);
    expect(dead[0]?.headers["mcpo-dlq-reason"]).toContain("maxEventAgeMs 3600000");
    const rollups = await waitFor(
      "the fresh calls' window",
      () => readAllRollups(admin, services().kafkaBrokers, services().schemaRegistryUrl, prefix),
      (list) => list.length >= 2,
      { timeoutMs: 60_000, intervalMs: 300 },
    );
    expectMatchesOracle(rollups.map(asComparable), oracleRollups(fresh, WINDOW_MS * 1000), "live");
    expect(processor.stats()).toMatchObject({ rejectedEvents: 1, late: 0 });
    const replayed: MetricRollup[] = [];
    const summary = await replayLog({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      ...options,
      onOutputs: (outputs) => {
        replayed.push(...outputs.rollups);
        return Promise.resolve();
      },
    });
    expect(summary.invalid).toEqual({ TOO_OLD: 1 });
    expect(bySeries(replayed)).toEqual(bySeries(rollups));
  }, 120_000);
});

describe("a model-calls topic created before LogAppendTime", () => {
  it("makes the processor warn at start, naming the topic and the command that changes it", async () => {
    const prefix = `${uniqueName("clock-create")}.`;
    const admin = testKafka().admin();
    await admin.connect();
    const logger = recordingLogger();
    const processor = new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      partitions: 1,
      logger,
    });
    try {
      // Created as earlier versions did: the producers' timestamps.
      await createTopics(admin, [
        {
          topic: topicNames(prefix).modelCalls,
          config: { "message.timestamp.type": "CreateTime" },
        },
      ]);
      await processor.start();
      const warning = logger.lines.find((line) => line.msg.includes("message.timestamp.type"));
      expect(warning?.level).toBe("warn");
      expect(warning?.msg).toContain(
        `--entity-name ${topicNames(prefix).modelCalls} --add-config message.timestamp.type=LogAppendTime`,
      );
      expect(warning?.fields).toEqual({
        topic: topicNames(prefix).modelCalls,
        "message.timestamp.type": "CreateTime",
      });
    } finally {
      await processor.stop();
      await admin.disconnect();
    }
  });
});
