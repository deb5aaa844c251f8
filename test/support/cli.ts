/**
 * Running the CLI in tests (to its end, or in the background), and reading back what the pipeline
 * wrote, apart from the product: topics with kafkajs, events with the contract's codec, tables with
 * plain SQL, and the figures they must hold from the brute-force oracle (./oracle.ts).
 */
export { storedRollups } from "./stored-rollups.js";
export { ORACLE_DEFAULT_RULES as README_DEFAULT_RULES } from "./oracle.js";
import { execFile, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

import type pg from "pg";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import { CONTROL_HEADER, readControl } from "../../avro/control.js";
import type { MetricThresholds, ModelCallEvent } from "../../avro/generated.js";
import { topicNames } from "../../config/index.js";
import { services, testKafka, uniqueName } from "./isolation.js";
import {
  ORACLE_DEFAULT_THRESHOLDS,
  oracleAlerts,
  oracleKey,
  oracleRollups,
  type ComparableRollup,
  type OracleRule,
  type OracleTransition,
  type OracleWindow,
} from "./oracle.js";
import { waitFor } from "./wait.js";

/** The repository root. */
export const REPO_ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** What a command printed and how it exited. */
export interface CommandResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a TypeScript entry point of this repository through tsx, as `npm run` would. */
export function runTs(
  script: string,
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<CommandResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ["--import", "tsx", script, ...args],
      {
        cwd: REPO_ROOT,
        env: options.env ?? process.env,
        timeout: options.timeoutMs ?? 300_000,
        maxBuffer: 16 * 1024 * 1024,
      },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** A CLI process started in the background (`node --import tsx cli/main.ts …`), output kept. */
export interface BackgroundCommand {
  readonly pid: number;
  /** Everything printed so far. */
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code (a signal's name when killed by one) once it ended. */
  readonly exited: Promise<number | string>;
  /** The exit code (or signal) once it ended; undefined while it runs. */
  exitCode(): number | string | undefined;
  /** When (Date.now()) it last printed to stdout, and when it exited; undefined before. */
  lastOutputAt(): number | undefined;
  exitedAt(): number | undefined;
  /** Sends a signal if it is still running; resolves once it exited. */
  stop(signal?: NodeJS.Signals): Promise<number | string>;
}

/** Starts `mcp-observatory <args>` as a real process of its own (never through npx or npm). */
export function startCli(args: readonly string[], env: NodeJS.ProcessEnv): BackgroundCommand {
  const child = spawn(process.execPath, ["--import", "tsx", "cli/main.ts", ...args], {
    cwd: REPO_ROOT,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  let lastOutput: number | undefined;
  let exitTime: number | undefined;
  child.stdout.on("data", (chunk: Buffer) => {
    out += chunk.toString("utf8");
    lastOutput = Date.now();
  });
  child.stderr.on("data", (chunk: Buffer) => {
    err += chunk.toString("utf8");
  });
  let status: number | string | undefined;
  const exited = new Promise<number | string>((resolve) => {
    child.once("exit", (code, signal) => {
      exitTime = Date.now();
      status = code ?? signal ?? "unknown";
      resolve(status);
    });
  });
  if (child.pid === undefined) throw new Error(`could not start mcp-observatory ${args.join(" ")}`);
  const pid = child.pid;
  return {
    pid,
    stdout: () => out,
    stderr: () => err,
    exited,
    exitCode: () => status,
    lastOutputAt: () => lastOutput,
    exitedAt: () => exitTime,
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) process.kill(pid, signal);
      return exited;
    },
  };
}

/** `mcp-observatory <args>` from this repository, run to its end. */
export function runCli(
  args: readonly string[],
  env: NodeJS.ProcessEnv,
  timeoutMs = 240_000,
): Promise<CommandResult> {
  return runTs("cli/main.ts", args, { env, timeoutMs });
}

/** One record of a topic, as read back by the tests (with kafkajs, apart from the product). */
export interface TopicRecord {
  readonly partition: number;
  readonly offset: bigint;
  readonly key: string | null;
  readonly value: Buffer;
  readonly headers: Readonly<Record<string, string>>;
}

/** Each partition's earliest and end offsets (the next offset to be written). */
export async function topicOffsets(
  topic: string,
): Promise<Map<number, { low: bigint; high: bigint }>> {
  const admin = testKafka().admin();
  await admin.connect();
  try {
    const offsets = await admin.fetchTopicOffsets(topic);
    return new Map(
      offsets.map((o) => [o.partition, { low: BigInt(o.low), high: BigInt(o.high) }] as const),
    );
  } finally {
    await admin.disconnect();
  }
}

/**
 * Every record of a topic up to the end offsets it has now, in partition and offset order, read
 * with a throwaway kafkajs consumer group (not the product's reader).
 */
export async function readWholeTopic(topic: string): Promise<TopicRecord[]> {
  const ends = await topicOffsets(topic);
  const wanted = [...ends].filter(([, o]) => o.high > o.low);
  const records: TopicRecord[] = [];
  if (wanted.length === 0) return records;
  const kafka = testKafka();
  const groupId = uniqueName("read-topic");
  const consumer = kafka.consumer({ groupId, maxWaitTimeInMs: 200 });
  const next = new Map<number, bigint>();
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: ({ partition, message }) => {
        const offset = BigInt(message.offset);
        const headers: Record<string, string> = {};
        for (const [name, value] of Object.entries(message.headers ?? {}))
          if (value !== undefined)
            headers[name] = (Array.isArray(value) ? value[0] : value)?.toString() ?? "";
        records.push({
          partition,
          offset,
          key: message.key?.toString() ?? null,
          value: message.value ?? Buffer.alloc(0),
          headers,
        });
        next.set(partition, offset + 1n);
        return Promise.resolve();
      },
    });
    await waitFor(
      `every record of ${topic} up to its end offsets ${JSON.stringify(wanted.map(([p, o]) => `${p}:${o.high}`))}`,
      () => wanted.map(([p]) => `${p}:${next.get(p) ?? "none"}`),
      () => wanted.every(([p, o]) => (next.get(p) ?? -1n) >= o.high),
      { timeoutMs: 120_000, intervalMs: 100 },
    );
  } finally {
    await consumer.disconnect();
    const admin = kafka.admin();
    await admin
      .connect()
      .then(() => admin.deleteGroups([groupId]))
      .catch(() => undefined)
      .finally(() => admin.disconnect());
  }
  return records
    .filter((r) => r.offset < (ends.get(r.partition)?.high ?? 0n))
    .sort((a, b) => a.partition - b.partition || (a.offset < b.offset ? -1 : 1));
}

