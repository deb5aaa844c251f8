/**
 * Processor benchmarks: `npm run bench:processor` (needs the local stack: `npm run stack:up`).
 *
 * 1. Throughput: 1 000 000 pre-produced events over 6 partitions and 50 services, processed by one
 *    processor in a new group reading from the beginning (decode + windows + emit + checkpoints),
 *    against a bare kafkajs consumer that only reads and discards the same topic; the ratio is the
 *    processor's overhead.
 * 2. Memory: resident set size with 10 000 open (service, model) series.
 * 3. Latency: from an event's window close time (end + grace) to its rollup on the output topic,
 *    live, events stamped with the wall clock.
 * 4. Late floods: the same number of events with every second one 5 minutes behind (a replica
 *    delivering its buffer after an outage), against all on time: with revisions (the default
 *    allowed lateness) and without (every such event late, to the late topic); the ratios to the
 *    on-time rate.
 *
 * 5. Cardinality: a steady stream (event time moving forward with every event, windows closing
 *    in turn) through one partition's state machine while 200 000 distinct services pass through
 *    it (each calls twice, then never again), against the same stream from 50 services; events/s
 *    of each (a run stops after 30 s and reports the rate so far).
 *
 * 6. Models: one client sends 100 000 distinct model names within one window, through one
 *    partition's state machine: open series, checkpoint size (the snapshot's JSON) and events/s at
 *    the default `maxModelsPerWindow` (200: the others fold into one overflow series) and with the
 *    cap lifted (1 000 000: a series per name).
 *
 * `BENCH_SECTIONS=late` (comma-separated: memory, latency, throughput, late, cardinality, models)
 * runs only those.
 */
import { performance } from "node:perf_hooks";

import kafkajs from "kafkajs";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { loadConnectionConfig } from "../config/index.js";
import { DEFAULT_WINDOW_SETTINGS, PartitionState } from "../processor/partition.js";
import { StreamProcessor, type ProcessorLogger } from "../processor/processor.js";
import { sampleEvent } from "../test/support/events.js";
import { runBench } from "./run.js";

const { Kafka, logLevel } = kafkajs;
const quiet: ProcessorLogger = {
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};
const config = loadConnectionConfig();
const kafka = new Kafka({
  clientId: "bench-processor",
  brokers: [...config.kafkaBrokers],
  logLevel: logLevel.NOTHING,
});

function print(line: string): void {
  process.stdout.write(`${line}\n`);
}

const MINUTE = 60_000_000;

/** `lateEvery`: every so many events, one ends 5 minutes behind the others (0: none). */
async function produce(topic: string, count: number, lateEvery = 0): Promise<void> {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: 6 }] });
  await admin.disconnect();
  const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
    registryUrl: config.schemaRegistryUrl,
    subject: valueSubject(topic),
  });
  const template = sampleEvent();
  const origin = 1_700_000_040_000_000 - (1_700_000_040_000_000 % MINUTE);
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  for (let i = 0; i < count; i += 10_000) {
    const messages = [];
    for (let j = i; j < Math.min(count, i + 10_000); j++) {
      const behind = lateEvery > 0 && j % lateEvery === lateEvery - 1 ? 5 * MINUTE : 0;
      const end = origin + Math.floor((j * 60 * MINUTE) / count) - behind;
      const event: ModelCallEvent = {
        ...template,
        event_id: `00000000-0000-4000-8000-${String(j).padStart(12, "0")}`,
        service: `svc-${j % 50}`,
        model: j % 3 === 0 ? "gpt-4o-mini" : "gpt-4o",
        start_time: end - 200_000,
        end_time: end,
        confidence: (j % 10) / 10,
      };
      messages.push({ key: event.service, value: codec.encode(event) });
    }
    await producer.send({ topic, acks: -1, compression: kafkajs.CompressionTypes.GZIP, messages });
  }
  await producer.disconnect();
}

