/**
 * Revisions for late data, end to end: a replica that delivers calls after their window closed
 * (within the allowed lateness) makes the processor emit the window's rollups again, complete,
 * with a higher revision; the sink keeps the highest, so the stored numbers converge to the
 * computation over every event. Alerts are judged on a window's first emission only. Past the
 * allowed lateness an event is late, as before. A replay of the log emits the same revisions.
 */
import { randomBytes, randomUUID } from "node:crypto";

import type { Admin, Producer } from "kafkajs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { rollupKey } from "../metrics/index.js";
import { StreamProcessor } from "../processor/processor.js";
import { replayLog } from "../processor/replay.js";
import { Sink } from "../sink/sink.js";
import { sampleEvent } from "./support/events.js";
import {
  createTopics,
  quietLogger,
  services,
  testKafka,
  uniqueName,
  useFreshDatabase,
} from "./support/isolation.js";
import { expectMatchesOracle, oracleRollups } from "./support/oracle.js";
import { storedRollups } from "./support/stored-rollups.js";
import { readAllRollups } from "./support/topic-records.js";
import { waitFor } from "./support/wait.js";

const SECOND = 1_000_000;
const MINUTE = 60 * SECOND;
/** A minute boundary. */
const ORIGIN = 1_764_000_000 * SECOND;
const RULES = [
  // Minute 0 breaches only with the calls that revise it (3 errors in 63; none in its 60 on time).
  { key: "errors", metric: "error_rate", comparator: "gt", threshold: 0.04, minSamples: 2 },
] as const;

function call(atSecond: number, status: "ok" | "error" = "ok"): ModelCallEvent {
  const end = ORIGIN + Math.round(atSecond * SECOND);
  return sampleEvent({
    event_id: randomUUID(),
    span_id: randomBytes(8).toString("hex"),
    service: "billing",
    model: "gpt-4o",
    start_time: end - 2000,
    end_time: end,
    status,
    error_type: status === "error" ? "timeout" : null,
  });
}

