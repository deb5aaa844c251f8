/**
 * End-to-end benchmark: `npm run bench:e2e` (needs the local stack: `npm run stack:up`, and
 * PostgreSQL at DATABASE_URL). Everything runs on this one machine, each part in its own process:
 *
 * 1. Sustained throughput, nothing lost. BENCH_PRODUCERS producer processes (default 3;
 *    `bench/e2e-producer.ts`: simulated MCP server replicas from `cli/fleet.ts`, each a real
 *    `instrument()` interceptor with its own `KafkaExporter`) make BENCH_RATE model calls/s in
 *    total (default 50 000) for BENCH_SECONDS (default 30), while one processor process and one
 *    sink process, spawned as the CLI runs them, window the events and store them in a fresh
 *    PostgreSQL database. It waits until every event the producers sent is a row in `spans` and
 *    prints lost = sent − spans (must be 0), the producers' achieved rate, and the sustained
 *    end-to-end rate = spans stored / (first produce → last span stored), against 50 000/s.
 * 2. Latency to the rollup row: per service window, `metric_rollups.updated_at` (the time of the
 *    sink's write transaction) minus the window's end + grace (the earliest it could close), split
 *    at the rollup record's timestamp on the metric-rollups topic into the processor's part and
 *    the sink's; and per event, that row's `updated_at` minus the event's `end_time`. p50 and p99.
 * 3. Replay: BENCH_REPLAY_EVENTS events (default 1 000 000) pre-produced to a fresh topic, then
 *    `mcp-observatory replay --json --window 60s --grace 10s` timed: events/s from its summary,
 *    and by the wall clock including process start-up, against 100 000/s.
 *
 * Where the time goes: stage rates over time (the producers' exporters, the processor's and the
 * sink's Prometheus endpoints), and the CPU seconds of every process involved (producers,
 * processor, sink, Kafka, registry, PostgreSQL) per phase, as CPU cost per 1 000 events and the
 * cores each stage would need at the target rate. BENCH_PROFILE=1 also CPU-profiles the sink, the
 * processor and the first producer (`--cpu-prof`) and prints their top self-time functions.
 *
 * Other settings: BENCH_REPLICAS (replicas per service, default 2), BENCH_WINDOW_MS (5000),
 * BENCH_GRACE_MS (1000), BENCH_IDLE_MS (3000), BENCH_COMPRESSION (none | snappy | gzip, default
 * none), BENCH_BATCH (exporter batch, 2000), BENCH_LINGER_MS (20), BENCH_QUEUE (exporter buffer,
 * 200 000), BENCH_TICK_MS (fleet tick, 50), BENCH_DRAIN_TIMEOUT_S (how long to wait for the sink
 * after the producers stop, 180), BENCH_PRODUCER_NICE (nice value of the producer processes,
 * default 0; e.g. 10 lets the pipeline go first, as if the producers ran on other machines),
 * BENCH_KEEP=1 (keep the databases and topics).
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { availableParallelism, setPriority, tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import kafkajs from "kafkajs";
import pg from "pg";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { FLEET_SERVICES } from "../cli/fleet.js";
import { checkKafka, checkPostgres, checkRegistry } from "../cli/preflight.js";
import { loadConnectionConfig, topicNames } from "../config/index.js";
import {
  connectAdmin,
  createRecordProducer,
  type Compression,
  type OutgoingRecord,
} from "../kafka/index.js";
import { loadStackConfig, stackStatus } from "../stack/index.js";
import { sampleEvent } from "../test/support/events.js";
import type { ProducerProgress, ProducerResult } from "./e2e-producer.js";
import { runBench } from "./run.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const TARGET_E2E = 50_000;
const TARGET_REPLAY = 100_000;

function intEnv(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw.replace(/_/g, ""));
  if (!Number.isFinite(value) || value < 0)
    throw new Error(`${name}: expected a number, got ${raw}`);
  return value;
}

const settings = {
  producers: Math.max(1, Math.floor(intEnv("BENCH_PRODUCERS", 3))),
  rate: intEnv("BENCH_RATE", 50_000),
  seconds: intEnv("BENCH_SECONDS", 30),
  replicas: Math.max(1, Math.floor(intEnv("BENCH_REPLICAS", 2))),
  replayEvents: Math.floor(intEnv("BENCH_REPLAY_EVENTS", 1_000_000)),
  windowMs: intEnv("BENCH_WINDOW_MS", 5000),
  graceMs: intEnv("BENCH_GRACE_MS", 1000),
  idleMs: intEnv("BENCH_IDLE_MS", 3000),
  batch: intEnv("BENCH_BATCH", 2000),
  lingerMs: intEnv("BENCH_LINGER_MS", 20),
  queue: intEnv("BENCH_QUEUE", 200_000),
  tickMs: intEnv("BENCH_TICK_MS", 50),
  drainTimeoutMs: intEnv("BENCH_DRAIN_TIMEOUT_S", 180) * 1000,
  compression: (process.env.BENCH_COMPRESSION ?? "none") as Compression,
  producerNice: Math.min(19, Math.floor(intEnv("BENCH_PRODUCER_NICE", 0))),
  keep: process.env.BENCH_KEEP === "1",
  profile: process.env.BENCH_PROFILE === "1",
};
if (!["none", "snappy", "gzip"].includes(settings.compression))
  throw new Error(`BENCH_COMPRESSION: expected none, snappy or gzip`);

const config = loadConnectionConfig();

// ---------------------------------------------------------------------------------------------
// Output

function print(line = ""): void {
  process.stdout.write(`${line}\n`);
}

function n(value: number): string {
  return Math.round(value).toLocaleString("en");
}

function secs(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
}

// ---------------------------------------------------------------------------------------------
// Child processes

interface Child {
  readonly name: string;
  readonly proc: ChildProcess;
  readonly exited: Promise<number | null>;
  readonly startedAtMs: number;
}

const children = new Set<Child>();

/**
 * Runs `node --import tsx <args>` from the repository root. Its stdout lines go to `onLine`; its
 * stderr lines are forwarded to ours, prefixed with its name.
 */
