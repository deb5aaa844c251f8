/**
 * The source of truth expiring: model-calls is created to be kept for ever (unless configured),
 * and a replay "from the beginning" of a log whose start was removed (retention, `deleteRecords`,
 * injected for real) says so and does not take its first, partial window for a whole one.
 */
import type { Admin, Producer } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import type { MetricRollup } from "../../avro/generated.js";
import { StreamProcessor } from "../../processor/processor.js";
import { replayLog } from "../../processor/replay.js";
import { sampleEvent } from "../support/events.js";
import {
  createTopics,
  quietLogger,
  services,
  testKafka,
  uniqueName,
} from "../support/isolation.js";

const MINUTE = 60_000_000;
const ORIGIN = 1_764_000_000_000_000 - (1_764_000_000_000_000 % MINUTE);
const { ConfigResourceTypes } = (await import("kafkajs")).default;

describe("the source of truth expiring", () => {
  let admin: Admin;
  let producer: Producer;

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
  });

  afterAll(async () => {
    await producer.disconnect();
    await admin.disconnect();
  });

  async function retentionOf(topic: string): Promise<string | undefined> {
    const described = await admin.describeConfigs({
      includeSynonyms: false,
      resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ["retention.ms"] }],
    });
    return described.resources[0]?.configEntries.find(
      (entry) => entry.configName === "retention.ms",
    )?.configValue;
  }

  it("model-calls is created to be kept for ever, or with the retention configured", async () => {
    for (const [label, retention, expected] of [
      ["default", undefined, "-1"],
      ["configured", 3_600_000, "3600000"],
    ] as const) {
      const prefix = `${uniqueName(`retention-${label}`)}.`;
      const processor = new StreamProcessor({
        brokers: services().kafkaBrokers,
        schemaRegistryUrl: services().schemaRegistryUrl,
        topicPrefix: prefix,
        groupId: `${prefix}processor`,
        partitions: 1,
        ...(retention === undefined ? {} : { modelCallsRetentionMs: retention }),
        logger: quietLogger,
      });
      await processor.start();
      await processor.stop();
      expect(await retentionOf(`${prefix}model-calls`), label).toBe(expected);
    }
  });

  it("a replay from the beginning of a trimmed log names the partition and rebuilds only the whole windows after its start", async () => {
    const prefix = `${uniqueName("retention-trim")}.`;
    const topic = `${prefix}model-calls`;
    await createTopics(admin, [{ topic, numPartitions: 1 }]);
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    // Ten calls in each of minutes 0 to 3 (offsets 0-39), then one in minute 6 that closes them.
    const ends: number[] = [];
    for (let minute = 0; minute < 4; minute++)
      for (let i = 0; i < 10; i++) ends.push(ORIGIN + minute * MINUTE + (i + 1) * 5_000_000);
    ends.push(ORIGIN + 6 * MINUTE);
    await producer.send({
      topic,
      acks: -1,
      messages: ends.map((end) => {
        const event = sampleEvent({
          event_id: crypto.randomUUID(),
          service: "billing",
          model: "gpt-4o",
          start_time: end - 1000,
          end_time: end,
        });
        return { key: event.service, value: codec.encode(event) };
      }),
    });
    // Retention removes the first 15 records: minute 1 keeps only its last 5 calls.
    await admin.fetchTopicMetadata({ topics: [topic] });
    await admin.deleteTopicRecords({ topic, partitions: [{ partition: 0, offset: "15" }] });

    const rollups: MetricRollup[] = [];
    const summary = await replayLog({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      onOutputs: (outputs) => {
        rollups.push(...outputs.rollups);
        return Promise.resolve();
      },
    });
    expect(summary.trimmed).toEqual({ 0: "15" });
    // The first record left ends at minute 1 + 30 s: with the 10 s grace the first whole window
    // is minute 2. Minute 1's partial 5 calls are not emitted as if they were the window.
    const totals = rollups
      .filter((r) => r.model === null)
      .map((r) => [(r.window_start - ORIGIN) / MINUTE, r.counts.calls]);
    expect(totals).toEqual([
      [2, 10],
      [3, 10],
    ]);
  });
});
