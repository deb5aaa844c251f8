/**
 * The stream processor: a consumer-group member over the model-calls topic that feeds each
 * partition's records, in offset order, through the partition state machine (`partition.ts`) and
 * produces what it emits: rollups to the compacted metric-rollups topic, alert transitions to the
 * alerts topic, late events (original bytes) to the late-events topic, and undecodable or invalid
 * records (original bytes, reason in headers) to the dead-letter topic.
 *
 * Crash safety (see processor/README.md): after a batch's outputs are acknowledged, the
 * partition's state and next offset are written to a compacted checkpoint topic, and only then is
 * the offset committed to the group. A restarted or new owner restores the newest checkpoint and
 * reprocesses from its offset: every output after it is produced again, identical, because the
 * state machine is a pure function of the log. Consumers deduplicate by key.
 */
import { randomUUID } from "node:crypto";

import {
  asyncScheduler,
  catchError,
  defer,
  EMPTY,
  exhaustMap,
  interval,
  Subject,
  type SchedulerLike,
  type Subscription,
} from "rxjs";

import { redactingLogger } from "../config/errors.js";
import {
  copyHeaders,
  progressRecord,
  readControl,
  signControl,
  watermarkTick,
} from "../avro/control.js";
import {
  backoffCeiling,
  LOG_APPEND_TIME,
  parseProcessorConfig,
  retry,
  TIMESTAMP_TYPE_CONFIG,
  topicNames,
  type TopicNames,
  type SecurityEndpointOptions,
} from "../config/index.js";
import {
  connectAdmin,
  fetchTopicIds,
  type BatchControl,
  type ConsumedBatch,
  type ConsumedRecord,
  type GroupConsumer,
  type GroupConsumerOptions,
  type KafkaSettings,
  type OutgoingRecord,
  type TopicAdmin,
  kafkaSettingsOf,
} from "../kafka/index.js";
import { MICROS_PER_MILLI, parseMetricsConfig, rollupKey } from "../metrics/index.js";
import { pinoLogger, type OpsLogger } from "../ops/index.js";
import {
  ConsumerService,
  deadLetterRecord,
  pauseWithHeartbeats,
  pipelineTopics,
  shellOptionsOf,
  sourceHeaders,
  Tally,
  type TopicSpec,
} from "../ops/service.js";
import {
  CheckpointStore,
  checkCheckpointTopic,
  checkpointTopic,
  checkpointWindow,
  homeOf,
  StateMismatchError,
  STARTUP_RETRY,
  type Checkpoint,
} from "./checkpoints.js";
import { resolveControlKey } from "./control-key.js";
import { CONTROL_UNAUTHENTICATED, PartitionDriver, type Fed, type TimeBounds } from "./driver.js";
import { due, Lanes, tickIdlePartitions } from "./pipeline.js";
import { ProcessorMetrics } from "./observability.js";
import {
  SUM_OVERFLOW,
  type PartitionOutput,
  type PartitionRouting,
  type WindowSettings,
} from "./partition.js";

/** What one batch emits, by destination; produced together once the batch is applied. */
interface BatchOutputs {
  rollups: OutgoingRecord[];
  alerts: OutgoingRecord[];
  late: OutgoingRecord[];
  dead: OutgoingRecord[];
  /** Copies and progress records into other partitions of model-calls, in the order written. */
  forwarded: OutgoingRecord[];
  /** Whether the batch held an event, a copy or a tick (a progress record alone is no activity). */
  active: boolean;
  ticks: number;
  /** Rollups and alerts of windows a gap left partial: not written (see `withholdPartialWindows`). */
  withheld: number;
}

/** How long a partition waits before reading a batch again whose outputs could not be written. */
const BATCH_RETRY = { maxAttempts: Number.POSITIVE_INFINITY, baseDelayMs: 200, maxDelayMs: 5000 };

/** At most one progress record per second per (source, home) pair, besides those after ticks. */
const PROGRESS_INTERVAL_MS = 1000;

/** The processor's logger (see `OpsLogger`). */
export type ProcessorLogger = OpsLogger;

