/**
 * The processor against the real broker and registry: live output equals a batch computation,
 * a replay under a new group reproduces it bit for bit, two instances equal one, poison records
 * go to the dead-letter topic, late events to the late topic and into the counts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import {
  MODEL_CALL_EVENT_SCHEMA,
  type AlertEvent,
  type MetricRollup,
  type ModelCallEvent,
} from "../avro/generated.js";
import {
  AlertTracker,
  rollupEvents,
  rollupKey,
  WindowAccumulator,
  windowOf,
  type AlertRule,
} from "../metrics/index.js";
import { StreamProcessor, type ProcessorLogger } from "../processor/processor.js";
import { sampleEvent } from "./support/events.js";
import { createTopics, services, testKafka, uniqueName } from "./support/isolation.js";
import avro from "avsc";
import type { Admin, Producer } from "kafkajs";

const MINUTE = 60_000_000;
const GRACE = 10_000_000;
const ORIGIN = 1_700_000_040 * 1_000_000 - ((1_700_000_040 * 1_000_000) % MINUTE);
const SERVICES = ["alpha", "bravo", "charlie", "delta"];
const RULES: AlertRule[] = [
  {
    key: "gate",
    metric: "confidence_gate_block_rate",
    comparator: "gt",
    threshold: 0.5,
    minSamples: 3,
  },
  { key: "errors", metric: "error_rate", comparator: "gt", threshold: 0.2, minSamples: 3 },
];
const quiet: ProcessorLogger = {
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};

/** Six minutes of calls for four services, in time order; every service's last call at T_LAST. */
function makeEvents(): ModelCallEvent[] {
  const events: ModelCallEvent[] = [];
  for (let i = 0; i < 480; i++) {
    const service = SERVICES[i % SERVICES.length] ?? "alpha";
    const end = ORIGIN + Math.floor(i / 4) * 3_000_000 + (i % 4) * 1000; // 3 s apart per round
    const minute = Math.floor((end - ORIGIN) / MINUTE);
    events.push(
      sampleEvent({
        service,
        model: i % 3 === 0 ? "gpt-4o-mini" : "gpt-4o",
        start_time: end - 100_000 - (i % 7) * 10_000,
        end_time: end,
        // Alerts: bravo's gate blocks in minutes 1-2, charlie errs in minute 3.
        confidence: service === "bravo" && (minute === 1 || minute === 2) ? 0.2 : 0.9,
        status: service === "charlie" && minute === 3 ? "error" : "ok",
        error_type: service === "charlie" && minute === 3 ? "Timeout" : null,
      }),
    );
  }
  return events;
}

function rawBody(value: Record<string, unknown>): Buffer {
  return avro.Type.forSchema(MODEL_CALL_EVENT_SCHEMA as avro.Schema).toBuffer(value);
}

interface Versions<T> {
  bytes: Map<string, Set<string>>;
  values: Map<string, T>;
}

async function readAll(
  topic: string,
  count: number,
  key: (value: Buffer, rawKey: string, headers: Record<string, string>) => string,
): Promise<{ records: { key: string; value: Buffer; headers: Record<string, string> }[] }> {
  const consumer = testKafka().consumer({ groupId: uniqueName("reader") });
  const records: { key: string; value: Buffer; headers: Record<string, string> }[] = [];
  const distinct = new Set<string>();
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`${distinct.size} of ${count} distinct records on ${topic} within 90 s`));
      }, 90_000);
      let settle: NodeJS.Timeout | undefined;
      void consumer.run({
        eachMessage: ({ message }) => {
          const headers: Record<string, string> = {};
          for (const [name, value] of Object.entries(message.headers ?? {}))
            if (value !== undefined) headers[name] = value.toString();
          const value = message.value ?? Buffer.alloc(0);
          const rawKey = message.key?.toString() ?? "";
          records.push({ key: rawKey, value, headers });
          distinct.add(key(value, rawKey, headers));
          if (distinct.size >= count) {
            clearTimeout(timer);
            if (settle) clearTimeout(settle);
            settle = setTimeout(resolve, 1500);
          }
          return Promise.resolve();
        },
      });
    });
  } finally {
    await consumer.disconnect();
  }
  return { records };
}

