/**
 * Faults to a consumer's position, injected for real through the admin API: the processor's
 * consumer group deleted while its checkpoints stay (as when the group's offsets expire), and
 * records the processor's checkpoint or the sink's stored position still needs deleted from the
 * log (`deleteRecords`, as retention does). Each time: no stall (the records after the fault are
 * processed within a bound), nothing processed twice, and the one clear log line.
 */
import type { Admin, Producer } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import type { ModelCallEvent } from "../../avro/generated.js";
import type { OpsLogger } from "../../ops/index.js";
import { StreamProcessor } from "../../processor/processor.js";
import { Sink } from "../../sink/sink.js";
import { sampleEvent } from "../support/events.js";
import {
  createTopics,
  recordingLogger,
  services,
  testKafka,
  uniqueName,
  useFreshDatabase,
} from "../support/isolation.js";
import { waitFor } from "../support/wait.js";

const ORIGIN = 1_764_000_000_000_000;

describe("faults to a consumer's position", () => {
  const database = useFreshDatabase("mcpo_faults");
  let admin: Admin;
  let producer: Producer;
  const running: { stop(): Promise<void> }[] = [];
  let sent = 0;

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
  });

  afterAll(async () => {
    await Promise.allSettled(running.map((service) => service.stop()));
    await producer.disconnect();
    await admin.disconnect();
  });

  /** A one-partition model-calls topic under a new prefix, and a way to add events to it. */
  async function topic(label: string) {
    const prefix = `${uniqueName(`faults-${label}`)}.`;
    const name = `${prefix}model-calls`;
    await createTopics(admin, [{ topic: name, numPartitions: 1 }]);
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(name),
    });
    const produce = async (count: number): Promise<void> => {
      const events: ModelCallEvent[] = [];
      for (let i = 0; i < count; i++) {
        sent++;
        events.push(
          sampleEvent({
            event_id: crypto.randomUUID(),
            span_id: crypto.randomUUID().replace(/-/g, "").slice(0, 16),
            service: "billing",
            start_time: ORIGIN + sent * 1_000_000 - 500,
            end_time: ORIGIN + sent * 1_000_000,
          }),
        );
      }
      await producer.send({
        topic: name,
        acks: -1,
        messages: events.map((event) => ({ key: event.service, value: codec.encode(event) })),
      });
    };
    return { prefix, name, produce };
  }

  /** Deletes the records before `offset` of partition 0, as retention would. */
  async function trimLog(name: string, offset: string): Promise<void> {
    // kafkajs's admin finds the partition's leader in its metadata: load the topic's first.
    await admin.fetchTopicMetadata({ topics: [name] });
    await admin.deleteTopicRecords({ topic: name, partitions: [{ partition: 0, offset }] });
  }

  function processor(prefix: string, group: string, logger: OpsLogger): StreamProcessor {
    const instance = new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      groupId: group,
      partitions: 1,
      checkpointIntervalMs: 100,
      idleTimeoutMs: 60_000,
      logger,
    });
    running.push(instance);
    return instance;
  }

  it("the processor's group deleted (its checkpoints kept): a restart reads from the checkpoint and processes the new records, none twice", async () => {
    const { prefix, produce } = await topic("group");
    const group = `${prefix}processor`;
    await produce(200);
    const first = processor(prefix, group, recordingLogger());
    await first.start();
    await waitFor(
      "the first run to read 200 events",
      () => first.stats().events,
      (n) => n === 200,
    );
    await first.stop();

    await admin.deleteGroups([group]);
    await produce(10);
    const log = recordingLogger();
    const second = processor(prefix, group, log);
    await second.start();
    await waitFor(
      "the restarted processor to read the 10 new events",
      () => second.stats().events,
      (n) => n >= 10,
      { timeoutMs: 30_000 },
    );
    // Nothing read twice: the 5000 before the checkpoint are skipped by seeking, not re-counted.
    expect(second.stats().events).toBe(10);
    expect(log.lines.map((line) => line.msg)).toContain(
      "reading from the partition's checkpoint, not the group's offset",
    );
    await second.stop();
  });

  it("records the processor's checkpoint needs deleted from the log: it goes on after the gap, says so once, and does not loop", async () => {
    const { prefix, name, produce } = await topic("trim");
    const group = `${prefix}processor`;
    await produce(200);
    const first = processor(prefix, group, recordingLogger());
    await first.start();
    await waitFor(
      "the first run to read 200 events",
      () => first.stats().events,
      (n) => n === 200,
    );
    await first.stop();

    await produce(50); // offsets 200..249
    await trimLog(name, "220");
    const log = recordingLogger();
    const second = processor(prefix, group, log);
    await second.start();
    await waitFor(
      "the restarted processor to read the 30 events still in the log after its checkpoint",
      () => second.stats().events,
      (n) => n >= 30,
      { timeoutMs: 30_000 },
    );
    expect(second.stats().events).toBe(30);
    const gaps = log.lines.filter((line) => line.msg.includes("no longer in the log"));
    expect(gaps).toHaveLength(1);
    expect(gaps[0]?.fields).toMatchObject({ partition: 0, from: "200", to: "220", missing: "20" });
    await second.stop();
  });

  it("records the sink's stored position needs deleted from the log: it goes on after the gap, says so once, and stores the rest", async () => {
    const { prefix, name, produce } = await topic("sink");
    const sink = (logger: OpsLogger) => {
      const instance = new Sink({
        brokers: services().kafkaBrokers,
        schemaRegistryUrl: services().schemaRegistryUrl,
        databaseUrl: database.current.url,
        topicPrefix: prefix,
        groupId: `${prefix}sink`,
        partitions: 1,
        logger,
      });
      running.push(instance);
      return instance;
    };
    await produce(100);
    const first = sink(recordingLogger());
    await first.start();
    await waitFor(
      "the first sink to store 100 spans",
      () => first.stats().spansInserted,
      (n) => n === 100,
    );
    await first.stop();

    await produce(50); // offsets 100..149
    await trimLog(name, "120");
    const log = recordingLogger();
    const second = sink(log);
    await second.start();
    await waitFor(
      "the restarted sink to store the 30 spans still in the log",
      () => second.stats().spansInserted,
      (n) => n >= 30,
      { timeoutMs: 30_000 },
    );
    expect(second.stats()).toMatchObject({ spansInserted: 30, spansDuplicate: 0 });
    const gaps = log.lines.filter((line) => line.msg.includes("no longer in the log"));
    expect(gaps).toHaveLength(1);
    expect(gaps[0]?.fields).toMatchObject({ partition: 0, from: "100", to: "120", missing: "20" });
    await second.stop();
  });
});
