/**
 * Producer benchmarks: `npm run bench:producer` (needs the local stack: `npm run stack:up`).
 *
 * 1. Hot-path cost of `interceptModelCall` with usage given (no tokenizing), per call, p50/p99.
 * 2. Tokenizer cost for a 1 KB and a 10 KB prompt.
 * 3. Sustained publish throughput from this process to the broker through KafkaExporter, and the
 *    same run's figure for Kafka's own Java producer (`ProducerPerformance`, from the kafka-tools
 *    jar the stack fetched) with the same record size and compression, as a ratio.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";

import { AvroCodec } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { loadConnectionConfig } from "../config/index.js";
import type { Compression } from "../kafka/index.js";
import { KafkaExporter } from "../producer/exporters/kafka.js";
import type { EventExporter } from "../producer/exporters/types.js";
import { instrument } from "../producer/interceptor.js";
import { silentLogger } from "../producer/logger.js";
import { countTokens, loadEncoding } from "../producer/tokens.js";
import { loadStackConfig } from "../stack/config.js";
import { findJava } from "../stack/process.js";
import { runBench } from "./run.js";

const run = promisify(execFile);

function print(line: string): void {
  process.stdout.write(`${line}\n`);
}

function percentile(sorted: Float64Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
}

const seedCall = {
  model: "gpt-4o",
  usage: { promptTokens: 412, completionTokens: 96 },
  confidence: 0.64,
  confidenceGateThreshold: 0.7,
  highRiskPath: true,
  deterministicFallbackTriggered: true,
  promptDiffScore: 0.42,
  shadowAgreement: false,
  isGoldenFinancialScenario: true,
  goldenScenarioPassed: true,
} as const;

/** An exporter that only counts: isolates the interceptor's own cost. */
class CountingExporter implements EventExporter {
  count = 0;
  export(): void {
    this.count++;
  }
  flush() {
    return Promise.resolve({ complete: true, remaining: 0 });
  }
  shutdown() {
    return this.flush();
  }
  stats() {
    return { sent: this.count, dropped: 0, retried: 0, buffered: 0 };
  }
}

async function hotPath(label: string, exporter: EventExporter, calls: number): Promise<void> {
  const interceptor = instrument({ serviceName: "bench", exporter, logger: silentLogger });
  for (let i = 0; i < 20_000; i++) await interceptor.interceptModelCall(seedCall);
  const times = new Float64Array(calls);
  for (let i = 0; i < calls; i++) {
    const started = performance.now();
    await interceptor.interceptModelCall(seedCall);
    times[i] = (performance.now() - started) * 1000;
  }
  times.sort();
  const p50 = percentile(times, 0.5);
  const p99 = percentile(times, 0.99);
  print(
    `${label.padEnd(44)} p50 ${p50.toFixed(2).padStart(6)} µs (${(5 / p50).toFixed(2)}× target 5)   p99 ${p99
      .toFixed(2)
      .padStart(
        6,
      )} µs (${(50 / p99).toFixed(2)}× target 50)   p99.9 ${percentile(times, 0.999).toFixed(1)} µs`,
  );
  await interceptor.shutdown();
}

/** English-like text from a fixed vocabulary and a seeded generator (the same every run). */
function prose(bytes: number, seed: number): string {
  const words =
    "the model returned an answer with low confidence so the fallback path approved a payment of four hundred dollars to merchant account after shadow review flagged disagreement on risk score policy limits customer balance transaction history".split(
      " ",
    );
  let state = seed;
  let text = "";
  while (text.length < bytes) {
    state = (state * 1103515245 + 12345) >>> 0;
    text += `${words[state % words.length] ?? "x"}${state % 11 === 0 ? ". " : " "}`;
  }
  return text.slice(0, bytes);
}

async function tokenizer(): Promise<void> {
  await loadEncoding("o200k_base");
  for (const size of [1024, 10 * 1024]) {
    const texts = Array.from({ length: 50 }, (_, i) => prose(size, i + 1));
    for (const text of texts.slice(0, 5)) await countTokens("gpt-4o", text);
    const started = performance.now();
    let tokens = 0;
    for (const text of texts) tokens += await countTokens("gpt-4o", text);
    const micros = ((performance.now() - started) * 1000) / texts.length;
    print(
      `tokenize ${String(size / 1024).padStart(2)} KB prompt (o200k_base)          ${micros.toFixed(0).padStart(6)} µs per prompt, ${(tokens / texts.length).toFixed(0)} tokens`,
    );
  }
}

/**
 * Publishes `events` pre-built events (six services, so six keys) through one KafkaExporter as
 * fast as it takes them, yielding to the event loop every 1 000 as a serving host would, and
 * times until the last one is acknowledged.
 */
