/**
 * Records PostgreSQL refuses never stall a partition. The writer's batch is bisected down to the
 * records the server refuses for what they hold (SQLSTATE classes 21, 22, 23, 54); the sink
 * dead-letters each with its SQLSTATE and the server's message, writes the rest, and stores its
 * position past them. Dead letters themselves never make the dead-letter send fail: records too
 * big for the broker are truncated (saying so), and a batch of them goes out in sends the broker
 * takes.
 *
 * End to end, the poison is one the contract lets through: a call whose tool name holds a
 * character the database's encoding (WIN1252 here, as a legacy database may be) cannot store —
 * PostgreSQL refuses it with 22P05. (The contract's timestamps stop at 2^53 µs, in the year 2255,
 * far inside PostgreSQL's timestamptz range, so no timestamp the contract accepts is refused.) A
 * NUL in text, \u0000 in jsonb and a name over the btree index limit are refused at the writer
 * (the contract keeps them from the sink).
 */
import { randomBytes, randomUUID } from "node:crypto";

import type { Admin } from "kafkajs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import type { ModelCallEvent } from "../../avro/generated.js";
import { topicNames } from "../../config/index.js";
import type { ConsumedRecord } from "../../kafka/index.js";
import { DEAD_LETTER_MAX_BYTES, deadLetterRecord, recordBytes } from "../../ops/service.js";
import { writeIsolating } from "../../sink/isolate.js";
import { Sink } from "../../sink/sink.js";
import type { SpanRow } from "../../sink/writer.js";
import { sampleEvent } from "../support/events.js";
import { useFreshWriter } from "../support/fresh-writer.js";
import {
  createTopics,
  recordingLogger,
  services,
  testKafka,
  uniqueName,
} from "../support/isolation.js";
import { readBetween, topicEnds } from "../support/topic-records.js";
import { waitFor } from "../support/wait.js";

/** A valid call of `service` with a span id and event id of its own. */
function call(service: string, overrides: Partial<ModelCallEvent> = {}): ModelCallEvent {
  return sampleEvent({
    service,
    event_id: randomUUID(),
    span_id: `1${randomBytes(8).toString("hex").slice(1)}`,
    ...overrides,
  });
}

describe("the writer's batch with rows PostgreSQL refuses", () => {
  const fresh = useFreshWriter("mcpo_poison_writer");

  it("isolates a NUL in text (22021), \\u0000 in jsonb (22P05) and a name over the btree index limit (54000), and writes every other row once", async () => {
    const rows: SpanRow[] = Array.from({ length: 40 }, (_, i) => ({
      event: call("svc-w", { tool_name: `tool-${i}` }),
    }));
    const poison = new Map<number, ModelCallEvent>([
      [3, call("svc-w", { tool_name: "a\u0000b" })],
      // Random, so it does not compress under the limit; 6 000 bytes in the service's index.
      [21, call(randomBytes(4500).toString("base64"))],
      [22, call("svc-w", { attributes: { "mcp.session.id": "s\u0000" } })],
    ]);
    for (const [index, event] of poison) rows[index] = { event };
    const written: string[] = [];
    const rejected = await writeIsolating(rows, {
      write: async (chunk) => {
        await fresh.writer.write({ spans: chunk });
        written.push(...chunk.map((row) => row.event.span_id));
      },
      reject: () => Promise.resolve(),
    });
    expect(rejected.map((r) => [r.index, r.rejection.sqlstate, r.item.event.span_id])).toEqual([
      [3, "22021", poison.get(3)?.span_id],
      [21, "54000", poison.get(21)?.span_id],
      [22, "22P05", poison.get(22)?.span_id],
    ]);
    expect(rejected[0]?.rejection.message).toMatch(
      /invalid byte sequence for encoding "UTF8": 0x00/,
    );
    expect(rejected[1]?.rejection.message).toMatch(/index row size \d+ exceeds btree/);
    expect(rejected[2]?.rejection.message).toMatch(/unsupported Unicode escape sequence/);
    const good = rows.filter((_, i) => !poison.has(i)).map((row) => row.event.span_id);
    expect(written).toEqual(good);
    const stored = await fresh.pool.query<{ span_id: string }>(
      "select span_id from spans order by span_id",
    );
    expect(stored.rows.map((row) => row.span_id)).toEqual([...good].sort());
  });
});

