import type { Admin } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { connectAdmin, createRecordProducer, readTopicToEnd } from "../kafka/index.js";
import { createTopics, services, testKafka, uniqueName } from "./support/isolation.js";

/** Consumes until `count` messages arrived (or fails after `timeoutMs`). */
async function consume(
  groupId: string,
  topic: string,
  count: number,
  options: { readCommitted?: boolean; timeoutMs?: number } = {},
): Promise<{ key: string; value: string; partition: number; offset: string }[]> {
  const consumer = testKafka().consumer({
    groupId,
    sessionTimeout: 10_000,
    readUncommitted: options.readCommitted === false,
  });
  const received: { key: string; value: string; partition: number; offset: string }[] = [];
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`only ${received.length} of ${count} messages within the timeout`));
      }, options.timeoutMs ?? 30_000);
      void consumer.run({
        eachMessage: ({ message, partition }) => {
          received.push({
            key: message.key?.toString() ?? "",
            value: message.value?.toString() ?? "",
            partition,
            offset: message.offset,
          });
          if (received.length >= count) {
            clearTimeout(timer);
            resolve();
          }
          return Promise.resolve();
        },
      });
    });
  } finally {
    await consumer.disconnect();
  }
  return received;
}

describe("Kafka (real broker)", () => {
  const kafka = testKafka();
  let admin: Admin;
  const topic = uniqueName("smoke");

  beforeAll(async () => {
    admin = kafka.admin();
    await admin.connect();
    await createTopics(admin, [{ topic, numPartitions: 3 }]);
  });

  afterAll(async () => {
    await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
    await admin.disconnect();
  });

  it("sendMany writes more records per topic than one request carries, every one, in order per partition, with explicit partitions kept", async () => {
    const many = uniqueName("many");
    const other = uniqueName("many-other");
    await createTopics(admin, [
      { topic: many, numPartitions: 3 },
      { topic: other, numPartitions: 1 },
    ]);
    const producer = createRecordProducer({
      brokers: services().kafkaBrokers.split(","),
      clientId: uniqueName("send-many"),
    });
    await producer.connect();
    try {
      const records = Array.from({ length: 1234 }, (_, i) => ({
        key: `k${i % 7}`,
        value: Buffer.from(String(i)),
        ...(i % 5 === 0 ? { partition: 2 } : {}),
      }));
      await producer.sendMany(
        [
          { topic: many, records },
          { topic: other, records: records.slice(1, 4) },
        ],
        "gzip",
      );
    } finally {
      await producer.disconnect();
    }
    const received = await consume(uniqueName("many-reader"), many, 1234);
    expect(received).toHaveLength(1234);
    expect(new Set(received.map((r) => r.value)).size).toBe(1234);
    for (const record of received)
      if (Number(record.value) % 5 === 0) expect(record.partition).toBe(2);
    for (const partition of [0, 1, 2]) {
      const values = received
        .filter((r) => r.partition === partition)
        .sort((a, b) => Number(a.offset) - Number(b.offset))
        .map((r) => Number(r.value));
      expect(values).toEqual([...values].sort((a, b) => a - b));
    }
    expect(await consume(uniqueName("other-reader"), other, 3)).toHaveLength(3);
    await admin.deleteTopics({ topics: [many, other] }).catch(() => undefined);
  });

  it("reads offsets of a topic whose partitions are still getting their leaders instead of failing with 'not the leader'", async () => {
    // Created without waiting, as another replica or an operator may have done a moment before:
    // the broker answers ListOffsets with NOT_LEADER_FOR_PARTITION until each leader is ready.
    const settings = {
      clientId: uniqueName("offsets"),
      brokers: services().kafkaBrokers.split(","),
    };
    const topics: string[] = [];
    const ours = await connectAdmin(settings);
    try {
      for (let round = 0; round < 4; round++) {
        const fresh = uniqueName("leaders");
        topics.push(fresh);
        await admin.createTopics({
          topics: [{ topic: fresh, numPartitions: 12 }],
          waitForLeaders: false,
        });
        expect(await readTopicToEnd(settings, fresh)).toEqual([]);
        const next = uniqueName("leaders");
        topics.push(next);
        await admin.createTopics({
          topics: [{ topic: next, numPartitions: 12 }],
          waitForLeaders: false,
        });
        const [starts, ends, atTime] = await Promise.all([
          ours.startOffsets(next),
          ours.endOffsets(next),
          ours.offsetsAtTime(next, Date.now()),
        ]);
        for (const offsets of [starts, ends, atTime]) {
          expect(offsets.size).toBe(12);
          expect([...offsets.values()].every((offset) => offset === "0")).toBe(true);
        }
      }
    } finally {
      await ours.close();
      await admin.deleteTopics({ topics }).catch(() => undefined);
    }
  });

  it("creates topics while other processes create theirs: ensureTopics waits for the leaders instead of failing with 'does not host this topic-partition'", async () => {
    // Replicas, the processor and the sink start together and each creates what it needs: the
    // broker answers metadata for a topic its controller just created before it hosts it.
    const settings = {
      clientId: uniqueName("create"),
      brokers: services().kafkaBrokers.split(","),
    };
    const names = Array.from({ length: 10 }, (_, i) =>
      Array.from({ length: 6 }, (_, j) => `${uniqueName("created")}-${i}-${j}`),
    );
    try {
      const outcomes = await Promise.allSettled(
        names.map(async (group) => {
          const ours = await connectAdmin(settings);
          try {
            return await ours.ensureTopics(group.map((name) => ({ name, partitions: 6 })));
          } finally {
            await ours.close();
          }
        }),
      );
      const failures = outcomes.flatMap((outcome) =>
        outcome.status === "rejected" ? [String(outcome.reason)] : [],
      );
      expect(failures).toEqual([]);
      const metadata = await admin.fetchTopicMetadata({ topics: names.flat() });
      expect(metadata.topics.map((topic) => topic.partitions.length)).toEqual(
        names.flat().map(() => 6),
      );
    } finally {
      await admin.deleteTopics({ topics: names.flat() }).catch(() => undefined);
    }
  });

  it("creates a topic with the partitions asked for", async () => {
    const metadata = await admin.fetchTopicMetadata({ topics: [topic] });
    expect(metadata.topics[0]?.partitions).toHaveLength(3);
  });

  it("round-trips keyed messages through a consumer group, in order per key", async () => {
    const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const keys = ["svc-a", "svc-b", "svc-c", "svc-d"];
    const messages = Array.from({ length: 40 }, (_, i) => ({
      key: keys[i % keys.length] ?? "",
      value: `m-${String(i).padStart(2, "0")}`,
    }));
    await producer.send({ topic, acks: -1, messages });
    await producer.disconnect();

    const received = await consume(uniqueName("group"), topic, messages.length);
    expect(received).toHaveLength(40);
    expect(new Set(received.map((m) => m.value))).toEqual(new Set(messages.map((m) => m.value)));
    for (const key of keys) {
      const ofKey = received.filter((m) => m.key === key);
      // One key, one partition: that is what keeps a service's windows complete on a partition.
      expect(new Set(ofKey.map((m) => m.partition)).size).toBe(1);
      expect(ofKey.map((m) => m.value)).toEqual(
        messages.filter((m) => m.key === key).map((m) => m.value),
      );
    }
  });

  it("resumes a consumer group from its committed offsets", async () => {
    const resumeTopic = uniqueName("resume");
    await createTopics(admin, [{ topic: resumeTopic }]);
    const producer = kafka.producer();
    await producer.connect();
    await producer.send({
      topic: resumeTopic,
      messages: [{ value: "first-1" }, { value: "first-2" }],
    });
    const groupId = uniqueName("group");
    const first = await consume(groupId, resumeTopic, 2);
    expect(first.map((m) => m.value)).toEqual(["first-1", "first-2"]);

    await producer.send({ topic: resumeTopic, messages: [{ value: "second-1" }] });
    await producer.disconnect();
    const second = await consume(groupId, resumeTopic, 1);
    expect(second.map((m) => m.value)).toEqual(["second-1"]);
    const offsets = await admin.fetchOffsets({ groupId, topics: [resumeTopic] });
    expect(offsets[0]?.partitions[0]?.offset).toBe("3");
  });

  it("runs transactions on one node: committed records are read, aborted ones are not", async () => {
    const txTopic = uniqueName("tx");
    await createTopics(admin, [{ topic: txTopic }]);
    const producer = kafka.producer({
      transactionalId: uniqueName("txid"),
      idempotent: true,
      maxInFlightRequests: 1,
    });
    await producer.connect();
    const aborted = await producer.transaction();
    await aborted.send({ topic: txTopic, messages: [{ value: "aborted" }] });
    await aborted.abort();
    const committed = await producer.transaction();
    await committed.send({ topic: txTopic, messages: [{ value: "committed" }] });
    await committed.commit();
    await producer.disconnect();

    const readCommitted = await consume(uniqueName("group"), txTopic, 1);
    expect(readCommitted.map((m) => m.value)).toEqual(["committed"]);
    const readUncommitted = await consume(uniqueName("group"), txTopic, 2, {
      readCommitted: false,
    });
    expect(readUncommitted.map((m) => m.value)).toEqual(["aborted", "committed"]);
  });
});
