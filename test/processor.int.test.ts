/**
 * The processor against the real broker and registry: live output equals the brute-force oracle
 * (test/support/oracle.ts, apart from metrics/), a replay under a new group reproduces it bit for
 * bit, two instances equal one, poison records go to the dead-letter topic, late events to the
 * late topic and into the counts. Every run is judged only on the records it added to the output
 * topics (their end offsets are taken before it starts), with exact record counts.
 *
 * The events are drawn from a logged seed: replay a failure with MCPO_TEST_SEED=<seed>.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import avro from "avsc";
import type { Admin, Producer } from "kafkajs";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import {
  MODEL_CALL_EVENT_SCHEMA,
  type AlertEvent,
  type MetricRollup,
  type ModelCallEvent,
} from "../avro/generated.js";
import { partitionForKey, type ConsumedRecord } from "../kafka/index.js";
import { StreamProcessor } from "../processor/processor.js";
import { sampleEvent } from "./support/events.js";
import { createTopics, services, testKafka, quietLogger, uniqueName } from "./support/isolation.js";
import {
  expectMatchesOracle,
  oracleAlerts,
  oracleKey,
  oracleRollups,
  type OracleRule,
  type OracleTransition,
} from "./support/oracle.js";
import { seededRandom } from "./support/seed.js";
import {
  readBetween,
  recordsBetween,
  topicEnds,
  waitForRecords,
  type EndOffsets,
} from "./support/topic-records.js";
import { pick, variedEvent } from "./support/varied-events.js";
import { waitFor } from "./support/wait.js";

const MINUTE = 60_000_000;
const GRACE = 10_000_000;
const ORIGIN = 1_700_000_040 * 1_000_000 - ((1_700_000_040 * 1_000_000) % MINUTE);
const SERVICES = ["alpha", "bravo", "charlie", "delta"];
/**
 * Services are sent to their home partitions (where the default partitioner puts their name as a
 * key), so the test knows every source offset and watermark.
 */
const PARTITION_OF: Readonly<Record<string, number>> = Object.fromEntries(
  SERVICES.map((service) => [service, partitionForKey(service, 3)]),
);
const MODELS = ["gpt-4o", "gpt-4o", "gpt-4o-mini", null];
const RULES: OracleRule[] = [
  {
    key: "gate",
    metric: "confidence_gate_block_rate",
    comparator: "gt",
    threshold: 0.5,
    minSamples: 3,
  },
  { key: "errors", metric: "error_rate", comparator: "gt", threshold: 0.2, minSamples: 3 },
];

const random = seededRandom("processor.int events");

/**
 * Six minutes of varied calls for four services, in time order, 3 s apart per round. Alerts:
 * bravo's gate blocks in minutes 1-2, charlie errs in minute 3; elsewhere at most one error per
 * service and minute and no gate blocks, so no other rule can fire.
 */
function makeEvents(): ModelCallEvent[] {
  const events: ModelCallEvent[] = [];
  const randomErrors = new Set<string>();
  for (let i = 0; i < 480; i++) {
    const service = SERVICES[i % SERVICES.length] ?? "alpha";
    const end = ORIGIN + Math.floor(i / 4) * 3_000_000 + (i % 4) * 1000;
    const minute = Math.floor((end - ORIGIN) / MINUTE);
    const blocked = service === "bravo" && (minute === 1 || minute === 2);
    let failed = service === "charlie" && minute === 3;
    if (!failed && random.next() < 0.05 && !randomErrors.has(`${service}/${minute}`)) {
      randomErrors.add(`${service}/${minute}`);
      failed = true;
    }
    events.push(
      variedEvent(random, service, end, MODELS, {
        confidence: blocked
          ? 0.2
          : random.next() < 0.15
            ? null
            : pick(random, [0.55, 0.6, 0.69, 0.7, 0.71, 0.8, 0.95, 1]),
        // Outside bravo's minutes the gate never blocks (every confidence given is ≥ 0.55), so
        // whatever the seed, no other gate rule can fire.
        confidence_gate_threshold: blocked ? 0.7 : pick(random, [null, null, null, 0.5, 0.55]),
        status: failed ? "error" : "ok",
        error_type: failed ? "Timeout" : null,
      }),
    );
  }
  return events;
}

function rawBody(value: Record<string, unknown>): Buffer {
  return avro.Type.forSchema(MODEL_CALL_EVENT_SCHEMA as avro.Schema).toBuffer(value);
}

/** A decoded output record with its bytes, Kafka key and headers. */
interface Decoded<T> {
  readonly value: T;
  readonly bytes: Buffer;
  readonly key: string;
  readonly headers: Readonly<Record<string, string>>;
}

