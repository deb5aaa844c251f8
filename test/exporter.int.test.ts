/** KafkaExporter against the real broker and registry. */
import { gunzipSync } from "node:zlib";

import createSnappyCodec from "kafkajs-snappy";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { ModelCallEvent } from "../avro/generated.js";
import type { Compression } from "../kafka/index.js";
import { KafkaExporter } from "../producer/exporters/kafka.js";
import { instrument } from "../producer/interceptor.js";
import { silentLogger } from "../producer/logger.js";
import { portIsFree } from "../stack/process.js";
import { services, testKafka, uniqueName } from "./support/isolation.js";
import { CODEC_IDS, recordsInTopic, storedBatches } from "./support/kafka-batches.js";
import { startPrivateKafka, type PrivateKafka } from "./support/private-kafka.js";
import { waitFor } from "./support/wait.js";

interface Received {
  key: string;
  event: ModelCallEvent;
}

/**
 * Reads every record of `topics` from the beginning, with one consumer group. The expected count
 * per topic is what the topic's offsets say it holds (asserted by the caller), so reading stops at
 * exactly the end of each log: a duplicate is a record the log holds, not one that may arrive late.
 */
async function readTopics(
  brokers: string,
  expected: ReadonlyMap<string, number>,
): Promise<Map<string, Received[]>> {
  const topics = [...expected.keys()];
  const consumer = testKafka(uniqueName("reader"), brokers).consumer({
    groupId: uniqueName("reader"),
  });
  const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
    registryUrl: services().schemaRegistryUrl,
    subject: valueSubject(topics[0] ?? ""),
  });
  const received = new Map<string, Received[]>(topics.map((topic) => [topic, []]));
  const total = [...expected.values()].reduce((sum, count) => sum + count, 0);
  let count = 0;
  const failures: string[] = [];
  await consumer.connect();
  try {
    await consumer.subscribe({ topics, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ topic, partition, message }) => {
        const decoded = await codec.decode(message.value ?? Buffer.alloc(0));
        if (!decoded.ok)
          failures.push(`${topic}[${partition}]@${message.offset}: ${decoded.error.message}`);
        else
          received.get(topic)?.push({ key: message.key?.toString() ?? "", event: decoded.value });
        count++;
      },
    });
    await waitFor(
      `all ${total} records of ${topics.join(", ")} to be consumed`,
      () => ({ count, failures: failures.length }),
      (seen) => seen.count >= total,
      { timeoutMs: 90_000 },
    );
  } finally {
    await consumer.disconnect();
  }
  expect(failures).toEqual([]);
  return received;
}