async function bareConsumer(topic: string, count: number): Promise<number> {
  const consumer = kafka.consumer({ groupId: `bench-bare-${Date.now()}` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  let seen = 0;
  let started = 0;
  await new Promise<void>((resolve) => {
    void consumer.run({
      eachBatch: async (payload) => {
        if (started === 0) started = performance.now();
        seen += payload.batch.messages.length;
        const last = payload.batch.messages.at(-1);
        if (last) payload.resolveOffset(last.offset);
        if (seen >= count) resolve();
        return Promise.resolve();
      },
    });
  });
  const seconds = (performance.now() - started) / 1000;
  await consumer.disconnect();
  return count / seconds;
}

async function processorThroughput(
  prefix: string,
  count: number,
  allowedLatenessMs?: number,
): Promise<number> {
  const processor = new StreamProcessor({
    topicPrefix: prefix,
    groupId: `bench-processor-${Date.now()}`,
    logger: quiet,
    checkpointIntervalMs: 5000,
    ...(allowedLatenessMs === undefined ? {} : { allowedLatenessMs }),
  });
  const started = performance.now();
  await processor.start();
  // A new group reads the pre-produced log from the beginning, as a catching-up processor does.
  while (processor.stats().events < count) await new Promise((resolve) => setTimeout(resolve, 20));
  const seconds = (performance.now() - started) / 1000;
  await processor.stop();
  const stats = processor.stats();
  if (stats.events !== count) throw new Error(`processed ${stats.events} of ${count}`);
  print(
    `  (${stats.rollups.toLocaleString("en")} rollups, ${stats.late.toLocaleString("en")} late, ${stats.checkpoints} checkpoints, start-up and group join included)`,
  );
  return count / seconds;
}

function memory(): void {
  const before = process.memoryUsage().rss;
  const state = new PartitionState();
  const now = 1_764_000_000_000_000;
  for (let s = 0; s < 5_000; s++)
    for (const model of ["gpt-4o", "gpt-4o-mini"])
      for (let k = 0; k < 3; k++)
        state.apply({
          type: "event",
          event: sampleEvent({
            service: `svc-${s}`,
            model,
            start_time: now - 1000 * (k + 1) * 37,
            end_time: now,
          }),
        });
  globalThis.gc?.();
  const rss = process.memoryUsage().rss;
  print(
    `memory: ${state.openSeries.toLocaleString("en")} open accumulators (10,000 service×model series + 5,000 totals): RSS ${(rss / 1e6).toFixed(0)} MB (${((rss - before) / 1e6).toFixed(0)} MB for the state; target < 300 MB: ${(300e6 / rss).toFixed(2)}×)`,
  );
}

async function latency(): Promise<void> {
  const prefix = `bench-latency-${Date.now()}.`;
  const windowMs = 2000;
  const graceMs = 500;
  const processor = new StreamProcessor({
    topicPrefix: prefix,
    groupId: "bench-latency",
    windowSizeMs: windowMs,
    graceMs,
    idleTimeoutMs: 1000,
    logger: quiet,
    partitions: 6,
  });
  await processor.start();
  const topic = `${prefix}model-calls`;
  const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
    registryUrl: config.schemaRegistryUrl,
    subject: valueSubject(topic),
  });
  const rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
    registryUrl: config.schemaRegistryUrl,
    subject: valueSubject(`${prefix}metric-rollups`),
  });
  const delays: number[] = [];
  const consumer = kafka.consumer({ groupId: `bench-latency-reader-${Date.now()}` });
  await consumer.connect();
  await consumer.subscribe({ topic: `${prefix}metric-rollups`, fromBeginning: true });
  void consumer.run({
    eachMessage: async ({ message }) => {
      const decoded = await rollupCodec.decode(message.value ?? Buffer.alloc(0));
      if (!decoded.ok || decoded.value.model !== null) return;
      const closeMs = decoded.value.window_end / 1000 + graceMs;
      delays.push(Number(message.timestamp) - closeMs);
    },
  });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const until = Date.now() + 30_000;
  let i = 0;
  while (Date.now() < until) {
    const messages = [];
    for (let j = 0; j < 200; j++, i++) {
      const end = Date.now() * 1000;
      const event = sampleEvent({
        service: `svc-${i % 20}`,
        start_time: end - 100_000,
        end_time: end,
      });
      messages.push({ key: event.service, value: codec.encode(event) });
    }
    await producer.send({ topic, acks: -1, messages });
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await new Promise((resolve) => setTimeout(resolve, 5000));
  await producer.disconnect();
  await consumer.disconnect();
  await processor.stop();
  const sorted = delays.filter((delay) => Number.isFinite(delay)).sort((a, b) => a - b);
  const at = (q: number) =>
    sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
  print(
    `latency after window close (end + grace), ${sorted.length} service windows of ${windowMs / 1000} s, ${i.toLocaleString("en")} events: p50 ${at(0.5).toFixed(0)} ms, p99 ${at(0.99).toFixed(0)} ms (target p99 ≤ 1000 ms: ${(1000 / at(0.99)).toFixed(2)}×)`,
  );
}

async function lateFloods(count: number): Promise<void> {
  const stamp = Date.now();
  const onTime = `bench-ontime-${stamp}.`;
  const halfLate = `bench-halflate-${stamp}.`;
  await produce(`${onTime}model-calls`, count);
  await produce(`${halfLate}model-calls`, count, 2);
  const base = await processorThroughput(onTime, count);
  const revised = await processorThroughput(halfLate, count);
  const late = await processorThroughput(halfLate, count, 0);
  print(
    `late floods, ${count.toLocaleString("en")} events: on time ${Math.round(base).toLocaleString("en")} events/s; half 5 min behind, revising ${Math.round(revised).toLocaleString("en")} events/s (${(revised / base).toFixed(2)}×, target ≥ 0.8×); half late (allowed lateness 0) ${Math.round(late).toLocaleString("en")} events/s (${(late / base).toFixed(2)}×)`,
  );
}