function spawnNode(
  name: string,
  args: readonly string[],
  env: Readonly<Record<string, string>>,
  onLine: (line: string) => void,
  nodeFlags: readonly string[] = [],
): Child {
  const proc = spawn(process.execPath, [...nodeFlags, "--import", "tsx", ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  createInterface({ input: proc.stdout }).on("line", onLine);
  createInterface({ input: proc.stderr }).on("line", (line) => {
    process.stderr.write(`[${name}] ${line}\n`);
  });
  const exited = new Promise<number | null>((resolve) => {
    proc.once("exit", (code) => {
      resolve(code);
    });
    proc.once("error", (error) => {
      process.stderr.write(`[${name}] could not start: ${error.message}\n`);
      resolve(null);
    });
  });
  const child: Child = { name, proc, exited, startedAtMs: Date.now() };
  children.add(child);
  void exited.then(() => children.delete(child));
  return child;
}

/** SIGTERM, then SIGKILL after `timeoutMs`; resolves with the exit code. */
async function stopChild(child: Child, timeoutMs = 20_000): Promise<number | null> {
  if (child.proc.exitCode !== null || child.proc.signalCode !== null) return child.exited;
  child.proc.kill("SIGTERM");
  const timer = setTimeout(() => {
    process.stderr.write(`[${child.name}] did not stop within ${timeoutMs} ms: SIGKILL\n`);
    child.proc.kill("SIGKILL");
  }, timeoutMs);
  const code = await child.exited;
  clearTimeout(timer);
  return code;
}

/** A pipeline service (processor or sink) and what its JSON log said. */
interface Service {
  readonly child: Child;
  /** Resolves once it logged that it started; rejects if it exits first or takes too long. */
  readonly ready: Promise<void>;
  readonly log: { metricsUrl?: string };
}

/**
 * Spawns `cli/main.ts <command>` with LOG_LEVEL=info so its metrics URL and readiness can be read
 * from its log; only its warnings and errors are forwarded.
 */
function spawnService(
  command: "processor" | "sink",
  env: Readonly<Record<string, string>>,
  nodeFlags: readonly string[],
): Service {
  let started: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => {
    started = resolve;
  });
  const log: { metricsUrl?: string } = {};
  const child = spawnNode(
    command,
    ["cli/main.ts", command],
    { ...env, LOG_LEVEL: "info" },
    (line) => {
      let entry: { level?: number; msg?: string; url?: string; metrics?: string };
      try {
        entry = JSON.parse(line) as typeof entry;
      } catch {
        process.stderr.write(`[${command}] ${line}\n`);
        return;
      }
      if ((entry.level ?? 0) >= 40) process.stderr.write(`[${command}] ${line}\n`);
      if (entry.msg === "metrics endpoint" && entry.url !== undefined) log.metricsUrl = entry.url;
      if (entry.msg === "sink started" && entry.metrics !== undefined)
        log.metricsUrl = entry.metrics;
      if (entry.msg === "processor started" || entry.msg === "sink started") started();
    },
    nodeFlags,
  );
  let timer: NodeJS.Timeout | undefined;
  const readyOrFailed = Promise.race([
    ready,
    child.exited.then((code) => {
      throw new Error(`${command} exited with code ${code} before it started`);
    }),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reject(new Error(`${command} did not start within 90 s`));
      }, 90_000);
    }),
  ]).finally(() => {
    clearTimeout(timer);
  });
  return { child, ready: readyOrFailed, log };
}

// ---------------------------------------------------------------------------------------------
// Prometheus endpoints

type Samples = readonly {
  readonly name: string;
  readonly labels: string;
  readonly value: number;
}[];

async function scrape(url: string | undefined): Promise<Samples | undefined> {
  if (url === undefined) return undefined;
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
    if (!response.ok) return undefined;
    const text = await response.text();
    const samples: { name: string; labels: string; value: number }[] = [];
    for (const line of text.split("\n")) {
      const match = /^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (match?.[1] !== undefined && match[3] !== undefined)
        samples.push({ name: match[1], labels: match[2] ?? "", value: Number(match[3]) });
    }
    return samples;
  } catch {
    return undefined;
  }
}

/** Sum of a metric's samples whose labels contain every `filter` fragment. */
function metric(samples: Samples | undefined, name: string, ...filter: string[]): number {
  if (!samples) return Number.NaN;
  let sum = 0;
  for (const sample of samples)
    if (sample.name === name && filter.every((part) => sample.labels.includes(part)))
      sum += sample.value;
  return sum;
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc

let clockTicks = 100;
try {
  clockTicks = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
} catch {
  // Linux's usual value.
}

/** utime + stime (+ cutime + cstime: reaped children) of a process, seconds. */
function processCpu(pid: number | undefined, withChildren = false): number {
  if (pid === undefined) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const at = (field: number): number => Number(fields[field - 3] ?? 0);
    return (at(14) + at(15) + (withChildren ? at(16) + at(17) : 0)) / clockTicks;
  } catch {
    return 0;
  }
}

/** Every PostgreSQL process's CPU, with the postmaster's reaped backends, seconds. */
function postgresCpu(): number {
  let total = 0;
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, "utf8").trim() !== "postgres") continue;
    } catch {
      continue;
    }
    total += processCpu(Number(entry), true);
  }
  return total;
}

/** Busy, interrupt (mostly loopback networking) and total CPU seconds of the whole machine. */
function machineCpu(): { busy: number; irq: number; total: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
  const values = line.trim().split(/\s+/).slice(1).map(Number);
  const total = values.slice(0, 8).reduce((sum, value) => sum + value, 0);
  const idle = (values[3] ?? 0) + (values[4] ?? 0);
  const irq = (values[5] ?? 0) + (values[6] ?? 0);
  return { busy: (total - idle) / clockTicks, irq: irq / clockTicks, total: total / clockTicks };
}

interface CpuSnapshot {
  readonly atMs: number;
  readonly machine: { busy: number; irq: number; total: number };
  readonly processor: number;
  readonly sink: number;
  readonly kafka: number;
  readonly registry: number;
  readonly postgres: number;
  /** This process. */
  readonly bench: number;
  /** This process's reaped children (producers, replay), seconds. */
  readonly reaped: number;
  /** The live producer processes. */
  readonly producers: number;
}