/** Settings of {@link StreamProcessor}; each falls back to the environment, then a default. */
export interface ProcessorOptions extends SecurityEndpointOptions {
  readonly brokers?: string | readonly string[];
  readonly schemaRegistryUrl?: string;
  /** Default `MCPO_TOPIC_PREFIX`, then `mcpo.`. */
  readonly topicPrefix?: string;
  /** Default: the topic prefix's stem and `-processor` (`mcpo-processor`). */
  readonly groupId?: string;
  /**
   * Discards the group's checkpoints at start, so every partition's state is rebuilt from the
   * log's start (with this processor's window settings). Once, with every member of the group
   * stopped.
   */
  readonly resetState?: boolean;
  /** Tumbling window size, ms (default 60 000). */
  readonly windowSizeMs?: number;
  /** Grace period for out-of-order events, ms (default 10 000). */
  readonly graceMs?: number;
  /**
   * How long after a window closed its events still revise it (its rollups emitted again,
   * complete, with a higher revision), ms (default 3 600 000; 0: never, they are late).
   */
  readonly allowedLatenessMs?: number;
  /**
   * How many models of a service have a series of their own in one window (default 200): the
   * first seen in the window, in log order (late events and revisions included); the calls of
   * further models are counted in the window's overflow series (`other_models`, scope 'other' in
   * PostgreSQL) and in `mcpo_processor_models_folded_total`. A replay must use the processor's.
   */
  readonly maxModelsPerWindow?: number;
  /**
   * An event that ends more than this after its record's log time (the broker's clock when it
   * appended the record) is dead-lettered (CLOCK_SKEW), never applied; a watermark tick or
   * progress record that far ahead is ignored and counted, ms (default 300 000). A replay must use
   * the processor's.
   */
  readonly maxClockSkewMs?: number;
  /**
   * An event that ended more than this before its record's log time is dead-lettered (TOO_OLD),
   * ms (default 0: no limit, since replicas deliver what they buffered through an outage and old
   * logs are replayed). A replay must use the processor's.
   */
  readonly maxEventAgeMs?: number;
  /** Live mode: a partition with open windows and no records for this long gets a watermark tick, ms (default 30 000). */
  readonly idleTimeoutMs?: number;
  /** How often a partition's state is checkpointed, at most, ms (default 2000). */
  readonly checkpointIntervalMs?: number;
  /** Consumer-group session timeout, ms (default 30 000): how soon a dead member's partitions move. */
  readonly sessionTimeoutMs?: number;
  /**
   * How often the model-calls topic is checked for added partitions, ms (default 5000): they are
   * registered with every home partition and assigned within about this long.
   */
  readonly metadataMaxAgeMs?: number;
  /**
   * How long records of a schema id the registry does not know wait (a registry that restarts
   * answers "not found" for a while) before they are dead-lettered, ms (default 15 000).
   */
  readonly unknownSchemaIdGraceMs?: number;
  /** Retention of model-calls if this processor creates it, ms (default -1: unlimited). */
  readonly modelCallsRetentionMs?: number;
  /** Partitions of the topics the processor creates if missing (default 6). */
  readonly partitions?: number;
  /**
   * Create the topics it needs when missing (default true). false: it only checks that they exist
   * and fails to start, naming them, when one is missing (credentials without CREATE; an operator
   * runs `mcp-observatory topics create`).
   */
  readonly autoCreateTopics?: boolean;
  /**
   * Register its schemas and set their subjects' compatibility (default true). false: nothing is
   * written to the registry; the schemas' ids are looked up, and a schema not registered stops the
   * start, naming its subject.
   */
  readonly autoRegisterSchemas?: boolean;
  /**
   * A secret of at least 32 bytes that every processor of the group and every replay of the log
   * share (default `MCPO_CONTROL_KEY`; or `controlKeyFile`, default `MCPO_CONTROL_KEY_FILE`: a
   * file holding it). The control records the processor writes into model-calls (watermark ticks,
   * copies, progress records) carry an HMAC under it, and control records whose MAC is missing or
   * wrong — written by anyone else with WRITE on the topic, such as an MCP server replica — are
   * dead-lettered (CONTROL_UNAUTHENTICATED) and never change state. Unset: control records are
   * not authenticated (a warning at start). A replay must use the processor's.
   */
  readonly controlKey?: string;
  /** A file holding the {@link controlKey} (trailing newline dropped). */
  readonly controlKeyFile?: string;
  /** Thresholds and alert rules (see metrics/README.md). */
  readonly metrics?: unknown;
  readonly clientId?: string;
  readonly logger?: ProcessorLogger;
  /**
   * Where time comes from: idle timers, watermark ticks, checkpoint pacing, progress reports and
   * the partition-count watch (RxJS's `asyncScheduler` by default; tests use a virtual one).
   */
  readonly scheduler?: SchedulerLike;
  /** Serve Prometheus metrics on this port (`/metrics`, on `metricsHost`); none by default. 0: any free port. */
  readonly metricsPort?: number;
  /**
   * The address the metrics and health endpoint listens on (default 127.0.0.1: this host only;
   * `0.0.0.0` or `::`: every interface, unauthenticated).
   */
  readonly metricsHost?: string;
}

/** Counters since start. */
export interface ProcessorStats {
  readonly records: number;
  readonly events: number;
  readonly ticks: number;
  readonly rollups: number;
  readonly alerts: number;
  readonly late: number;
  /** Events whose window already counted their `event_id` (delivered twice): not counted again. */
  readonly duplicates: number;
  /**
   * Model calls (late ones included) counted in their window's overflow series: their model came
   * after the window's first `maxModelsPerWindow` models.
   */
  readonly modelsFolded: number;
  readonly deadLettered: number;
  readonly checkpoints: number;
  /** Events copied to their service's home partition (they arrived elsewhere). */
  readonly forwarded: number;
  /**
   * Events and copies not applied because their time is out of bounds of their record's log time
   * (dead-lettered as CLOCK_SKEW or TOO_OLD; also counted in `deadLettered`).
   */
  readonly rejectedEvents: number;
  /** Watermark ticks and progress records ignored: their time is ahead of their log time. */
  readonly ignoredTicks: number;
  readonly openSeries: number;
  readonly assignedPartitions: number;
}

interface OwnedPartition {
  driver: PartitionDriver;
  lastCheckpointAt: number;
  lastCheckpointOffset: bigint;
  /** Per home partition: the source event time last reported to it, and when (wall clock). */
  reported: Map<number, { timeMicros: number; at: number }>;
  /** Whether its state came from a checkpoint (else it is rebuilt from the log's start). */
  readonly fromCheckpoint: boolean;
}

/**
 * Every topic the processor needs, with the settings it creates them with: the pipeline's (see
 * `pipelineTopics`: the sink needs those too), late events, and its compacted checkpoints (one
 * partition, large records: a partition's whole state). `mcp-observatory topics create` creates
 * these.
 */
export function processorTopics(
  topics: TopicNames & { readonly checkpoints: string },
  partitions: number,
  modelCallsRetentionMs: number,
): TopicSpec[] {
  return [
    ...pipelineTopics(topics, partitions, modelCallsRetentionMs),
    { name: topics.lateEvents, partitions },
    {
      name: topics.checkpoints,
      partitions: 1,
      config: { "cleanup.policy": "compact", "max.message.bytes": String(16 * 1024 * 1024) },
    },
  ];
}