describe("revisions for late data", () => {
  const database = useFreshDatabase("mcpo_revisions");
  const prefix = `${uniqueName("revisions")}.`;
  const topic = `${prefix}model-calls`;
  let admin: Admin;
  let producer: Producer;
  let codec: AvroCodec<ModelCallEvent>;
  let processor: StreamProcessor;
  let sink: Sink;
  let pool: pg.Pool;

  // On time: one call a second for 150 s (minutes 0 and 1 close; the watermark reaches 139 s).
  const onTime = Array.from({ length: 150 }, (_, i) => call(i));
  // Then, in a row, calls of the closed minutes 0 and 1 (5 errors): one revision of each.
  const revising = [
    call(10.5, "error"),
    call(20.5, "error"),
    call(30.5, "error"),
    call(70.5, "error"),
    call(80.5, "error"),
  ];
  // On time again up to 700 s (the watermark reaches 690 s: minute 0 is past end + 10 min).
  const later = Array.from({ length: 550 }, (_, i) => call(150 + i));
  // One call of minute 0 now: past the allowed lateness, late.
  const tooLate = call(40.5, "error");

  const produce = async (events: readonly ModelCallEvent[]): Promise<void> => {
    await producer.send({
      topic,
      acks: -1,
      messages: events.map((event) => ({ key: event.service, value: codec.encode(event) })),
    });
  };

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [{ topic, numPartitions: 1 }]);
    codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    processor = new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      partitions: 1,
      windowSizeMs: 60_000,
      graceMs: 10_000,
      allowedLatenessMs: 600_000,
      idleTimeoutMs: 600_000,
      checkpointIntervalMs: 200,
      metrics: { rules: [...RULES] },
      logger: quietLogger,
    });
    sink = new Sink({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      databaseUrl: database.current.url,
      topicPrefix: prefix,
      partitions: 1,
      logger: quietLogger,
    });
    pool = new pg.Pool({ connectionString: database.current.url });
  });

  afterAll(async () => {
    await Promise.allSettled([processor.stop(), sink.stop()]);
    await pool.end();
    await producer.disconnect();
    await admin.disconnect();
  });

  it("stores the complete counts of revised windows, alerts on first emissions only, and counts calls past the allowed lateness as late; a replay emits the same revisions", async () => {
    await processor.start();
    await sink.start();
    await produce(onTime);
    await waitFor(
      "the processor to read the on-time calls",
      () => processor.stats().events,
      (n) => n === onTime.length,
    );
    await produce(revising);
    await produce(later);
    await produce([tooLate]);
    const total = onTime.length + revising.length + later.length + 1;
    await waitFor(
      "the processor to read every call",
      () => processor.stats().events,
      (n) => n === total,
    );
    // (Counted once its batch's outputs are written.)
    await waitFor(
      "the late call to be written",
      () => processor.stats().late,
      (n) => n >= 1,
    );
    expect(processor.stats().late).toBe(1);
    expect(processor.stats().alerts).toBe(0); // minute 0 breaches only in its revision

    // The rollups topic: minute 0 and 1 emitted at revision 0, then 1, with every call.
    const versions = new Map<string, MetricRollup[]>();
    for (const rollup of await readAllRollups(
      admin,
      services().kafkaBrokers,
      services().schemaRegistryUrl,
      prefix,
    ))
      versions.set(rollupKey(rollup), [...(versions.get(rollupKey(rollup)) ?? []), rollup]);
    const minute = (start: number) =>
      (
        versions.get(
          rollupKey({
            service: "billing",
            model: null,
            window_start: ORIGIN + start * MINUTE,
            window_end: ORIGIN + (start + 1) * MINUTE,
          }),
        ) ?? []
      ).map((r) => [r.revision, r.counts.calls, r.counts.errors]);
    expect(minute(0)).toEqual([
      [0, 60, 0],
      [1, 63, 3],
    ]);
    expect(minute(1)).toEqual([
      [0, 60, 0],
      [1, 62, 2],
    ]);
    expect(minute(2)).toEqual([[0, 60, 0]]);

    // PostgreSQL converges to the computation over every event but the late one.
    const everything = [...onTime, ...revising, ...later];
    const closedThrough = ORIGIN + 11 * MINUTE; // the watermark (690 s) closed minutes 0 to 10
    const oracle = oracleRollups(
      everything.filter((e) => e.end_time < closedThrough),
      MINUTE,
      { lateByKey: new Map() },
    );
    await waitFor(
      "the sink to store the revisions",
      async () =>
        (
          await pool.query<{ calls: string }>(
            "select calls::text from metric_rollups where scope = 'service' and window_start = to_timestamp($1)",
            [ORIGIN / SECOND],
          )
        ).rows[0]?.calls,
      (calls) => calls === "63",
    );
    const stored = (await storedRollups(pool)).filter((row) => row.windowStart < closedThrough);
    expectMatchesOracle(stored, oracle, "stored rollups");
    const { rows: revisions } = await pool.query<{ revision: number }>(
      "select revision from metric_rollups where window_start = to_timestamp($1) order by model",
      [ORIGIN / SECOND],
    );
    expect(revisions.map((row) => row.revision)).toEqual([1, 1]);
    const { rows: alerts } = await pool.query("select alert_id from alerts");
    expect(alerts).toEqual([]);

    // A replay of the log emits the same revisions, in the same order.
    const replayed: MetricRollup[] = [];
    await replayLog({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      windowSizeMs: 60_000,
      graceMs: 10_000,
      allowedLatenessMs: 600_000,
      metrics: { rules: [...RULES] },
      onOutputs: (outputs) => {
        replayed.push(...outputs.rollups);
        return Promise.resolve();
      },
    });
    const live = [...versions.values()].flat();
    const byKeyAndRevision = (list: readonly MetricRollup[]) =>
      new Map(list.map((r) => [`${rollupKey(r)}#${r.revision}`, r]));
    expect(byKeyAndRevision(replayed)).toEqual(byKeyAndRevision(live));
  });
});