function snapshot(pids: {
  processor?: number;
  sink?: number;
  kafka?: number;
  registry?: number;
  producers?: readonly (number | undefined)[];
}): CpuSnapshot {
  const self = process.cpuUsage();
  return {
    atMs: Date.now(),
    machine: machineCpu(),
    processor: processCpu(pids.processor),
    sink: processCpu(pids.sink),
    kafka: processCpu(pids.kafka),
    registry: processCpu(pids.registry),
    postgres: postgresCpu(),
    bench: (self.user + self.system) / 1e6,
    reaped: processCpu(process.pid, true) - processCpu(process.pid),
    producers: (pids.producers ?? []).reduce<number>((sum, pid) => sum + processCpu(pid), 0),
  };
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL and Kafka housekeeping

function databaseUrl(name: string): string {
  const url = new URL(config.databaseUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/** `cli/main.ts migrate` creates the missing database and applies the schema. */
async function createDatabase(name: string): Promise<string> {
  const url = databaseUrl(name);
  const child = spawnNode(
    `migrate ${name}`,
    ["cli/main.ts", "migrate"],
    { DATABASE_URL: url },
    () => undefined,
  );
  const code = await child.exited;
  if (code !== 0) throw new Error(`migrate ${name} exited with code ${code}`);
  return url;
}

async function dropDatabases(names: readonly string[]): Promise<void> {
  const admin = new pg.Client({ connectionString: databaseUrl("postgres") });
  await admin.connect();
  try {
    for (const name of names) await admin.query(`drop database if exists "${name}" with (force)`);
  } finally {
    await admin.end();
  }
}

async function deleteTopicsAndGroups(
  prefixes: readonly string[],
  groups: readonly string[],
): Promise<void> {
  const kafka = new kafkajs.Kafka({
    clientId: "bench-e2e-cleanup",
    brokers: [...config.kafkaBrokers],
    logLevel: kafkajs.logLevel.NOTHING,
  });
  const admin = kafka.admin();
  await admin.connect();
  try {
    const topics = (await admin.listTopics()).filter((topic) =>
      prefixes.some((prefix) => topic.startsWith(prefix)),
    );
    if (topics.length > 0) await admin.deleteTopics({ topics, timeout: 30_000 });
    if (groups.length > 0) await admin.deleteGroups([...groups]).catch(() => undefined);
  } finally {
    await admin.disconnect();
  }
}

async function scalar(pool: pg.Pool, sql: string, params: unknown[] = []): Promise<number> {
  const result = await pool.query<{ value: string | number | null }>(sql, params);
  return Number(result.rows[0]?.value ?? 0);
}

/**
 * When the processor produced each service-total rollup: the record timestamps on the
 * metric-rollups topic, by `service|window_end` (µs).
 */
async function rollupRecordTimes(prefix: string): Promise<Map<string, number>> {
  const topic = topicNames(prefix).metricRollups;
  const codec = await AvroCodec.register(METRIC_ROLLUP, {
    registryUrl: config.schemaRegistryUrl,
    subject: valueSubject(topic),
  });
  const kafka = new kafkajs.Kafka({
    clientId: "bench-e2e-rollups",
    brokers: [...config.kafkaBrokers],
    logLevel: kafkajs.logLevel.NOTHING,
  });
  const admin = kafka.admin();
  await admin.connect();
  const offsets = await admin.fetchTopicOffsets(topic);
  const ends = new Map(offsets.map((entry) => [entry.partition, BigInt(entry.high)]));
  const pending = new Set(
    offsets.filter((entry) => BigInt(entry.high) > BigInt(entry.low)).map((e) => e.partition),
  );
  const times = new Map<string, number>();
  const groupId = `bench-e2e-rollups-${Date.now()}`;
  const consumer = kafka.consumer({ groupId });
  try {
    if (pending.size === 0) return times;
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`reading ${topic} took over 60 s`));
      }, 60_000);
      void consumer.run({
        eachBatch: async ({ batch }) => {
          const end = ends.get(batch.partition) ?? 0n;
          for (const message of batch.messages) {
            if (BigInt(message.offset) >= end) break;
            const decoded = await codec.decode(message.value ?? Buffer.alloc(0));
            if (decoded.ok && decoded.value.model === null)
              times.set(
                `${decoded.value.service}|${decoded.value.window_end}`,
                Number(message.timestamp),
              );
            if (BigInt(message.offset) + 1n >= end) pending.delete(batch.partition);
          }
          if (pending.size === 0) {
            clearTimeout(timer);
            resolve();
          }
        },
      });
    });
  } finally {
    await consumer.disconnect();
    await admin.deleteGroups([groupId]).catch(() => undefined);
    await admin.disconnect();
  }
  return times;
}

// ---------------------------------------------------------------------------------------------
// CPU profiles

/** Top self-time functions of the largest `.cpuprofile` in `dir` (the main thread's). */
function summarizeProfile(dir: string, label: string, top = 12): void {
  let files: string[];
  try {
    files = readdirSync(dir).filter((file) => file.endsWith(".cpuprofile"));
  } catch {
    files = [];
  }
  const file = files
    .map((name) => join(dir, name))
    .sort((a, b) => statSync(b).size - statSync(a).size)[0];
  if (file === undefined) {
    print(`  ${label}: no profile written`);
    return;
  }
  interface CallFrame {
    functionName: string;
    url: string;
    lineNumber: number;
  }
  const profile = JSON.parse(readFileSync(file, "utf8")) as {
    nodes: { id: number; callFrame: CallFrame; children?: number[] }[];
    samples: number[];
    timeDeltas: number[];
  };
  const frames = new Map(profile.nodes.map((node) => [node.id, node.callFrame]));
  const parents = new Map<number, number>();
  for (const node of profile.nodes)
    for (const child of node.children ?? []) parents.set(child, node.id);
  const where = (frame: CallFrame): string =>
    frame.url
      .replace(/^file:\/\//, "")
      .replace(ROOT, "")
      .replace(/^.*node_modules\/((@[^/]+\/)?[^/]+)\/.*$/, "$1");
  const isOwn = (frame: CallFrame | undefined): boolean =>
    frame !== undefined && frame.url !== "" && !frame.url.startsWith("node:");
  /** The nearest caller in application or library code (natives and node: internals have none of their own). */
  const owner = (id: number): CallFrame | undefined => {
    let at: number | undefined = id;
    while (at !== undefined && !isOwn(frames.get(at))) at = parents.get(at);
    return at === undefined ? undefined : frames.get(at);
  };
  const byFunction = new Map<string, number>();
  const byModule = new Map<string, number>();
  let total = 0;
  let idle = 0;
  profile.samples.forEach((id, i) => {
    const delta = profile.timeDeltas[i] ?? 0;
    const frame = frames.get(id);
    if (!frame) return;
    total += delta;
    if (frame.functionName === "(idle)") {
      idle += delta;
      return;
    }
    const own = isOwn(frame) ? frame : owner(id);
    const module = own ? where(own) : frame.functionName;
    const name =
      `${frame.functionName || "(anonymous)"}${frame.url ? ` ${where(frame)}:${frame.lineNumber + 1}` : ""}` +
      (own && own !== frame ? ` ← ${own.functionName || "(anonymous)"} ${module}` : "");
    byFunction.set(name, (byFunction.get(name) ?? 0) + delta);
    byModule.set(module, (byModule.get(module) ?? 0) + delta);
  });
  const busy = total - idle;
  print(
    `  ${label}: ${secs(busy / 1000)} busy of ${secs(total / 1000)} profiled; top self time (share of busy):`,
  );
  for (const [name, micros] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top))
    print(`    ${((100 * micros) / busy).toFixed(1).padStart(5)}%  ${name.slice(0, 120)}`);
  print(
    `    by module (natives and node: internals counted to their caller): ${[...byModule]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 8)
      .map(([module, micros]) => `${module.slice(0, 50)} ${((100 * micros) / busy).toFixed(0)}%`)
      .join(", ")}`,
  );
}

// ---------------------------------------------------------------------------------------------
// 1 + 2: the live pipeline

interface LiveOutcome {
  readonly ok: boolean;
}