export class StreamProcessor extends ConsumerService<ProcessorStats> {
  readonly topics: TopicNames & { readonly checkpoints: string };
  readonly groupId: string;
  private readonly settings: WindowSettings;
  /** How far a record's time may be from its log time. */
  private readonly bounds: TimeBounds;
  /** Signs the control records it writes and authenticates those it reads; undefined: neither. */
  private readonly controlKey: Buffer | undefined;
  private readonly kafka: KafkaSettings;
  private readonly idleTimeoutMs: number;
  private readonly checkpointIntervalMs: number;
  private readonly partitions: number;
  /** Retention of model-calls when this service creates it, ms (-1: unlimited). */
  private readonly modelCallsRetentionMs: number;
  private readonly sessionTimeoutMs: number;
  private readonly metadataMaxAgeMs: number;
  private readonly resetState: boolean;
  /** model-calls' topic id, written with each checkpoint. */
  private topicId: string | undefined;
  /** Each service's home partition, from the topic's layout (set at start). */
  private homes: { readonly count: number; readonly of: (service: string) => number } | undefined;
  /** Live mode: the model-calls partitions known; partitions beyond the homes are registered. */
  private knownPartitions = 0;
  private partitionWatch: Subscription | undefined;
  private readonly logger: ProcessorLogger;
  private readonly clock: SchedulerLike;
  /** Batches, one lane per partition, each handled to its end before the next. */
  private readonly lanes = new Lanes<{ batch: ConsumedBatch; control: BatchControl }>((work) =>
    this.onBatch(work.batch, work.control),
  );
  /** Prometheus metrics of this processor. */
  readonly metrics: ProcessorMetrics;
  /** What it counted: each feeds its Prometheus counter too. */
  private readonly count: Record<
    | "records"
    | "events"
    | "ticks"
    | "rollups"
    | "alerts"
    | "late"
    | "duplicates"
    | "modelsFolded"
    | "deadLettered"
    | "checkpoints"
    | "forwarded"
    | "rejectedEvents"
    | "ignoredTicks",
    Tally
  >;
  /** Partitions of model-calls when it started. */
  private partitionsAtStart = 0;
  private checkpoints: CheckpointStore | undefined;
  private readonly owned = new Map<number, OwnedPartition>();
  private readonly restoring = new Map<number, Promise<OwnedPartition>>();
  /** Partitions with a batch in flight (their state may be ahead of their acknowledged outputs). */
  private readonly busy = new Set<number>();
  /** Consecutive batches per partition whose outputs could not be written (for the backoff). */
  private readonly failures = new Map<number, number>();
  /** Partitions that forwarded an event (each is logged once). */
  private readonly forwardingFrom = new Set<number>();
  /** Partitions that had a tick or progress record ignored (each is logged once). */
  private readonly ignoringTicksIn = new Set<number>();
  private assignment = new Set<number>();
  private checkpointLoad: Promise<Map<number, Checkpoint>> | undefined;
  /** The group's committed offsets, read once per assignment when a partition has no checkpoint. */
  private committedLoad: Promise<Map<number, string>> | undefined;
  private readonly activity = new Subject<number>();
  private idleSubscription: Subscription | undefined;

  /** @throws {ConfigError} naming the option or variable that is invalid. */
  constructor(options: ProcessorOptions = {}) {
    const config = parseProcessorConfig(options);
    const controlKey = resolveControlKey(config);
    const names = topicNames(config.connection.topicPrefix);
    const metrics = new ProcessorMetrics();
    const logger = redactingLogger(options.logger ?? pinoLogger("processor"));
    const kafka: KafkaSettings = {
      ...kafkaSettingsOf(
        config.connection,
        config.clientId ?? `mcpo-processor-${randomUUID().slice(0, 8)}`,
      ),
      // It writes ticks into partitions added to model-calls: it must learn of them soon.
      metadataMaxAgeMs: config.metadataMaxAgeMs,
    };
    super(
      shellOptionsOf("processor", config, {
        kafka,
        topics: names,
        logger,
        registry: metrics.registry,
      }),
    );
    this.metrics = metrics;
    this.logger = logger;
    this.kafka = kafka;
    this.count = {
      records: new Tally(metrics.records),
      events: new Tally(metrics.events),
      ticks: new Tally(metrics.ticks),
      rollups: new Tally(metrics.rollups),
      alerts: new Tally(metrics.alerts),
      late: new Tally(metrics.late),
      duplicates: new Tally(metrics.duplicates),
      modelsFolded: new Tally(metrics.modelsFolded),
      deadLettered: new Tally(metrics.deadLettered),
      checkpoints: new Tally(metrics.checkpoints),
      forwarded: new Tally(metrics.forwarded),
      rejectedEvents: new Tally(metrics.rejectedEvents),
      ignoredTicks: new Tally(metrics.ignoredTicks),
    };
    this.topics = { ...names, checkpoints: checkpointTopic(config.connection.topicPrefix) };
    this.groupId = config.groupId;
    const rulesAndThresholds = parseMetricsConfig(config.metrics, "metrics");
    this.settings = {
      windowSizeMicros: config.windowSizeMs * MICROS_PER_MILLI,
      graceMicros: config.graceMs * MICROS_PER_MILLI,
      allowedLatenessMicros: config.allowedLatenessMs * MICROS_PER_MILLI,
      maxModelsPerWindow: config.maxModelsPerWindow,
      thresholds: rulesAndThresholds.thresholds,
      rules: rulesAndThresholds.rules,
    };
    this.bounds = {
      maxClockSkewMicros: config.maxClockSkewMs * MICROS_PER_MILLI,
      maxEventAgeMicros: config.maxEventAgeMs * MICROS_PER_MILLI,
    };
    this.idleTimeoutMs = config.idleTimeoutMs;
    this.checkpointIntervalMs = config.checkpointIntervalMs;
    this.partitions = config.partitions;
    this.modelCallsRetentionMs = config.modelCallsRetentionMs;
    this.sessionTimeoutMs = config.sessionTimeoutMs;
    this.metadataMaxAgeMs = config.metadataMaxAgeMs;
    this.resetState = config.resetState;
    this.controlKey = controlKey;
    this.clock = options.scheduler ?? asyncScheduler;
  }

  protected requiredTopics(): readonly TopicSpec[] {
    return processorTopics(this.topics, this.partitions, this.modelCallsRetentionMs);
  }