/** A decoded model-call event and where it is in the log. */
export interface LoggedEvent {
  readonly partition: number;
  readonly offset: bigint;
  readonly event: ModelCallEvent;
}

/**
 * The model-calls records decoded with the contract's codec: the events (watermark ticks, the
 * control records, are left out and counted).
 */
export async function decodeModelCalls(
  topic: string,
  records: readonly TopicRecord[],
): Promise<{ events: LoggedEvent[]; ticks: number; tickTimes: LoggedTick[] }> {
  const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
    registryUrl: services().schemaRegistryUrl,
    subject: valueSubject(topic),
  });
  const events: LoggedEvent[] = [];
  const tickTimes: LoggedTick[] = [];
  let ticks = 0;
  for (const record of records) {
    if (record.headers[CONTROL_HEADER] !== undefined) {
      ticks++;
      const control = readControl(record.headers, record.value);
      if (control.type === "tick")
        tickTimes.push({
          partition: record.partition,
          offset: record.offset,
          eventTimeMicros: control.eventTimeMicros,
        });
      continue;
    }
    const decoded = await codec.decode(record.value);
    if (!decoded.ok)
      throw new Error(
        `${topic}[${record.partition}]@${record.offset} does not decode: ${decoded.error.message}`,
      );
    events.push({ partition: record.partition, offset: record.offset, event: decoded.value });
  }
  return { events, ticks, tickTimes };
}

/** A watermark tick of the log and where it is. */
export interface LoggedTick {
  readonly partition: number;
  readonly offset: bigint;
  readonly eventTimeMicros: number;
}

