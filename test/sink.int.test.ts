/** The sink from the real topics into the real PostgreSQL. */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import { watermarkTick } from "../avro/control.js";
import type { AlertEvent, ModelCallEvent } from "../avro/generated.js";
import { AlertTracker, rollupEvents, type AlertRule } from "../metrics/index.js";
import type { ProcessorLogger } from "../processor/processor.js";
import { Sink } from "../sink/sink.js";
import { sampleEvent } from "./support/events.js";
import {
  createTopics,
  services,
  testKafka,
  uniqueName,
  useFreshDatabase,
} from "./support/isolation.js";

const quiet: ProcessorLogger = {
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};
const MINUTE = 60_000_000;

describe("sink", () => {
  const database = useFreshDatabase("mcpo_sink");
  const prefix = `${uniqueName("sink")}.`;
  const events: ModelCallEvent[] = Array.from({ length: 200 }, (_, i) =>
    sampleEvent({
      span_id: (0x1000000000000000n + BigInt(i)).toString(16),
      service: `svc-${i % 4}`,
      prompt_tokens: i,
      start_time: 1_764_000_000_000_000 + i * 1_000_000,
      end_time: 1_764_000_000_000_000 + i * 1_000_000 + 500,
    }),
  );
  const rollups = rollupEvents(events, MINUTE);
  const rule: AlertRule = {
    key: "gate",
    metric: "confidence_gate_block_rate",
    comparator: "gt",
    threshold: 0.5,
    minSamples: 1,
  };
  const alerts: AlertEvent[] = [];
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
      logger: quiet,
    });
    sinks.push(instance);
    return instance;
  };

  beforeAll(async () => {
    const admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [
      { topic: `${prefix}model-calls`, numPartitions: 3 },
      {
        topic: `${prefix}metric-rollups`,
        numPartitions: 2,
        config: { "cleanup.policy": "compact" },
      },
      { topic: `${prefix}alerts`, numPartitions: 2 },
      { topic: `${prefix}dead-letter`, numPartitions: 1 },
    ]);
    await admin.disconnect();
    const url = services().schemaRegistryUrl;
    const eventCodec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: url,
      subject: valueSubject(`${prefix}model-calls`),
    });
    const rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
      registryUrl: url,
      subject: valueSubject(`${prefix}metric-rollups`),
    });
    const alertCodec = await AvroCodec.register(ALERT_EVENT, {
      registryUrl: url,
      subject: valueSubject(`${prefix}alerts`),
    });
    for (const service of ["svc-0", "svc-1", "svc-2", "svc-3"]) {
      const tracker = new AlertTracker([rule]);
      for (const total of rollups.filter((r) => r.service === service && r.model === null))
        alerts.push(...tracker.observe(total));
    }
    const producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const tick = watermarkTick(1_764_000_999_000_000);
    await producer.send({
      topic: `${prefix}model-calls`,
      messages: [
        ...events.map((event) => ({ key: event.service, value: eventCodec.encode(event) })),
        // Redelivered by a producer retry, a watermark tick, and a poison record.
        ...events
          .slice(0, 20)
          .map((event) => ({ key: event.service, value: eventCodec.encode(event) })),
        { key: "svc-0", value: tick.value, headers: tick.headers },
        { key: "svc-0", value: Buffer.from("garbage") },
      ],
    });
    await producer.send({
      topic: `${prefix}metric-rollups`,
      messages: rollups.map((r) => ({
        key: `${r.service}|${r.model ?? "*"}`,
        value: rollupCodec.encode(r),
      })),
    });
    await producer.send({
      topic: `${prefix}alerts`,
      messages: alerts.map((a) => ({ key: a.service, value: alertCodec.encode(a) })),
    });
    await producer.disconnect();
    client = new pg.Client({ connectionString: database.current.url });
  });

  afterAll(async () => {
    await Promise.allSettled(sinks.map((s) => s.stop()));
    await client.end().catch(() => undefined);
  });

  async function tableState(): Promise<{
    spans: string;
    tokens: string;
    rollups: string;
    calls: string;
    alerts: string;
  }> {
    const { rows } = await client.query<{
      spans: string;
      tokens: string;
      rollups: string;
      calls: string;
      alerts: string;
    }>(
      `select (select count(*) from spans)::text as spans,
              (select coalesce(sum(prompt_tokens), 0) from spans)::text as tokens,
              (select count(*) from metric_rollups)::text as rollups,
              (select coalesce(sum(calls), 0) from metric_rollups where model = '*')::text as calls,
              (select count(*) from alerts)::text as alerts`,
    );
    return rows[0] ?? { spans: "", tokens: "", rollups: "", calls: "", alerts: "" };
  }

  it("writes each span once, every rollup and alert, and dead-letters the poison", async () => {
    const first = sink(uniqueName("sink-group"));
    await first.start();
    await client.connect();
    const want = {
      spans: "200",
      tokens: String((199 * 200) / 2),
      rollups: String(rollups.length),
      calls: "200",
      alerts: String(new Set(alerts.map((a) => a.alert_id)).size),
    };
    const deadline = Date.now() + 60_000;
    while (JSON.stringify(await tableState()) !== JSON.stringify(want) && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await tableState()).toEqual(want);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(first.stats()).toMatchObject({
      spansInserted: 200,
      spansDuplicate: 20,
      deadLettered: 1,
    });
    const metrics = await (await fetch(first.metricsUrl ?? "")).text();
    expect(metrics).toContain('mcpo_sink_rows_total{table="spans",outcome="inserted"} 200');
    expect(metrics).toContain('mcpo_sink_dead_lettered_total{code="BAD_MAGIC_BYTE"} 1');
    const offsets = await client.query<{ topic: string }>("select topic from consumed_offsets");
    expect(new Set(offsets.rows.map((row) => row.topic))).toEqual(
      new Set([`${prefix}model-calls`, `${prefix}metric-rollups`, `${prefix}alerts`]),
    );
    await first.stop();
  });

  it("changes no row when everything is delivered again", async () => {
    const before = await tableState();
    const rollupsBefore = await client.query<Record<string, unknown>>(
      "select * from metric_rollups order by service, model, window_start",
    );
    const again = sink(uniqueName("sink-replay"));
    await again.start();
    const deadline = Date.now() + 60_000;
    while (again.stats().spansDuplicate < 220 && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 300));
    await again.stop();
    expect(again.stats()).toMatchObject({ spansInserted: 0, spansDuplicate: 220 });
    expect(await tableState()).toEqual(before);
    const rollupsAfter = await client.query<Record<string, unknown>>(
      "select * from metric_rollups order by service, model, window_start",
    );
    const strip = (rows: Record<string, unknown>[]) =>
      rows.map(({ updated_at: _ignored, ...rest }) => rest);
    expect(strip(rollupsAfter.rows)).toEqual(strip(rollupsBefore.rows));
  });
});