  protected override async inspect(admin: TopicAdmin): Promise<void> {
    this.partitionsAtStart = await admin.partitionCount(this.topics.modelCalls);
    await warnUnlessLogAppendTime(admin, this.topics.modelCalls, this.kafka.brokers, this.logger);
    if (this.controlKey === undefined)
      this.logger.warn(
        "control records on model-calls are not authenticated: anyone who may write to the topic (every MCP server replica) can append watermark ticks, copies or progress records that hold or move its partitions' windows. Set controlKey (MCPO_CONTROL_KEY or MCPO_CONTROL_KEY_FILE, processor.controlKey in the config file; the same for every processor and replay of the log)",
        { topic: this.topics.modelCalls },
      );
  }

  /** Fixes the services' home partitions, then watches for idle and added partitions. */
  protected override async prepare(): Promise<void> {
    this.checkpoints = new CheckpointStore(
      this.kafka,
      this.topics.checkpoints,
      this.startedProducer,
    );
    const partitionsNow = this.partitionsAtStart;
    if (this.resetState) {
      const discarded = await this.checkpoints.discard(this.groupId, this.topics.modelCalls);
      this.logger.warn(
        "resetting state (--reset-state): the group's checkpoints are discarded; every partition's windows are rebuilt from the log's start, and the rollups and alerts of the whole log are written again",
        { group: this.groupId, topic: this.topics.modelCalls, checkpoints: discarded },
      );
    }
    // Checkpoints of a topic deleted and created again under the same name (or of another
    // cluster) hold offsets of a log that is gone: refuse them (--reset-state is the way out).
    this.topicId = (await fetchTopicIds(this.kafka, [this.topics.modelCalls])).get(
      this.topics.modelCalls,
    );
    if (this.topicId !== undefined)
      checkCheckpointTopic(
        this.groupId,
        this.topics.modelCalls,
        (await this.checkpoints.loadAll(this.groupId, this.topics.modelCalls)).values(),
        this.topicId,
      );
    const layout = await this.checkpoints.layout(this.topics.modelCalls, partitionsNow);
    this.homes = { count: layout.homePartitions, of: homeOf(layout.homePartitions) };
    if (partitionsNow !== layout.homePartitions)
      this.logger.info("services keep their home partitions", {
        topic: this.topics.modelCalls,
        partitions: partitionsNow,
        homePartitions: layout.homePartitions,
      });
    this.watchIdlePartitions();
    await this.registerPartitions(partitionsNow);
    this.watchPartitionCount();
  }

  protected consumerOptions(): GroupConsumerOptions {
    return {
      groupId: this.groupId,
      topics: [this.topics.modelCalls],
      fromBeginning: true,
      sessionTimeoutMs: this.sessionTimeoutMs,
      metadataMaxAgeMs: this.metadataMaxAgeMs,
      // Partitions are independent state machines: handling several at once overlaps one
      // partition's produce and checkpoint round trips with another's decoding.
      partitionsConcurrently: 4,
      onBatch: (batch, control) => this.lanes.push(batch.partition, { batch, control }),
      onAssignment: (partitions) => {
        this.onAssignment(partitions.map((entry) => entry.partition));
      },
      onCrash: (error) => {
        this.logger.error("consumer stopped", { error: error.message });
      },
    };
  }

  protected override startedFields(): Record<string, unknown> {
    return { group: this.groupId, topic: this.topics.modelCalls };
  }

  /**
   * Checkpoints and commits where it is: partitions between batches now, the batch in flight at
   * its end (it sees the service stopping), so the next owner has nothing to reprocess.
   */
  protected override async beforeStop(): Promise<void> {
    this.idleSubscription?.unsubscribe();
    this.partitionWatch?.unsubscribe();
    for (const [partition, owned] of this.owned)
      if (!this.busy.has(partition))
        await this.maybeCheckpoint(partition, owned, true).catch((error: unknown) => {
          this.logger.warn("final checkpoint failed", { partition, error: String(error) });
        });
  }
  protected override afterStop(): Promise<void> {
    this.lanes.close();
    return Promise.resolve();
  }

  stats(): ProcessorStats {
    let openSeries = 0;
    for (const partition of this.owned.values()) openSeries += partition.driver.state.openSeries;
    const counted = Object.fromEntries(
      Object.entries(this.count).map(([name, tally]) => [name, tally.value]),
    ) as Record<keyof typeof this.count, number>;
    return { ...counted, openSeries, assignedPartitions: this.assignment.size };
  }

  private onAssignment(partitions: readonly number[]): void {
    this.assignment = new Set(partitions);
    // Partitions given away: their next owner continues from their checkpoint.
    for (const partition of [...this.owned.keys()])
      if (!this.assignment.has(partition)) this.owned.delete(partition);
    this.checkpointLoad = undefined;
    this.committedLoad = undefined;
    this.logger.info("assigned", { partitions: [...this.assignment].sort((a, b) => a - b) });
    // Restore now, not at the first batch: a partition whose log has nothing new still has open
    // windows that only an idle tick will close.
    for (const partition of this.assignment)
      this.partitionFor(partition).then(
        () => {
          this.activity.next(partition);
        },
        (error: unknown) => {
          if (error instanceof StateMismatchError) return; // the service failed, and said why
          this.logger.warn("restoring a partition failed; it is retried at its next batch", {
            partition,
            error: error instanceof Error ? error.message : String(error),
          });
        },
      );
  }

  /**
   * A partition without a checkpoint whose group has read part of it before (the checkpoint
   * topic deleted, a prefix change, `--reset-state`): its windows are rebuilt from the log's
   * start, and what was written up to the group's offset is written again. Said once.
   */
  private async warnIfRebuilding(partition: number): Promise<void> {
    this.committedLoad ??= (async () => {
      const admin = await connectAdmin(this.kafka);
      try {
        return await admin.committedOffsets(this.groupId, this.topics.modelCalls);
      } finally {
        await admin.close();
      }
    })().catch(() => new Map<number, string>()); // only for the message: never in the way
    const committed = (await this.committedLoad).get(partition);
    if (committed !== undefined && committed !== "0")
      this.logger.warn(
        "the partition has no checkpoint though its group has read it (the checkpoint topic deleted, a prefix change, --reset-state): rebuilding its windows from the log's start; rollups and alerts up to the group's offset are written again, with the same bytes",
        { partition, group: this.groupId, groupOffset: committed },
      );
  }