/** What the pipeline's log holds, and the oracle's figures computed from it by brute force. */
export interface LogOracle {
  /** Every event of the model-calls topic, in partition and offset order. */
  readonly events: readonly LoggedEvent[];
  readonly ticks: number;
  /** Events the processor forwarded to the late-events topic (in no count but `late`). */
  readonly late: readonly { readonly event: ModelCallEvent; readonly watermarkMicros: number }[];
  /**
   * The events counted in windows: every event but the late ones (those that revised a closed
   * window within the allowed lateness included: the stored rows are the last revisions).
   */
  readonly onTime: readonly ModelCallEvent[];
  /** Late counts by {@link oracleKey}: the window where the watermark was, service total and model. */
  readonly lateByKey: ReadonlyMap<string, number>;
  /** The oracle's rollups (service totals: model null). */
  readonly rollups: Map<string, OracleWindow>;
  readonly alerts: OracleTransition[];
}

/**
 * Reads a prefix's model-calls and late-events topics and computes, with test/support/oracle.ts,
 * every rollup and alert transition the pipeline must have derived: late events count only in the
 * `late` of the window where the watermark was (their `mcpo-late-watermark-micros` header); every
 * other event counts in its window (the last revision of it). Alerts are judged on each window's
 * first emission: without the events that arrived after it closed (found by following each
 * partition's watermark, events and ticks, less `graceMs`; the log's services at home).
 */
export async function oracleFromLog(
  prefix: string,
  windowMs: number,
  rules: readonly OracleRule[],
  thresholds: MetricThresholds = ORACLE_DEFAULT_THRESHOLDS,
  graceMs = 1000,
): Promise<LogOracle> {
  const topics = topicNames(prefix);
  const { events, ticks, tickTimes } = await decodeModelCalls(
    topics.modelCalls,
    await readWholeTopic(topics.modelCalls),
  );
  const lateRecords = await readWholeTopic(topics.lateEvents);
  const lateDecoded = await decodeModelCalls(topics.modelCalls, lateRecords);
  const late = lateDecoded.events.map(({ event }, i) => {
    const header = lateRecords[i]?.headers["mcpo-late-watermark-micros"];
    if (header === undefined) throw new Error(`late record ${i} has no watermark header`);
    return { event, watermarkMicros: Number(header) };
  });
  const windowMicros = windowMs * 1000;
  const lateIds = new Set(late.map((l) => l.event.event_id));
  const lateByKey = new Map<string, number>();
  for (const { event, watermarkMicros } of late) {
    const start =
      watermarkMicros - (((watermarkMicros % windowMicros) + windowMicros) % windowMicros);
    for (const model of event.model === null ? [null] : [null, event.model]) {
      const key = oracleKey(event.service, model, start);
      lateByKey.set(key, (lateByKey.get(key) ?? 0) + 1);
    }
  }
  const onTime = events.filter((e) => !lateIds.has(e.event.event_id)).map((e) => e.event);
  const rollups = oracleRollups(onTime, windowMicros, { thresholds, lateByKey });
  // Each window's first emission: what arrived while it was open.
  const inOrder = [
    ...events.map((e) => ({ ...e, time: e.event.end_time })),
    ...tickTimes.map((t) => ({ ...t, event: undefined, time: t.eventTimeMicros })),
  ].sort((a, b) => a.partition - b.partition || (a.offset < b.offset ? -1 : 1));
  const firstEmitted: ModelCallEvent[] = [];
  let partition = -1;
  let max: number | null = null;
  for (const entry of inOrder) {
    if (entry.partition !== partition) [partition, max] = [entry.partition, null];
    const event = entry.event;
    if (event && !lateIds.has(event.event_id)) {
      const start =
        event.end_time - (((event.end_time % windowMicros) + windowMicros) % windowMicros);
      if (max === null || start + windowMicros > max - graceMs * 1000) firstEmitted.push(event);
    }
    max = max === null ? entry.time : Math.max(max, entry.time);
  }
  const first = oracleRollups(firstEmitted, windowMicros, { thresholds, lateByKey });
  return {
    events,
    ticks,
    late,
    onTime,
    lateByKey,
    rollups,
    alerts: oracleAlerts(first.values(), rules),
  };
}

/** An alert incident as the oracle's transitions describe it. */
export interface OracleIncident {
  readonly service: string;
  readonly rule: string;
  readonly firedWindowStart: number;
  /** Its transitions in order: state and deciding window start. */
  readonly history: readonly { state: "firing" | "resolved"; windowStart: number }[];
}