async function live(stamp: string, cleanup: Cleanup): Promise<LiveOutcome> {
  const prefix = `bench-e2e-${stamp}.`;
  const database = `mcpo_bench_e2e_${stamp}`;
  cleanup.databases.push(database);
  cleanup.prefixes.push(prefix);
  const url = await createDatabase(database);
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  cleanup.pools.push(pool);

  const profileDir = settings.profile ? mkdtempSync(join(tmpdir(), "mcpo-e2e-prof-")) : undefined;
  const profileFlags = (name: string): string[] =>
    profileDir ? ["--cpu-prof", `--cpu-prof-dir=${join(profileDir, name)}`] : [];
  const serviceEnv = {
    KAFKA_BROKERS: config.kafkaBrokers.join(","),
    SCHEMA_REGISTRY_URL: config.schemaRegistryUrl,
    DATABASE_URL: url,
    MCPO_TOPIC_PREFIX: prefix,
    MCPO_WINDOW_MS: String(settings.windowMs),
    MCPO_GRACE_MS: String(settings.graceMs),
    MCPO_IDLE_TIMEOUT_MS: String(settings.idleMs),
    MCPO_METRICS_PORT: "0",
    // Groups of this run only: someone else's processor or sink must not join them.
    MCPO_PROCESSOR_GROUP: `bench-e2e-processor-${stamp}`,
    MCPO_SINK_GROUP: `bench-e2e-sink-${stamp}`,
  };
  cleanup.groups.push(serviceEnv.MCPO_PROCESSOR_GROUP, serviceEnv.MCPO_SINK_GROUP);
  const startup = Date.now();
  // One after the other: started together on fresh topics, both create them and the loser of
  // that race can fail to start ("This server does not host this topic-partition").
  const processor = spawnService("processor", serviceEnv, profileFlags("processor"));
  await processor.ready;
  const sink = spawnService("sink", serviceEnv, profileFlags("sink"));
  await sink.ready;
  print(
    `processor and sink started in ${secs(Date.now() - startup)} (topic prefix ${prefix}, database ${database})`,
  );

  let stackPids: { kafka?: number; registry?: number } = {};
  try {
    for (const status of await stackStatus(loadStackConfig()))
      if ((status.service === "kafka" || status.service === "registry") && status.pid !== undefined)
        stackPids = { ...stackPids, [status.service]: status.pid };
  } catch {
    // Not the local stack's processes (e.g. Docker): their CPU is left out.
  }
  const pids = { processor: processor.child.proc.pid, sink: sink.child.proc.pid, ...stackPids };

  // The producers: services split between the processes, rate in proportion.
  const groups: string[][] = Array.from({ length: settings.producers }, () => []);
  FLEET_SERVICES.forEach((service, i) => groups[i % settings.producers]?.push(service));
  const producerGroups = groups.filter((group) => group.length > 0);
  const startAtMs = Date.now() + 6000; // after start-up and the exporters' warm-up
  const progress = new Map<number, ProducerProgress>();
  const results: ProducerResult[] = [];
  const producers = producerGroups.map((services, index) =>
    spawnNode(
      `producer ${index}`,
      [
        "bench/e2e-producer.ts",
        JSON.stringify({
          index,
          services,
          replicas: settings.replicas,
          ratePerSecond: (settings.rate * services.length) / FLEET_SERVICES.length,
          durationMs: settings.seconds * 1000,
          startAtMs,
          tickMs: settings.tickMs,
          compression: settings.compression,
          maxBatchSize: settings.batch,
          lingerMs: settings.lingerMs,
          maxQueueSize: settings.queue,
          ...(services.includes(FLEET_SERVICES[0] ?? "")
            ? { driftingService: FLEET_SERVICES[0] }
            : {}),
        }),
      ],
      serviceEnv,
      (line) => {
        try {
          const message = JSON.parse(line) as ProducerProgress | ProducerResult;
          if (message.type === "progress") progress.set(message.index, message);
          else results.push(message);
        } catch {
          process.stderr.write(`[producer ${index}] ${line}\n`);
        }
      },
      index === 0 ? profileFlags("producer-0") : [],
    ),
  );
  if (settings.producerNice !== 0)
    for (const child of producers)
      if (child.proc.pid !== undefined) setPriority(child.proc.pid, settings.producerNice);
  print(
    `producers: ${producerGroups.length} processes${settings.producerNice === 0 ? "" : ` (nice ${settings.producerNice})`}, ${FLEET_SERVICES.length} services × ${settings.replicas} replicas (one KafkaExporter each, ` +
      `batch ${settings.batch}, linger ${settings.lingerMs} ms, compression ${settings.compression}), ${n(settings.rate)} calls/s for ${settings.seconds} s`,
  );

  // Sample every stage once a second until the producers are done and the sink caught up.
  interface Sample {
    atMs: number;
    exported: number;
    sent: number;
    processed: number;
    processorLag: number;
    stored: number;
    sinkLag: number;
    rollupsEmitted: number;
    openWindows: number;
  }
  const samples: Sample[] = [];
  const takeSample = async (): Promise<Sample> => {
    const [processorMetrics, sinkMetrics] = await Promise.all([
      scrape(processor.log.metricsUrl),
      scrape(sink.log.metricsUrl),
    ]);
    let exported = 0;
    let sent = 0;
    for (const line of progress.values()) {
      exported += line.exported;
      sent += line.sent;
    }
    for (const result of results) {
      const last = progress.get(result.index);
      exported += result.recorded - (last?.exported ?? 0);
      sent += result.sent - (last?.sent ?? 0);
    }
    const sample: Sample = {
      atMs: Date.now(),
      exported,
      sent,
      processed: metric(processorMetrics, "mcpo_processor_events_total"),
      processorLag: metric(processorMetrics, "mcpo_processor_consumer_lag"),
      stored: metric(sinkMetrics, "mcpo_sink_rows_total", 'table="spans"', 'outcome="inserted"'),
      sinkLag: metric(sinkMetrics, "mcpo_sink_consumer_lag", `topic="${prefix}model-calls"`),
      rollupsEmitted: metric(processorMetrics, "mcpo_processor_rollups_total"),
      openWindows: metric(processorMetrics, "mcpo_processor_open_windows"),
    };
    samples.push(sample);
    return sample;
  };
  const report = (sample: Sample, previous: Sample | undefined): void => {
    const dt = previous ? (sample.atMs - previous.atMs) / 1000 : 1;
    const rate = (now: number, before: number | undefined): string =>
      previous && Number.isFinite(now) && before !== undefined && Number.isFinite(before)
        ? `${n((now - before) / dt)}/s`
        : "-";
    print(
      `  t=${String(Math.round((sample.atMs - startAtMs) / 1000)).padStart(4)} s  ` +
        `produced ${n(sample.exported).padStart(9)} (${rate(sample.exported, previous?.exported)})  ` +
        `in Kafka ${n(sample.sent).padStart(9)}  processed ${n(sample.processed).padStart(9)} (${rate(sample.processed, previous?.processed)}, lag ${n(sample.processorLag)})  ` +
        `stored ${n(sample.stored).padStart(9)} (${rate(sample.stored, previous?.stored)}, lag ${n(sample.sinkLag)})`,
    );
  };

  await sleep(Math.max(0, startAtMs - Date.now()));
  const cpuStart = snapshot({ ...pids, producers: producers.map((child) => child.proc.pid) });
  let lastReported: Sample | undefined;
  const producersDone = Promise.all(producers.map((child) => child.exited));
  const fleet = { running: true };
  void producersDone.then(() => {
    fleet.running = false;
  });
  while (fleet.running) {
    await sleep(1000);
    const sample = await takeSample();
    if (!lastReported || sample.atMs - lastReported.atMs >= 4900) {
      report(sample, lastReported);
      lastReported = sample;
    }
  }
  const codes = await producersDone;
  const cpuProduced = snapshot(pids);
  if (codes.some((code) => code !== 0) || results.length !== producers.length)
    throw new Error(`producer processes exited with codes ${codes.join(", ")}`);

  const recorded = results.reduce((sum, result) => sum + result.recorded, 0);
  const sent = results.reduce((sum, result) => sum + result.sent, 0);
  const dropped = results.reduce((sum, result) => sum + result.dropped, 0);
  const firstStart = Math.min(...results.map((result) => result.startedAtMs));
  const lastEnd = Math.max(...results.map((result) => result.endedAtMs));
  const lastFlush = Math.max(...results.map((result) => result.flushedAtMs));
  // The producers' CPU from the fleet's start: reaped by this process once they exited.
  const producerCpu = cpuProduced.reaped - cpuStart.reaped - cpuStart.producers;
  const productionRate = recorded / ((lastEnd - firstStart) / 1000);
  const sentRate = sent / ((lastFlush - firstStart) / 1000);

  // Wait until every sent event is a span (or the sink stops making progress).
  const deadline = Date.now() + settings.drainTimeoutMs;
  let storedAtMs: number | undefined;
  let lastProgressAt = Date.now();
  let lastStored = -1;
  let processorCaughtUpAtMs: number | undefined;
  while (Date.now() < deadline && Date.now() - lastProgressAt < 60_000) {
    const sample = await takeSample();
    if (processorCaughtUpAtMs === undefined && sample.processed >= sent)
      processorCaughtUpAtMs = sample.atMs;
    if (sample.atMs - (lastReported?.atMs ?? 0) >= 4900) {
      report(sample, lastReported);
      lastReported = sample;
    }
    const stored = Number.isFinite(sample.stored)
      ? sample.stored
      : await scalar(pool, "select count(*) as value from spans");
    if (stored !== lastStored) {
      lastStored = stored;
      lastProgressAt = Date.now();
    }
    if (stored >= sent) {
      storedAtMs = sample.atMs;
      break;
    }
    await sleep(250);
  }
  const cpuStored = snapshot(pids);
  const spans = await scalar(pool, "select count(*) as value from spans");
  const lastInsertedAt = await scalar(
    pool,
    "select extract(epoch from max(inserted_at)) * 1000 as value from spans",
  );

  // Wait until the processor has read every event and closed every window (the last ones on its
  // idle timeout), and every rollup it emitted is a row in metric_rollups.
  const rollupDeadline = Date.now() + settings.drainTimeoutMs;
  let rollupsStoredAtMs: number | undefined;
  let rollupRows = 0;
  let lastChangeAt = Date.now();
  let lastState = "";
  let lastSample: Sample | undefined;
  while (Date.now() < rollupDeadline && Date.now() - lastChangeAt < 30_000) {
    const sample = await takeSample();
    lastSample = sample;
    if (processorCaughtUpAtMs === undefined && sample.processed >= sent)
      processorCaughtUpAtMs = sample.atMs;
    if (sample.atMs - (lastReported?.atMs ?? 0) >= 4900) {
      report(sample, lastReported);
      lastReported = sample;
    }
    rollupRows = await scalar(pool, "select count(*) as value from metric_rollups");
    const state = `${sample.processed}|${sample.rollupsEmitted}|${sample.openWindows}|${rollupRows}`;
    if (state !== lastState) {
      lastState = state;
      lastChangeAt = Date.now();
    }
    if (
      sample.processed >= sent &&
      sample.openWindows === 0 &&
      rollupRows >= sample.rollupsEmitted
    ) {
      rollupsStoredAtMs = sample.atMs;
      break;
    }
    await sleep(500);
  }
  const windowInterval = `${settings.windowMs} milliseconds`;
  const windowsWithSpans = await scalar(
    pool,
    `select count(*) as value from (select distinct service, date_bin($1::interval, end_time, timestamptz 'epoch') from spans) w`,
    [windowInterval],
  );
  const rollupWindows = await scalar(
    pool,
    "select count(*) as value from metric_rollups where scope = 'service'",
  );
  const processorStats = await scrape(processor.log.metricsUrl);
  const cpuEnd = snapshot(pids);

  // ---- figures: throughput
  const lost = sent - spans;
  print();
  print(
    `events produced: ${n(recorded)} recorded by ${results.length} producer processes, ${n(sent)} sent to Kafka, ${n(dropped)} dropped by the exporters`,
  );
  print(
    `production rate: ${n(productionRate)} calls/s achieved of ${n(settings.rate)}/s asked (${(productionRate / settings.rate).toFixed(2)}×); ` +
      `published ${n(sentRate)} events/s (first call → last exporter flushed, ${secs(lastFlush - firstStart)})`,
  );
  for (const result of results.sort((a, b) => a.index - b.index))
    print(
      `  producer ${result.index}: ${result.services.join(", ")} × ${result.replicas}: ${n(result.recorded)} calls in ${secs(result.endedAtMs - result.startedAtMs)} = ` +
        `${n(result.recorded / ((result.endedAtMs - result.startedAtMs) / 1000))}/s of ${n(result.targetRate)}/s asked; flushed ${secs(result.flushedAtMs - result.endedAtMs)} after; CPU ${secs(result.cpuMs)}; ` +
        `exporters held up to ${n(result.peakBuffered)} events; event loop blocked up to ${n(result.eventLoopDelayMaxMs)} ms (p99 ${n(result.eventLoopDelayP99Ms)} ms)`,
    );
  if (storedAtMs === undefined)
    print(
      `spans: ${n(spans)} of ${n(sent)} after waiting ${secs(Date.now() - lastEnd)} past the producers' end: the sink did NOT catch up within BENCH_DRAIN_TIMEOUT_S=${settings.drainTimeoutMs / 1000}`,
    );
  else
    print(
      `spans: ${n(spans)} rows = sent after ${secs(storedAtMs - firstStart)} from the first call (${secs(storedAtMs - lastEnd)} after the producers stopped; ` +
        `max(spans.inserted_at) ${secs(lastInsertedAt - firstStart)})`,
    );
  print(
    `lost = sent - spans = ${n(sent)} - ${n(spans)} = ${n(lost)}${lost === 0 ? " (nothing lost)" : "  <-- FAIL"}`,
  );
  const e2eRate = spans / (((storedAtMs ?? Date.now()) - firstStart) / 1000);
  print(
    `sustained end-to-end: ${n(e2eRate)} events/s (spans stored / first call → last span stored; target ${n(TARGET_E2E)}: ${(e2eRate / TARGET_E2E).toFixed(2)}×)`,
  );

  // ---- figures: latency
  const rows = await pool.query<{ service: string; end_ms: string; at_ms: string }>(
    `select service, extract(epoch from window_end) * 1000 as end_ms, extract(epoch from updated_at) * 1000 as at_ms
     from metric_rollups where scope = 'service' order by service, window_end`,
  );
  const emitted = await rollupRecordTimes(prefix).catch((error: unknown) => {
    process.stderr.write(`reading the rollups topic failed: ${String(error)}\n`);
    return new Map<string, number>();
  });
  const lastWindowOf = new Map<string, number>();
  for (const row of rows.rows)
    lastWindowOf.set(row.service, Math.max(lastWindowOf.get(row.service) ?? 0, Number(row.end_ms)));
  const all: number[] = [];
  const watermarkClosed: number[] = [];
  const processorPart: number[] = [];
  const sinkPart: number[] = [];
  for (const row of rows.rows) {
    const closeMs = Number(row.end_ms) + settings.graceMs;
    const latency = Number(row.at_ms) - closeMs;
    all.push(latency);
    if (Number(row.end_ms) === lastWindowOf.get(row.service)) continue;
    watermarkClosed.push(latency);
    const emittedAt = emitted.get(`${row.service}|${Math.round(Number(row.end_ms) * 1000)}`);
    if (emittedAt !== undefined) {
      processorPart.push(emittedAt - closeMs);
      sinkPart.push(Number(row.at_ms) - emittedAt);
    }
  }
  const sorted = (values: number[]): number[] => values.sort((a, b) => a - b);
  const p = (values: readonly number[]): string =>
    `p50 ${n(percentile(values, 0.5))} ms, p99 ${n(percentile(values, 0.99))} ms`;
  sorted(all);
  sorted(watermarkClosed);
  sorted(processorPart);
  sorted(sinkPart);
  print();
  print(
    `rollup rows: ${n(rollupRows)} in metric_rollups, ${n(rollupWindows)} of them service totals of ${secs(settings.windowMs)} windows; ` +
      (rollupsStoredAtMs === undefined
        ? `NOT complete: processor emitted ${n(lastSample?.rollupsEmitted ?? Number.NaN)}, ${n(lastSample?.openWindows ?? Number.NaN)} windows still open  <-- FAIL`
        : `all the processor emitted, ${secs(rollupsStoredAtMs - lastEnd)} after the producers stopped`),
  );
  if (windowsWithSpans !== rollupWindows)
    print(
      `  ${n(windowsWithSpans)} (service, window) pairs have spans: ${n(windowsWithSpans - rollupWindows)} windows got only late events, so no rollup of their own`,
    );
  print(
    `latency window close → rollup row (metric_rollups.updated_at − (window_end + ${settings.graceMs} ms grace)), ${all.length} service windows: ` +
      `${p(all)}, max ${n(all.at(-1) ?? Number.NaN)} ms`,
  );
  print(
    `  without each service's last window (closed by the ${settings.idleMs} ms idle timeout, not the watermark), ${watermarkClosed.length} windows: ${p(watermarkClosed)}`,
  );
  print(
    `  split at the rollup record's timestamp on ${prefix}metric-rollups (${processorPart.length} windows): ` +
      `processor (close → record) ${p(processorPart)}; sink (record → row) ${p(sinkPart)}`,
  );
  const perEvent = await pool.query<{ events: string; p50: number | null; p99: number | null }>(
    `select count(*) as events,
            percentile_cont(0.5) within group (order by ms) as p50,
            percentile_cont(0.99) within group (order by ms) as p99
     from (select extract(epoch from r.updated_at - s.end_time) * 1000 as ms
           from spans s join metric_rollups r
             on r.service = s.service and r.scope = 'service'
            and r.window_start = date_bin($1::interval, s.end_time, timestamptz 'epoch')) x`,
    [windowInterval],
  );
  const eventRow = perEvent.rows[0];
  print(
    `latency event end_time → its window's rollup row (updated_at), ${n(Number(eventRow?.events ?? 0))} of ${n(spans)} events ` +
      `(the others' windows have no rollup row): p50 ${n(eventRow?.p50 ?? Number.NaN)} ms, p99 ${n(eventRow?.p99 ?? Number.NaN)} ms (includes waiting for the ${secs(settings.windowMs)} window to end)`,
  );
  const late = await scalar(
    pool,
    "select coalesce(sum(late), 0) as value from metric_rollups where scope = 'service'",
  );
  const alerts = await scalar(pool, "select count(*) as value from alerts");
  print(
    `late events (beyond the grace period): ${n(late)}; alert rows: ${n(alerts)}; processor: ${n(metric(processorStats, "mcpo_processor_events_total"))} events, ${n(metric(processorStats, "mcpo_processor_rollups_total"))} rollups`,
  );
  const distinctTimes = await scalar(pool, "select count(distinct end_time) as value from spans");
  const largestGap = await scalar(
    pool,
    `select coalesce(max(extract(epoch from gap)), 0) * 1000 as value from (
       select end_time - lag(end_time) over (partition by service order by end_time) as gap
       from (select distinct service, end_time from spans) d) g`,
  );
  print(
    `event times: ${n(distinctTimes)} distinct end_time values among ${n(spans)} events; largest gap between one service's consecutive event times ${n(largestGap)} ms` +
      (largestGap > settings.windowMs
        ? " (the fleet's loop fell behind and stamped whole bursts with one time)"
        : ""),
  );
  if (late > 0)
    print(
      `  late events reached Kafka more than the ${settings.graceMs} ms grace after newer events of their partition (other producers' services): the exporters' buffers held them back`,
    );

  // ---- where the time goes
  print();
  print("where the time goes:");
  const endOfProduction = lastFlush;
  const during = samples.filter((sample) => sample.atMs <= endOfProduction);
  const after = samples.filter((sample) => sample.atMs > endOfProduction);
  const rateBetween = (
    from: Sample | undefined,
    to: Sample | undefined,
    key: keyof Sample,
  ): number =>
    from && to && to.atMs > from.atMs
      ? (to[key] - from[key]) / ((to.atMs - from.atMs) / 1000)
      : Number.NaN;
  const firstSample = samples[0];
  const lastDuring = during.at(-1);
  const lastAfter = after.at(-1);
  print(
    `  stage rates while producing (${secs((lastDuring?.atMs ?? 0) - (firstSample?.atMs ?? 0))}): producers ${n(rateBetween(firstSample, lastDuring, "exported"))}/s, ` +
      `Kafka publish ${n(rateBetween(firstSample, lastDuring, "sent"))}/s, processor ${n(rateBetween(firstSample, lastDuring, "processed"))}/s, sink ${n(rateBetween(firstSample, lastDuring, "stored"))}/s`,
  );
  if (after.length > 1)
    print(
      `  after the producers stopped (${secs((lastAfter?.atMs ?? 0) - (lastDuring?.atMs ?? 0))}): processor ${n(rateBetween(lastDuring, lastAfter, "processed"))}/s, ` +
        `sink ${n(rateBetween(lastDuring, lastAfter, "stored"))}/s; processor caught up ${
          processorCaughtUpAtMs === undefined ? "-" : secs(processorCaughtUpAtMs - lastEnd)
        } after the producers stopped, sink ${storedAtMs === undefined ? "never" : secs(storedAtMs - lastEnd)}`,
    );
  const cores = availableParallelism();
  const phase = (
    label: string,
    from: CpuSnapshot,
    to: CpuSnapshot,
    producersSeconds: number,
  ): void => {
    const seconds = (to.atMs - from.atMs) / 1000;
    const capacity = to.machine.total - from.machine.total;
    const parts: [string, number][] = [
      ["producers", producersSeconds],
      ["processor", to.processor - from.processor],
      ["sink", to.sink - from.sink],
      ["kafka", to.kafka - from.kafka],
      ["registry", to.registry - from.registry],
      ["postgres", to.postgres - from.postgres],
      ["bench", to.bench - from.bench],
      ["kernel irq/softirq", to.machine.irq - from.machine.irq],
    ];
    const busy = to.machine.busy - from.machine.busy;
    const known = parts.reduce((sum, [, value]) => sum + value, 0);
    parts.push(["other", Math.max(0, busy - known)]);
    print(
      `  CPU ${label} (${secs(seconds * 1000)}, machine ${((100 * busy) / Math.max(capacity, 1e-9)).toFixed(0)}% busy of ${cores} cores): ` +
        parts.map(([name, value]) => `${name} ${value.toFixed(1)} s`).join(", "),
    );
  };
  phase("while producing", cpuStart, cpuProduced, producerCpu);
  if (cpuStored.atMs - cpuProduced.atMs >= 1000) phase("draining after", cpuProduced, cpuStored, 0);
  const processedEvents = metric(processorStats, "mcpo_processor_events_total");
  const perThousand = (cpuSeconds: number, events: number): number => (1000 * cpuSeconds) / events;
  const costs: [string, number][] = [
    ["producers (fleet + interceptor + KafkaExporter)", perThousand(producerCpu, recorded)],
    ["kafka broker", perThousand(cpuEnd.kafka - cpuStart.kafka, sent)],
    ["processor", perThousand(cpuEnd.processor - cpuStart.processor, processedEvents)],
    ["sink", perThousand(cpuEnd.sink - cpuStart.sink, spans)],
    ["postgres", perThousand(cpuEnd.postgres - cpuStart.postgres, spans)],
  ];
  const coresNeeded = costs.reduce((sum, [, cost]) => sum + (cost * TARGET_E2E) / 1000, 0);
  print(
    `  CPU cost per 1,000 events (at this run's rate) → cores needed at ${n(TARGET_E2E)} events/s: ${costs
      .map(
        ([name, cost]) =>
          `${name} ${(cost * 1000).toFixed(0)} ms → ${((cost * TARGET_E2E) / 1000).toFixed(2)}`,
      )
      .join("; ")}; total ${coresNeeded.toFixed(1)} cores (this machine: ${cores})`,
  );
  print(
    `  at these costs ${cores} cores carry at most ${n((cores * TARGET_E2E) / coresNeeded)} events/s through the whole pipeline, producers included ` +
      `(${n((cores * TARGET_E2E) / (coresNeeded - (costs[0]?.[1] ?? 0) * (TARGET_E2E / 1000)))} events/s with the producers on other machines)`,
  );

  await pool.end();
  cleanup.pools.splice(cleanup.pools.indexOf(pool), 1);
  const [processorCode, sinkCode] = await Promise.all([
    stopChild(processor.child),
    stopChild(sink.child),
  ]);
  if (processorCode !== 0 || sinkCode !== 0)
    process.stderr.write(`processor exited with ${processorCode}, sink with ${sinkCode}\n`);
  if (profileDir) {
    print();
    print("CPU profiles (--cpu-prof):");
    summarizeProfile(join(profileDir, "sink"), "sink");
    summarizeProfile(join(profileDir, "processor"), "processor");
    summarizeProfile(join(profileDir, "producer-0"), "producer 0");
    if (settings.keep) print(`  (profiles kept in ${profileDir})`);
    else rmSync(profileDir, { recursive: true, force: true });
  }
  return { ok: lost === 0 && storedAtMs !== undefined && rollupsStoredAtMs !== undefined };
}