async function decodeAll<T>(records: readonly ConsumedRecord[], codec: AvroCodec<T>) {
  const out: Decoded<T>[] = [];
  for (const record of records) {
    const bytes = record.value ?? Buffer.alloc(0);
    const decoded = await codec.decode(bytes);
    if (!decoded.ok) throw new Error(`${record.topic}@${record.offset}: ${decoded.error.message}`);
    out.push({
      value: decoded.value,
      bytes,
      key: record.key?.toString() ?? "",
      headers: record.headers,
    });
  }
  return out;
}

/** The oracle's view of a rollup from the topic: every count and every rate. */
const comparable = (rollup: MetricRollup) => ({
  service: rollup.service,
  model: rollup.model,
  windowStart: rollup.window_start,
  counts: rollup.counts,
  rates: rollup.rates,
});

const transition = (alert: AlertEvent | OracleTransition): string =>
  "alert_id" in alert
    ? `${alert.service}|${alert.rule}|${alert.state}|${alert.window_start}|${alert.fired_window_start}|${alert.observed_value}|${alert.sample_count}`
    : `${alert.service}|${alert.rule}|${alert.state}|${alert.windowStart}|${alert.firedWindowStart}|${alert.observed}|${alert.samples}`;

describe("stream processor with the real stack", () => {
  const prefix = `${uniqueName("proc")}.`;
  const topic = (name: string) => `${prefix}${name}`;
  const OUTPUTS = ["metric-rollups", "alerts", "late-events", "dead-letter"] as const;
  type Output = (typeof OUTPUTS)[number];
  const events = makeEvents();
  const lateEvents = [
    variedEvent(random, "alpha", ORIGIN + 30_000_000, MODELS, {
      kind: "model_call",
      model: "gpt-4o",
    }),
    variedEvent(random, "delta", ORIGIN + MINUTE + 5_000_000, MODELS, {
      kind: "sampling",
      model: "gpt-4o-mini",
    }),
    // A tool span behind the watermark counts in no metric: neither late nor forwarded.
    variedEvent(random, "charlie", ORIGIN + 10_000_000, MODELS, { kind: "tool_call", model: null }),
  ];
  const lateCounted = lateEvents.slice(0, 2);
  /** Each partition's watermark once every on-time event was read. */
  const watermarkOf = new Map<number, number>();
  for (const event of events) {
    const partition = PARTITION_OF[event.service] ?? 0;
    watermarkOf.set(partition, Math.max(watermarkOf.get(partition) ?? 0, event.end_time - GRACE));
  }
  const lateByKey = new Map<string, number>();
  for (const late of lateCounted) {
    const watermark = watermarkOf.get(PARTITION_OF[late.service] ?? 0) ?? 0;
    const start = watermark - (watermark % MINUTE);
    for (const model of [null, late.model]) {
      const key = oracleKey(late.service, model, start);
      lateByKey.set(key, (lateByKey.get(key) ?? 0) + 1);
    }
  }
  const oracle = oracleRollups(events, MINUTE, { lateByKey });
  const oracleTransitions = oracleAlerts(oracle.values(), RULES);
  const expectedCounts: Record<Output, number> = {
    "metric-rollups": oracle.size,
    alerts: oracleTransitions.length,
    "late-events": 2,
    "dead-letter": 3,
  };

  let admin: Admin;
  let producer: Producer;
  let eventCodec: AvroCodec<ModelCallEvent>;
  let rollupCodec: AvroCodec<MetricRollup>;
  let alertCodec: AvroCodec<AlertEvent>;
  let poison: Buffer[] = [];
  /** What was produced, in order, with the partition and offset it went to. */
  let produced: { key: string; value: Buffer; partition: number; offset: number }[] = [];
  const runs: StreamProcessor[] = [];
  /** The live run's output, for the replay's bit-for-bit comparison. */
  let live: Record<Output, ConsumedRecord[]> | undefined;

  const processor = (
    groupId: string,
    options: { metricsPort?: number; topicPrefix?: string } = {},
  ) => {
    const instance = new StreamProcessor({
      ...(options.metricsPort === undefined ? {} : { metricsPort: options.metricsPort }),
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: options.topicPrefix ?? prefix,
      groupId,
      partitions: 3,
      windowSizeMs: 60_000,
      graceMs: 10_000,
      // The late path: every event behind the watermark is late (revisions: revisions.int).
      allowedLatenessMs: 0,
      idleTimeoutMs: 500,
      checkpointIntervalMs: 200,
      metrics: { rules: RULES },
      logger: quietLogger,
    });
    runs.push(instance);
    return instance;
  };

  /** Undecodable and invalid records, headed with `schemaId` where they have a header. */
  function poisonFor(schemaId: number): Buffer[] {
    const header = Buffer.from([0, 0, 0, 0, 0]);
    header.writeInt32BE(schemaId, 1);
    return [
      Buffer.from("not avro at all"),
      Buffer.concat([header, Buffer.from("ffffffffff", "hex")]),
      Buffer.concat([
        header,
        rawBody({
          ...sampleEvent({ service: "alpha", event_id: "00000000-0000-4000-8000-000000000001" }),
          confidence: 1.7,
        }),
      ]),
    ];
  }

  /** The messages to produce: events in order, poison in the middle of alpha's partition, late events last. */
  function messages(codec: AvroCodec<ModelCallEvent>) {
    const poison = poisonFor(codec.schemaId);
    const list = events.map((event) => ({
      key: event.service,
      value: codec.encode(event),
      partition: PARTITION_OF[event.service] ?? 0,
    }));
    list.splice(
      200,
      0,
      ...poison.map((value) => ({ key: "alpha", value, partition: PARTITION_OF.alpha ?? 0 })),
    );
    list.push(
      ...lateEvents.map((event) => ({
        key: event.service,
        value: codec.encode(event),
        partition: PARTITION_OF[event.service] ?? 0,
      })),
    );
    return list;
  }

  /** Every output topic's end offsets now. */
  async function ends(outputPrefix = prefix): Promise<Record<Output, Map<number, bigint>>> {
    const entries = await Promise.all(
      OUTPUTS.map(
        async (name) => [name, await topicEnds(admin, `${outputPrefix}${name}`)] as const,
      ),
    );
    return Object.fromEntries(entries) as Record<Output, Map<number, bigint>>;
  }

  /**
   * Waits until every output topic holds its expected number of records after `since`, calls
   * `stop` (which ends every writer), then asserts the counts are exact and returns the records.
   */
  async function collectRun(
    since: Record<Output, EndOffsets>,
    stop: () => Promise<void>,
    outputPrefix = prefix,
  ): Promise<Record<Output, ConsumedRecord[]>> {
    for (const name of OUTPUTS)
      await waitForRecords(admin, `${outputPrefix}${name}`, since[name], expectedCounts[name]);
    await stop();
    const until = await ends(outputPrefix);
    const added = Object.fromEntries(
      OUTPUTS.map((name) => [name, recordsBetween(since[name], until[name])]),
    );
    expect(added, "records this run added to each output topic").toEqual(expectedCounts);
    const entries = await Promise.all(
      OUTPUTS.map(
        async (name) =>
          [
            name,
            await readBetween(
              services().kafkaBrokers,
              `${outputPrefix}${name}`,
              since[name],
              until[name],
            ),
          ] as const,
      ),
    );
    return Object.fromEntries(entries) as Record<Output, ConsumedRecord[]>;
  }

  /** The rollups and alerts of a run equal the oracle's, each once, keyed as the README says. */
  async function expectOracleOutput(records: Record<Output, ConsumedRecord[]>, where: string) {
    const rollups = await decodeAll(records["metric-rollups"], rollupCodec);
    for (const rollup of rollups)
      expect(rollup.key, `${where}: a rollup's Kafka key`).toBe(
        JSON.stringify([
          rollup.value.service,
          rollup.value.model,
          rollup.value.window_start,
          MINUTE,
        ]),
      );
    expectMatchesOracle(
      rollups.map((rollup) => comparable(rollup.value)),
      oracle,
      `${where} rollups`,
    );
    const alerts = await decodeAll(records.alerts, alertCodec);
    expect(alerts.map((alert) => transition(alert.value)).sort(), `${where} alerts`).toEqual(
      oracleTransitions.map(transition).sort(),
    );
    for (const alert of alerts) expect(alert.key).toBe(alert.value.service);
    // The firing and the resolving transition of an incident share its id.
    const ids = new Map<string, Set<string>>();
    for (const { value } of alerts)
      ids.set(
        `${value.service}|${value.rule}|${value.fired_window_start}`,
        (ids.get(`${value.service}|${value.rule}|${value.fired_window_start}`) ?? new Set()).add(
          value.alert_id,
        ),
      );
    for (const [incident, set] of ids) expect(set.size, `${where} ids of ${incident}`).toBe(1);
  }

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [{ topic: topic("model-calls"), numPartitions: 3 }]);
    eventCodec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic("model-calls")),
    });
    rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic("metric-rollups")),
    });
    alertCodec = await AvroCodec.register(ALERT_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic("alerts")),
    });
    poison = poisonFor(eventCodec.schemaId);
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const list = messages(eventCodec);
    const next = new Map<number, number>();
    produced = list.map((message) => {
      const offset = next.get(message.partition) ?? 0;
      next.set(message.partition, offset + 1);
      return { ...message, offset };
    });
    for (let i = 0; i < list.length; i += 100)
      await producer.send({
        topic: topic("model-calls"),
        acks: -1,
        messages: list.slice(i, i + 100),
      });
    // The offsets the test computed are the log's.
    const logEnds = await topicEnds(admin, topic("model-calls"));
    expect([...logEnds].sort()).toEqual([...next].map(([p, n]) => [p, BigInt(n)]).sort());
  });

  afterAll(async () => {
    await Promise.allSettled(runs.map((run) => run.stop()));
    await producer.disconnect();
    await admin.disconnect();
  });

  it("the test data exercises every count and fires exactly bravo's gate and charlie's errors", () => {
    const totals = [...oracle.values()];
    const sum = (name: keyof (typeof totals)[number]["counts"]) =>
      totals.reduce(
        (total, window) => total + (window.model === null ? Number(window.counts[name]) : 0),
        0,
      );
    for (const name of Object.keys(
      totals[0]?.counts ?? {},
    ) as (keyof (typeof totals)[number]["counts"])[])
      expect(sum(name), `sum of ${name} over the service totals`).toBeGreaterThan(0);
    expect(Math.max(...events.map((event) => event.retries))).toBeGreaterThan(1);
    expect(new Set(events.map((event) => event.kind)).size).toBe(6);
    expect(oracleTransitions.map((t) => `${t.service}:${t.rule}:${t.state}`).sort()).toEqual([
      "bravo:gate:firing",
      "bravo:gate:resolved",
      "charlie:errors:firing",
      "charlie:errors:resolved",
    ]);
  });

  it("live: emits exactly the oracle's rollups and alerts, each once, and counts them on /metrics", async () => {
    const empty: Record<Output, EndOffsets> = {
      "metric-rollups": new Map(),
      alerts: new Map(),
      "late-events": new Map(),
      "dead-letter": new Map(),
    };
    const run = processor(uniqueName("live"), { metricsPort: 0 });
    expect(run.state).toBe("new");
    await run.start();
    expect(run.state).toBe("running");
    await expect(run.start(), "a second start").rejects.toThrow(
      "processor: cannot start while running",
    );
    live = await collectRun(empty, async () => {
      // The Prometheus endpoint counts what happened (lag 0 once the idle tick is read too).
      const metrics = await waitFor(
        "consumer lag 0 on every partition",
        async () => (await fetch(run.metricsUrl ?? "")).text(),
        (text) =>
          [0, 1, 2].every((p) => text.includes(`mcpo_processor_consumer_lag{partition="${p}"} 0`)),
      );
      expect(metrics).toContain(`mcpo_processor_events_total ${events.length + lateEvents.length}`);
      expect(metrics).toMatch(/mcpo_processor_dead_lettered_total\{code="INVALID_FIELD"\} 1\n/);
      expect(metrics).toContain("mcpo_processor_late_events_total 2\n");
      expect(metrics).toContain(`mcpo_processor_rollups_total ${oracle.size}\n`);
      // stats() and /metrics count from the same tallies.
      expect(run.stats()).toMatchObject({
        events: events.length + lateEvents.length,
        late: 2,
        deadLettered: 3,
        rollups: oracle.size,
      });
      await run.stop();
      expect(run.state).toBe("stopped");
      await run.stop(); // once: a second stop resolves at once
    });
    await expectOracleOutput(live, "live");
  });

  it("dead-letters poison records with their original bytes, key, source position and reason, and goes on", () => {
    const dead = live?.["dead-letter"] ?? [];
    const poisonSent = produced.filter((message) => poison.some((p) => p.equals(message.value)));
    expect(dead.map((record) => record.headers["mcpo-source-offset"])).toEqual(
      poisonSent.map((message) => String(message.offset)),
    );
    dead.forEach((record, index) => {
      expect(
        record.value?.equals(poison[index] ?? Buffer.alloc(0)),
        `dead letter ${index}: bytes`,
      ).toBe(true);
      expect(record.key?.toString()).toBe("alpha");
      expect(record.headers["mcpo-source-topic"]).toBe(topic("model-calls"));
      expect(record.headers["mcpo-source-partition"]).toBe(String(PARTITION_OF.alpha));
    });
    expect(dead.map((record) => record.headers["mcpo-dlq-code"])).toEqual([
      "BAD_MAGIC_BYTE",
      "TRUNCATED",
      "INVALID_FIELD",
    ]);
    expect(dead.map((record) => record.headers["mcpo-dlq-schema-id"])).toEqual([
      undefined,
      String(eventCodec.schemaId),
      String(eventCodec.schemaId),
    ]);
    expect(dead[2]?.headers["mcpo-dlq-reason"]).toContain("confidence above maximum 1");
  });

  it("forwards late model calls to the late topic with their original bytes, key, source position and watermark", () => {
    // Keyed by service, they may sit on different partitions of the late topic: order them as
    // they were produced.
    const order = (record: ConsumedRecord) =>
      produced.findIndex((message) => record.value?.equals(message.value));
    const late = [...(live?.["late-events"] ?? [])].sort((a, b) => order(a) - order(b));
    // The late events were produced last, in this order.
    const sent = lateCounted.map((event, index) => ({
      event,
      message: produced[produced.length - lateEvents.length + index],
    }));
    expect(late.length).toBe(2);
    late.forEach((record, index) => {
      const { event, message } = sent[index] ?? {};
      if (!event || !message) throw new Error(`late event ${index} was not produced`);
      expect(record.value?.equals(message.value), `late ${index}: the produced bytes`).toBe(true);
      expect(record.key?.toString()).toBe(event.service);
      expect(record.headers).toEqual({
        "mcpo-source-topic": topic("model-calls"),
        "mcpo-source-partition": String(message.partition),
        "mcpo-source-offset": String(message.offset),
        "mcpo-late-watermark-micros": String(watermarkOf.get(message.partition)),
      });
    });
  });

  it("a new group reads the log from the beginning: exactly the oracle's records again, bit for bit the live run's", async () => {
    const since = await ends();
    const again = processor(uniqueName("again"));
    await again.start();
    const records = await collectRun(since, () => again.stop());
    const stats = again.stats();
    expect(stats.deadLettered).toBe(3);
    expect(stats.late).toBe(2);
    expect(stats.events).toBe(events.length + lateEvents.length);
    await expectOracleOutput(records, "a new group");
    const hex = (list: readonly ConsumedRecord[] | undefined) =>
      (list ?? [])
        .map((record) => `${record.key?.toString()}=${record.value?.toString("hex")}`)
        .sort();
    for (const name of OUTPUTS)
      if (name === "metric-rollups" || name === "alerts")
        expect(hex(records[name]), `${name}: the live run's bytes`).toEqual(hex(live?.[name]));
    expect(hex(records["late-events"])).toEqual(hex(live?.["late-events"]));
  });

  it("two instances in one group split the partitions and emit exactly the oracle's records between them", async () => {
    const pairPrefix = `${uniqueName("pair")}.`;
    await createTopics(admin, [{ topic: `${pairPrefix}model-calls`, numPartitions: 3 }]);
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(`${pairPrefix}model-calls`),
    });
    const group = uniqueName("pair");
    const [first, second] = [
      processor(group, { topicPrefix: pairPrefix }),
      processor(group, { topicPrefix: pairPrefix }),
    ];
    await Promise.all([first.start(), second.start()]);
    // Both members hold partitions before anything is produced, so no rebalance moves a
    // partition mid-stream and every record is read once.
    await waitFor(
      "both members holding partitions, 3 in all",
      () => [first.stats().assignedPartitions, second.stats().assignedPartitions],
      ([a = 0, b = 0]) => a > 0 && b > 0 && a + b === 3,
    );
    const since = await ends(pairPrefix);
    const pairMessages = messages(codec);
    // One request: the processors' idle ticks can only land after every event.
    await producer.send({ topic: `${pairPrefix}model-calls`, acks: -1, messages: pairMessages });
    const records = await collectRun(
      since,
      async () => {
        await Promise.all([first.stop(), second.stop()]);
      },
      pairPrefix,
    );
    await expectOracleOutput(records, "pair");
    expect(first.stats().rollups, "the first member's rollups").toBeGreaterThan(0);
    expect(second.stats().rollups, "the second member's rollups").toBeGreaterThan(0);
    expect(first.stats().events + second.stats().events).toBe(events.length + lateEvents.length);
    // The same Avro bodies as the live run (the 5-byte header names this prefix's schema id).
    const bodies = (list: readonly ConsumedRecord[] | undefined) =>
      (list ?? []).map((record) => record.value?.subarray(5).toString("hex") ?? "").sort();
    expect(bodies(records["metric-rollups"])).toEqual(bodies(live?.["metric-rollups"]));
    expect(bodies(records.alerts)).toEqual(bodies(live?.alerts));
  });
});
