/**
 * The hostile corpus (corpus.ts), end to end with the real stack: a raw producer writes each
 * entry's records into model-calls between runs of a steady stream of good events of three
 * services; the processor and the sink run as in production. Every good event must land (spans,
 * and rollups equal to the oracle's), and every entry must have its outcome: its dead letters
 * with their codes and reasons, or its rollups equal to the oracle's. The time the steady stream
 * took to land after the last record is printed, with the counts.
 */
import avro from "avsc";
import type { Admin, Producer } from "kafkajs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import { MODEL_CALL_EVENT_SCHEMA, type ModelCallEvent } from "../../avro/generated.js";
import { topicNames } from "../../config/index.js";
import { StreamProcessor } from "../../processor/processor.js";
import { Sink } from "../../sink/sink.js";
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
import { CORPUS, goodCall, type HostileOutcome } from "./corpus.js";

const WINDOW_MS = 5000;
const PARTITIONS = 3;
/** The model-calls schema without the contract's checks: what a replica could write. */
const uncheckedType = avro.Type.forSchema(MODEL_CALL_EVENT_SCHEMA as avro.Schema);

function wireHeader(schemaId: number): Buffer {
  const header = Buffer.alloc(5);
  header.writeInt32BE(schemaId, 1);
  return header;
}
const STEADY_SERVICES = ["steady-a", "steady-b", "steady-c"];
/** Good events before each entry (and after the last). */
const STEADY_RUN = 30;