// ---------------------------------------------------------------------------------------------
// 3: replay

const REPLAY_MODELS: readonly (readonly [string, string, number | null])[] = [
  ["gpt-4o", "openai", 4_000_000],
  ["gpt-4o-mini", "openai", 250_000],
  ["claude-3-5-sonnet-latest", "anthropic", 5_500_000],
  ["claude-3-5-haiku-latest", "anthropic", 1_200_000],
  ["acme-ft-llama-8b", "acme", null],
];

/** Event `i` of `count`, ending within the hour after `origin` (µs), of 8 services and 5 models. */
function replayEvent(
  template: ModelCallEvent,
  i: number,
  count: number,
  origin: number,
): ModelCallEvent {
  const end = origin + Math.floor((i * 3_600_000_000) / count);
  const [model, provider, cost] = REPLAY_MODELS[i % REPLAY_MODELS.length] ?? [
    "gpt-4o",
    "openai",
    1,
  ];
  const service = FLEET_SERVICES[i % FLEET_SERVICES.length] ?? "svc";
  const error = i % 197 === 0;
  return {
    ...template,
    event_id: `00000000-0000-4000-8000-${i.toString(16).padStart(12, "0")}`,
    span_id: (0x1000000000000000n + BigInt(i)).toString(16),
    service,
    service_instance: `${service}-${i % 3}`,
    provider,
    model,
    start_time: end - 200_000 - (i % 13) * 90_000,
    end_time: end,
    prompt_tokens: 100 + (i % 1500),
    completion_tokens: 20 + (i % 400),
    cost_nano_usd: cost === null ? null : cost + (i % 1000) * 1000,
    retries: i % 31 === 0 ? 1 : 0,
    fallback_used: i % 53 === 0,
    confidence: (i % 101) / 100,
    shadow_agreement: i % 4 === 0 ? i % 40 !== 0 : null,
    status: error ? "error" : "ok",
    error_type: error ? "RateLimitError" : null,
  };
}