  /** The partition's state, restored from its newest checkpoint once (concurrent callers share it). */
  private partitionFor(partition: number): Promise<OwnedPartition> {
    const owned = this.owned.get(partition);
    if (owned) return Promise.resolve(owned);
    let pending = this.restoring.get(partition);
    if (!pending) {
      pending = this.restore(partition).finally(() => this.restoring.delete(partition));
      this.restoring.set(partition, pending);
    }
    return pending;
  }

  private async restore(partition: number): Promise<OwnedPartition> {
    this.checkpointLoad ??= (this.checkpoints as CheckpointStore).loadAll(
      this.groupId,
      this.topics.modelCalls,
    );
    const checkpoint = (await this.checkpointLoad).get(partition);
    const built = checkpoint ? checkpointWindow(checkpoint) : undefined;
    const wanted = {
      sizeMicros: this.settings.windowSizeMicros,
      graceMicros: this.settings.graceMicros,
    };
    if (
      built &&
      (built.sizeMicros !== wanted.sizeMicros ||
        (built.graceMicros !== undefined && built.graceMicros !== wanted.graceMicros))
    ) {
      const mismatch = new StateMismatchError(
        this.groupId,
        { sizeMicros: built.sizeMicros, graceMicros: built.graceMicros ?? wanted.graceMicros },
        wanted,
      );
      this.fail(mismatch);
      throw mismatch;
    }
    const restored: OwnedPartition = {
      driver: new PartitionDriver(
        this.settings,
        this.routing(partition),
        this.pipelineCodecs.events,
        // Without a checkpoint the state is built from the log's start, whatever the group's
        // offset: starting there with empty windows would emit partial windows as final.
        checkpoint
          ? { state: checkpoint.state, nextOffset: BigInt(checkpoint.nextOffset) }
          : { nextOffset: 0n },
        this.bounds,
        this.controlKey,
      ),
      lastCheckpointAt: this.clock.now(),
      lastCheckpointOffset: checkpoint ? BigInt(checkpoint.nextOffset) : -1n,
      reported: new Map(),
      fromCheckpoint: checkpoint !== undefined,
    };
    this.owned.set(partition, restored);
    if (!checkpoint) await this.warnIfRebuilding(partition);
    // Read from the state's position now, not at the next batch: the group's offset may be past
    // it (no checkpoint, or one behind a commit) with nothing new to read, and an idle tick would
    // then close windows without the records in between.
    // (A batch fetched before the seek that starts past this position is sought here again, not
    // taken for a gap: only a batch after a seek from a batch counts as one.)
    const target = restored.driver.nextOffset;
    if (target !== null && this.consumer)
      this.consumer.seek(this.topics.modelCalls, partition, target.toString());
    this.logger.info("partition restored", {
      partition,
      nextOffset: checkpoint ? checkpoint.nextOffset : "the log's start",
      fromCheckpoint: checkpoint !== undefined,
    });
    return restored;
  }

  private routing(partition: number): PartitionRouting {
    const homes = this.homes;
    if (!homes) throw new Error("processor not started");
    return { partition, homePartitions: homes.count, homeOf: homes.of };
  }

  private async onBatch(batch: ConsumedBatch, control: BatchControl): Promise<void> {
    this.busy.add(batch.partition);
    try {
      await this.handleBatch(batch, control);
    } finally {
      this.busy.delete(batch.partition);
    }
  }

  private async handleBatch(batch: ConsumedBatch, control: BatchControl): Promise<void> {
    const owned = await this.partitionFor(batch.partition);
    const first = batch.records[0];
    if (!first) return;
    const position = owned.driver.positionFor(BigInt(first.offset));
    if (position.action === "seek") {
      // The group's offset is not the checkpoint's (the group deleted or expired, a commit lost):
      // read from the checkpoint.
      if (owned.fromCheckpoint)
        this.logger.info("reading from the partition's checkpoint, not the group's offset", {
          partition: batch.partition,
          groupOffset: first.offset,
          checkpoint: position.to.toString(),
        });

      control.seek(position.to.toString());
      return;
    }
    if (position.action === "gap")
      this.logger.warn(
        "records the partition's state needs are no longer in the log (retention or deleteRecords): going on after the gap; the windows they held are incomplete and are not emitted (windows from the first event after the gap plus the grace period on are)",
        {
          partition: batch.partition,
          from: position.from.toString(),
          to: position.to.toString(),
          missing: (position.to - position.from).toString(),
        },
      );
    const outputs: BatchOutputs = {
      rollups: [],
      alerts: [],
      late: [],
      dead: [],
      forwarded: [],
      active: false,
      ticks: 0,
      withheld: 0,
    };
    let lastOffset: string | undefined;
    try {
      lastOffset = await this.applyBatch(batch, control, owned, outputs);
      if (lastOffset === undefined) return;
      this.reportProgress(batch.partition, owned, outputs);
      await this.produce(outputs);
    } catch (error) {
      // Outputs before state: this batch changed the windows in memory only, and its outputs
      // were not acknowledged. Forget back to the last durable point and read again from there,
      // so no rollup, alert, late or dead-letter record of it is lost.
      const from = this.rewind(batch.partition, owned, error);
      if (from === null) throw error;
      // Read again from there, after a capped backoff that keeps the membership alive: the
      // consumer itself stays up, however long the outage lasts.
      control.seek(from.toString());
      await this.backOff(batch.partition, control);
      return;
    }
    this.failures.delete(batch.partition);
    if (outputs.withheld > 0)
      this.logger.info("rollups and alerts of windows a gap left partial were not written", {
        partition: batch.partition,
        withheld: outputs.withheld,
        firstWindowWritten: owned.driver.emitFloor ?? "after the next event",
      });
    control.resolveOffset(lastOffset);
    await this.maybeCheckpoint(batch.partition, owned, this.isStopping, (offset) =>
      control.commit(offset),
    );
    await control.heartbeat();
    this.observePartition(batch.partition, owned, batch.highWatermark);
    if (outputs.active) this.activity.next(batch.partition);
  }