describe("the hostile corpus, end to end", () => {
  const database = useFreshDatabase("mcpo_hostile");
  const prefix = `${uniqueName("hostile")}.`;
  const topics = topicNames(prefix);
  let admin: Admin;
  let producer: Producer;
  let codec: AvroCodec<ModelCallEvent>;
  let processor: StreamProcessor;
  let sink: Sink;
  let pool: pg.Pool;

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [{ topic: topics.modelCalls, numPartitions: PARTITIONS }]);
    codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topics.modelCalls),
    });
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    processor = new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      partitions: PARTITIONS,
      windowSizeMs: WINDOW_MS,
      graceMs: 1000,
      idleTimeoutMs: 2000,
      checkpointIntervalMs: 500,
      logger: quietLogger,
    });
    sink = new Sink({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      databaseUrl: database.current.url,
      topicPrefix: prefix,
      partitions: PARTITIONS,
      logger: quietLogger,
    });
    pool = new pg.Pool({ connectionString: database.current.url });
    await processor.start();
    await sink.start();
  });

  afterAll(async () => {
    await Promise.allSettled([processor.stop(), sink.stop()]);
    await pool.end();
    await producer.disconnect();
    await admin.disconnect();
  });

  it("keeps a steady stream flowing through every entry, each with its outcome", async () => {
    const steady: ModelCallEvent[] = [];
    const outcomes = new Map<string, { records: number; outcome: HostileOutcome }>();
    const steadyRun = async (): Promise<void> => {
      const now = Date.now() * 1000;
      const run = Array.from({ length: STEADY_RUN }, (_, i) =>
        goodCall(STEADY_SERVICES[i % STEADY_SERVICES.length] ?? "steady-a", now + i),
      );
      steady.push(...run);
      await producer.send({
        topic: topics.modelCalls,
        acks: -1,
        messages: run.map((event) => ({ key: event.service, value: codec.encode(event) })),
      });
    };
    for (const entry of CORPUS) {
      await steadyRun();
      const { records, outcome } = entry.build({
        encode: (event) => codec.encode(event),
        encodeUnchecked: (event) =>
          Buffer.concat([wireHeader(codec.schemaId), uncheckedType.toBuffer(event)]),
        partitions: PARTITIONS,
        nowMicros: Date.now() * 1000,
        windowMicros: WINDOW_MS * 1000,
      });
      outcomes.set(entry.name, { records: records.length, outcome });
      await producer.send({
        topic: topics.modelCalls,
        acks: -1,
        messages: records.map((record) => ({
          key: record.key,
          value: record.value,
          headers: { ...record.headers },
          ...(record.partition === undefined ? {} : { partition: record.partition }),
        })),
      });
    }
    await steadyRun();
    const lastProduced = Date.now();

    // Every good event lands, however many hostile records came between them.
    await waitFor(
      `the ${steady.length} steady spans in PostgreSQL`,
      async () =>
        Number(
          (
            await pool.query<{ n: string }>(
              "select count(*)::text as n from spans where service = any($1)",
              [STEADY_SERVICES],
            )
          ).rows[0]?.n,
        ),
      (n) => n === steady.length,
      { timeoutMs: 120_000 },
    );
    const landedMs = Date.now() - lastProduced;
    const wantSteady = oracleRollups(steady, WINDOW_MS * 1000);
    const steadyWhere = `service in (${STEADY_SERVICES.map((s) => `'${s}'`).join(", ")})`;
    await waitFor(
      "every steady window's rollups in PostgreSQL",
      () => storedRollups(pool, "metric_rollups", steadyWhere),
      (rows) => rows.length === wantSteady.size,
      { timeoutMs: 120_000 },
    );
    expectMatchesOracle(
      await storedRollups(pool, "metric_rollups", steadyWhere),
      wantSteady,
      "steady stream",
    );
    process.stdout.write(
      `hostile corpus: ${CORPUS.length} entries, ${steady.length} steady events, all stored ${landedMs} ms after the last record was produced\n`,
    );

    // Each entry's outcome.
    const letters = await readBetween(
      services().kafkaBrokers,
      topics.deadLetter,
      new Map(),
      await topicEnds(admin, topics.deadLetter),
    );
    for (const entry of CORPUS) {
      const { records, outcome } = outcomes.get(entry.name) ?? { records: 0, outcome: {} };
      const where = `${entry.name} (${entry.what})`;
      const mine = letters.filter((letter) => letter.key?.toString() === `hostile:${entry.name}`);
      if (outcome.deadLetter) {
        expect(mine.length, `${where}: dead letters`).toBeGreaterThanOrEqual(records);
        for (const letter of mine) {
          expect(letter.headers["mcpo-dlq-code"], where).toMatch(
            new RegExp(`^(${outcome.deadLetter.code})$`),
          );
          expect(letter.headers["mcpo-dlq-reason"], where).toMatch(outcome.deadLetter.reason);
        }
      } else expect(mine, `${where}: no dead letter`).toEqual([]);
      if (outcome.rollups) {
        const want = oracleRollups(outcome.rollups.events, WINDOW_MS * 1000);
        const serviceWhere = `service = '${outcome.rollups.service}'`;
        await waitFor(
          `${where}: its rollups`,
          () => storedRollups(pool, "metric_rollups", serviceWhere),
          (rows) => rows.length === want.size,
          { timeoutMs: 60_000 },
        );
        expectMatchesOracle(await storedRollups(pool, "metric_rollups", serviceWhere), want, where);
      }
      if (outcome.spans) {
        const { rows } = await pool.query<{ n: string }>(
          "select count(*)::text as n from spans where service = $1",
          [outcome.spans.service],
        );
        expect(Number(rows[0]?.n), `${where}: spans`).toBe(outcome.spans.count);
      }
      if (outcome.duplicates !== undefined)
        expect(processor.stats().duplicates, `${where}: duplicates`).toBeGreaterThanOrEqual(
          outcome.duplicates,
        );
      if (outcome.scopes) {
        const { rows } = await pool.query<{ scope: string; n: string }>(
          "select scope, count(*)::text as n from metric_rollups where service = $1 group by scope",
          [outcome.scopes.service],
        );
        expect(
          Object.fromEntries(rows.map((row) => [row.scope, Number(row.n)])),
          `${where}: rows by scope`,
        ).toEqual(outcome.scopes.rows);
      }
      if (outcome.modelsFolded !== undefined)
        expect(processor.stats().modelsFolded, `${where}: models folded`).toBeGreaterThanOrEqual(
          outcome.modelsFolded,
        );
    }
  });
});
