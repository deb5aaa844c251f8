/**
 * No name a client chooses can address the service total or another series: a model named "*"
 * (once the total's model), a model named "" (what the total's row holds in its model column),
 * and names holding the old key separator `|` ("a|b" + "c" against "a" + "b|c"), through the
 * processor's compacted rollups topic and the sink's rows, with the real stack. Every stored row
 * equals the oracle's, and every rollup on the topic has a key of its own (compaction keeps one
 * record per key, so two series under one key lose one of them).
 */
import { randomBytes, randomUUID } from "node:crypto";

import type { Admin, Producer } from "kafkajs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import type { ModelCallEvent } from "../../avro/generated.js";
import { StreamProcessor } from "../../processor/processor.js";
import { Sink } from "../../sink/sink.js";
import { sampleEvent } from "../support/events.js";
import {
  createTopics,
  quietLogger,
  services,
  testKafka,
  uniqueName,
  useFreshDatabase,
} from "../support/isolation.js";
import { expectMatchesOracle, oracleRollups } from "../support/oracle.js";
import { storedRollups } from "../support/stored-rollups.js";
import { readBetween, topicEnds } from "../support/topic-records.js";
import { waitFor } from "../support/wait.js";

const SECOND = 1_000_000;
const MINUTE = 60 * SECOND;
const ORIGIN = 1_764_000_000 * SECOND;

function call(service: string, model: string | null, atSecond: number): ModelCallEvent {
  const end = ORIGIN + Math.round(atSecond * SECOND);
  return sampleEvent({
    event_id: randomUUID(),
    span_id: randomBytes(8).toString("hex"),
    service,
    model,
    start_time: end - 2000,
    end_time: end,
  });
}

describe("names that once addressed other series", () => {
  const database = useFreshDatabase("mcpo_reserved");
  const prefix = `${uniqueName("reserved")}.`;
  const topic = `${prefix}model-calls`;
  let admin: Admin;
  let producer: Producer;
  let codec: AvroCodec<ModelCallEvent>;
  let processor: StreamProcessor;
  let sink: Sink;
  let pool: pg.Pool;

  // Minute 0: svc has 3 calls of gpt-4o, 1 of "*", 2 of "" and 1 without a model (7 in all);
  // "a|b" calls model "c" once, "a" calls model "b|c" twice. A call at 75 s closes minute 0.
  const minuteZero = [
    call("svc", "gpt-4o", 1),
    call("svc", "gpt-4o", 2),
    call("svc", "gpt-4o", 3),
    call("svc", "*", 4),
    call("svc", "", 5),
    call("svc", "", 6),
    call("svc", null, 7),
    call("a|b", "c", 8),
    call("a", "b|c", 9),
    call("a", "b|c", 10),
  ];
  const closer = [call("svc", "gpt-4o", 75), call("a", "b|c", 75), call("a|b", "c", 75)];

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [{ topic, numPartitions: 1 }]);
    codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    processor = new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      partitions: 1,
      windowSizeMs: 60_000,
      graceMs: 10_000,
      idleTimeoutMs: 600_000,
      checkpointIntervalMs: 200,
      logger: quietLogger,
    });
    sink = new Sink({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      databaseUrl: database.current.url,
      topicPrefix: prefix,
      partitions: 1,
      logger: quietLogger,
    });
    pool = new pg.Pool({ connectionString: database.current.url });
  });

  afterAll(async () => {
    await Promise.allSettled([processor.stop(), sink.stop()]);
    await pool.end();
    await producer.disconnect();
    await admin.disconnect();
  });

  it("keeps the service total, the models '*' and '' and names with '|' apart, on the compacted topic and in PostgreSQL, equal to the oracle", async () => {
    await processor.start();
    await sink.start();
    const events = [...minuteZero, ...closer];
    await producer.send({
      topic,
      acks: -1,
      messages: events.map((event) => ({ key: event.service, value: codec.encode(event) })),
    });
    const expected = oracleRollups(minuteZero, MINUTE);
    // svc: total, gpt-4o, "*", ""; "a|b": total, "c"; "a": total, "b|c".
    expect(expected.size).toBe(8);
    const rollupsTopic = `${prefix}metric-rollups`;
    const rollups = await waitFor(
      "minute 0's rollups on the topic",
      async () =>
        readBetween(
          services().kafkaBrokers,
          rollupsTopic,
          new Map(),
          await topicEnds(admin, rollupsTopic),
        ),
      (records) => records.length >= expected.size,
    );
    // One key per series: compaction would otherwise keep only one of two series.
    const keys = new Set(rollups.map((record) => record.key?.toString()));
    expect(keys.size, [...keys].join("\n")).toBe(rollups.length);
    expect(rollups.length).toBe(expected.size);
    const stored = await waitFor(
      "minute 0's rows in PostgreSQL",
      () => storedRollups(pool),
      (rows) => rows.length >= expected.size,
    );
    expectMatchesOracle(stored, expected, "stored");
    const total = stored.find((row) => row.service === "svc" && row.model === null);
    expect(total?.counts.calls).toBe("7");
    const star = stored.find((row) => row.service === "svc" && row.model === "*");
    expect(star?.counts.calls).toBe("1");
  });
});
