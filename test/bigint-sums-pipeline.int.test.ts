/**
 * Window sums past 2^53 and at the int64 limit through the real stack: 1025 calls, each of the
 * largest cost and prompt tokens one event may carry (2^53 − 2), in one window of one service.
 * The first 1024 take the window's sums to 1024 × (2^53 − 2), just under 2^63 − 1; the 1025th
 * would pass it. The processor counts the 1024, dead-letters the 1025th (SUM_OVERFLOW) and emits
 * the window with its exact sums (bigints through the registered MetricRollup schema); the sink
 * stores them exactly in PostgreSQL; a replay of the log decides the same.
 */
import { randomBytes, randomUUID } from "node:crypto";

import type { Admin, Producer } from "kafkajs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { topicNames } from "../config/index.js";
import { StreamProcessor } from "../processor/processor.js";
import { replayLog } from "../processor/replay.js";
import { Sink } from "../sink/sink.js";
import { sampleEvent } from "./support/events.js";
import {
  quietLogger,
  services,
  testKafka,
  uniqueName,
  useFreshDatabase,
} from "./support/isolation.js";
import { readAllRollups, readBetween, topicEnds } from "./support/topic-records.js";
import { waitFor } from "./support/wait.js";

const SERVICE = "big-spender-mcp";
const WINDOW_MS = 1000;
const SETTINGS = { windowSizeMs: WINDOW_MS, graceMs: 500 } as const;
/** The largest long one event carries (avsc's largest as a number). */
const LARGEST = Number.MAX_SAFE_INTEGER - 1;
const COUNTED = 1024;
const SUM = BigInt(COUNTED) * BigInt(LARGEST);

describe("sums at the int64 limit through the processor, the sink and a replay", () => {
  const prefix = `${uniqueName("bigint-sums")}.`;
  const topics = topicNames(prefix);
  const database = useFreshDatabase("mcpo_bigint_pipe");
  let admin: Admin;
  let producer: Producer;
  let processor: StreamProcessor;
  let sink: Sink;
  const events: ModelCallEvent[] = [];

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    processor = new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      partitions: 1,
      ...SETTINGS,
      idleTimeoutMs: 500,
      checkpointIntervalMs: 200,
      logger: quietLogger,
    });
    await processor.start();
    sink = new Sink({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      databaseUrl: database.current.url,
      topicPrefix: prefix,
      groupId: `${prefix}sink`,
      partitions: 1,
      logger: quietLogger,
    });
    await sink.start();
  });

  afterAll(async () => {
    await sink.stop();
    await processor.stop();
    await producer.disconnect();
    const ours = (await admin.listTopics()).filter((topic) => topic.startsWith(prefix));
    if (ours.length > 0) await admin.deleteTopics({ topics: ours }).catch(() => undefined);
    await admin.disconnect();
  });

  it("counts 1024, dead-letters the 1025th, and every reader holds the exact sums", async () => {
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topics.modelCalls),
    });
    // One window: the current one, from its start (µs apart, in order).
    const start = Math.floor(Date.now() / WINDOW_MS) * WINDOW_MS * 1000;
    for (let i = 0; i <= COUNTED; i++)
      events.push(
        sampleEvent({
          event_id: randomUUID(),
          span_id: randomBytes(8).toString("hex"),
          service: SERVICE,
          model: "gpt-4o",
          start_time: start + i - 1,
          end_time: start + i,
          cost_nano_usd: LARGEST,
          prompt_tokens: LARGEST,
          completion_tokens: 7,
          retries: 1,
        }),
      );
    await producer.send({
      topic: topics.modelCalls,
      acks: -1,
      messages: events.map((event) => ({ key: event.service, value: codec.encode(event) })),
    });

    // The processor: the window's two rollups (total, model), each with the exact sums.
    const rollups = await waitFor(
      "the window's rollups",
      () => readAllRollups(admin, services().kafkaBrokers, services().schemaRegistryUrl, prefix),
      (list) => list.length >= 2,
      { timeoutMs: 60_000, intervalMs: 500 },
    );
    const expectExact = (list: readonly MetricRollup[], where: string) => {
      expect(
        list.map((rollup) => rollup.model),
        where,
      ).toEqual([null, "gpt-4o"]);
      for (const rollup of list)
        expect(rollup.counts, where).toMatchObject({
          calls: COUNTED,
          calls_with_cost: COUNTED,
          cost_nano_usd: SUM,
          prompt_tokens: SUM,
          completion_tokens: BigInt(7 * COUNTED),
          calls_with_retries: COUNTED,
          retries: BigInt(COUNTED),
        });
    };
    expectExact(rollups, "rollups topic");
    expect(rollups[0]?.rates.avg_cost_usd).toBeCloseTo(LARGEST * 1e-9, 6);

    // The 1025th call: dead-lettered, its bytes and which sum.
    const dead = await readBetween(
      services().kafkaBrokers,
      topics.deadLetter,
      new Map(),
      await topicEnds(admin, topics.deadLetter),
    );
    expect(dead, "dead letters").toHaveLength(1);
    expect(dead[0]?.headers["mcpo-dlq-code"]).toBe("SUM_OVERFLOW");
    expect(dead[0]?.headers["mcpo-dlq-reason"]).toContain("cost_nano_usd");
    expect(dead[0]?.headers["mcpo-source-offset"]).toBe(String(COUNTED));
    expect(dead[0]?.value?.equals(codec.encode(events[COUNTED] as ModelCallEvent))).toBe(true);
    expect(processor.stats()).toMatchObject({ deadLettered: 1, late: 0 });

    // The sink: the rows, exact in bigint columns.
    const rows = await waitFor(
      "the window's rows in metric_rollups",
      async () => {
        const client = new pg.Client({ connectionString: database.current.url });
        await client.connect();
        try {
          return (
            await client.query<Record<string, string>>(
              `select scope, calls::text, cost_nano_usd::text, prompt_tokens::text
                 from metric_rollups where service = $1 order by scope desc`,
              [SERVICE],
            )
          ).rows;
        } finally {
          await client.end();
        }
      },
      (list) => list.length >= 2,
      { timeoutMs: 60_000, intervalMs: 500 },
    );
    expect(rows).toEqual(
      ["service", "model"].map((scope) => ({
        scope,
        calls: String(COUNTED),
        cost_nano_usd: String(SUM),
        prompt_tokens: String(SUM),
      })),
    );

    // A replay of the log: the same rollups, the same refusal.
    const replayed: MetricRollup[] = [];
    const summary = await replayLog({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      ...SETTINGS,
      onOutputs: (outputs) => {
        replayed.push(...outputs.rollups);
        return Promise.resolve();
      },
    });
    expect(summary.invalid).toEqual({ SUM_OVERFLOW: 1 });
    expectExact(replayed, "replay");
    expect(replayed).toEqual(rollups);
  }, 120_000);
});