describe("KafkaExporter with the real stack", () => {
  it("delivers every intercepted call exactly once (the log holds 400 records), each decodable, equal to the event sent and keyed by its service", async () => {
    const topic = uniqueName("model-calls");
    const exporter = new KafkaExporter({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topic,
      topicPartitions: 3,
      logger: silentLogger,
    });
    const services_ = ["svc-a", "svc-b"];
    const interceptors = services_.map((name) =>
      instrument({ serviceName: name, exporter, logger: silentLogger }),
    );
    const sent: ModelCallEvent[] = [];
    for (let i = 0; i < 400; i++) {
      const event = await interceptors[i % 2]?.interceptModelCall({
        model: "gpt-4o",
        usage: { promptTokens: i, completionTokens: 1 },
        confidence: (i % 100) / 100,
      });
      if (event) sent.push(event);
    }
    expect(sent).toHaveLength(400);
    expect(await exporter.shutdown()).toEqual({ complete: true, remaining: 0 });
    expect(exporter.stats()).toMatchObject({ sent: 400, dropped: 0, buffered: 0 });

    expect(await recordsInTopic(services().kafkaBrokers, topic)).toBe(400);
    const received = (await readTopics(services().kafkaBrokers, new Map([[topic, 400]]))).get(
      topic,
    );
    expect(received).toHaveLength(400);
    const byId = new Map(sent.map((event) => [event.event_id, event]));
    for (const r of received ?? []) {
      expect(r.key).toBe(r.event.service);
      expect(r.event).toEqual(byId.get(r.event.event_id));
    }
    expect(new Set(received?.map((r) => r.event.event_id))).toEqual(new Set(byId.keys()));
  });

  it("compresses with each codec it offers (gzip, snappy, none): the broker stores every batch with that codec, and every event comes back decodable and equal", async () => {
    const codecs: readonly Compression[] = ["gzip", "snappy", "none"];
    const perCodec = 300;
    const topics = new Map<Compression, string>(
      codecs.map((codec) => [codec, uniqueName(`codec-${codec}`)]),
    );
    const sent = new Map<string, ModelCallEvent>();
    for (const compression of codecs) {
      const exporter = new KafkaExporter({
        brokers: services().kafkaBrokers,
        schemaRegistryUrl: services().schemaRegistryUrl,
        topic: topics.get(compression) ?? "",
        topicPartitions: 2,
        compression,
        maxBatchSize: 100,
        logger: silentLogger,
      });
      const interceptors = ["svc-x", "svc-y"].map((name) =>
        instrument({ serviceName: name, exporter, logger: silentLogger }),
      );
      for (let i = 0; i < perCodec; i++) {
        const event = await interceptors[i % 2]?.interceptModelCall({
          model: "gpt-4o-mini",
          usage: { promptTokens: 1000 + i, completionTokens: 50 },
          confidence: 0.9,
        });
        if (event) sent.set(event.event_id, event);
      }
      expect(await exporter.shutdown(), compression).toEqual({ complete: true, remaining: 0 });
      expect(exporter.stats(), compression).toMatchObject({ sent: perCodec, dropped: 0 });
    }
    expect(sent.size).toBe(codecs.length * perCodec);

    // kafkajs-snappy is the codec the project registers with kafkajs (kafka/index.ts).
    const snappy = (createSnappyCodec as () => { decompress(buffer: Buffer): Promise<Buffer> })();
    for (const compression of codecs) {
      const topic = topics.get(compression) ?? "";
      const batches = await storedBatches(services().kafkaBrokers, topic);
      expect(
        batches.reduce((sum, batch) => sum + batch.recordCount, 0),
        `${compression}: records in the stored batches`,
      ).toBe(perCodec);
      expect(
        new Set(batches.map((batch) => batch.codecId)),
        `${compression}: the codec ids of the stored batches`,
      ).toEqual(new Set([CODEC_IDS[compression]]));
      for (const batch of batches) {
        if (compression === "none") continue;
        // The stored bytes really are compressed: they inflate with that codec, to more bytes.
        const inflated =
          compression === "gzip"
            ? gunzipSync(batch.records)
            : await snappy.decompress(batch.records);
        expect(inflated.length, `${compression} batch at ${batch.baseOffset}`).toBeGreaterThan(
          batch.records.length,
        );
      }
    }

    const received = await readTopics(
      services().kafkaBrokers,
      new Map([...topics.values()].map((topic) => [topic, perCodec])),
    );
    for (const compression of codecs) {
      const events = received.get(topics.get(compression) ?? "") ?? [];
      expect(events, compression).toHaveLength(perCodec);
      for (const r of events) expect(r.event).toEqual(sent.get(r.event.event_id));
      expect(new Set(events.map((r) => r.event.event_id)).size, compression).toBe(perCodec);
    }
  });

  describe("when the broker stops mid-stream and comes back", () => {
    let broker: PrivateKafka;
    beforeAll(async () => {
      broker = await startPrivateKafka();
    });
    afterAll(async () => {
      await broker.dispose();
    });

    it("the host's calls all resolve while the broker is down (nothing sent meanwhile), the exporter buffers and retries, and delivers every event exactly once when the broker returns", async () => {
      const topic = uniqueName("outage");
      const exporter = new KafkaExporter({
        brokers: broker.brokers,
        schemaRegistryUrl: services().schemaRegistryUrl,
        topic,
        topicPartitions: 2,
        lingerMs: 5,
        retryInitialMs: 100,
        retryMaxMs: 1000,
        logger: silentLogger,
      });
      const interceptor = instrument({ serviceName: "svc-outage", exporter, logger: silentLogger });
      const call = async (i: number): Promise<void> => {
        await interceptor.interceptModelCall({
          model: "gpt-4o",
          usage: { promptTokens: i, completionTokens: i },
        });
      };
      for (let i = 0; i < 200; i++) await call(i);
      expect(await exporter.flush(30_000)).toEqual({ complete: true, remaining: 0 });

      await broker.stop();
      const port = Number(broker.brokers.split(":").at(-1));
      expect(await portIsFree(port), "the broker's port is free: it is down").toBe(true);
      // 300 calls while the broker is down. If a call waited for delivery it could not resolve
      // before the broker is back, which this test only does afterwards; the bound only turns
      // such a hang into a failure with a message (300 buffered calls take milliseconds).
      let resolved = 0;
      const calls = (async () => {
        for (let i = 200; i < 500; i++) {
          await call(i);
          resolved++;
        }
      })();
      let bound: NodeJS.Timeout | undefined;
      await Promise.race([
        calls,
        new Promise<never>((_resolve, reject) => {
          bound = setTimeout(() => {
            reject(
              new Error(
                `only ${resolved} of 300 calls resolved within 20 s while the broker was down: the host waits on the network`,
              ),
            );
          }, 20_000);
        }),
      ]).finally(() => {
        clearTimeout(bound);
      });
      // They resolved while the broker was still down and before any of them was delivered.
      expect(await portIsFree(port), "the broker is still down").toBe(true);
      expect(exporter.stats()).toMatchObject({ sent: 200, buffered: 300, dropped: 0 });
      const during = await waitFor(
        "the exporter to retry a failed delivery while the broker is down",
        () => exporter.stats(),
        (stats) => stats.retried > 0,
        { timeoutMs: 60_000 },
      );
      expect(during).toMatchObject({ sent: 200, buffered: 300, dropped: 0 });

      await broker.start();
      expect(await exporter.flush(60_000)).toEqual({ complete: true, remaining: 0 });
      expect(exporter.stats()).toMatchObject({ sent: 500, dropped: 0 });
      await exporter.shutdown();

      expect(await recordsInTopic(broker.brokers, topic)).toBe(500);
      const received = (await readTopics(broker.brokers, new Map([[topic, 500]]))).get(topic);
      expect(received).toHaveLength(500);
      expect(new Set(received?.map((r) => r.event.event_id)).size).toBe(500);
      expect(new Set(received?.map((r) => r.event.prompt_tokens))).toEqual(
        new Set(Array.from({ length: 500 }, (_, i) => i)),
      );
    }, 180_000);
  });
});