  /** Feeds the batch's new records through the partition's driver; the last offset applied. */
  private async applyBatch(
    batch: ConsumedBatch,
    control: BatchControl,
    owned: OwnedPartition,
    outputs: BatchOutputs,
  ): Promise<string | undefined> {
    let lastOffset: string | undefined;
    for (const record of batch.records) {
      if (!control.isRunning() || control.isStale()) break;
      const folded = owned.driver.state.foldedEvents;
      const fed = await owned.driver.feed(record);
      if (fed.type === "skipped") continue; // already in the restored state
      if (fed.type === "retry") {
        // The registry is unreachable: stop here, this record is read again with the next fetch.
        this.logger.warn("schema registry unavailable; will retry", {
          partition: record.partition,
          offset: record.offset,
        });
        await this.backOff(batch.partition, control);
        break;
      }
      if (fed.type === "invalid")
        outputs.dead.push(
          this.deadLetter(record, fed.read.code, fed.read.message, fed.read.schemaId),
        );
      else if (fed.type === "rejected") this.rejected(record, fed, outputs);
      else {
        if (fed.input.type === "tick") {
          this.count.ticks.inc();
          outputs.ticks++;
        } else if (fed.input.type === "event") this.count.events.inc();
        if (fed.input.type !== "progress") outputs.active = true;
        outputs.withheld += fed.withheld;
        this.collect(owned, fed.outputs, record, outputs);
        this.count.modelsFolded.inc(owned.driver.state.foldedEvents - folded);
      }
      lastOffset = record.offset;
      this.count.records.inc();
    }
    return lastOffset;
  }

  /**
   * A record whose time is out of bounds of its log time: an event or a copy is dead-lettered, a
   * tick or a progress record ignored (the first of a partition logged); each counted. Neither is
   * activity: a partition that receives only these still gets idle ticks.
   */
  private rejected(
    record: ConsumedRecord,
    fed: Extract<Fed, { type: "rejected" }>,
    outputs: BatchOutputs,
  ): void {
    if (fed.input.type === "event" || fed.input.type === "copy") {
      this.count.rejectedEvents.inc(1, { code: fed.code });
      outputs.dead.push(this.deadLetter(record, fed.code, fed.message, undefined));
      return;
    }
    this.count.ignoredTicks.inc(1, { kind: fed.input.type });
    if (this.ignoringTicksIn.has(record.partition)) return;
    this.ignoringTicksIn.add(record.partition);
    this.logger.warn(
      "ignored a control record whose time is ahead of its log time (a processor whose clock is ahead of the broker's, or a record not written by a processor); such records are counted, not logged again for this partition",
      {
        partition: record.partition,
        offset: record.offset,
        kind: fed.input.type,
        reason: fed.message,
      },
    );
  }

  /** Waits 0.2 s, doubling per consecutive failure of the partition up to 5 s, heartbeating. */
  private async backOff(partition: number, control: BatchControl): Promise<void> {
    const failures = (this.failures.get(partition) ?? 0) + 1;
    this.failures.set(partition, failures);
    await pauseWithHeartbeats(
      control,
      backoffCeiling(BATCH_RETRY, failures - 1),
      () => this.isStopping,
    );
  }

  /** Back to the partition's last durable point; the offset to read again from. */
  private rewind(partition: number, owned: OwnedPartition, error: unknown): bigint | null {
    const from = owned.driver.rewind();
    owned.reported.clear();
    this.logger.warn(
      "a batch's outputs were not written; the partition goes back to its last checkpoint and reads again",
      {
        partition,
        nextOffset: from?.toString() ?? "earliest",
        error: error instanceof Error ? error.message : String(error),
      },
    );
    return from;
  }

  /**
   * Live mode: tells each home partition this one forwarded to how far its event time got, at
   * most once a second per home (and after every tick), after the copies of this batch.
   */
  private reportProgress(partition: number, owned: OwnedPartition, outputs: BatchOutputs): void {
    const time = owned.driver.state.ownEventTimeMicros;
    if (time === null) return;
    const now = this.clock.now();
    for (const [home, lastOffset] of owned.driver.state.forwardedTo) {
      const reported = owned.reported.get(home);
      if (reported && reported.timeMicros >= time) continue;
      if (reported && outputs.ticks === 0 && now - reported.at < PROGRESS_INTERVAL_MS) continue;
      owned.reported.set(home, { timeMicros: time, at: now });
      outputs.forwarded.push(
        this.control(
          home,
          progressRecord({ sourcePartition: partition, lastOffset, sourceTimeMicros: time }),
        ),
      );
    }
  }

