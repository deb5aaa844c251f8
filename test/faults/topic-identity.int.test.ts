/**
 * A topic deleted and created again under the same name, for real through the admin API. Its
 * offsets start at 0 again, so positions stored for the old topic would make the sink skip the
 * new topic's first records as already written. Topic ids tell the two apart: the sink refuses to
 * start with one clear error, or, told to accept the new topic, drops the old positions and
 * writes every new record; positions stored before topic ids were take the current id.
 */
import type { Admin, Producer } from "kafkajs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import type { ModelCallEvent } from "../../avro/generated.js";
import { fetchTopicIds, type KafkaSettings } from "../../kafka/index.js";
import type { OpsLogger } from "../../ops/index.js";
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
import { waitForStoredPositions } from "../support/sink-positions.js";
import { waitFor } from "../support/wait.js";

const ORIGIN = 1_764_000_000_000_000;
const PARTITIONS = 2;

describe("a topic deleted and created again under the same name", () => {
  const database = useFreshDatabase("mcpo_topic_id");
  let admin: Admin;
  let producer: Producer;
  let pool: pg.Pool;
  const created: string[] = [];
  const running: { stop(): Promise<void> }[] = [];
  let sent = 0;

  const settings = (): KafkaSettings => ({
    brokers: services().kafkaBrokers.split(","),
    clientId: uniqueName("topic-ids"),
  });

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    pool = new pg.Pool({ connectionString: database.current.url, max: 2 });
  });

  afterAll(async () => {
    await Promise.allSettled(running.map((service) => service.stop()));
    await pool.end();
    await producer.disconnect();
    const ours = (await admin.listTopics()).filter((topic) =>
      created.some((prefix) => topic.startsWith(prefix)),
    );
    if (ours.length > 0) await admin.deleteTopics({ topics: ours }).catch(() => undefined);
    await admin.disconnect();
  });

  /** Deletes `topic` and creates it again (same name, same partitions) once the deletion is done. */
  async function recreate(topic: string, partitions: number): Promise<void> {
    await admin.deleteTopics({ topics: [topic], timeout: 30_000 });
    await waitFor(
      `${topic} to be gone`,
      () => admin.listTopics(),
      (topics) => !topics.includes(topic),
      { timeoutMs: 30_000, intervalMs: 200 },
    );
    // The controller may still be removing the old topic's partitions: retry until created.
    await waitFor(
      `${topic} to be created again`,
      () => createTopics(admin, [{ topic, numPartitions: partitions }]).then(() => true),
      (done) => done,
      { timeoutMs: 30_000, intervalMs: 500 },
    );
  }

  it("fetchTopicIds: each topic has its own id, the same on every call, and a new one once deleted and created again", async () => {
    const prefix = uniqueName("topic-ids");
    created.push(prefix);
    const [a, b] = [`${prefix}.a`, `${prefix}.b`];
    await createTopics(admin, [{ topic: a }, { topic: b, numPartitions: 3 }]);

    const first = await fetchTopicIds(settings(), [a, b, `${prefix}.missing`]);
    expect([...first.keys()].sort()).toEqual([a, b]); // a missing topic is left out
    const idA = first.get(a) ?? "";
    const idB = first.get(b) ?? "";
    // As Kafka prints them: 16 bytes, base64url without padding.
    expect(idA).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(Buffer.from(idA, "base64url")).toHaveLength(16);
    expect(idB).not.toBe(idA);
    expect(await fetchTopicIds(settings(), [b, a])).toEqual(
      new Map([
        [b, idB],
        [a, idA],
      ]),
    );

    await recreate(a, 1);
    const again = await fetchTopicIds(settings(), [a, b]);
    expect(again.get(a)).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(again.get(a)).not.toBe(idA);
    expect(again.get(b)).toBe(idB);
  });

  it("fetchTopicIds: a broker that does not answer is skipped for the next one; none answering is a retriable KafkaError", async () => {
    const prefix = uniqueName("topic-ids");
    created.push(prefix);
    const topic = `${prefix}.a`;
    await createTopics(admin, [{ topic }]);
    const real = settings();
    // Port 9 (discard) on loopback: refused at once.
    const ids = await fetchTopicIds({ ...real, brokers: ["127.0.0.1:9", ...real.brokers] }, [
      topic,
    ]);
    expect(ids.get(topic)).toMatch(/^[A-Za-z0-9_-]{22}$/);
    await expect(
      fetchTopicIds({ ...real, brokers: ["127.0.0.1:9"] }, [topic]),
    ).rejects.toMatchObject({ name: "KafkaError", retriable: true });
  });

  describe("the sink", () => {
    const prefix = `${uniqueName("topic-id-sink")}.`;
    const modelCalls = `${prefix}model-calls`;
    const group = `${prefix}sink`;
    let codec: AvroCodec<ModelCallEvent>;

    beforeAll(async () => {
      created.push(prefix);
      await createTopics(admin, [{ topic: modelCalls, numPartitions: PARTITIONS }]);
      codec = await AvroCodec.register(MODEL_CALL_EVENT, {
        registryUrl: services().schemaRegistryUrl,
        subject: valueSubject(modelCalls),
      });
    });

    /** Produces `count` new events, spread over the partitions by their services. */
    async function produce(count: number): Promise<void> {
      const events: ModelCallEvent[] = [];
      for (let i = 0; i < count; i++) {
        sent++;
        events.push(
          sampleEvent({
            event_id: crypto.randomUUID(),
            span_id: crypto.randomUUID().replace(/-/g, "").slice(0, 16),
            service: `svc-${sent % 7}`,
            start_time: ORIGIN + sent * 1_000_000 - 500,
            end_time: ORIGIN + sent * 1_000_000,
          }),
        );
      }
      await producer.send({
        topic: modelCalls,
        acks: -1,
        messages: events.map((event) => ({ key: event.service, value: codec.encode(event) })),
      });
    }

    function sink(logger: OpsLogger, acceptNewTopics?: boolean): Sink {
      const instance = new Sink({
        brokers: services().kafkaBrokers,
        schemaRegistryUrl: services().schemaRegistryUrl,
        databaseUrl: database.current.url,
        topicPrefix: prefix,
        groupId: group,
        partitions: 1,
        ...(acceptNewTopics === undefined ? {} : { acceptNewTopics }),
        logger,
      });
      running.push(instance);
      return instance;
    }

    async function spansOf(topic: string): Promise<number> {
      const { rows } = await pool.query<{ count: string }>(
        "select count(*)::text as count from spans where source_topic = $1",
        [topic],
      );
      return Number(rows[0]?.count);
    }

    async function positions(): Promise<{ partition: number; next: string; id: string | null }[]> {
      const { rows } = await pool.query<{ partition: number; next: string; id: string | null }>(
        `select partition, next_offset::text as next, topic_id as id from consumed_offsets
         where consumer_group = $1 and topic = $2 order by partition`,
        [group, modelCalls],
      );
      return rows;
    }

    it("refuses to start on positions of the deleted topic, naming it and both ids; told to accept the new topic, it writes every new record", async () => {
      await produce(120);
      const first = sink(recordingLogger());
      await first.start();
      const oldEnds = await waitForStoredPositions(admin, pool, group, [modelCalls]);
      await first.stop();
      expect(await spansOf(modelCalls)).toBe(120);
      const oldId = (await fetchTopicIds(settings(), [modelCalls])).get(modelCalls);
      expect((await positions()).map((row) => row.id)).toEqual([oldId, oldId]);

      await recreate(modelCalls, PARTITIONS);
      const newId = (await fetchTopicIds(settings(), [modelCalls])).get(modelCalls);
      await produce(30); // fewer than the old topic had in every partition: all at offsets < the stored ones
      const newEnds = await waitFor(
        "the new topic's end offsets",
        () => admin.fetchTopicOffsets(modelCalls),
        (offsets) => offsets.reduce((sum, entry) => sum + Number(entry.high), 0) === 30,
      );
      for (const entry of newEnds)
        expect(BigInt(entry.high)).toBeLessThan(
          BigInt(oldEnds[`${modelCalls}|${entry.partition}`] ?? 0),
        );

      // Without the flag: one clear error, nothing written, the positions as they were. (Before
      // topic ids were stored, the sink started here and skipped every one of the 30 records.)
      const refusing = sink(recordingLogger());
      const outcome: unknown = await refusing.start().then(
        async () => {
          await waitFor(
            "the sink to settle",
            () => refusing.stats().batches,
            (n) => n >= PARTITIONS,
            { timeoutMs: 15_000 },
          ).catch(() => undefined);
          return `the sink started on the old topic's positions, and within 15 s it wrote ${refusing.stats().spansInserted} of the 30 new records`;
        },
        (error: unknown) => error,
      );
      expect(outcome).toMatchObject({ code: "TOPIC_REPLACED" });
      const message = (outcome as Error).message;
      expect(message).toContain(`group ${group}`);
      expect(message).toContain(`${modelCalls} (stored topic id ${oldId}, now ${newId})`);
      expect(message).toContain("--accept-new-topics");
      expect(refusing.state).toBe("stopped");
      expect(await spansOf(modelCalls)).toBe(120);
      expect((await positions()).map((row) => [row.next, row.id])).toEqual(
        [0, 1].map((partition) => [oldEnds[`${modelCalls}|${partition}`], oldId]),
      );

      // With the flag: the old positions are dropped, the 30 new records written, once each.
      const log = recordingLogger();
      const accepting = sink(log, true);
      await accepting.start();
      await waitForStoredPositions(admin, pool, group, [modelCalls]);
      expect(accepting.stats()).toMatchObject({ spansInserted: 30, spansDuplicate: 0 });
      expect(await spansOf(modelCalls)).toBe(150);
      expect((await positions()).map((row) => [row.next, row.id])).toEqual(
        newEnds.sort((a, b) => a.partition - b.partition).map((entry) => [entry.high, newId]),
      );
      const dropped = log.lines.filter((line) =>
        line.msg.includes("its stored positions are dropped"),
      );
      expect(dropped).toHaveLength(1);
      expect(dropped[0]?.fields).toMatchObject({
        topic: modelCalls,
        storedId: oldId,
        currentId: newId,
        discarded: PARTITIONS,
      });
      await accepting.stop();

      // The flag left on changes nothing once the ids agree: nothing is read twice.
      await produce(10);
      const again = sink(recordingLogger(), true);
      await again.start();
      await waitForStoredPositions(admin, pool, group, [modelCalls]);
      expect(again.stats()).toMatchObject({ spansInserted: 10, spansDuplicate: 0 });
      await again.stop();
    });

    it("positions stored without a topic id (before ids were stored) take the topic's current id, with one line", async () => {
      const id = (await fetchTopicIds(settings(), [modelCalls])).get(modelCalls);
      await pool.query("update consumed_offsets set topic_id = null where consumer_group = $1", [
        group,
      ]);
      await produce(5);
      const log = recordingLogger();
      const restarted = sink(log);
      await restarted.start();
      await waitForStoredPositions(admin, pool, group, [modelCalls]);
      expect(restarted.stats()).toMatchObject({ spansInserted: 5, spansDuplicate: 0 });
      await restarted.stop();
      expect((await positions()).map((row) => row.id)).toEqual([id, id]);
      const adopted = log.lines.filter((line) => line.msg.includes("take the topic's current id"));
      expect(adopted.map((line) => line.fields)).toContainEqual(
        expect.objectContaining({ topic: modelCalls, topicId: id, positions: PARTITIONS }),
      );
    });
  });
});
