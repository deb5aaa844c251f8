/** The sink from the real topics into the real PostgreSQL. */
import avro from "avsc";
import type { Admin } from "kafkajs";
import pg from "pg";
import { topicNames } from "../config/index.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import { watermarkTick } from "../avro/control.js";
import type { AlertEvent, ModelCallEvent } from "../avro/generated.js";
import { AlertTracker, rollupEvents, rollupKey, type AlertRule } from "../metrics/index.js";
import { Sink } from "../sink/sink.js";
import { sampleEvent } from "./support/events.js";
import {
  createTopics,
  services,
  quietLogger,
  testKafka,
  uniqueName,
  useFreshDatabase,
} from "./support/isolation.js";
import { expectMatchesOracle, oracleAlerts, oracleRollups } from "./support/oracle.js";
import { waitForStoredPositions } from "./support/sink-positions.js";
import { storedRollups } from "./support/stored-rollups.js";
import { waitFor } from "./support/wait.js";

const MINUTE = 60_000_000;

/** A poison record as produced: where it went and what the dead-letter copy must say. */
interface Poison {
  readonly topic: string;
  readonly partition: number;
  readonly key: string;
  readonly value: Buffer;
  readonly code: string;
  /** What the reason header must mention. */
  readonly reason: RegExp;
  offset?: string;
}