describe("dead-letter records and the broker's limit", () => {
  const source = (key: Buffer | null, value: Buffer): ConsumedRecord => {
    // Through a variable: the record type may carry more fields (a timestamp) than these.
    const record = { topic: "t", partition: 0, offset: "7", key, value, headers: {}, timestamp: 0 };
    return record;
  };

  it("keeps a record that fits whole, and cuts one that does not to fit, saying how big it was", () => {
    const small = deadLetterRecord(source(Buffer.from("k"), randomBytes(900_000)), "X", "why");
    expect(recordBytes(small)).toBeLessThanOrEqual(DEAD_LETTER_MAX_BYTES);
    expect(small.value?.length).toBe(900_000);
    expect(small.headers?.["mcpo-dlq-truncated"]).toBeUndefined();
    const value = randomBytes(DEAD_LETTER_MAX_BYTES);
    const cut = deadLetterRecord(source(Buffer.from("svc"), value), "X", "w".repeat(5000), {
      headers: { "mcpo-dlq-sqlstate": "22P05" },
    });
    expect(recordBytes(cut)).toBe(DEAD_LETTER_MAX_BYTES);
    expect(cut.key).toEqual(Buffer.from("svc"));
    expect(cut.headers).toMatchObject({
      "mcpo-dlq-truncated": String(DEAD_LETTER_MAX_BYTES),
      "mcpo-dlq-sqlstate": "22P05",
      "mcpo-dlq-reason": "w".repeat(1000),
    });
    expect(cut.headers?.["mcpo-dlq-key-truncated"]).toBeUndefined();
    expect(cut.value?.equals(value.subarray(0, cut.value.length))).toBe(true);
    // A key too big to fit beside the headers is cut too; the value keeps what is left (nothing).
    const huge = randomBytes(DEAD_LETTER_MAX_BYTES + 10);
    const both = deadLetterRecord(source(huge, Buffer.from("v")), "X", "why");
    expect(recordBytes(both)).toBe(DEAD_LETTER_MAX_BYTES);
    expect(both.headers).toMatchObject({
      "mcpo-dlq-truncated": "1",
      "mcpo-dlq-key-truncated": String(huge.length),
    });
    expect(both.value?.length).toBe(0);
  });
});

/** A database whose encoding lacks most of Unicode: emoji are refused with 22P05. */
async function createWin1252Database(): Promise<{ name: string; url: string }> {
  const name = uniqueName("mcpo_w1252").toLowerCase().replace(/-/g, "_").slice(0, 63);
  const admin = new URL(services().databaseUrl);
  admin.pathname = "/postgres";
  const client = new pg.Client({ connectionString: admin.toString() });
  await client.connect();
  try {
    await client.query(
      `create database ${pg.escapeIdentifier(name)} encoding 'WIN1252' lc_collate 'C' lc_ctype 'C' template template0`,
    );
  } finally {
    await client.end();
  }
  const url = new URL(services().databaseUrl);
  url.pathname = `/${name}`;
  return { name, url: url.toString() };
}

async function dropDatabaseNamed(name: string): Promise<void> {
  const admin = new URL(services().databaseUrl);
  admin.pathname = "/postgres";
  const client = new pg.Client({ connectionString: admin.toString() });
  await client.connect();
  try {
    await client.query(`drop database if exists ${pg.escapeIdentifier(name)} with (force)`);
  } finally {
    await client.end();
  }
}