describe("stream processor with the real stack", () => {
  const prefix = `${uniqueName("proc")}.`;
  const events = makeEvents();
  const T_LAST = Math.max(...events.map((event) => event.end_time));
  const lateEvents = [
    sampleEvent({
      service: "alpha",
      model: "gpt-4o",
      end_time: ORIGIN + 30_000_000,
      start_time: ORIGIN + 29_000_000,
    }),
    sampleEvent({
      service: "delta",
      model: "gpt-4o-mini",
      end_time: ORIGIN + MINUTE + 5_000_000,
      start_time: ORIGIN + MINUTE + 4_000_000,
    }),
  ];
  let admin: Admin;
  let producer: Producer;
  let poison: Buffer[] = [];
  const runs: StreamProcessor[] = [];
  let rollupCodec: AvroCodec<MetricRollup>;
  let alertCodec: AvroCodec<AlertEvent>;

  const processor = (groupId: string, mode: "live" | "replay" = "live", metricsPort?: number) => {
    const instance = new StreamProcessor({
      ...(metricsPort === undefined ? {} : { metricsPort }),
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      groupId,
      mode,
      partitions: 3,
      windowSizeMs: 60_000,
      graceMs: 10_000,
      idleTimeoutMs: 500,
      checkpointIntervalMs: 200,
      metrics: { rules: RULES },
      logger: quiet,
    });
    runs.push(instance);
    return instance;
  };

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [{ topic: `${prefix}model-calls`, numPartitions: 3 }]);
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(`${prefix}model-calls`),
    });
    rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(`${prefix}metric-rollups`),
    });
    alertCodec = await AvroCodec.register(ALERT_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(`${prefix}alerts`),
    });
    const header = Buffer.from([0, 0, 0, 0, 0]);
    header.writeInt32BE(codec.schemaId, 1);
    poison = [
      Buffer.from("not avro at all"),
      Buffer.concat([header, Buffer.from("ffffffffff", "hex")]),
      Buffer.concat([header, rawBody({ ...sampleEvent({ service: "alpha" }), confidence: 1.7 })]),
    ];
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const messages = events.map((event) => ({ key: event.service, value: codec.encode(event) }));
    // Poison in the middle of alpha's partition.
    messages.splice(200, 0, ...poison.map((value) => ({ key: "alpha", value })));
    for (let i = 0; i < messages.length; i += 100)
      await producer.send({
        topic: `${prefix}model-calls`,
        acks: -1,
        messages: messages.slice(i, i + 100),
      });
    await producer.send({
      topic: `${prefix}model-calls`,
      acks: -1,
      messages: lateEvents.map((event) => ({ key: event.service, value: codec.encode(event) })),
    });
  });

  afterAll(async () => {
    await Promise.allSettled(runs.map((run) => run.stop()));
    await producer.disconnect();
    await admin.disconnect();
  });

  /** The oracle: the core's batch computation of on-time events, plus late counts where the watermark was. */
  function expected(): { rollups: Map<string, MetricRollup>; alerts: AlertEvent[] } {
    const byKey = new Map(
      rollupEvents(events, MINUTE).map((rollup) => [rollupKey(rollup), rollup]),
    );
    const lateStart = windowOf(T_LAST - GRACE, MINUTE).start;
    for (const late of lateEvents)
      for (const model of [null, late.model]) {
        const key = rollupKey({
          service: late.service,
          model,
          window_start: lateStart,
          window_end: lateStart + MINUTE,
        });
        const existing = byKey.get(key);
        const accumulator = existing
          ? WindowAccumulator.fromRollup(existing)
          : new WindowAccumulator();
        accumulator.addLate(1);
        byKey.set(
          key,
          accumulator.toRollup(late.service, model, { start: lateStart, end: lateStart + MINUTE }),
        );
      }
    const alerts: AlertEvent[] = [];
    for (const service of SERVICES) {
      const tracker = new AlertTracker(RULES);
      for (const total of [...byKey.values()]
        .filter((r) => r.service === service && r.model === null)
        .sort((a, b) => a.window_start - b.window_start))
        alerts.push(...tracker.observe(total));
    }
    return { rollups: byKey, alerts };
  }

  async function outputs(): Promise<{
    rollups: Versions<MetricRollup>;
    alerts: Versions<AlertEvent>;
  }> {
    const want = expected();
    const rollupRecords = await readAll(
      `${prefix}metric-rollups`,
      want.rollups.size,
      (_value, key) => key,
    );
    const alertRecords = await readAll(`${prefix}alerts`, want.alerts.length, (value) =>
      value.toString("hex"),
    );
    const collect = async <T>(
      records: { key: string; value: Buffer }[],
      codec: AvroCodec<T>,
      keyOf: (value: T) => string,
    ): Promise<Versions<T>> => {
      const versions: Versions<T> = { bytes: new Map(), values: new Map() };
      for (const record of records) {
        const decoded = await codec.decode(record.value);
        if (!decoded.ok) throw new Error(decoded.error.message);
        const key = keyOf(decoded.value);
        versions.values.set(key, decoded.value);
        const seen = versions.bytes.get(key) ?? new Set<string>();
        seen.add(record.value.toString("hex"));
        versions.bytes.set(key, seen);
      }
      return versions;
    };
    return {
      rollups: await collect(rollupRecords.records, rollupCodec, rollupKey),
      alerts: await collect(
        alertRecords.records,
        alertCodec,
        (alert) => `${alert.alert_id}|${alert.state}`,
      ),
    };
  }

  it("live: emits exactly the batch computation's rollups and alerts, each key with one set of bytes", async () => {
    const live = processor(uniqueName("live"), "live", 0);
    await live.start();
    const want = expected();
    const got = await outputs();
    expect(got.rollups.values).toEqual(want.rollups);
    expect(
      [...got.alerts.values.values()].sort((a, b) =>
        a.alert_id + a.state < b.alert_id + b.state ? -1 : 1,
      ),
    ).toEqual(
      [...want.alerts].sort((a, b) => (a.alert_id + a.state < b.alert_id + b.state ? -1 : 1)),
    );
    expect(
      want.alerts.map((alert) => `${alert.service}:${alert.rule}:${alert.state}`).sort(),
    ).toEqual([
      "bravo:gate:firing",
      "bravo:gate:resolved",
      "charlie:errors:firing",
      "charlie:errors:resolved",
    ]);
    for (const versions of [...got.rollups.bytes.values(), ...got.alerts.bytes.values()])
      expect(versions.size).toBe(1);
    // The Prometheus endpoint counts what happened.
    const metrics = await (await fetch(live.metricsUrl ?? "")).text();
    expect(metrics).toContain(`mcpo_processor_events_total ${events.length + lateEvents.length}`);
    expect(metrics).toMatch(/mcpo_processor_dead_lettered_total\{code="INVALID_FIELD"\} 1/);
    expect(metrics).toContain("mcpo_processor_late_events_total 2");
    expect(metrics).toMatch(/mcpo_processor_consumer_lag\{partition="\d"\} 0/);
    await live.stop();
  });

  it("dead-letters poison records with the reason and their original bytes, and goes on", async () => {
    const { records } = await readAll(
      `${prefix}dead-letter`,
      3,
      (_value, _key, headers) => headers["mcpo-source-offset"] ?? "",
    );
    const bySource = new Map(
      records.map((record) => [record.headers["mcpo-source-offset"], record]),
    );
    expect(bySource.size).toBe(3);
    const dead = [...bySource.values()];
    expect(new Set(dead.map((record) => record.value.toString("hex")))).toEqual(
      new Set(poison.map((value) => value.toString("hex"))),
    );
    expect(new Set(dead.map((record) => record.headers["mcpo-dlq-code"]))).toEqual(
      new Set(["BAD_MAGIC_BYTE", "TRUNCATED", "INVALID_FIELD"]),
    );
    const invalid = dead.find((record) => record.headers["mcpo-dlq-code"] === "INVALID_FIELD");
    expect(invalid?.headers["mcpo-dlq-reason"]).toContain("confidence above maximum 1");
  });

  it("forwards late events with their original bytes to the late topic", async () => {
    const { records } = await readAll(
      `${prefix}late-events`,
      2,
      (_value, _key, headers) => headers["mcpo-source-offset"] ?? "",
    );
    const offsets = new Set(records.map((record) => record.headers["mcpo-source-offset"]));
    expect(offsets.size).toBe(2);
  });

  it("replays from the beginning under a new group and reproduces every rollup and alert bit for bit", async () => {
    const replay = processor(uniqueName("replay"), "replay");
    const stats = await replay.runToEnd();
    expect(stats.deadLettered).toBe(3);
    expect(stats.late).toBe(2);
    const got = await outputs();
    expect(got.rollups.values).toEqual(expected().rollups);
    for (const versions of [...got.rollups.bytes.values(), ...got.alerts.bytes.values()])
      expect(versions.size).toBe(1);
  });

  it("two instances in one group share the partitions and produce what one does", async () => {
    const group = uniqueName("pair");
    const [first, second] = [processor(group), processor(group)];
    await Promise.all([first.start(), second.start()]);
    // Both members hold partitions once the group has rebalanced.
    const deadline = Date.now() + 60_000;
    const split = () =>
      first.stats().assignedPartitions + second.stats().assignedPartitions === 3 &&
      first.stats().assignedPartitions > 0 &&
      second.stats().assignedPartitions > 0;
    while (!split() && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 200));
    expect(split()).toBe(true);
    const total = events.length + poison.length + lateEvents.length;
    while (first.stats().records + second.stats().records < total && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 200));
    expect(first.stats().records + second.stats().records).toBeGreaterThanOrEqual(total);
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const got = await outputs();
    expect(got.rollups.values).toEqual(expected().rollups);
    for (const versions of [...got.rollups.bytes.values(), ...got.alerts.bytes.values()])
      expect(versions.size).toBe(1);
    await Promise.all([first.stop(), second.stop()]);
  });
});