/** Events/s of one partition's state machine over `count` events from `services(j)`. */
function partitionRate(
  count: number,
  serviceOf: (j: number) => string,
): {
  rate: number;
  processed: number;
  rollups: number;
} {
  const template = sampleEvent();
  const origin = 1_764_000_000_000_000;
  const events: ModelCallEvent[] = [];
  for (let j = 0; j < count; j++) {
    const end = origin + Math.floor((j * 60 * MINUTE) / count);
    events.push({
      ...template,
      event_id: `00000000-0000-4000-8000-${String(j).padStart(12, "0")}`,
      service: serviceOf(j),
      model: j % 3 === 0 ? "gpt-4o-mini" : "gpt-4o",
      start_time: end - 200_000,
      end_time: end,
    });
  }
  const state = new PartitionState();
  const deadline = performance.now() + 30_000;
  const started = performance.now();
  let processed = 0;
  let rollups = 0;
  for (const event of events) {
    for (const output of state.apply({ type: "event", event }))
      if (output.type === "rollup") rollups++;
    processed++;
    if (processed % 1_000 === 0 && performance.now() > deadline) break;
  }
  const seconds = (performance.now() - started) / 1000;
  return { rate: processed / seconds, processed, rollups };
}

function cardinality(): void {
  const count = 400_000;
  const few = partitionRate(count, (j) => `svc-${j % 50}`);
  const many = partitionRate(count, (j) => `svc-${Math.floor(j / 2)}`);
  const show = (run: { rate: number; processed: number; rollups: number }) =>
    `${Math.round(run.rate).toLocaleString("en")} events/s (${run.processed.toLocaleString("en")} events, ${run.rollups.toLocaleString("en")} rollups)`;
  print(
    `cardinality, one partition, ${count.toLocaleString("en")} events over 60 min of event time: 50 services ${show(few)}; 200,000 services passing through ${show(many)} (${(many.rate / few.rate).toFixed(2)}×)`,
  );
}

/** 100 000 distinct model names in one window, with the cap and without. */
function models(): void {
  const count = 100_000;
  const template = sampleEvent();
  const origin = 1_764_000_000_000_000 - (1_764_000_000_000_000 % MINUTE);
  const events: ModelCallEvent[] = [];
  for (let j = 0; j < count; j++) {
    const end = origin + Math.floor((j * MINUTE) / (count + 1));
    events.push({
      ...template,
      event_id: `00000000-0000-4000-8000-${String(j).padStart(12, "0")}`,
      service: "svc-hostile",
      model: `model-${j}`,
      start_time: end - 200_000,
      end_time: end,
    });
  }
  const run = (maxModelsPerWindow: number): string => {
    const state = new PartitionState({ ...DEFAULT_WINDOW_SETTINGS, maxModelsPerWindow });
    const started = performance.now();
    for (const event of events) state.apply({ type: "event", event });
    const seconds = (performance.now() - started) / 1000;
    const bytes = Buffer.byteLength(JSON.stringify(state.snapshot()));
    return `${state.openSeries.toLocaleString("en")} open series, checkpoint ${(bytes / 1e6).toFixed(1)} MB, ${Math.round(count / seconds).toLocaleString("en")} events/s, ${state.foldedEvents.toLocaleString("en")} folded`;
  };
  print(
    `models, one window, ${count.toLocaleString("en")} distinct model names: maxModelsPerWindow 200 (default): ${run(200)}; 1,000,000 (no cap): ${run(1_000_000)}`,
  );
}

async function main(): Promise<void> {
  print(`node ${process.version}\n`);
  const sections = new Set(
    (process.env.BENCH_SECTIONS ?? "memory,latency,throughput,late,cardinality,models").split(","),
  );
  if (sections.has("cardinality")) cardinality();
  if (sections.has("models")) models();
  if (sections.has("memory")) memory();
  if (sections.has("latency")) await latency();
  const count = Number(process.env.BENCH_EVENTS ?? 1_000_000);
  if (sections.has("throughput")) {
    const prefix = `bench-processor-${Date.now()}.`;
    const produceStarted = performance.now();
    await produce(`${prefix}model-calls`, count);
    print(
      `pre-produced ${count.toLocaleString("en")} events in ${((performance.now() - produceStarted) / 1000).toFixed(1)} s`,
    );
    const bare = await bareConsumer(`${prefix}model-calls`, count);
    const ours = await processorThroughput(prefix, count);
    print(
      `throughput: processor ${Math.round(ours).toLocaleString("en")} events/s (target 200,000: ${(ours / 200_000).toFixed(2)}×), bare kafkajs consumer ${Math.round(bare).toLocaleString("en")} events/s, processor/bare ${(ours / bare).toFixed(2)}`,
    );
  }
  if (sections.has("late")) await lateFloods(Math.min(count, 300_000));
}

runBench(main);