/** Groups the oracle's transitions into incidents, sorted by service, rule and fired window. */
export function oracleIncidents(transitions: readonly OracleTransition[]): OracleIncident[] {
  const byIncident = new Map<
    string,
    OracleIncident & { history: OracleIncident["history"][number][] }
  >();
  for (const t of transitions) {
    const key = `${t.service}\u0000${t.rule}\u0000${t.firedWindowStart}`;
    const incident = byIncident.get(key) ?? {
      service: t.service,
      rule: t.rule,
      firedWindowStart: t.firedWindowStart,
      history: [],
    };
    incident.history.push({ state: t.state, windowStart: t.windowStart });
    byIncident.set(key, incident);
  }
  return [...byIncident.values()].sort(
    (a, b) =>
      (a.service < b.service ? -1 : a.service > b.service ? 1 : 0) ||
      (a.rule < b.rule ? -1 : a.rule > b.rule ? 1 : 0) ||
      a.firedWindowStart - b.firedWindowStart,
  );
}

/** The incidents of an alerts table (`alerts` or `alerts_vN`), in the same form and order. */
export async function storedIncidents(
  client: pg.Client,
  table: string,
  where = "true",
): Promise<(OracleIncident & { alertId: string; state: string })[]> {
  if (!/^[a-z_][a-z0-9_]*$/.test(table)) throw new Error(`not a table name: ${table}`);
  const { rows } = await client.query<{
    alert_id: string;
    service: string;
    rule: string;
    state: string;
    fired_us: string;
    history: { state: "firing" | "resolved"; window_start_us: number | string }[];
  }>(
    `select alert_id, service, rule, state,
            (extract(epoch from fired_window_start) * 1000000)::bigint::text as fired_us, history
     from ${table} where ${where}`,
  );
  return rows
    .map((row) => ({
      alertId: row.alert_id,
      state: row.state,
      service: row.service,
      rule: row.rule,
      firedWindowStart: Number(row.fired_us),
      history: row.history.map((h) => ({ state: h.state, windowStart: Number(h.window_start_us) })),
    }))
    .sort(
      (a, b) =>
        (a.service < b.service ? -1 : a.service > b.service ? 1 : 0) ||
        (a.rule < b.rule ? -1 : a.rule > b.rule ? 1 : 0) ||
        a.firedWindowStart - b.firedWindowStart,
    );
}

/** The camel-case rates of a `report --json` / demo summary row, as the oracle names them. */
export function ratesRowAsComparable(row: {
  service: string;
  model: string | null;
  windowStart: string;
  calls: number;
  costUsd: string;
  late: number;
  avgCostUsd: number | null;
  fallbackRate: number | null;
  retryRate: number | null;
  lowConfidenceRate: number | null;
  confidenceGateBlockRate: number | null;
  promptDiffViolationRate: number | null;
  shadowDisagreementRate: number | null;
  deterministicFallbackRate: number | null;
  highRiskPathRate: number | null;
  goldenFinancialFailureRate: number | null;
  errorRate: number | null;
  latencyP50Ms: number | null;
  latencyP95Ms: number | null;
  latencyP99Ms: number | null;
}): ComparableRollup {
  const [units = "0", fraction = ""] = row.costUsd.split(".");
  return {
    service: row.service,
    model: row.model,
    windowStart: Date.parse(row.windowStart) * 1000,
    counts: {
      calls: row.calls,
      late: row.late,
      cost_nano_usd: BigInt(units) * 1_000_000_000n + BigInt(fraction.padEnd(9, "0").slice(0, 9)),
    },
    rates: {
      avg_cost_usd: row.avgCostUsd,
      fallback_rate: row.fallbackRate,
      retry_rate: row.retryRate,
      low_confidence_rate: row.lowConfidenceRate,
      confidence_gate_block_rate: row.confidenceGateBlockRate,
      prompt_diff_violation_rate: row.promptDiffViolationRate,
      shadow_disagreement_rate: row.shadowDisagreementRate,
      deterministic_fallback_rate: row.deterministicFallbackRate,
      high_risk_path_rate: row.highRiskPathRate,
      golden_financial_failure_rate: row.goldenFinancialFailureRate,
      error_rate: row.errorRate,
      latency_p50_ms: row.latencyP50Ms,
      latency_p95_ms: row.latencyP95Ms,
      latency_p99_ms: row.latencyP99Ms,
    },
  };
}