async function throughput(
  compression: Compression,
  events: readonly ModelCallEvent[],
): Promise<{ rate: number; recordBytes: number }> {
  const config = loadConnectionConfig();
  const topic = `${config.topicPrefix}bench-${compression}-${Date.now()}`;
  const exporter = new KafkaExporter({
    topic,
    topicPartitions: 6,
    compression,
    maxQueueSize: events.length + 1,
    maxBatchSize: 2000,
    lingerMs: 5,
    logger: silentLogger,
  });
  // Warm-up: connects, creates the topic, registers the schema.
  void exporter.export(events[0] as ModelCallEvent);
  await exporter.flush(60_000);
  const started = performance.now();
  for (let i = 0; i < events.length; i++) {
    void exporter.export(events[i] as ModelCallEvent);
    if (i % 1000 === 999) await new Promise((resolve) => setImmediate(resolve));
  }
  const flushed = await exporter.flush(300_000);
  const seconds = (performance.now() - started) / 1000;
  if (!flushed.complete) throw new Error(`${flushed.remaining} events not delivered`);
  await exporter.shutdown();
  const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
    registryUrl: config.schemaRegistryUrl,
    subject: `${topic}-value`,
  });
  const recordBytes = Math.round(
    events.slice(0, 100).reduce((sum, event) => sum + codec.encode(event).length, 0) / 100,
  );
  return { rate: events.length / seconds, recordBytes };
}

async function javaBaseline(
  compression: Compression,
  events: number,
  recordBytes: number,
): Promise<number> {
  const stack = loadStackConfig();
  const java = await findJava({
    purpose: "ProducerPerformance",
    minMajor: 17,
    home: stack.javaHome,
    homeKey: "STACK_JAVA_HOME",
    searchJvmFolder: false,
  });
  const config = loadConnectionConfig();
  const { stdout } = await run(
    java.executable,
    [
      "-Xmx512m",
      "-cp",
      `${join(stack.distDir, `kafka-${stack.versions.kafka}`, "libs")}/*`,
      "org.apache.kafka.tools.ProducerPerformance",
      "--topic",
      `${config.topicPrefix}bench-java-${compression}-${Date.now()}`,
      "--num-records",
      String(events),
      "--record-size",
      String(recordBytes),
      "--throughput",
      "-1",
      "--producer-props",
      `bootstrap.servers=${config.kafkaBrokers.join(",")}`,
      "acks=all",
      "enable.idempotence=true",
      `compression.type=${compression}`,
      "linger.ms=5",
      "batch.size=1048576",
    ],
    { timeout: 600_000, maxBuffer: 16 * 1024 * 1024 },
  );
  const match = /(\d+) records sent, ([\d.]+) records\/sec/.exec(
    stdout
      .split("\n")
      .filter((line) => line.includes("records sent"))
      .pop() ?? "",
  );
  if (!match?.[2]) throw new Error(`unexpected ProducerPerformance output:\n${stdout}`);
  return Number(match[2]);
}

async function main(): Promise<void> {
  print(`node ${process.version}; one process, one core for the host's thread\n`);
  await hotPath("interceptModelCall, counting exporter", new CountingExporter(), 100_000);
  await hotPath(
    "interceptModelCall, KafkaExporter (live)",
    new KafkaExporter({
      maxQueueSize: 200_000,
      logger: silentLogger,
      topic: `${loadConnectionConfig().topicPrefix}bench-hot-${Date.now()}`,
    }),
    100_000,
  );
  print("");
  await tokenizer();
  print("");
  const count = 200_000;
  const interceptors = Array.from({ length: 6 }, (_, i) =>
    instrument({ serviceName: `bench-${i}`, logger: silentLogger }),
  );
  const events: ModelCallEvent[] = [];
  for (let i = 0; i < count; i++) {
    const event = await interceptors[i % 6]?.interceptModelCall(seedCall);
    if (event) events.push(event);
  }
  for (const compression of ["none", "gzip", "snappy"] as const) {
    const ours = await throughput(compression, events);
    const java = await javaBaseline(compression, count, ours.recordBytes);
    print(
      `publish ${count.toLocaleString("en")} × ${ours.recordBytes} B, ${compression.padEnd(6)}  node ${Math.round(ours.rate).toLocaleString("en").padStart(8)}/s (${(ours.rate / 100_000).toFixed(2)}× target 100,000)   java ProducerPerformance ${Math.round(java).toLocaleString("en").padStart(8)}/s   node/java ${(ours.rate / java).toFixed(2)}`,
    );
  }
}

runBench(main);