describe("the sink and records PostgreSQL refuses", () => {
  const prefix = `${uniqueName("poison")}.`;
  const topics = topicNames(prefix);
  const group = uniqueName("poison-sink");
  const logger = recordingLogger();
  const poison = call("svc-a", { tool_name: "lookup \u{1F642}" });
  const followers = Array.from({ length: 100 }, () => call("svc-a"));
  const neighbours = Array.from({ length: 10 }, () => call("svc-b"));
  const lastPoison = call("svc-b", { model: "gpt-\u{1F680}" });
  const afterBig = call("svc-c");
  /** Undecodable (no magic byte) records: three just under the broker's limit, one over it. */
  const big = [900_000, 900_000, 900_000, 1_500_000].map((size) => {
    const value = randomBytes(size);
    value[0] = 0xff;
    return value;
  });
  let database: { name: string; url: string };
  let admin: Admin;
  let client: pg.Client;
  let sink: Sink | undefined;
  let poisonBytes: Buffer;
  const offsets = { poison: "", lastPoison: "", big: [] as string[] };
  /** What to undo after the tests, in the order things were made (undone last first). */
  const cleanup: (() => Promise<unknown>)[] = [];

  beforeAll(async () => {
    database = await createWin1252Database();
    const name = database.name;
    cleanup.push(() => dropDatabaseNamed(name));
    admin = testKafka().admin();
    await admin.connect();
    cleanup.push(() => admin.disconnect());
    await createTopics(admin, [
      // The source topic takes records bigger than the dead-letter topic's default limit.
      {
        topic: topics.modelCalls,
        numPartitions: 3,
        config: { "max.message.bytes": String(8 * 1024 * 1024) },
      },
      { topic: topics.metricRollups, numPartitions: 1, config: { "cleanup.policy": "compact" } },
      { topic: topics.alerts, numPartitions: 1 },
      { topic: topics.deadLetter, numPartitions: 1 },
    ]);
    cleanup.push(() =>
      admin.deleteTopics({
        topics: [topics.modelCalls, topics.metricRollups, topics.alerts, topics.deadLetter],
      }),
    );
    const codec = await AvroCodec.register<ModelCallEvent>(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topics.modelCalls),
    });
    poisonBytes = codec.encode(poison);
    const producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    try {
      // Partition 0: the poison, then 100 calls of the same service.
      const [first] = await producer.send({
        topic: topics.modelCalls,
        messages: [{ key: "svc-a", value: poisonBytes, partition: 0 }],
      });
      offsets.poison = first?.baseOffset ?? "";
      await producer.send({
        topic: topics.modelCalls,
        messages: followers.map((event) => ({
          key: "svc-a",
          value: codec.encode(event),
          partition: 0,
        })),
      });
      // Partition 1: another service, whose batch ends with a call PostgreSQL refuses.
      const [second] = await producer.send({
        topic: topics.modelCalls,
        messages: [
          ...neighbours.map((event) => ({
            key: "svc-b",
            value: codec.encode(event),
            partition: 1,
          })),
          { key: "svc-b", value: codec.encode(lastPoison), partition: 1 },
        ],
      });
      offsets.lastPoison = String(BigInt(second?.baseOffset ?? "0") + 10n);
      // Partition 2: big undecodable records in one batch, then a call.
      const [bigBatch] = await producer.send({
        topic: topics.modelCalls,
        messages: [
          ...big.map((value) => ({ key: "svc-c", value, partition: 2 })),
          { key: "svc-c", value: codec.encode(afterBig), partition: 2 },
        ],
      });
      const base = BigInt(bigBatch?.baseOffset ?? "0");
      offsets.big = big.map((_, i) => String(base + BigInt(i)));
    } finally {
      await producer.disconnect();
    }
    client = new pg.Client({ connectionString: database.url });
    await client.connect();
    cleanup.push(() => client.end());
    const started = new Sink({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      databaseUrl: database.url,
      topicPrefix: prefix,
      groupId: group,
      partitions: 1,
      logger,
      retryInitialMs: 100,
      retryMaxMs: 1000,
    });
    sink = started;
    cleanup.push(() => started.stop());
    await started.start();
  });

  afterAll(async () => {
    for (const step of cleanup.reverse()) await step().catch(() => undefined);
  });

  async function spansOf(service: string): Promise<number> {
    const { rows } = await client.query<{ count: string }>(
      "select count(*)::text as count from spans where service = $1",
      [service],
    );
    return Number(rows[0]?.count ?? 0);
  }

  async function storedPosition(partition: number): Promise<string | undefined> {
    const { rows } = await client.query<{ next_offset: string }>(
      "select next_offset::text from consumed_offsets where consumer_group = $1 and topic = $2 and partition = $3",
      [group, topics.modelCalls, partition],
    );
    return rows[0]?.next_offset;
  }

  async function deadLetters(): Promise<ConsumedRecord[]> {
    return readBetween(
      services().kafkaBrokers,
      topics.deadLetter,
      new Map(),
      await topicEnds(admin, topics.deadLetter),
    );
  }

  it("writes the 100 calls after a call PostgreSQL refuses, dead-letters it with its SQLSTATE and message, and stores the position past it, without retrying", async () => {
    await waitFor(
      "the 100 calls of svc-a after the poison, and the 10 of svc-b",
      async () => ({ a: await spansOf("svc-a"), b: await spansOf("svc-b") }),
      (seen) => seen.a === 100 && seen.b === 10,
      { timeoutMs: 40_000, intervalMs: 200 },
    );
    const stored = await client.query<{ span_id: string }>(
      "select span_id from spans where service = 'svc-a' order by span_id",
    );
    expect(stored.rows.map((row) => row.span_id)).toEqual(
      followers.map((event) => event.span_id).sort(),
    );
    await waitFor(
      "the position of partition 0 past its 101 records",
      () => storedPosition(0),
      (position) => position === "101",
      { timeoutMs: 10_000 },
    );
    // A refused record at the end of a batch: the position moves past it too.
    await waitFor(
      "the position of partition 1 past its 11 records",
      () => storedPosition(1),
      (position) => position === "11",
      { timeoutMs: 10_000 },
    );
    // Partitions are written concurrently: their dead letters come in either order.
    const refused = (await deadLetters())
      .filter((record) => record.headers["mcpo-dlq-code"] === "DB_REJECTED")
      .sort((a, b) =>
        (a.headers["mcpo-source-partition"] ?? "").localeCompare(
          b.headers["mcpo-source-partition"] ?? "",
        ),
      );
    expect(
      refused.map((record) => [
        record.headers["mcpo-source-partition"],
        record.headers["mcpo-source-offset"],
      ]),
    ).toEqual([
      ["0", offsets.poison],
      ["1", offsets.lastPoison],
    ]);
    const [letter] = refused;
    expect(letter?.headers).toMatchObject({
      "mcpo-source-topic": topics.modelCalls,
      "mcpo-source-offset": offsets.poison,
      "mcpo-dlq-code": "DB_REJECTED",
      "mcpo-dlq-sqlstate": "22P05",
    });
    expect(letter?.headers["mcpo-dlq-reason"]).toMatch(
      /^SQLSTATE 22P05: character with byte sequence 0xf0 0x9f 0x99 0x82 in encoding "UTF8" has no equivalent in encoding "WIN1252"/,
    );
    expect(letter?.key?.toString()).toBe("svc-a");
    expect(letter?.value?.equals(poisonBytes)).toBe(true);
    // Refused for what it holds: not retried, and not a "write failed" in the log.
    expect(logger.lines.filter((line) => line.msg === "write failed; retrying")).toEqual([]);
    expect(sink?.stats().retries).toBe(0);
    const rejectedLines = logger.lines.filter((line) =>
      line.msg.startsWith("PostgreSQL refused a record"),
    );
    expect(
      rejectedLines
        .map((line) => line.fields as { partition?: number })
        .sort((a, b) => (a.partition ?? 0) - (b.partition ?? 0)),
    ).toMatchObject([
      { topic: topics.modelCalls, partition: 0, offset: offsets.poison, sqlstate: "22P05" },
      { topic: topics.modelCalls, partition: 1, offset: offsets.lastPoison, sqlstate: "22P05" },
    ]);
  });

  it("dead-letters a batch of records over the broker's limit (each over it truncated, saying so) and goes on", async () => {
    await waitFor(
      "the call after the big records",
      () => spansOf("svc-c"),
      (count) => count === 1,
      { timeoutMs: 40_000, intervalMs: 200 },
    );
    await waitFor(
      "the position of partition 2 past its 5 records",
      () => storedPosition(2),
      (position) => position === String(BigInt(offsets.big[0] ?? "0") + 5n),
      { timeoutMs: 10_000 },
    );
    const dead = (await deadLetters()).filter(
      (record) => record.headers["mcpo-source-partition"] === "2",
    );
    expect(dead.map((record) => record.headers["mcpo-source-offset"])).toEqual(offsets.big);
    for (const [i, record] of dead.entries()) {
      const original = big[i] ?? Buffer.alloc(0);
      expect(record.headers["mcpo-dlq-code"]).toBe("BAD_MAGIC_BYTE");
      if (original.length < 1_000_000) {
        expect(record.value?.equals(original)).toBe(true);
        expect(record.headers["mcpo-dlq-truncated"]).toBeUndefined();
      } else {
        // The first bytes, up to what the broker takes, and the size it had.
        expect(record.headers["mcpo-dlq-truncated"]).toBe(String(original.length));
        expect(record.value?.length).toBeLessThanOrEqual(1_000_000);
        expect(record.value?.length).toBeGreaterThan(900_000);
        expect(record.value?.equals(original.subarray(0, record.value.length))).toBe(true);
      }
    }
  });
});
