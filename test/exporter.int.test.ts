/** KafkaExporter against the real broker and registry. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { KafkaExporter } from "../producer/exporters/kafka.js";
import { instrument } from "../producer/interceptor.js";
import { silentLogger } from "../producer/logger.js";
import { services, testKafka, uniqueName } from "./support/isolation.js";
import { startPrivateKafka, type PrivateKafka } from "./support/private-kafka.js";

interface Received {
  key: string;
  event: ModelCallEvent;
}

/** Reads a topic from the beginning until `count` records arrived (or more, within a grace time). */
async function readTopic(brokers: string, topic: string, count: number): Promise<Received[]> {
  const consumer = testKafka(uniqueName("reader"), brokers).consumer({
    groupId: uniqueName("reader"),
  });
  const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
    registryUrl: services().schemaRegistryUrl,
    subject: valueSubject(topic),
  });
  const received: Received[] = [];
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`${received.length} of ${count} records within 60 s`));
      }, 60_000);
      void consumer.run({
        eachMessage: async ({ message }) => {
          const decoded = await codec.decode(message.value ?? Buffer.alloc(0));
          if (!decoded.ok) throw new Error(decoded.error.message);
          received.push({ key: message.key?.toString() ?? "", event: decoded.value });
          if (received.length === count) {
            clearTimeout(timer);
            // A short grace period: a duplicate would arrive right behind.
            setTimeout(resolve, 1000);
          }
        },
      });
    });
  } finally {
    await consumer.disconnect();
  }
  return received;
}

describe("KafkaExporter with the real stack", () => {
  it("delivers every intercepted call exactly once, decodable, keyed by service", async () => {
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
    expect(await exporter.shutdown()).toEqual({ complete: true, remaining: 0 });
    expect(exporter.stats()).toMatchObject({ sent: 400, dropped: 0, buffered: 0 });

    const received = await readTopic(services().kafkaBrokers, topic, 400);
    expect(received).toHaveLength(400);
    const ids = new Set(received.map((r) => r.event.event_id));
    expect(ids.size).toBe(400);
    for (const r of received) expect(r.key).toBe(r.event.service);
    const byId = new Map(sent.map((event) => [event.event_id, event]));
    for (const r of received) expect(r.event).toEqual(byId.get(r.event.event_id));
  });

  describe("when the broker stops mid-stream and comes back", () => {
    let broker: PrivateKafka;
    beforeAll(async () => {
      broker = await startPrivateKafka();
    });
    afterAll(async () => {
      await broker.dispose();
    });

    it("keeps serving the host, buffers, and delivers every event once when the broker returns", async () => {
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
      const call = async (i: number): Promise<number> => {
        const started = performance.now();
        await interceptor.interceptModelCall({
          model: "gpt-4o",
          usage: { promptTokens: i, completionTokens: i },
        });
        return performance.now() - started;
      };
      for (let i = 0; i < 200; i++) await call(i);
      expect(await exporter.flush(30_000)).toEqual({ complete: true, remaining: 0 });

      await broker.stop();
      let slowest = 0;
      for (let i = 200; i < 500; i++) slowest = Math.max(slowest, await call(i));
      // The host was never held up by the dead broker.
      expect(slowest).toBeLessThan(100);
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const during = exporter.stats();
      expect(during.sent).toBe(200);
      expect(during.buffered).toBe(300);
      expect(during.retried).toBeGreaterThan(0);

      await broker.start();
      expect(await exporter.flush(60_000)).toEqual({ complete: true, remaining: 0 });
      expect(exporter.stats()).toMatchObject({ sent: 500, dropped: 0 });
      await exporter.shutdown();

      const received = await readTopic(broker.brokers, topic, 500);
      expect(received).toHaveLength(500);
      expect(new Set(received.map((r) => r.event.event_id)).size).toBe(500);
      expect(new Set(received.map((r) => r.event.prompt_tokens))).toEqual(
        new Set(Array.from({ length: 500 }, (_, i) => i)),
      );
    });
  });
});
