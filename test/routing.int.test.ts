/**
 * A service's windows stay whole when its events arrive on partitions other than its home, with
 * the real broker and registry: partitions added to model-calls while a fleet is producing (the
 * default partitioner then moves some services), and producers that key by replica or not at
 * all. The fleet produces in real time (event time = wall clock), as fleets do. Every rollup and
 * alert the live processor emits, and every one a replay of the log rebuilds, equals the oracle
 * over all of the services' events, wherever they arrived.
 *
 * The events are drawn from a logged seed: replay a failure with MCPO_TEST_SEED=<seed>.
 */
import type { Admin, Producer } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { AlertEvent, MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { StreamProcessor } from "../processor/processor.js";
import { replayLog } from "../processor/replay.js";
import { createTopics, quietLogger, services, testKafka, uniqueName } from "./support/isolation.js";
import {
  expectMatchesOracle,
  oracleAlerts,
  oracleKey,
  oracleRollups,
  orderedTransitions,
  transitionOf,
  type OracleRule,
} from "./support/oracle.js";
import { seededRandom, type SeededRandom } from "./support/seed.js";
import { readBetween, topicEnds } from "./support/topic-records.js";
import { pause, waitFor } from "./support/wait.js";
import { pick, variedEvent } from "./support/varied-events.js";

const WINDOW_MS = 2000;
const GRACE_MS = 3000;
const SERVICES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"];
const MODELS = ["gpt-4o", "claude-3-5-sonnet", null];
/** Services err at different rates, so the rule fires and resolves for some of them. */
const ERROR_RATE: Readonly<Record<string, number>> = Object.fromEntries(
  SERVICES.map((service, i) => [service, (i % 4) * 0.15]),
);
const RULES: OracleRule[] = [
  { key: "errors", metric: "error_rate", comparator: "gt", threshold: 0.25, minSamples: 4 },
];

/** How a producer keys (and so places) an event. */
type Keying = (event: ModelCallEvent, random: SeededRandom) => string | null;
const byService: Keying = (event) => event.service;
const byReplica: Keying = (event, random) => `${event.service}/replica-${random.int(0, 5)}`;
const unkeyed: Keying = () => null;

describe("events away from their service's home partition, with the real stack", () => {
  let admin: Admin;
  const producers: Producer[] = [];
  const processors: StreamProcessor[] = [];
  const prefixes: string[] = [];

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
  });

  afterAll(async () => {
    await Promise.allSettled(processors.map((processor) => processor.stop()));
    await Promise.allSettled(producers.map((producer) => producer.disconnect()));
    const topics = (await admin.listTopics()).filter((name) =>
      prefixes.some((prefix) => name.startsWith(prefix)),
    );
    if (topics.length > 0) await admin.deleteTopics({ topics }).catch(() => undefined);
    await admin.disconnect();
  });

  /** A fresh topic prefix with a 3-partition model-calls topic, codecs and a running processor. */
  async function setUp(label: string) {
    const prefix = `${uniqueName(`route-${label}`)}.`;
    prefixes.push(prefix);
    await createTopics(admin, [{ topic: `${prefix}model-calls`, numPartitions: 3 }]);
    const register = <T>(contract: Parameters<typeof AvroCodec.register<T>>[0], topic: string) =>
      AvroCodec.register<T>(contract, {
        registryUrl: services().schemaRegistryUrl,
        subject: valueSubject(`${prefix}${topic}`),
      });
    const events = await register<ModelCallEvent>(MODEL_CALL_EVENT, "model-calls");
    const rollups = await register<MetricRollup>(METRIC_ROLLUP, "metric-rollups");
    const alerts = await register<AlertEvent>(ALERT_EVENT, "alerts");
    const processor = new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      groupId: `${prefix}processor`,
      partitions: 3,
      windowSizeMs: WINDOW_MS,
      graceMs: GRACE_MS,
      idleTimeoutMs: 1000,
      checkpointIntervalMs: 500,
      metadataMaxAgeMs: 500,
      metricsPort: 0,
      metrics: { rules: RULES },
      logger: quietLogger,
    });
    processors.push(processor);
    await processor.start();
    // On a failure: what the processor counted and where each partition's watermark stands.
    onTestFailed(async () => {
      const text = await fetch(processor.metricsUrl ?? "").then(
        (response) => response.text(),
        () => "",
      );
      process.stderr.write(
        `[routing.int ${label}] processor stats ${JSON.stringify(processor.stats())}\n${text
          .split("\n")
          .filter((line) => /^mcpo_processor_(watermark|open_windows|consumer_lag)/.test(line))
          .join("\n")}\n`,
      );
    });
    return { prefix, processor, codecs: { events, rollups, alerts } };
  }

  async function newProducer(): Promise<Producer> {
    const producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    producers.push(producer);
    return producer;
  }

  /**
   * Produces for `seconds` in real time, about 40 events a second over all services, each keyed
   * by `keying`; event time is the wall clock less up to 300 ms.
   */
  async function fleet(
    random: SeededRandom,
    producer: Producer,
    topic: string,
    codec: AvroCodec<ModelCallEvent>,
    seconds: number,
    keying: (random: SeededRandom) => Keying,
  ): Promise<ModelCallEvent[]> {
    const sent: ModelCallEvent[] = [];
    const until = Date.now() + seconds * 1000;
    while (Date.now() < until) {
      const batch: ModelCallEvent[] = [];
      for (let i = 0; i < 4; i++) {
        const service = pick(random, SERVICES);
        const failed = random.next() < (ERROR_RATE[service] ?? 0);
        batch.push(
          variedEvent(random, service, Date.now() * 1000 - random.int(0, 300_000), MODELS, {
            status: failed ? "error" : "ok",
            error_type: failed ? "RateLimitError" : null,
          }),
        );
      }
      const keyOf = keying(random);
      await producer.send({
        topic,
        acks: -1,
        messages: batch.map((event) => ({ key: keyOf(event, random), value: codec.encode(event) })),
      });
      sent.push(...batch);
      await pause(100);
    }
    return sent;
  }

  /**
   * Waits until the processor emitted every window the oracle has (the idle ticks close the last
   * ones), then checks the rollups topic and the alerts topic against the oracle, and a replay of
   * the log too.
   */
  async function expectWhole(
    setup: Awaited<ReturnType<typeof setUp>>,
    sent: readonly ModelCallEvent[],
    where: string,
  ): Promise<void> {
    const { prefix, processor, codecs } = setup;
    const expected = oracleRollups(sent, WINDOW_MS * 1000);
    const transitions = oracleAlerts(expected.values(), RULES);
    expect(transitions.length, `${where}: the data fires the rule`).toBeGreaterThan(0);

    const rollupsTopic = `${prefix}metric-rollups`;
    const emitted = async () => {
      const records = await readBetween(
        services().kafkaBrokers,
        rollupsTopic,
        new Map(),
        await topicEnds(admin, rollupsTopic),
      );
      return Promise.all(
        records.map(async (record) => codecs.rollups.decode(record.value ?? Buffer.alloc(0))),
      );
    };
    const windowsEmitted = async () =>
      new Set(
        (await emitted()).flatMap((result) =>
          result.ok
            ? [oracleKey(result.value.service, result.value.model, result.value.window_start)]
            : [],
        ),
      ).size;
    await waitFor(
      `${where}: all ${expected.size} windows the oracle has (distinct windows emitted)`,
      windowsEmitted,
      (count) => count >= expected.size,
      { timeoutMs: 60_000, intervalMs: 500 },
    );
    const rollups = await emitted();
    const byKey = new Map<string, MetricRollup>();
    for (const result of rollups) {
      if (!result.ok) throw new Error(`${where}: a rollup did not decode: ${result.error.message}`);
      const key = oracleKey(result.value.service, result.value.model, result.value.window_start);
      const before = byKey.get(key);
      // The same window twice (a batch written again) must be the same rollup, not a partial one.
      if (before)
        expect(result.value, `${where}: ${key} emitted twice, differently`).toEqual(before);
      byKey.set(key, result.value);
    }
    const comparable = (r: MetricRollup) => ({
      service: r.service,
      model: r.model,
      windowStart: r.window_start,
      counts: r.counts,
      rates: r.rates,
    });
    expectMatchesOracle([...byKey.values()].map(comparable), expected, `${where} live rollups`);

    const alertsTopic = `${prefix}alerts`;
    const readAlerts = async () =>
      readBetween(
        services().kafkaBrokers,
        alertsTopic,
        new Map(),
        await topicEnds(admin, alertsTopic),
      );
    await waitFor(
      `${where}: all ${transitions.length} alert transitions (records in the alerts topic)`,
      async () => (await readAlerts()).length,
      (count) => count >= transitions.length,
      { timeoutMs: 30_000, intervalMs: 500 },
    );
    const alerts = await readAlerts();
    const decodedAlerts = await Promise.all(
      alerts.map(async (record) => {
        const result = await codecs.alerts.decode(record.value ?? Buffer.alloc(0));
        if (!result.ok) throw new Error(`${where}: an alert did not decode`);
        return result.value;
      }),
    );
    const distinctAlerts = new Map(decodedAlerts.map((a) => [`${a.alert_id}|${a.state}`, a]));
    expect(
      orderedTransitions([...distinctAlerts.values()].map(transitionOf)),
      `${where} live alerts`,
    ).toEqual(orderedTransitions(transitions));
    const stats = processor.stats();
    expect(stats.late, `${where}: late events`).toBe(0);
    expect(stats.forwarded, `${where}: events copied to their home partition`).toBeGreaterThan(0);

    // A replay of the log rebuilds the same, from the copies the live processor wrote.
    const replayed: MetricRollup[] = [];
    const replayedAlerts: AlertEvent[] = [];
    const summary = await replayLog({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      windowSizeMs: WINDOW_MS,
      graceMs: GRACE_MS,
      metrics: { rules: RULES },
      onOutputs: (outputs) => {
        replayed.push(...outputs.rollups);
        replayedAlerts.push(...outputs.alerts);
        return Promise.resolve();
      },
    });
    expect(summary.late, `${where}: late events in the replay`).toBe(0);
    expect(summary.copies, `${where}: copies the replay read`).toBeGreaterThan(0);
    expect(summary.events, `${where}: events the replay read`).toBe(sent.length);
    const replayedKeys = replayed.map((r) => oracleKey(r.service, r.model, r.window_start));
    expect(new Set(replayedKeys).size, `${where}: each window once in the replay`).toBe(
      replayedKeys.length,
    );
    expectMatchesOracle(replayed.map(comparable), expected, `${where} replayed rollups`);
    expect(
      orderedTransitions(replayedAlerts.map(transitionOf)),
      `${where} replayed alerts`,
    ).toEqual(orderedTransitions(transitions));
  }

  it("partitions added to model-calls while the fleet produces: every rollup and alert equals the oracle, live and in a replay", async () => {
    const random = seededRandom("routing.int partitions added");
    const setup = await setUp("grow");
    const topic = `${setup.prefix}model-calls`;
    const before = await fleet(
      random,
      await newProducer(),
      topic,
      setup.codecs.events,
      5,
      () => byService,
    );
    await admin.createPartitions({ topicPartitions: [{ topic, count: 6 }] });
    // The fleet's producers see the new partitions (a producer refreshes its metadata): the
    // default partitioner now sends some services' events to partitions 3 to 5.
    const after = await fleet(
      random,
      await newProducer(),
      topic,
      setup.codecs.events,
      6,
      () => byService,
    );
    const ends = await topicEnds(admin, topic);
    expect([...ends.keys()].sort(), "model-calls has 6 partitions").toEqual([0, 1, 2, 3, 4, 5]);
    expect(
      [3, 4, 5].some((partition) => (ends.get(partition) ?? 0n) > 0n),
      "events landed on the added partitions",
    ).toBe(true);
    await expectWhole(setup, [...before, ...after], "partitions added");
  }, 180_000);

  it("producers keying by replica and not keying at all: every rollup and alert equals the oracle, live and in a replay", async () => {
    const random = seededRandom("routing.int keyed by replica");
    const setup = await setUp("keys");
    const topic = `${setup.prefix}model-calls`;
    const producer = await newProducer();
    // Two producers at once: one keys by replica, one sends no key (the partitioner spreads them).
    const [replicas, none] = await Promise.all([
      fleet(random, producer, topic, setup.codecs.events, 8, () => byReplica),
      fleet(random, await newProducer(), topic, setup.codecs.events, 8, () => unkeyed),
    ]);
    await expectWhole(setup, [...replicas, ...none], "keyed by replica or not at all");
  }, 180_000);
});