async function replay(stamp: string, cleanup: Cleanup): Promise<boolean> {
  const count = settings.replayEvents;
  const prefix = `bench-e2e-replay-${stamp}.`;
  const database = `mcpo_bench_e2e_${stamp}_replay`;
  cleanup.databases.push(database);
  cleanup.prefixes.push(prefix);
  const url = await createDatabase(database);
  const topic = topicNames(prefix).modelCalls;
  const kafka = { brokers: config.kafkaBrokers, clientId: `bench-e2e-replay-${stamp}` };
  const admin = await connectAdmin(kafka);
  try {
    await admin.ensureTopics([{ name: topic, partitions: 6 }]);
  } finally {
    await admin.close();
  }
  const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
    registryUrl: config.schemaRegistryUrl,
    subject: valueSubject(topic),
  });
  const producer = createRecordProducer(kafka);
  await producer.connect();
  const template = sampleEvent();
  const origin = Math.floor(Date.now() / 3_600_000) * 3_600_000_000 - 2 * 3_600_000_000;
  const produceStarted = Date.now();
  let inFlight: Promise<void> = Promise.resolve();
  for (let i = 0; i < count; i += 10_000) {
    const records: OutgoingRecord[] = [];
    for (let j = i; j < Math.min(count, i + 10_000); j++) {
      const event = replayEvent(template, j, count, origin);
      records.push({ key: event.service, value: codec.encode(event) });
    }
    await inFlight; // encode the next batch while the previous one is on the wire
    inFlight = producer.send(topic, records, settings.compression);
  }
  await inFlight;
  await producer.disconnect();
  const produceMs = Date.now() - produceStarted;
  print();
  print(
    `replay: pre-produced ${n(count)} events (8 services, 5 models, one hour of event time) in ${secs(produceMs)} (${n(count / (produceMs / 1000))} events/s, encode + createRecordProducer, ${settings.compression})`,
  );

  const before = processCpu(process.pid, true) - processCpu(process.pid);
  const output: string[] = [];
  const started = Date.now();
  const child = spawnNode(
    "replay",
    ["cli/main.ts", "replay", "--json", "--window", "60s", "--grace", "10s"],
    {
      KAFKA_BROKERS: config.kafkaBrokers.join(","),
      SCHEMA_REGISTRY_URL: config.schemaRegistryUrl,
      DATABASE_URL: url,
      MCPO_TOPIC_PREFIX: prefix,
      LOG_LEVEL: "warn",
    },
    (line) => output.push(line),
  );
  const code = await child.exited;
  const wallMs = Date.now() - started;
  const replayCpu = processCpu(process.pid, true) - processCpu(process.pid) - before;
  let summary:
    | { events: number; durationMs: number; rollups: number; windows: number; late: number }
    | undefined;
  for (const line of output.reverse()) {
    try {
      summary = (JSON.parse(line) as { summary: NonNullable<typeof summary> }).summary;
      break;
    } catch {
      // not the JSON summary
    }
  }
  if (code !== 0 || summary === undefined) {
    print(`replay: the command exited with code ${code} and printed no summary  <-- FAIL`);
    return false;
  }
  const rate = summary.events / (summary.durationMs / 1000);
  const wallRate = summary.events / (wallMs / 1000);
  print(
    `replay: ${n(summary.events)} events (produced ${n(count)}: ${summary.events === count ? "equal" : "DIFFERENT  <-- FAIL"}), ` +
      `${n(summary.windows)} service windows, ${n(summary.rollups)} rollup rows, ${n(summary.late)} late`,
  );
  print(
    `replay throughput: ${n(rate)} events/s by its summary (${secs(summary.durationMs)}; target ${n(TARGET_REPLAY)}: ${(rate / TARGET_REPLAY).toFixed(2)}×); ` +
      `${n(wallRate)} events/s by the wall clock with process start-up (${secs(wallMs)}: ${(wallRate / TARGET_REPLAY).toFixed(2)}×); replay process CPU ${replayCpu.toFixed(1)} s`,
  );
  return summary.events === count;
}

