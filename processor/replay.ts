/**
 * Replay: rebuilds rollups and alerts from the model-calls log with the same partition state
 * machine the live processor runs, and hands them to a consumer (the CLI writes them with the
 * sink's writer). Closing is driven by event time only (events and the watermark ticks the live
 * processor wrote), so a replay from the beginning closes exactly the windows the live processor
 * closed, with the same counts and the same alert ids; windows still open at the log's end are
 * left open, as they are live.
 *
 * A replay from a timestamp or an offset starts mid-log: the first windows after the start would
 * hold only part of their events, so only windows that start at or after the replay's start (a
 * timestamp rounded up to a window boundary; for an offset, the first event's time plus the grace
 * period, rounded up) are emitted. Alert state starts empty there: alerts that were firing before
 * the start are not known to a partial replay.
 */
import type { AlertEvent, MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { AvroCodec, valueSubject } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import {
  ObservatoryError,
  parseReplayConfig,
  topicNames,
  type EndpointOptions,
} from "../config/index.js";
import { provisioningSwitch } from "../config/provisioning.js";
import {
  connectAdmin,
  streamTopicRanges,
  type ConsumedRecord,
  type KafkaSettings,
  type PartitionRange,
  kafkaSettingsOf,
} from "../kafka/index.js";
import { MICROS_PER_MILLI, parseMetricsConfig, windowOf } from "../metrics/index.js";
import { checkpointTopic, homeOf, readLayout } from "./checkpoints.js";
import { resolveControlKey } from "./control-key.js";
import { PartitionDriver, type TimeBounds } from "./driver.js";
import { SUM_OVERFLOW, type WindowSettings } from "./partition.js";

/** Where a replay starts. */
export type ReplayStart =
  | { readonly kind: "beginning" }
  /** The first record at or after this time (ms since the epoch), in every partition. */
  | { readonly kind: "time"; readonly timestampMs: number }
  /** This offset in every partition, or per partition (partitions not named start at the beginning). */
  | { readonly kind: "offset"; readonly offsets: bigint | ReadonlyMap<number, bigint> };

/** What one batch of the log produced, handed to {@link ReplayOptions.onOutputs}. */
export interface ReplayOutputs {
  readonly partition: number;
  readonly rollups: readonly MetricRollup[];
  readonly alerts: readonly AlertEvent[];
  /** The batch's decoded events with their offsets (only with `withEvents`). */
  readonly events: readonly { readonly event: ModelCallEvent; readonly offset: string }[];
}

/** Progress, reported after every batch. */
export interface ReplayProgress {
  readonly records: number;
  /** Records in the ranges being replayed. */
  readonly totalRecords: number;
  readonly events: number;
  readonly elapsedMs: number;
}

/** Settings of {@link replayLog}. */
export interface ReplayOptions extends EndpointOptions {
  /** Must equal the live processor's (default 60 000). */
  readonly windowSizeMs?: number;
  /** Must equal the live processor's (default 10 000). */
  readonly graceMs?: number;
  /** Must equal the live processor's (default 3 600 000). */
  readonly allowedLatenessMs?: number;
  /** Must equal the live processor's (default 200): see `ProcessorOptions.maxModelsPerWindow`. */
  readonly maxModelsPerWindow?: number;
  /** Must equal the live processor's (default 300 000): see `ProcessorOptions.maxClockSkewMs`. */
  readonly maxClockSkewMs?: number;
  /** Must equal the live processor's (default 0: no limit): see `ProcessorOptions.maxEventAgeMs`. */
  readonly maxEventAgeMs?: number;
  /**
   * Must equal the live processor's (default `MCPO_CONTROL_KEY`): see
   * `ProcessorOptions.controlKey`. With it, control records whose MAC is missing or wrong are
   * ignored and counted in `invalid.CONTROL_UNAUTHENTICATED`, as the processor dead-lettered
   * them; control records written before the processor had the key are among them.
   */
  readonly controlKey?: string;
  /** A file holding the {@link controlKey} (default `MCPO_CONTROL_KEY_FILE`). */
  readonly controlKeyFile?: string;
  /** Thresholds and rules (as the processor's `metrics`). */
  readonly metrics?: unknown;
  /** Only these services' rollups and alerts are emitted (all partitions are still read). */
  readonly services?: readonly string[];
  readonly from?: ReplayStart;
  /** Also hand over the decoded events (to rewrite spans). */
  readonly withEvents?: boolean;
  readonly onOutputs: (outputs: ReplayOutputs) => Promise<void>;
  readonly onProgress?: (progress: ReplayProgress) => void;
  readonly clientId?: string;
  /**
   * Register the ModelCallEvent schema and set its subject's compatibility (default
   * `MCPO_AUTO_REGISTER_SCHEMAS`, then true). false: write nothing to the registry, look the
   * schema up (a `SchemaNotRegisteredError` naming the subject when it is not registered).
   */
  readonly autoRegisterSchemas?: boolean;
}

/** What a replay did. */
export interface ReplaySummary {
  readonly topic: string;
  readonly partitions: number;
  /** Records read (events, copies, ticks, progress and invalid records). */
  readonly records: number;
  /** Events as their producers wrote them (not copies). */
  readonly events: number;
  /** Copies of events forwarded to their service's home partition (see processor/README.md). */
  readonly copies: number;
  readonly ticks: number;
  /** Progress records of source partitions. */
  readonly progress: number;
  /**
   * Records the live processor dead-lettered, by code: those that did not decode or validate,
   * events whose time is out of bounds of their log time (CLOCK_SKEW, TOO_OLD), events that
   * would take a window's sum past 2^63 − 1 (SUM_OVERFLOW), and, with a `controlKey`, control
   * records whose MAC is missing or wrong (CONTROL_UNAUTHENTICATED: ignored, not applied).
   */
  readonly invalid: Readonly<Record<string, number>>;
  /** Watermark ticks and progress records ignored: their time is ahead of their log time. */
  readonly ignoredTicks: number;
  /** Events beyond the grace period (counted in `late` of their service's rollups). */
  readonly late: number;
  /** Events whose id their window had already counted (delivered twice): counted once. */
  readonly duplicates: number;
  /** Closed (service, window) pairs emitted: service-total rollups. */
  readonly windows: number;
  /** Rollup rows emitted (service totals and per model). */
  readonly rollups: number;
  readonly alertsFired: number;
  readonly alertsResolved: number;
  /** (service, model, window) series still open at the end of the log (not emitted). */
  readonly openSeries: number;
  /** Earliest window start emitted, µs (null: none emitted). */
  readonly firstWindowStartMicros: number | null;
  /** Latest window end emitted, µs (null: none emitted). */
  readonly lastWindowEndMicros: number | null;
  /**
   * Partial replays: per service met, the first window start it emits (its partition's start,
   * rounded up to a window); windows before are not rebuilt. Empty for whole replays.
   */
  readonly serviceFloors: Readonly<Record<string, number>>;
  /**
   * Partitions whose log no longer starts where the replay wanted (retention or `deleteRecords`
   * removed records): their first offset still in the log. The replay treats them as starting
   * there: windows before their first whole window are not rebuilt (nor their stored rows
   * overwritten). Empty when the whole log is there.
   */
  readonly trimmed: Readonly<Record<number, string>>;
  readonly durationMs: number;
}

/**
 * Reads the model-calls topic from `from` to the end offsets present when it starts, through the
 * partition state machine, and resolves with a summary once every partition was read.
 *
 * @throws {ConfigError} naming the setting that is invalid; Kafka or registry errors.
 */
export async function replayLog(options: ReplayOptions): Promise<ReplaySummary> {
  const started = Date.now();
  const config = parseReplayConfig(options);
  const controlKey = resolveControlKey(config);
  const connection = config.connection;
  const topic = topicNames(connection.topicPrefix).modelCalls;
  const metrics = parseMetricsConfig(config.metrics, "metrics");
  const settings: WindowSettings = {
    windowSizeMicros: config.windowSizeMs * MICROS_PER_MILLI,
    graceMicros: config.graceMs * MICROS_PER_MILLI,
    allowedLatenessMicros: config.allowedLatenessMs * MICROS_PER_MILLI,
    maxModelsPerWindow: config.maxModelsPerWindow,
    thresholds: metrics.thresholds,
    rules: metrics.rules,
  };
  const bounds: TimeBounds = {
    maxClockSkewMicros: config.maxClockSkewMs * MICROS_PER_MILLI,
    maxEventAgeMicros: config.maxEventAgeMs * MICROS_PER_MILLI,
  };
  const kafka: KafkaSettings = kafkaSettingsOf(connection, config.clientId);
  const from = options.from ?? { kind: "beginning" };
  const services = config.services ? new Set(config.services) : undefined;

  const ranges = await planRanges(kafka, topic, from);
  /** Partitions whose log starts after records the replay should have read: from where. */
  const trimmed = new Map(
    ranges.filter((range) => range.trimmed).map((range) => [range.partition, range.start]),
  );
  // Services' home partitions as the live processor fixed them (a log no processor has read yet:
  // as many as the topic has now).
  const layout = await readLayout(kafka, checkpointTopic(connection.topicPrefix), topic);
  const homePartitions = layout?.homePartitions ?? Math.max(1, ranges.length);
  const home = homeOf(homePartitions);
  const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
    registryUrl: connection.schemaRegistry,
    subject: valueSubject(topic),
    autoRegister: provisioningSwitch("autoRegisterSchemas", config.autoRegisterSchemas),
  });
  const totalRecords = ranges.reduce((sum, range) => sum + Number(range.end - range.start), 0);

  // Partial replays emit only whole windows: from the start time, rounded up to a window.
  const roundUp = (micros: number): number => {
    const window = windowOf(micros, settings.windowSizeMicros);
    return window.start === micros ? micros : window.end;
  };

  const drivers = new Map<number, PartitionDriver>();
  const counters = {
    records: 0,
    events: 0,
    copies: 0,
    ticks: 0,
    progress: 0,
    ignoredTicks: 0,
    late: 0,
    duplicates: 0,
    windows: 0,
    rollups: 0,
  };
  const alertsByState = { firing: 0, resolved: 0 };
  const invalid: Record<string, number> = {};
  let firstWindowStart: number | null = null;
  let lastWindowEnd: number | null = null;
  const serviceFloors: Record<string, number> = {};

  await streamTopicRanges(kafka, topic, ranges, async (partition, records) => {
    let driver = drivers.get(partition);
    if (!driver) {
      driver = new PartitionDriver(
        settings,
        { partition, homePartitions, homeOf: home },
        codec,
        undefined,
        bounds,
        controlKey,
      );
      if (from.kind === "time")
        driver.withholdPartialWindows(roundUp(from.timestampMs * MICROS_PER_MILLI));
      else if (from.kind === "offset" || trimmed.has(partition)) driver.withholdPartialWindows();
      drivers.set(partition, driver);
    }
    const rollups: MetricRollup[] = [];
    const alerts: AlertEvent[] = [];
    const events: { event: ModelCallEvent; offset: string }[] = [];
    for (const record of records) {
      counters.records++;
      const fed = await driver.feed(record);
      if (fed.type === "skipped") continue;
      if (fed.type === "invalid") {
        invalid[fed.read.code] = (invalid[fed.read.code] ?? 0) + 1;
        continue;
      }
      if (fed.type === "rejected") {
        // As the live processor: events dead-lettered, ticks and progress records ignored.
        if (fed.input.type === "event" || fed.input.type === "copy")
          invalid[fed.code] = (invalid[fed.code] ?? 0) + 1;
        else counters.ignoredTicks++;
        continue;
      }
      if (fed.type === "retry") throw new Error(`${fed.message} at ${where(record)}`);
      const read = fed;
      if (read.input.type === "event") {
        counters.events++;
        const partitionFloor = driver.emitFloor;
        if (partitionFloor !== null && !(read.input.event.service in serviceFloors))
          serviceFloors[read.input.event.service] = partitionFloor;
        if (config.withEvents && (!services || services.has(read.input.event.service)))
          events.push({ event: read.input.event, offset: record.offset });
      } else
        counters[
          read.input.type === "copy" ? "copies" : read.input.type === "tick" ? "ticks" : "progress"
        ]++;
      for (const output of fed.outputs) {
        // The live processor wrote the copy into the home partition; it is read there.
        if (output.type === "forward") continue;
        if (output.type === "late") {
          if (!services || services.has(output.event.service)) counters.late++;
          continue;
        }
        if (output.type === "duplicate") {
          if (!services || services.has(output.event.service)) counters.duplicates++;
          continue;
        }
        if (output.type === "overflow") {
          // As the live processor, which dead-letters it (SUM_OVERFLOW).
          if (!services || services.has(output.event.service))
            invalid[SUM_OVERFLOW] = (invalid[SUM_OVERFLOW] ?? 0) + 1;
          continue;
        }
        const item = output.type === "rollup" ? output.rollup : output.alert;
        if (services && !services.has(item.service)) continue;
        if (output.type === "rollup") {
          rollups.push(output.rollup);
          counters.rollups++;
          if (output.rollup.model === null) counters.windows++;
          firstWindowStart = Math.min(firstWindowStart ?? Infinity, output.rollup.window_start);
          lastWindowEnd = Math.max(lastWindowEnd ?? -Infinity, output.rollup.window_end);
        } else {
          alerts.push(output.alert);
          alertsByState[output.alert.state]++;
        }
      }
    }
    if (rollups.length > 0 || alerts.length > 0 || events.length > 0)
      await options.onOutputs({ partition, rollups, alerts, events });
    options.onProgress?.({
      records: counters.records,
      totalRecords,
      events: counters.events,
      elapsedMs: Date.now() - started,
    });
  });

  let openSeries = 0;
  for (const driver of drivers.values()) openSeries += driver.state.openSeries;
  return {
    topic,
    partitions: ranges.length,
    ...counters,
    invalid,
    alertsFired: alertsByState.firing,
    alertsResolved: alertsByState.resolved,
    openSeries,
    firstWindowStartMicros: firstWindowStart,
    lastWindowEndMicros: lastWindowEnd,
    serviceFloors,
    trimmed: Object.fromEntries(
      [...trimmed].map(([partition, start]) => [partition, start.toString()]),
    ),
    durationMs: Date.now() - started,
  };
}

