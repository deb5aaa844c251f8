/**
 * Issue 14 through real Kafka: an MCP server replica (anyone with WRITE on model-calls) appends a
 * forged progress record — the `mcpo-control: progress` header, a source partition that never
 * reports, time 0 — which, trusted, holds the partition's event time at 0 so no window closes.
 * A processor with a `controlKey` dead-letters it (CONTROL_UNAUTHENTICATED) and its rollups equal
 * the oracle's; a replay with the same key rebuilds the same rollups and counts the forged record;
 * a replay without the key, trusting it, closes nothing.
 */
import type { Admin } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import { progressRecord } from "../avro/control.js";
import type { MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { StreamProcessor } from "../processor/processor.js";
import { replayLog } from "../processor/replay.js";
import { sampleEvent } from "./support/events.js";
import { recordingLogger, services, testKafka, uniqueName } from "./support/isolation.js";
import { expectMatchesOracle, oracleRollups } from "./support/oracle.js";
import { readAllRollups, readBetween, topicEnds } from "./support/topic-records.js";
import { waitFor } from "./support/wait.js";

const SECOND = 1_000_000;
const MINUTE = 60 * SECOND;
const ORIGIN = 1_764_000_000_000_000 - (1_764_000_000_000_000 % MINUTE);
const KEY = "integration-control-key-0123456789abcdef";

const comparable = (rollup: MetricRollup) => ({
  service: rollup.service,
  model: rollup.model,
  windowStart: rollup.window_start,
  counts: rollup.counts,
  rates: rollup.rates,
});
const byKey = (rollups: readonly MetricRollup[]) =>
  rollups
    .map((r) =>
      JSON.stringify(comparable(r), (_, v: unknown) => (typeof v === "bigint" ? String(v) : v)),
    )
    .sort();

describe("control records authenticated with a controlKey, through Kafka", () => {
  let admin: Admin;
  const prefix = `${uniqueName("ctlauth")}.`;
  const topic = `${prefix}model-calls`;
  let processor: StreamProcessor | undefined;
  const logger = recordingLogger();
  const events: ModelCallEvent[] = [];

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
  });

  afterAll(async () => {
    await processor?.stop();
    const topics = (await admin.listTopics()).filter((name) => name.startsWith(prefix));
    if (topics.length > 0) await admin.deleteTopics({ topics });
    await admin.disconnect();
  });

  it("ignores and dead-letters a replica's forged progress record; rollups equal the oracle, live and replayed", async () => {
    processor = new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      partitions: 1,
      windowSizeMs: 60_000,
      graceMs: 10_000,
      idleTimeoutMs: 600_000,
      checkpointIntervalMs: 200,
      controlKey: KEY,
      logger,
    });
    await processor.start();
    expect(
      logger.lines.filter((line) => /not authenticated/.test(line.msg)),
      "no warning with a key",
    ).toEqual([]);

    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    const at = (end: number, model: string) =>
      sampleEvent({
        event_id: crypto.randomUUID(),
        service: "billing",
        model,
        start_time: end - 3000,
        end_time: end,
      });
    // Three minutes of calls, then one that closes them (its own minute stays open).
    for (let end = ORIGIN + SECOND; end < ORIGIN + 3 * MINUTE; end += 5 * SECOND)
      events.push(at(end, end % (10 * SECOND) === 0 ? "gpt-4o" : "claude"));
    const closing = at(ORIGIN + 4 * MINUTE + 30 * SECOND, "gpt-4o");

    // The replica: a forged progress record first (a plain producer, the header alone), then
    // its events.
    const forged = progressRecord({ sourcePartition: 5, lastOffset: null, sourceTimeMicros: 0 });
    const producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    await producer.send({
      topic,
      acks: -1,
      messages: [{ key: null, value: forged.value, headers: forged.headers, partition: 0 }],
    });
    await producer.send({
      topic,
      acks: -1,
      messages: [...events, closing].map((event) => ({
        key: event.service,
        value: codec.encode(event),
        partition: 0,
      })),
    });
    await producer.disconnect();

    const oracle = oracleRollups(events, MINUTE);
    expect(oracle.size).toBeGreaterThanOrEqual(6);
    const live = await waitFor(
      "the processor's rollups",
      () => readAllRollups(admin, services().kafkaBrokers, services().schemaRegistryUrl, prefix),
      (rollups) => rollups.length >= oracle.size,
      { timeoutMs: 60_000 },
    );
    expectMatchesOracle(live.map(comparable), oracle, "live rollups");

    // The forged record is in the dead-letter topic, with the reason.
    const deadTopic = `${prefix}dead-letter`;
    const dead = await waitFor(
      "the dead letter",
      async () =>
        readBetween(
          services().kafkaBrokers,
          deadTopic,
          new Map(),
          await topicEnds(admin, deadTopic),
        ),
      (records) => records.length >= 1,
      { timeoutMs: 30_000 },
    );
    expect(dead.map((record) => record.headers["mcpo-dlq-code"])).toEqual([
      "CONTROL_UNAUTHENTICATED",
    ]);
    expect(dead[0]?.headers["mcpo-dlq-reason"]).toMatch(/without a mcpo-control-mac header/);
    expect(dead[0]?.headers["mcpo-dlq-reason"]).toMatch(/control record "progress"/);
    await processor.stop();
    processor = undefined;

    // A replay with the same key: the same rollups, the forged record counted.
    const base = {
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      windowSizeMs: 60_000,
      graceMs: 10_000,
    };
    const replayed: MetricRollup[] = [];
    const summary = await replayLog({
      ...base,
      controlKey: KEY,
      onOutputs: (outputs) => {
        replayed.push(...outputs.rollups);
        return Promise.resolve();
      },
    });
    expect(byKey(replayed)).toEqual(byKey(live));
    expect(summary.invalid).toEqual({ CONTROL_UNAUTHENTICATED: 1 });

    // Without the key the replay trusts the forged record: nothing closes (the defect).
    const trusting: MetricRollup[] = [];
    await replayLog({
      ...base,
      onOutputs: (outputs) => {
        trusting.push(...outputs.rollups);
        return Promise.resolve();
      },
    });
    expect(trusting).toEqual([]);
  });
});