// ---------------------------------------------------------------------------------------------

interface Cleanup {
  databases: string[];
  prefixes: string[];
  groups: string[];
  pools: pg.Pool[];
}

async function cleanUp(cleanup: Cleanup): Promise<void> {
  await Promise.all([...children].map((child) => stopChild(child, 10_000)));
  for (const pool of cleanup.pools) await pool.end().catch(() => undefined);
  if (settings.keep) {
    if (cleanup.databases.length > 0)
      process.stderr.write(
        `BENCH_KEEP=1: kept databases ${cleanup.databases.join(", ")}, topics ${cleanup.prefixes.map((p) => `${p}*`).join(", ")} and consumer groups ${cleanup.groups.join(", ")}\n`,
      );
    return;
  }
  await dropDatabases(cleanup.databases).catch((error: unknown) => {
    process.stderr.write(`dropping the databases failed: ${String(error)}\n`);
  });
  await deleteTopicsAndGroups(cleanup.prefixes, cleanup.groups).catch((error: unknown) => {
    process.stderr.write(`deleting the topics failed: ${String(error)}\n`);
  });
}

async function main(): Promise<boolean> {
  const cleanup: Cleanup = { databases: [], prefixes: [], groups: [], pools: [] };
  const signal = { received: false };
  const onSignal = (): void => {
    if (signal.received) return;
    signal.received = true;
    process.stderr.write("\ninterrupted: stopping the child processes …\n");
    void cleanUp(cleanup).finally(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    await checkKafka(config);
    await checkRegistry(config);
    await checkPostgres(config);
  } catch (error) {
    process.stderr.write(
      `bench: ${error instanceof Error ? error.message : String(error)}\nIt needs the local stack: npm run stack:up (and PostgreSQL at DATABASE_URL)\n`,
    );
    process.exit(3);
  }
  print(
    `node ${process.version}; ${availableParallelism()} cores; ` +
      `windows ${secs(settings.windowMs)}, grace ${secs(settings.graceMs)}, idle timeout ${secs(settings.idleMs)}\n`,
  );
  const stamp = `${Date.now().toString(36)}_${process.pid}`;
  try {
    const liveOutcome = await live(stamp, cleanup);
    const replayOk = settings.replayEvents > 0 ? await replay(stamp, cleanup) : true;
    return liveOutcome.ok && replayOk;
  } finally {
    if (!signal.received) await cleanUp(cleanup);
  }
}

runBench(main);