/** The topic to read does not exist. */
export class MissingTopicError extends ObservatoryError {
  declare readonly code: "TOPIC_MISSING";
  constructor(message: string) {
    super("TOPIC_MISSING", message, { retriable: false });
    this.name = "MissingTopicError";
  }
}

function where(record: ConsumedRecord): string {
  return `${record.topic}[${record.partition}]@${record.offset}`;
}

async function planRanges(
  kafka: KafkaSettings,
  topic: string,
  from: ReplayStart,
): Promise<(PartitionRange & { readonly trimmed: boolean })[]> {
  const admin = await connectAdmin(kafka);
  try {
    if (!(await admin.exists(topic)))
      throw new MissingTopicError(
        `nothing to replay: topic ${topic} does not exist (check the topic prefix: MCPO_TOPIC_PREFIX or --topic-prefix)`,
      );
    const [starts, ends] = await Promise.all([admin.startOffsets(topic), admin.endOffsets(topic)]);
    const at =
      from.kind === "time" ? await admin.offsetsAtTime(topic, from.timestampMs) : undefined;
    return [...ends.keys()]
      .sort((a, b) => a - b)
      .map((partition) => {
        const low = BigInt(starts.get(partition) ?? "0");
        const end = BigInt(ends.get(partition) ?? "0");
        let start = low;
        if (from.kind === "time") start = BigInt(at?.get(partition) ?? end.toString());
        else if (from.kind === "offset") {
          const wanted =
            typeof from.offsets === "bigint" ? from.offsets : from.offsets.get(partition);
          if (wanted !== undefined) start = wanted;
        }
        // A trimmed log (retention, deleteRecords) starts mid-stream, as a replay from an offset.
        const trimmed = start < low || (from.kind === "beginning" && low > 0);
        if (start < low) start = low;
        if (start > end) start = end;
        return { partition, start, end, trimmed };
      });
  } finally {
    await admin.close();
  }
}