  private collect(
    owned: OwnedPartition,
    emitted: readonly PartitionOutput[],
    record: ConsumedRecord,
    outputs: BatchOutputs,
  ): void {
    const codecs = this.pipelineCodecs;
    for (const output of emitted) {
      switch (output.type) {
        case "rollup":
          outputs.rollups.push({
            key: rollupKey(output.rollup),
            value: codecs.rollups.encode(output.rollup),
          });
          break;
        case "alert":
          outputs.alerts.push({
            key: output.alert.service,
            value: codecs.alerts.encode(output.alert),
          });
          break;
        case "forward":
          if (!this.forwardingFrom.has(record.partition)) {
            this.forwardingFrom.add(record.partition);
            this.logger.warn(
              "events arrive on a partition other than their service's home (keyed by something other than the service, or partitions were added): each is copied to its home partition, where its windows are",
              {
                partition: record.partition,
                offset: record.offset,
                service: output.event.service,
                key: record.key?.toString("utf8").slice(0, 200) ?? null,
                home: output.partition,
              },
            );
          }
          this.count.forwarded.inc(1, { partition: String(record.partition) });
          outputs.forwarded.push({
            ...this.control(output.partition, {
              headers: copyHeaders(output.origin),
              value: record.value ?? Buffer.alloc(0),
            }),
            key: output.event.service,
          });
          // The copy carries the source's event time; no progress record is due for it.
          owned.reported.set(output.partition, {
            timeMicros: output.origin.sourceTimeMicros,
            at: owned.reported.get(output.partition)?.at ?? this.clock.now(),
          });
          break;
        case "late":
          outputs.late.push({
            key: record.key,
            value: record.value ?? Buffer.alloc(0),
            headers: {
              ...this.sourceHeaders(record),
              "mcpo-late-watermark-micros": String(output.watermarkMicros),
            },
          });
          break;
        case "duplicate":
          // The sink stores the span once (by event_id); the rollups counted it once.
          this.count.duplicates.inc();
          break;
        case "overflow":
          // Not counted: a sum of its window would pass 2^63 − 1. Its bytes, and why.
          outputs.dead.push(this.deadLetter(record, SUM_OVERFLOW, output.reason, undefined));
          break;
      }
    }
  }

  /**
   * A control record to write into model-calls' `partition`, signed with the control key (its MAC
   * covers the partition: it verifies there only).
   */
  private control<V extends Buffer | null>(
    partition: number,
    control: { readonly headers: Readonly<Record<string, string>>; readonly value: V },
  ): { key: null; partition: number; headers: Record<string, string>; value: V } {
    return {
      key: null,
      partition,
      headers: signControl(this.controlKey, partition, control.headers, control.value),
      value: control.value,
    };
  }

  private deadLetter(
    record: ConsumedRecord,
    code: string,
    reason: string,
    schemaId: number | undefined,
  ): OutgoingRecord {
    this.count.deadLettered.inc(1, { code });
    this.logger.warn("dead-lettered a record", {
      partition: record.partition,
      offset: record.offset,
      code,
      reason,
    });
    return deadLetterRecord(record, code, reason, {
      ...(schemaId === undefined ? {} : { schemaId }),
      source: this.sourceHeaders(record, code),
    });
  }

  /**
   * Where a record came from; for a copy, where its producer wrote the original (for one that
   * does not authenticate, its own place: the origin it names is not to be trusted).
   */
  private sourceHeaders(record: ConsumedRecord, code?: string): Record<string, string> {
    const control =
      code === CONTROL_UNAUTHENTICATED
        ? { type: "data" as const }
        : readControl(record.headers, record.value);
    return sourceHeaders(
      control.type === "copy"
        ? {
            topic: record.topic,
            partition: control.origin.sourcePartition,
            offset: control.origin.sourceOffset,
          }
        : record,
    );
  }

  private async produce(outputs: BatchOutputs): Promise<void> {
    await this.startedProducer.sendMany(
      [
        { topic: this.topics.modelCalls, records: outputs.forwarded },
        { topic: this.topics.metricRollups, records: outputs.rollups },
        { topic: this.topics.alerts, records: outputs.alerts },
        { topic: this.topics.lateEvents, records: outputs.late },
        { topic: this.topics.deadLetter, records: outputs.dead },
      ],
      "gzip",
    );
    this.count.rollups.inc(outputs.rollups.length);
    this.count.alerts.inc(outputs.alerts.length);
    this.count.late.inc(outputs.late.length);
  }

  /**
   * Saves the partition's state when due (or `force`), then commits the group's offset: through
   * `commit` (the batch's own, which still works while the consumer stops) when given.
   */
  private async maybeCheckpoint(
    partition: number,
    owned: OwnedPartition,
    force: boolean,
    commit?: (offset: string) => Promise<void>,
  ): Promise<void> {
    const nextOffset = owned.driver.nextOffset;
    if (nextOffset === null || nextOffset === owned.lastCheckpointOffset) return;
    if (!force && !due(this.clock, owned.lastCheckpointAt, this.checkpointIntervalMs)) return;
    const state = owned.driver.state.snapshot();
    await (this.checkpoints as CheckpointStore).save({
      version: 1,
      group: this.groupId,
      topic: this.topics.modelCalls,
      partition,
      nextOffset: nextOffset.toString(),
      ...(this.topicId === undefined ? {} : { topicId: this.topicId }),
      state,
      window: {
        sizeMicros: this.settings.windowSizeMicros,
        graceMicros: this.settings.graceMicros,
      },
    });
    owned.lastCheckpointAt = this.clock.now();
    owned.lastCheckpointOffset = nextOffset;
    owned.driver.markDurable(state);
    this.count.checkpoints.inc();
    // Only after the checkpoint is durable does the group's offset move.
    if (commit) await commit(nextOffset.toString());
    else
      await (this.consumer as GroupConsumer).commit(
        this.topics.modelCalls,
        partition,
        nextOffset.toString(),
      );
  }

  private observePartition(partition: number, owned: OwnedPartition, highWatermark: string): void {
    const labels = { partition: String(partition) };
    const { state, nextOffset } = owned.driver;
    this.metrics.openWindows.set(labels, state.openSeries);
    const watermark = state.watermarkMicros;
    if (watermark !== null) this.metrics.watermark.set(labels, watermark / 1e6);
    if (nextOffset !== null)
      this.metrics.lag.set(labels, Number(BigInt(highWatermark) - nextOffset));
  }

  /** Live mode: a partition with open windows that stays quiet gets a watermark tick in the log. */
  private watchIdlePartitions(): void {
    this.idleSubscription = tickIdlePartitions(
      this.activity,
      this.idleTimeoutMs,
      this.clock,
      (partition) => this.tick(partition),
    );
  }

