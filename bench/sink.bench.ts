/**
 * Sink benchmark: `npm run bench:sink` (needs the local stack). BENCH_EVENTS events (default
 * 1 000 000) are pre-produced; then it measures
 * 1. the sink from the topic into PostgreSQL (spans/s, start-up and group join included);
 * 2. the writer alone, batches of 2 000: set-based `INSERT … SELECT FROM unnest`, and COPY into
 *    a staging table then one merge;
 * 3. the physical limit: a plain `COPY` of the same rows into an unindexed copy of the table;
 * and prints the ratios.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";

import kafkajs from "kafkajs";
import pg from "pg";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { loadConnectionConfig } from "../config/index.js";
import type { ProcessorLogger } from "../processor/processor.js";
import { migrate } from "../sink/migrate.js";
import { Sink } from "../sink/sink.js";
import { PostgresWriter } from "../sink/writer.js";
import { sampleEvent } from "../test/support/events.js";
import { runBench } from "./run.js";

const run = promisify(execFile);
const quiet: ProcessorLogger = {
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};
const config = loadConnectionConfig();
const count = Number(process.env.BENCH_EVENTS ?? 1_000_000);

function print(line: string): void {
  process.stdout.write(`${line}\n`);
}

function makeEvents(offset: number): ModelCallEvent[] {
  const template = sampleEvent();
  return Array.from({ length: count }, (_, i) => ({
    ...template,
    event_id: `00000000-0000-4000-8000-${String(offset + i).padStart(12, "0")}`,
    span_id: (0x5000000000000000n + BigInt(offset + i)).toString(16),
    service: `svc-${i % 50}`,
    end_time: 1_764_000_000_000_000 + i * 1000,
    start_time: 1_764_000_000_000_000 + i * 1000 - 500,
  }));
}

async function database(name: string): Promise<string> {
  const admin = new pg.Client({
    connectionString: config.databaseUrl.replace(/\/[^/]*$/, "/postgres"),
  });
  await admin.connect();
  await admin.query(`drop database if exists ${name} with (force)`);
  await admin.query(`create database ${name}`);
  await admin.end();
  const url = config.databaseUrl.replace(/\/[^/]*$/, `/${name}`);
  await migrate(url);
  return url;
}

async function main(): Promise<void> {
  print(`node ${process.version}; ${count.toLocaleString("en")} events\n`);
  const prefix = `bench-sink-${Date.now()}.`;
  const topic = `${prefix}model-calls`;
  const kafka = new kafkajs.Kafka({
    clientId: "bench-sink",
    brokers: [...config.kafkaBrokers],
    logLevel: kafkajs.logLevel.NOTHING,
  });
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: 6 }] });
  await admin.disconnect();
  const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
    registryUrl: config.schemaRegistryUrl,
    subject: valueSubject(topic),
  });
  const events = makeEvents(0);
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  for (let i = 0; i < count; i += 10_000)
    await producer.send({
      topic,
      acks: -1,
      compression: kafkajs.CompressionTypes.GZIP,
      messages: events
        .slice(i, i + 10_000)
        .map((e) => ({ key: e.service, value: codec.encode(e) })),
    });
  await producer.disconnect();

  // 1. The sink, from the topic.
  const sinkUrl = await database("mcpo_bench_sink");
  const sink = new Sink({
    topicPrefix: prefix,
    databaseUrl: sinkUrl,
    groupId: `bench-${Date.now()}`,
    logger: quiet,
  });
  const started = performance.now();
  await sink.start();
  while (sink.stats().spansInserted < count)
    await new Promise((resolve) => setTimeout(resolve, 100));
  const sinkRate = count / ((performance.now() - started) / 1000);
  await sink.stop();

  // 2. The writer alone.
  const writerUrl = await database("mcpo_bench_writer");
  const pool = new pg.Pool({ connectionString: writerUrl, max: 2 });
  const writer = new PostgresWriter(pool);
  const writeStarted = performance.now();
  for (let i = 0; i < count; i += 2000)
    await writer.write({ spans: events.slice(i, i + 2000).map((event) => ({ event })) });
  const writerRate = count / ((performance.now() - writeStarted) / 1000);

  // 2b. The writer with its COPY-and-merge strategy.
  const copyUrl = await database("mcpo_bench_writer_copy");
  const copyPool = new pg.Pool({ connectionString: copyUrl, max: 2 });
  const copyWriter = new PostgresWriter(copyPool, "copy");
  const copyWriteStarted = performance.now();
  for (let i = 0; i < count; i += 2000)
    await copyWriter.write({ spans: events.slice(i, i + 2000).map((event) => ({ event })) });
  const copyWriterRate = count / ((performance.now() - copyWriteStarted) / 1000);
  await copyPool.end();

  // 3. COPY into an unindexed copy of the table (same rows, as CSV).
  await pool.query("create table spans_copy as select * from spans where false");
  const columns =
    "span_id, event_id, trace_id, parent_span_id, kind, service, service_instance, provider, model, start_time, end_time, prompt_tokens, completion_tokens, token_source, cost_nano_usd, retries, fallback_used, confidence, confidence_gate_threshold, high_risk_path, deterministic_fallback_triggered, prompt_diff_score, shadow_agreement, is_golden_financial_scenario, golden_scenario_passed, status, attributes";
  const csv = events
    .map((e) =>
      [
        e.span_id,
        e.event_id,
        e.trace_id,
        e.parent_span_id ?? "",
        e.kind,
        e.service,
        e.service_instance,
        e.provider ?? "",
        e.model ?? "",
        new Date(e.start_time / 1000).toISOString(),
        new Date(e.end_time / 1000).toISOString(),
        e.prompt_tokens ?? "",
        e.completion_tokens ?? "",
        e.token_source,
        e.cost_nano_usd ?? "",
        e.retries,
        e.fallback_used,
        e.confidence ?? "",
        e.confidence_gate_threshold ?? "",
        e.high_risk_path,
        e.deterministic_fallback_triggered,
        e.prompt_diff_score ?? "",
        e.shadow_agreement ?? "",
        e.is_golden_financial_scenario,
        e.golden_scenario_passed ?? "",
        e.status,
        `"${JSON.stringify(e.attributes).replace(/"/g, '""')}"`,
      ].join(","),
    )
    .join("\n");
  const dir = mkdtempSync(join(tmpdir(), "mcpo-copy-"));
  const file = join(dir, "spans.csv");
  writeFileSync(file, `${csv}\n`);
  const copyStarted = performance.now();
  await run("psql", [
    "-q",
    "-v",
    "ON_ERROR_STOP=1",
    "-c",
    `\\copy spans_copy (${columns}) from '${file}' csv`,
    writerUrl,
  ]);
  const copyRate = count / ((performance.now() - copyStarted) / 1000);
  rmSync(dir, { recursive: true, force: true });
  await pool.end();

  print(
    `sink from the topic:      ${Math.round(sinkRate).toLocaleString("en").padStart(9)} spans/s (target 50,000: ${(sinkRate / 50_000).toFixed(2)}×)`,
  );
  print(
    `writer alone (unnest):    ${Math.round(writerRate).toLocaleString("en").padStart(9)} spans/s`,
  );
  print(
    `writer alone (COPY+merge):${Math.round(copyWriterRate).toLocaleString("en").padStart(9)} spans/s`,
  );
  print(
    `COPY, unindexed copy:     ${Math.round(copyRate).toLocaleString("en").padStart(9)} rows/s`,
  );
  print(
    `ratios: sink/COPY ${(sinkRate / copyRate).toFixed(2)} (target ≥ 0.5), writer/COPY ${(writerRate / copyRate).toFixed(2)}`,
  );
}

runBench(main);
