/**
 * Graceful SIGTERM of the sink: the CLI process (`node --import tsx cli/main.ts sink`), stopped
 * while events still stream in, exits 0 with its last batch written and its position committed
 * to the group; the next sink of the group continues exactly there: it writes no span twice and
 * reads no record the first one had written.
 */
import type { Admin } from "kafkajs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { Sink } from "../sink/sink.js";
import { CliWorkers } from "./support/crash.js";
import { sampleEvent } from "./support/events.js";
import {
  createTopics,
  services,
  quietLogger,
  testKafka,
  uniqueName,
  useFreshDatabase,
} from "./support/isolation.js";
import { storedPositions, waitForStoredPositions } from "./support/sink-positions.js";
import { pause } from "./support/wait.js";

/** Events before the first sink starts, and per batch of the stream. */
const INITIAL = 1000;
const CHUNK = 300;

describe("sink stopped with SIGTERM", () => {
  const database = useFreshDatabase("mcpo_sinkterm");
  const prefix = `${uniqueName("sinkterm")}.`;
  const topics = [`${prefix}model-calls`, `${prefix}metric-rollups`, `${prefix}alerts`];
  const group = uniqueName("sinkterm-group");
  let admin: Admin;
  let client: pg.Client;
  let next: Sink | undefined;

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [
      { topic: `${prefix}model-calls`, numPartitions: 3 },
      {
        topic: `${prefix}metric-rollups`,
        numPartitions: 1,
        config: { "cleanup.policy": "compact" },
      },
      { topic: `${prefix}alerts`, numPartitions: 1 },
      { topic: `${prefix}dead-letter`, numPartitions: 1 },
    ]);
    client = new pg.Client({ connectionString: database.current.url });
  });
  afterAll(async () => {
    await next?.stop();
    await client.end().catch(() => undefined);
    await admin.disconnect();
  });

  it(
    "exits 0 with its position in PostgreSQL committed to the group, and the next sink writes no span twice and re-reads no record",
    { timeout: 180_000 },
    async () => {
      let last = Date.now();
      const t = {
        lap: (what: string) => {
          process.stderr.write(`sinkterm: ${what} +${Date.now() - last} ms\n`);
          last = Date.now();
        },
      };
      const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
        registryUrl: services().schemaRegistryUrl,
        subject: valueSubject(`${prefix}model-calls`),
      });
      const template = sampleEvent();
      const event = (i: number): ModelCallEvent => ({
        ...template,
        event_id: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
        span_id: (0x5000000000000000n + BigInt(i)).toString(16),
        service: `svc-${i % 5}`,
        prompt_tokens: i % 1000,
        start_time: 1_764_000_000_000_000 + i * 10_000 - 1000,
        end_time: 1_764_000_000_000_000 + i * 10_000,
      });
      const producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
      await producer.connect();
      let produced = 0;
      const produce = async (count: number) => {
        const messages = Array.from({ length: count }, (_, k) => {
          const e = event(produced + k);
          return { key: e.service, value: codec.encode(e) };
        });
        await producer.send({ topic: `${prefix}model-calls`, acks: -1, messages });
        produced += count;
      };
      await produce(INITIAL);

      const workers = CliWorkers.forCurrentTest("sinkterm");
      const first = workers.start(["sink"], {
        ...process.env,
        KAFKA_BROKERS: services().kafkaBrokers,
        SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
        DATABASE_URL: database.current.url,
        MCPO_TOPIC_PREFIX: prefix,
        MCPO_SINK_GROUP: group,
        MCPO_SESSION_TIMEOUT_MS: "10000",
        MCPO_METRICS_PORT: "0",
        LOG_LEVEL: "info",
      });
      await client.connect();
      const spans = async () =>
        (await client.query<{ n: number }>("select count(*)::int as n from spans")).rows[0]?.n ?? 0;
      t.lap("produced and started");
      await first.waitFor("the sink to write the first events", spans, (n) => n === INITIAL, {
        timeoutMs: 90_000,
        intervalMs: 100,
      });
      t.lap("first written");
      // A batch in flight at the signal, for sure: a lock holds the sink's next insert into spans
      // (reads go on), the stream produces, and SIGTERM comes while the sink waits on the lock.
      const locker = new pg.Client({ connectionString: database.current.url });
      await locker.connect();
      await locker.query("begin");
      await locker.query("lock table spans in share row exclusive mode");
      await produce(CHUNK);
      const blocked = async () =>
        (
          await client.query<{ n: number }>(
            "select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
          )
        ).rows[0]?.n ?? 0;
      await first.waitFor("the sink's insert to wait on the lock", blocked, (n) => n > 0, {
        timeoutMs: 30_000,
        intervalMs: 50,
      });
      t.lap("blocked");
      const before = await spans();
      const producedAtSignal = produced;
      const exited = first.kill("SIGTERM");
      // The stream goes on while it stops.
      await produce(CHUNK);
      // Node runs the SIGTERM handler on its next loop turn (the sink is idle, awaiting
      // PostgreSQL), and the stop marks the consumer as stopping at once; 500 ms is ample, and
      // a late stop would only make the batch finish before it, not change any outcome below.
      await pause(500);
      await locker.query("commit");
      await locker.end();
      const exit = await exited;
      t.lap("exited");
      await produce(CHUNK); // and some more for the next owner
      await producer.disconnect();
      process.stderr.write(
        `sinkterm: SIGTERM with ${before} spans written, ${producedAtSignal} produced (${produced} in all)\n`,
      );
      expect(exit, `how the sink exited; output:\n${first.tail()}`).toEqual({
        code: 0,
        signal: null,
      });
      expect(first.tail(5)).toMatch(/"msg":"sink stopped"/);
      // Stopped mid-batch: the batch held at the signal was written before the exit.
      expect(before).toBe(INITIAL);

      // Its last position is in PostgreSQL, and the group's committed offsets say the same.
      const ends = Object.fromEntries(
        (await admin.fetchTopicOffsets(`${prefix}model-calls`)).map((p) => [
          `${prefix}model-calls|${p.partition}`,
          p.high,
        ]),
      );
      const stored = await storedPositions(client, group, ends);
      const written = await spans();
      const storedTotal = Object.values(stored).reduce((sum, offset) => sum + Number(offset), 0);
      // Every record below the stored positions is a span in the table, and no other.
      expect(written).toBe(storedTotal);
      expect(written).toBeGreaterThanOrEqual(producedAtSignal);
      expect(written).toBeLessThan(produced);
      const committed = await admin.fetchOffsets({ groupId: group, topics: topics.slice(0, 1) });
      expect(
        Object.fromEntries(
          committed.flatMap(({ topic, partitions }) =>
            partitions.map((p) => [`${topic}|${p.partition}`, p.offset === "-1" ? "0" : p.offset]),
          ),
        ),
      ).toEqual(stored);

      // The next sink of the group reads from there on.
      next = new Sink({
        brokers: services().kafkaBrokers,
        schemaRegistryUrl: services().schemaRegistryUrl,
        databaseUrl: database.current.url,
        topicPrefix: prefix,
        groupId: group,
        logger: quietLogger,
      });
      await next.start();
      t.lap("next started");
      await waitForStoredPositions(admin, client, group, topics, 90_000);
      await next.stop();
      t.lap("next done");
      const remaining = produced - written;
      expect(next.stats()).toMatchObject({ spansInserted: remaining, spansDuplicate: 0 });
      // Records it was handed, from its own histogram: exactly those after the stored positions.
      const histogram = await next.metrics.batchSize.get();
      expect(
        histogram.values.find((v) => v.metricName === "mcpo_sink_batch_records_sum")?.value,
      ).toBe(remaining);
      const { rows } = await client.query<{ n: number; ids: number; tokens: string }>(
        "select count(*)::int as n, count(distinct event_id)::int as ids, sum(prompt_tokens)::text as tokens from spans",
      );
      let tokens = 0;
      for (let i = 0; i < produced; i++) tokens += i % 1000;
      expect(rows[0]).toEqual({ n: produced, ids: produced, tokens: String(tokens) });
    },
  );
});