  /**
   * Live mode: partitions added to model-calls beyond the homes hold events whose homes are
   * elsewhere. Each home partition gets a progress record of time 0 from each of them as soon as
   * they are seen, so it waits for their copies from then on instead of meeting them late.
   */
  private async registerPartitions(partitions: number): Promise<void> {
    const homes = this.homes;
    if (!homes || partitions <= this.knownPartitions) return;
    const added: number[] = [];
    for (let source = Math.max(this.knownPartitions, homes.count); source < partitions; source++)
      added.push(source);
    if (added.length > 0) {
      const records: OutgoingRecord[] = [];
      for (let home = 0; home < homes.count; home++)
        for (const source of added)
          records.push(
            this.control(
              home,
              progressRecord({ sourcePartition: source, lastOffset: null, sourceTimeMicros: 0 }),
            ),
          );
      await retry(
        () => this.startedProducer.send(this.topics.modelCalls, records, "none"),
        STARTUP_RETRY,
      );
      this.logger.info("partitions beyond the homes registered with every home partition", {
        topic: this.topics.modelCalls,
        partitions: added,
        homePartitions: homes.count,
      });
    }
    this.knownPartitions = partitions;
  }

  /** Looks for partitions added to model-calls every `metadataMaxAgeMs`, one look at a time. */
  private watchPartitionCount(): void {
    const look = async () => {
      const admin = await connectAdmin(this.kafka);
      try {
        await this.registerPartitions(await admin.partitionCount(this.topics.modelCalls));
      } finally {
        await admin.close();
      }
    };
    this.partitionWatch = interval(this.metadataMaxAgeMs, this.clock)
      .pipe(
        exhaustMap(() =>
          defer(look).pipe(
            catchError((error: unknown) => {
              this.logger.warn("could not check the model-calls partitions", {
                error: error instanceof Error ? error.message : String(error),
              });
              return EMPTY;
            }),
          ),
        ),
      )
      .subscribe();
  }

  /**
   * Writes a watermark tick into an idle partition that needs one. True: tick it again after the
   * idle time if it is still idle (a written tick re-arms the timer anyway when it is read; one
   * that failed, or that the producer could not route yet, is written again then).
   */
  private async tick(partition: number): Promise<boolean> {
    const owned = this.owned.get(partition);
    // A partition that forwarded events ticks too: its home partitions wait for its event time.
    if (
      !owned ||
      (owned.driver.state.openSeries === 0 &&
        !owned.driver.state.revisionsPending &&
        owned.driver.state.forwardedTo.size === 0) ||
      !this.assignment.has(partition)
    )
      return false;
    const tick = this.control(partition, watermarkTick(this.clock.now() * MICROS_PER_MILLI));
    try {
      await this.producer?.send(this.topics.modelCalls, [tick], "none");
      return !this.isStopping;
    } catch (error) {
      this.logger.warn("could not write a watermark tick; trying again after the idle time", {
        partition,
        error: (error as Error).message,
      });
      // Only a processed batch arms the idle timer again: without a retry, one failed write (a
      // partition just created, its leader still moving) would leave the partition without ticks
      // for good, and its windows — and every home waiting for its progress — open.
      return !this.isStopping;
    }
  }
}

/** Reads topic settings: what `TopicAdmin.topicConfig` gives (see {@link warnUnlessLogAppendTime}). */
export interface TopicConfigReader {
  /** The current values of `names` among `topic`'s settings (names the broker does not report are left out). */
  topicConfig(topic: string, names: readonly string[]): Promise<ReadonlyMap<string, string>>;
}

/**
 * What to say at start about model-calls' timestamps, given its `message.timestamp.type`: nothing
 * when it is `LogAppendTime` (or unknown), else one warning naming the topic, what it means and
 * the command that changes it.
 */
export function timestampTypeWarning(
  topic: string,
  timestampType: string | undefined,
  brokers: readonly string[],
): { readonly message: string; readonly fields: Record<string, unknown> } | undefined {
  if (timestampType === undefined || timestampType === LOG_APPEND_TIME) return undefined;
  return {
    message: `${topic} keeps its producers' timestamps (${TIMESTAMP_TYPE_CONFIG}=${timestampType}), not the broker's: the clock-skew check (maxClockSkewMs, maxEventAgeMs) then trusts each producer's clock, and a host whose clock is wrong stamps its events with that same wrong clock and passes it. Have the broker stamp them (records appended from then on; a replay judges every record by the timestamp it has): kafka-configs --bootstrap-server ${brokers.join(",")} --alter --entity-type topics --entity-name ${topic} --add-config ${TIMESTAMP_TYPE_CONFIG}=${LOG_APPEND_TIME}`,
    fields: { topic, [TIMESTAMP_TYPE_CONFIG]: timestampType },
  };
}

/**
 * Warns once, at start, when model-calls was created without `LogAppendTime` (before the services
 * created it so, or by hand). It does not refuse to start: the records already in the log keep
 * the timestamps they have whatever the setting, so refusing would not make them judged by the
 * broker's clock, and would stop every rollup and alert of a running deployment at an upgrade;
 * the check still catches an event time wrong against its producer's own send time (a wrong
 * field, the wrong units). Warns that it could not check when the settings cannot be read.
 */
export async function warnUnlessLogAppendTime(
  reader: TopicConfigReader,
  topic: string,
  brokers: readonly string[],
  logger: OpsLogger,
): Promise<void> {
  let timestampType: string | undefined;
  try {
    timestampType = (await reader.topicConfig(topic, [TIMESTAMP_TYPE_CONFIG])).get(
      TIMESTAMP_TYPE_CONFIG,
    );
  } catch (error) {
    logger.warn(`could not read the settings of ${topic}; its timestamp type is not checked`, {
      topic,
      error: error instanceof Error ? error.message : String(error),
    });
    return;
  }
  const warning = timestampTypeWarning(topic, timestampType, brokers);
  if (warning) logger.warn(warning.message, warning.fields);
}