describe("sink", () => {
  const database = useFreshDatabase("mcpo_sink");
  const prefix = `${uniqueName("sink")}.`;
  const topics = topicNames(prefix);
  const inputs = [topics.modelCalls, topics.metricRollups, topics.alerts];
  // Varied on purpose: retries, token sources, models, nulls, errors, and a gate-block rate that
  // breaches in even minutes and not in odd ones, so alerts fire and resolve.
  const events: ModelCallEvent[] = Array.from({ length: 200 }, (_, i) => {
    const source = (["reported", "estimated", "none"] as const)[i % 3] ?? "none";
    return sampleEvent({
      event_id: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
      span_id: (0x1000000000000000n + BigInt(i)).toString(16),
      service: `svc-${i % 4}`,
      model: i % 11 === 0 ? null : i % 2 === 0 ? "gpt-4o" : "gpt-4o-mini",
      prompt_tokens: source === "none" ? null : i,
      completion_tokens: source === "none" ? null : 2 * i,
      token_source: source,
      retries: i % 4,
      cost_nano_usd: i % 5 === 0 ? null : 1_000_003 * i,
      confidence: Math.floor(i / 60) % 2 === 0 ? 0.64 : 0.9,
      shadow_agreement: i % 3 === 0 ? null : i % 3 === 1,
      golden_scenario_passed: i % 6 === 0 ? false : i % 6 === 1 ? null : true,
      high_risk_path: i % 2 === 0,
      deterministic_fallback_triggered: i % 4 === 0,
      prompt_diff_score: i % 7 === 0 ? null : (i % 10) / 10,
      fallback_used: i % 9 === 0,
      status: i % 13 === 0 ? "error" : "ok",
      error_type: i % 13 === 0 ? "Timeout" : null,
      start_time: 1_764_000_000_000_000 + i * 1_000_000 - (i % 17) * 1000,
      end_time: 1_764_000_000_000_000 + i * 1_000_000 + 500,
    });
  });
  const rollups = rollupEvents(events, MINUTE);
  const rule: AlertRule = {
    key: "gate",
    metric: "confidence_gate_block_rate",
    comparator: "gt",
    threshold: 0.5,
    minSamples: 1,
  };
  const alerts: AlertEvent[] = [];
  const poison: Poison[] = [];
  let admin: Admin;
  let client: pg.Client;
  const sinks: Sink[] = [];

  const sink = (groupId: string) => {
    const instance = new Sink({
      metricsPort: 0,
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      databaseUrl: database.current.url,
      topicPrefix: prefix,
      groupId,
      // The record with an id the registry has never had waits this long, then is dead-lettered.
      unknownSchemaIdGraceMs: 1000,
      logger: quietLogger,
    });
    sinks.push(instance);
    return instance;
  };

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [
      { topic: topics.modelCalls, numPartitions: 3 },
      { topic: topics.metricRollups, numPartitions: 2, config: { "cleanup.policy": "compact" } },
      { topic: topics.alerts, numPartitions: 2 },
      { topic: topics.deadLetter, numPartitions: 1 },
    ]);
    const url = services().schemaRegistryUrl;
    const eventCodec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: url,
      subject: valueSubject(topics.modelCalls),
    });
    const rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
      registryUrl: url,
      subject: valueSubject(topics.metricRollups),
    });
    const alertCodec = await AvroCodec.register(ALERT_EVENT, {
      registryUrl: url,
      subject: valueSubject(topics.alerts),
    });
    for (const service of ["svc-0", "svc-1", "svc-2", "svc-3"]) {
      const tracker = new AlertTracker([rule]);
      for (const total of rollups.filter((r) => r.service === service && r.model === null))
        alerts.push(...tracker.observe(total));
    }
    // Poison of every kind the codec tells apart, on every input topic.
    const good = eventCodec.encode(events[0] ?? sampleEvent());
    const header = (schemaId: number) => {
      const bytes = Buffer.alloc(5);
      bytes.writeInt32BE(schemaId, 1);
      return bytes;
    };
    const invalidEvent = Buffer.concat([
      header(eventCodec.schemaId),
      avro.Type.forSchema(MODEL_CALL_EVENT.schema as avro.Schema).toBuffer({
        ...sampleEvent(),
        event_id: "not-a-uuid",
      }),
    ]);
    const [firstRollup] = rollups;
    const [firstAlert] = alerts;
    if (!firstRollup || !firstAlert) throw new Error("no rollup or alert to encode");
    const rollupBytes = rollupCodec.encode(firstRollup);
    const alertBytes = alertCodec.encode(firstAlert);
    poison.push(
      {
        topic: topics.modelCalls,
        partition: 0,
        key: "p-garbage",
        value: Buffer.from("garbage"),
        code: "BAD_MAGIC_BYTE",
        reason: /magic byte/,
      },
      {
        topic: topics.modelCalls,
        partition: 1,
        key: "p-short",
        value: good.subarray(0, 40),
        code: "TRUNCATED",
        reason: /ends early/,
      },
      {
        topic: topics.modelCalls,
        partition: 2,
        key: "p-invalid",
        value: invalidEvent,
        code: "INVALID_FIELD",
        reason: /event_id/,
      },
      {
        topic: topics.modelCalls,
        partition: 0,
        key: "p-unknown-id",
        value: Buffer.concat([header(1_999_999_999), good.subarray(5)]),
        code: "UNKNOWN_SCHEMA_ID",
        reason: /1999999999/,
      },
      {
        topic: topics.modelCalls,
        partition: 1,
        key: "p-trailing",
        value: Buffer.concat([good, Buffer.from([7])]),
        code: "MALFORMED_BODY",
        reason: /trailing/,
      },
      {
        topic: topics.modelCalls,
        partition: 2,
        key: "p-rollup",
        value: rollupBytes,
        code: "INCOMPATIBLE_WRITER_SCHEMA",
        reason: /cannot be read as ModelCallEvent/,
      },
      {
        topic: topics.metricRollups,
        partition: 0,
        key: "p-garbage",
        value: Buffer.from([1, 2, 3, 4, 5, 6]),
        code: "BAD_MAGIC_BYTE",
        reason: /magic byte/,
      },
      {
        topic: topics.metricRollups,
        partition: 1,
        key: "p-event",
        value: good,
        code: "INCOMPATIBLE_WRITER_SCHEMA",
        reason: /cannot be read as MetricRollup/,
      },
      {
        topic: topics.alerts,
        partition: 0,
        key: "p-short",
        value: Buffer.from([0, 0]),
        code: "TRUNCATED",
        reason: /shorter than the 5-byte/,
      },
      {
        topic: topics.alerts,
        partition: 1,
        key: "p-trailing",
        value: Buffer.concat([alertBytes, Buffer.from([0, 0])]),
        code: "MALFORMED_BODY",
        reason: /trailing/,
      },
    );
    const producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const tick = watermarkTick(1_764_000_999_000_000);
    const eventMessages = events.map((event) => ({
      key: event.service,
      value: eventCodec.encode(event),
    }));
    const rollupMessages = rollups.map((r) => ({
      key: rollupKey(r),
      value: rollupCodec.encode(r),
    }));
    const alertMessages = alerts.map((a) => ({ key: a.service, value: alertCodec.encode(a) }));
    // Good records before and after the poison: the sink must go on past it.
    const half = <T>(list: readonly T[], second: boolean): T[] =>
      second ? list.slice(Math.floor(list.length / 2)) : list.slice(0, Math.floor(list.length / 2));
    for (const second of [false, true]) {
      await producer.send({ topic: topics.modelCalls, messages: half(eventMessages, second) });
      await producer.send({ topic: topics.metricRollups, messages: half(rollupMessages, second) });
      await producer.send({ topic: topics.alerts, messages: half(alertMessages, second) });
      if (second) break;
      for (const record of poison) {
        const [metadata] = await producer.send({
          topic: record.topic,
          messages: [{ key: record.key, value: record.value, partition: record.partition }],
        });
        record.offset = metadata?.baseOffset;
      }
    }
    // Redelivered by a producer retry, and a watermark tick (skipped, not dead-lettered).
    await producer.send({
      topic: topics.modelCalls,
      messages: [
        ...eventMessages.slice(0, 20),
        { key: "svc-0", value: tick.value, headers: tick.headers },
      ],
    });
    await producer.disconnect();
    client = new pg.Client({ connectionString: database.current.url });
    await client.connect();
  });

  afterAll(async () => {
    await Promise.allSettled(sinks.map((s) => s.stop()));
    await client.end().catch(() => undefined);
    await admin.disconnect();
  });

  async function tableState(): Promise<Record<string, string>> {
    const { rows } = await client.query<Record<string, string>>(
      `select (select count(*) from spans)::text as spans,
              (select coalesce(sum(prompt_tokens), 0) from spans)::text as tokens,
              (select count(*) from metric_rollups)::text as rollups,
              (select coalesce(sum(calls), 0) from metric_rollups where scope = 'service')::text as calls,
              (select count(*) from alerts)::text as alerts`,
    );
    return rows[0] ?? {};
  }

  /** Waits until the sink has stored positions at the end of every input and counted it all. */
  async function drained(instance: Sink, group: string, modelCallRecords: number): Promise<void> {
    await waitForStoredPositions(admin, client, group, inputs);
    // Its counters follow the commit a moment later, in the same process.
    await waitFor(
      `sink ${group} to count the ${modelCallRecords} span records it wrote`,
      () => instance.stats(),
      (stats) => stats.spansInserted + stats.spansDuplicate === modelCallRecords,
      { timeoutMs: 10_000, intervalMs: 20 },
    );
  }

  it("writes each span once, every rollup and alert equal to the oracle's, and dead-letters exactly the poison", async () => {
    const group = uniqueName("sink-group");
    const first = sink(group);
    await first.start();
    await drained(first, group, 220);
    expect(await tableState()).toEqual({
      spans: "200",
      tokens: String(events.reduce((sum, e) => sum + (e.prompt_tokens ?? 0), 0)),
      rollups: String(rollups.length),
      calls: "200",
      alerts: String(new Set(alerts.map((a) => a.alert_id)).size),
    });
    expect(first.stats()).toMatchObject({
      spansInserted: 200,
      spansDuplicate: 20,
      deadLettered: poison.length,
    });
    const metrics = await (await fetch(first.metricsUrl ?? "")).text();
    expect(metrics).toContain('mcpo_sink_rows_total{table="spans",outcome="inserted"} 200');
    for (const code of new Set(poison.map((p) => p.code)))
      expect(metrics).toContain(
        `mcpo_sink_dead_lettered_total{code="${code}"} ${poison.filter((p) => p.code === code).length}`,
      );
    // Every stored rollup column against the brute-force oracle (not the core that made them).
    const stored = await storedRollups(client);
    const oracle = oracleRollups(events, MINUTE);
    expectMatchesOracle(stored, oracle, "metric_rollups");
    // Alerts: one row per incident, its state and history the oracle's transitions.
    const transitions = oracleAlerts(oracle.values(), [rule]);
    expect(transitions.filter((t) => t.state === "resolved").length).toBeGreaterThan(0);
    const incidents = new Map<string, { state: string; history: string[] }>();
    for (const t of transitions) {
      const key = `${t.service}|${t.firedWindowStart}`;
      const incident = incidents.get(key) ?? { state: t.state, history: [] };
      incident.state = t.state;
      incident.history.push(`${t.state}@${t.windowStart}:${t.observed}`);
      incidents.set(key, incident);
    }
    const alertRows = await client.query<{
      service: string;
      fired_us: string;
      state: string;
      history: { state: string; window_start_us: number; observed_value: number | null }[];
    }>(
      `select service, ((extract(epoch from fired_window_start) * 1000000)::bigint)::text as fired_us, state, history
       from alerts where rule = 'gate'`,
    );
    expect(
      Object.fromEntries(
        alertRows.rows.map((row) => [
          `${row.service}|${row.fired_us}`,
          {
            state: row.state,
            history: row.history.map((h) => `${h.state}@${h.window_start_us}:${h.observed_value}`),
          },
        ]),
      ),
    ).toEqual(Object.fromEntries(incidents));
  });

  it("puts each poison record on the dead-letter topic with its original bytes, key, code, reason and source topic/partition/offset", async () => {
    const ends = await admin.fetchTopicOffsets(topics.deadLetter);
    expect(ends.reduce((sum, p) => sum + Number(p.high), 0)).toBe(poison.length);
    const consumer = testKafka().consumer({ groupId: uniqueName("dlq-reader") });
    const received: {
      key: string | undefined;
      value: Buffer | null;
      headers: Record<string, string>;
    }[] = [];
    await consumer.connect();
    try {
      await consumer.subscribe({ topic: topics.deadLetter, fromBeginning: true });
      await consumer.run({
        eachMessage: ({ message }) => {
          const headers: Record<string, string> = {};
          for (const [name, value] of Object.entries(message.headers ?? {}))
            if (value !== undefined)
              headers[name] = String(Array.isArray(value) ? value[0] : value);
          received.push({ key: message.key?.toString(), value: message.value, headers });
          return Promise.resolve();
        },
      });
      await waitFor(
        `the ${poison.length} dead-letter records`,
        () => received.length,
        (n) => n >= poison.length,
        { timeoutMs: 30_000 },
      );
    } finally {
      await consumer.disconnect();
    }
    const bySource = new Map(
      received.map((r) => [
        `${r.headers["mcpo-source-topic"]}|${r.headers["mcpo-source-partition"]}|${r.headers["mcpo-source-offset"]}`,
        r,
      ]),
    );
    expect(bySource.size).toBe(poison.length);
    for (const p of poison) {
      const where = `${p.topic}|${p.partition}|${p.offset}`;
      const dead = bySource.get(where);
      expect(dead, `dead letter of ${where} (${p.code})`).toBeDefined();
      expect(dead?.key, where).toBe(p.key);
      expect(dead?.value?.equals(p.value), `${where}: original bytes`).toBe(true);
      expect(dead?.headers["mcpo-dlq-code"], where).toBe(p.code);
      expect(dead?.headers["mcpo-dlq-reason"], where).toMatch(p.reason);
    }
  });

  it("changes no row when everything is delivered again to a new group", async () => {
    const before = await tableState();
    const rollupsBefore = await client.query<Record<string, unknown>>(
      "select * from metric_rollups order by service, model, window_start",
    );
    const alertsBefore = await client.query<Record<string, unknown>>(
      "select * from alerts order by alert_id",
    );
    const group = uniqueName("sink-replay");
    const again = sink(group);
    await again.start();
    await drained(again, group, 220);
    await again.stop();
    expect(again.stats()).toMatchObject({
      spansInserted: 0,
      spansDuplicate: 220,
      deadLettered: poison.length,
    });
    expect(await tableState()).toEqual(before);
    const strip = (rows: Record<string, unknown>[]) =>
      rows.map(({ updated_at: _ignored, ...rest }) => rest);
    const rollupsAfter = await client.query<Record<string, unknown>>(
      "select * from metric_rollups order by service, model, window_start",
    );
    expect(strip(rollupsAfter.rows)).toEqual(strip(rollupsBefore.rows));
    const alertsAfter = await client.query<Record<string, unknown>>(
      "select * from alerts order by alert_id",
    );
    expect(strip(alertsAfter.rows)).toEqual(strip(alertsBefore.rows));
  });
});
