/**
 * The sink: a consumer group over the model-calls, metric-rollups and alerts topics that writes
 * spans, rollups and alerts into PostgreSQL through the shared writer. Each batch's rows and the
 * next offsets go in one transaction, and the sink reads from the offsets stored in PostgreSQL
 * (not the group's), so a crash between the write and the Kafka commit neither duplicates nor
 * loses anything. Undecodable records go to the dead-letter topic; PostgreSQL being down pauses
 * the partition (the batch is retried with backoff and jitter, heartbeats continue) until it is back.
 * A record PostgreSQL refuses for what it holds (see sink/pg-errors.ts) is isolated by bisecting
 * the batch and dead-lettered (`DB_REJECTED`, with its SQLSTATE), the rest of the batch written
 * and the position stored past it: it never stalls its partition. Dead letters go out in sends the
 * broker takes, each truncated to fit when its record is bigger than that.
 */
import { randomUUID } from "node:crypto";

import type pg from "pg";

import { redactingLogger } from "../config/errors.js";
import type { DecodeResult } from "../avro/codec.js";
import { readControl } from "../avro/control.js";
import type { AlertEvent, MetricRollup, ModelCallEvent } from "../avro/generated.js";
import {
  backoffCeiling,
  parseSinkConfig,
  retry,
  topicNames,
  type TopicNames,
  type SecurityEndpointOptions,
} from "../config/index.js";
import {
  connectAdmin,
  fetchTopicIds,
  TopicReplacedError,
  type BatchControl,
  type ConsumedBatch,
  type ConsumedRecord,
  type GroupConsumerOptions,
  type KafkaSettings,
  type OutgoingRecord,
  type ReplacedTopic,
  kafkaSettingsOf,
} from "../kafka/index.js";
import { pinoLogger, type OpsLogger } from "../ops/index.js";
import {
  ConsumerService,
  DEAD_LETTER_MAX_BYTES,
  deadLetterRecord,
  healPosition,
  pauseWithHeartbeats,
  pipelineTopics,
  recordBytes,
  shellOptionsOf,
  Tally,
  type TopicSpec,
} from "../ops/service.js";
import { writeIsolating } from "./isolate.js";
import { SinkMetrics } from "./metrics.js";
import { migrate } from "./migrate.js";
import { classifyPgError, sqlstateOf, type RecordRejection } from "./pg-errors.js";
import { openPool, PostgresWriter, type OffsetRow, type SpanRow } from "./writer.js";

/** A decoded record of a batch and the row it becomes (one of the three, by its topic). */
interface BatchRow {
  readonly record: ConsumedRecord;
  readonly span?: SpanRow;
  readonly rollup?: MetricRollup;
  readonly alert?: AlertEvent;
}

/** Settings of {@link Sink}; each falls back to the environment, then a default. */
export interface SinkOptions extends SecurityEndpointOptions {
  readonly brokers?: string | readonly string[];
  readonly schemaRegistryUrl?: string;
  readonly databaseUrl?: string;
  readonly topicPrefix?: string;
  /** Default `mcpo-sink`. */
  readonly groupId?: string;
  /** Apply schema migrations at start (default true). */
  readonly migrate?: boolean;
  readonly sessionTimeoutMs?: number;
  /** Partitions of the topics the sink creates if missing (default 6). */
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
  readonly logger?: OpsLogger;
  /** Serve Prometheus metrics on this port (`/metrics`, on `metricsHost`); none by default. 0: any free port. */
  readonly metricsPort?: number;
  /**
   * The address the metrics and health endpoint listens on (default 127.0.0.1: this host only;
   * `0.0.0.0` or `::`: every interface, unauthenticated).
   */
  readonly metricsHost?: string;
  /** Backoff while PostgreSQL is down: first delay and cap, ms (defaults 200 and 10 000). */
  readonly retryInitialMs?: number;
  readonly retryMaxMs?: number;
  /**
   * How long records of a schema id the registry does not know wait (a registry that restarts
   * answers "not found" for a while) before they are dead-lettered, ms (default 15 000).
   */
  readonly unknownSchemaIdGraceMs?: number;
  /** Retention of model-calls if this sink creates it, ms (default -1: unlimited). */
  readonly modelCallsRetentionMs?: number;
  /**
   * Stored positions of a topic deleted and created again under the same name (or of another
   * cluster: its topic id differs) are dropped, and the new topic is read from its start
   * (default false: the sink refuses to start with a {@link TopicReplacedError}).
   */
  readonly acceptNewTopics?: boolean;
}

/** Counters since start. */
export interface SinkStats {
  readonly batches: number;
  readonly spansInserted: number;
  readonly spansDuplicate: number;
  readonly rollupsUpserted: number;
  /** Rollups left unwritten: a higher revision of their window was stored or in the batch. */
  readonly rollupsSuperseded: number;
  readonly alertsUpserted: number;
  readonly deadLettered: number;
  readonly retries: number;
}

export class Sink extends ConsumerService<SinkStats> {
  readonly topics: TopicNames;
  readonly groupId: string;
  private readonly databaseUrl: string;
  private readonly migrateFirst: boolean;
  private readonly sessionTimeoutMs: number;
  private readonly partitions: number;
  /** Retention of model-calls when this service creates it, ms (-1: unlimited). */
  private readonly modelCallsRetentionMs: number;
  private readonly logger: OpsLogger;
  private readonly retryInitialMs: number;
  private readonly retryMaxMs: number;
  private readonly acceptNewTopics: boolean;
  /** Each consumed topic's id, stored with its positions; read at start. */
  private topicIds: ReadonlyMap<string, string> = new Map();
  private pool: pg.Pool | undefined;
  private writer: PostgresWriter | undefined;
  /** Next offsets stored in PostgreSQL, by `topic|partition`; loaded on assignment. */
  private stored: Map<string, bigint> | undefined;
  /** Where the sink last sought to, by `topic|partition`, until a batch starts there. */
  private readonly sought = new Map<string, bigint>();
  /** Prometheus metrics of this sink. */
  readonly metrics: SinkMetrics;
  /** What it counted: each feeds its Prometheus counter too. */
  private readonly count: Record<keyof SinkStats, Tally>;

  /** @throws {ConfigError} naming the option or variable that is invalid. */
  constructor(options: SinkOptions = {}) {
    const config = parseSinkConfig(options);
    const connection = config.connection;
    const topics = topicNames(connection.topicPrefix);
    const metrics = new SinkMetrics();
    const logger = redactingLogger(options.logger ?? pinoLogger("sink"));
    const kafka: KafkaSettings = kafkaSettingsOf(
      connection,
      `mcpo-sink-${randomUUID().slice(0, 8)}`,
    );
    super(shellOptionsOf("sink", config, { kafka, topics, logger, registry: metrics.registry }));
    this.topics = topics;
    this.metrics = metrics;
    this.logger = logger;
    this.count = {
      batches: new Tally(metrics.batches),
      spansInserted: new Tally(metrics.rows, { table: "spans", outcome: "inserted" }),
      spansDuplicate: new Tally(metrics.rows, { table: "spans", outcome: "duplicate" }),
      rollupsUpserted: new Tally(metrics.rows, { table: "metric_rollups", outcome: "upserted" }),
      rollupsSuperseded: new Tally(metrics.rows, {
        table: "metric_rollups",
        outcome: "superseded",
      }),
      alertsUpserted: new Tally(metrics.rows, { table: "alerts", outcome: "upserted" }),
      deadLettered: new Tally(metrics.deadLettered),
      retries: new Tally(metrics.retries),
    };
    this.groupId = config.groupId;
    this.databaseUrl = connection.databaseUrl;
    this.migrateFirst = config.migrate;
    this.sessionTimeoutMs = config.sessionTimeoutMs;
    this.partitions = config.partitions;
    this.modelCallsRetentionMs = config.modelCallsRetentionMs;
    this.retryInitialMs = config.retryInitialMs;
    this.retryMaxMs = config.retryMaxMs;
    this.acceptNewTopics = config.acceptNewTopics;
  }

  protected requiredTopics(): readonly TopicSpec[] {
    return pipelineTopics(this.topics, this.partitions, this.modelCallsRetentionMs);
  }

  /** Migrates the schema (unless told not to) and opens the pool the writer uses. */
  protected override async prepare(): Promise<void> {
    if (this.migrateFirst) await migrate(this.databaseUrl);
    this.pool = openPool(this.databaseUrl, {
      max: 4,
      onLost: (error) => {
        this.logger.warn("postgres connection lost", { error: error.message });
      },
    });
    this.writer = new PostgresWriter(this.pool);
    await this.checkTopicIds();
  }

  /** The topics the sink consumes. */
  private consumedTopics(): string[] {
    return [this.topics.modelCalls, this.topics.metricRollups, this.topics.alerts];
  }

  /**
   * Compares the topic ids the stored positions carry with the topics' ids now. Positions of a
   * topic deleted and created again under the same name (or of another cluster) would make the
   * sink skip that many of the new topic's first records as already written: it refuses to
   * start, or with `acceptNewTopics` reads such a topic from its start. Positions stored before
   * topic ids were take the current one.
   *
   * @throws {TopicReplacedError} naming each such topic, its stored and its current id.
   */
  private async checkTopicIds(): Promise<void> {
    const writer = this.writer as PostgresWriter;
    const topics = this.consumedTopics();
    const current = await fetchTopicIds(this.shell.kafka, topics);
    const replaced: ReplacedTopic[] = [];
    for (const { topic, ids } of await writer.storedTopicIds(this.groupId, topics)) {
      const currentId = current.get(topic);
      if (currentId === undefined) continue; // not there: nothing to compare with
      const storedId = ids.find((id): id is string => id !== null && id !== currentId);
      if (storedId !== undefined) {
        replaced.push({ topic, storedId, currentId });
      } else if (ids.includes(null)) {
        const adopted = await writer.adoptTopicId(this.groupId, topic, currentId);
        this.logger.info("stored positions without a topic id take the topic's current id", {
          group: this.groupId,
          topic,
          topicId: currentId,
          positions: adopted,
        });
      }
    }
    if (replaced.length > 0 && !this.acceptNewTopics)
      throw new TopicReplacedError(
        `the sink's stored positions (group ${this.groupId})`,
        replaced,
        "To drop those positions and read the new topic from its start, run the sink with " +
          "--accept-new-topics (MCPO_ACCEPT_NEW_TOPICS=true, or sink.acceptNewTopics: true in the config file)",
      );
    if (replaced.length > 0) {
      const admin = await connectAdmin(this.shell.kafka);
      try {
        for (const entry of replaced) {
          const partitions = await admin.partitionCount(entry.topic);
          const discarded = await writer.restartTopic(
            this.groupId,
            entry.topic,
            entry.currentId,
            partitions,
          );
          this.logger.warn(
            "the topic was deleted and created again (its id changed): its stored positions are dropped and it is read from its start (accept-new-topics)",
            { group: this.groupId, ...entry, discarded, partitions },
          );
        }
      } finally {
        await admin.close();
      }
    }
    this.topicIds = current;
  }

  protected consumerOptions(): GroupConsumerOptions {
    return {
      groupId: this.groupId,
      topics: this.consumedTopics(),
      fromBeginning: true,
      sessionTimeoutMs: this.sessionTimeoutMs,
      partitionsConcurrently: 3,
      onBatch: (batch, control) => this.onBatch(batch, control),
      onAssignment: () => {
        // Positions come from PostgreSQL: read them again for the new assignment.
        this.stored = undefined;
      },
      onCrash: (error) => {
        this.logger.error("consumer stopped", { error: error.message });
      },
    };
  }

  protected override startedFields(): Record<string, unknown> {
    return { group: this.groupId };
  }

  protected override async afterStop(): Promise<void> {
    await this.pool?.end();
  }

  stats(): SinkStats {
    const counted: Partial<Record<keyof SinkStats, number>> = {};
    for (const [name, tally] of Object.entries(this.count) as [keyof SinkStats, Tally][])
      counted[name] = tally.value;
    return counted as SinkStats;
  }

  private async storedOffset(topic: string, partition: number): Promise<bigint | undefined> {
    if (!this.stored) {
      const rows = await (this.writer as PostgresWriter).offsets(this.groupId);
      this.stored = new Map(
        rows.map((row) => [`${row.topic}|${row.partition}`, BigInt(row.nextOffset)]),
      );
    }
    return this.stored.get(`${topic}|${partition}`);
  }

  private async onBatch(batch: ConsumedBatch, control: BatchControl): Promise<void> {
    const first = batch.records[0];
    const last = batch.records.at(-1);
    if (!first || !last) return;
    const stored = await this.withRetry(control, () =>
      this.storedOffset(batch.topic, batch.partition),
    );
    const where = `${batch.topic}|${batch.partition}`;
    if (stored !== undefined && BigInt(first.offset) > stored) {
      // The group's offset is ahead of what PostgreSQL holds: read from there, unless those
      // records are gone from the log (retention, deleteRecords, compaction).
      const position = healPosition(BigInt(first.offset), stored, this.sought.get(where));
      if (position.action === "seek") {
        this.sought.set(where, position.to);
        control.seek(position.to.toString());
        return;
      }
      if (position.action === "gap")
        this.logger.warn(
          "records after the sink's stored position are no longer in the log (retention, deleteRecords or compaction): going on after the gap",
          {
            topic: batch.topic,
            partition: batch.partition,
            from: position.from.toString(),
            to: position.to.toString(),
            missing: (position.to - position.from).toString(),
          },
        );
    }
    this.sought.delete(where);
    const codecs = this.pipelineCodecs;
    const rows: BatchRow[] = [];
    const dead: OutgoingRecord[] = [];
    for (const record of batch.records) {
      if (stored !== undefined && BigInt(record.offset) < stored) continue; // already written
      if (
        batch.topic === this.topics.modelCalls &&
        readControl(record.headers, record.value).type !== "data"
      )
        continue;
      const value = record.value ?? Buffer.alloc(0);
      let decoded: DecodeResult<ModelCallEvent | MetricRollup | AlertEvent>;
      for (;;) {
        decoded =
          batch.topic === this.topics.modelCalls
            ? await codecs.events.decode(value)
            : batch.topic === this.topics.metricRollups
              ? await codecs.rollups.decode(value)
              : await codecs.alerts.decode(value);
        if (decoded.ok || !decoded.error.retriable) break;
        await this.pause(control);
      }
      if (!decoded.ok) {
        dead.push(deadLetterRecord(record, decoded.error.code, decoded.error.message));
        continue;
      }
      if (batch.topic === this.topics.modelCalls)
        rows.push({
          record,
          span: {
            event: decoded.value as ModelCallEvent,
            source: { topic: record.topic, partition: record.partition, offset: record.offset },
          },
        });
      else if (batch.topic === this.topics.metricRollups)
        rows.push({ record, rollup: decoded.value as MetricRollup });
      else rows.push({ record, alert: decoded.value as AlertEvent });
    }
    if (dead.length > 0) {
      await this.sendDeadLetters(control, dead);
      for (const record of dead)
        this.count.deadLettered.inc(1, {
          code: record.headers?.["mcpo-dlq-code"]?.toString() ?? "unknown",
        });
      this.logger.warn("dead-lettered records", {
        topic: batch.topic,
        partition: batch.partition,
        count: dead.length,
      });
    }
    const nextOffset = (BigInt(last.offset) + 1n).toString();
    const writer = this.writer as PostgresWriter;
    const positionAt = (offset: string): OffsetRow => ({
      group: this.groupId,
      topic: batch.topic,
      partition: batch.partition,
      nextOffset: offset,
      ...this.topicIdOf(batch.topic),
    });
    const result = {
      spansInserted: 0,
      spansDuplicate: 0,
      rollupsUpserted: 0,
      rollupsSuperseded: 0,
      alertsUpserted: 0,
    };
    let position: string | undefined;
    // The rows and the position in one transaction; rows PostgreSQL refuses for what they hold
    // are isolated and dead-lettered, each before the position moves past it.
    await writeIsolating(rows, {
      write: async (chunk, _from, to) => {
        // Every record before the chunk is written or dead-lettered: the position may move to
        // the first record after it.
        const at = rows[to]?.record.offset ?? nextOffset;
        const written = await this.withRetry(control, () =>
          writer.write({
            spans: chunk.flatMap((row) => (row.span ? [row.span] : [])),
            rollups: chunk.flatMap((row) => (row.rollup ? [row.rollup] : [])),
            alerts: chunk.flatMap((row) => (row.alert ? [row.alert] : [])),
            offsets: [positionAt(at)],
          }),
        );
        for (const name of Object.keys(result) as (keyof typeof result)[])
          result[name] += written[name];
        position = at;
      },
      reject: (row, _index, rejection) => this.refused(control, row.record, rejection),
    });
    // The batch ended with refused records: the position moves past them too.
    if (position !== nextOffset)
      await this.withRetry(control, () => writer.write({ offsets: [positionAt(nextOffset)] }));
    this.stored?.set(`${batch.topic}|${batch.partition}`, BigInt(nextOffset));
    this.count.batches.inc();
    this.count.spansInserted.inc(result.spansInserted);
    this.count.spansDuplicate.inc(result.spansDuplicate);
    this.count.rollupsUpserted.inc(result.rollupsUpserted);
    this.count.rollupsSuperseded.inc(result.rollupsSuperseded);
    this.count.alertsUpserted.inc(result.alertsUpserted);
    this.metrics.batchSize.observe(batch.records.length);
    this.metrics.lag.set(
      { topic: batch.topic, partition: String(batch.partition) },
      Number(BigInt(batch.highWatermark) - BigInt(nextOffset)),
    );
    control.resolveOffset(last.offset);
    // The group's offset is informational (lag); PostgreSQL holds the truth. Committed through
    // the batch, so the batch in flight at a graceful stop commits too.
    await control.commit(nextOffset).catch((error: unknown) => {
      this.logger.warn("committing to the group failed", { error: String(error) });
    });
  }

  /**
   * Runs `work` until it succeeds or the consumer stops, with the shared capped exponential
   * backoff (full jitter), heartbeating while it waits: PostgreSQL or the broker being down
   * pauses the partition, it loses nothing.
   */
  private withRetry<T>(control: BatchControl, work: () => Promise<T>): Promise<T> {
    const policy = {
      maxAttempts: Number.POSITIVE_INFINITY,
      baseDelayMs: this.retryInitialMs,
      maxDelayMs: this.retryMaxMs,
      // Rows PostgreSQL refuses for what they hold fail the same way every time: they are
      // isolated (see writeIsolating), not retried. Anything else is retried while running.
      shouldRetry: (error: unknown) => control.isRunning() && classifyPgError(error) !== "record",
    };
    return retry(() => work(), policy, {
      sleep: (ms) => pauseWithHeartbeats(control, ms),
      onRetry: (error, attempt, waitMs) => {
        this.count.retries.inc();
        const sqlstate = sqlstateOf(error);
        this.logger.warn("write failed; retrying", {
          error: error.message,
          ...(sqlstate === undefined ? {} : { sqlstate }),
          // The backoff (doubling up to the cap); the wait is a random part of it.
          delayMs: backoffCeiling(policy, attempt - 1),
          waitMs: Math.round(waitMs),
        });
      },
    });
  }

  /**
   * Sends dead letters, in sends of at most {@link DEAD_LETTER_MAX_BYTES} (each record is at most
   * that, see `deadLetterRecord`), so that no send is bigger than the broker takes; each retried
   * until it succeeds or the consumer stops.
   */
  private async sendDeadLetters(
    control: BatchControl,
    letters: readonly OutgoingRecord[],
  ): Promise<void> {
    let group: OutgoingRecord[] = [];
    let bytes = 0;
    const send = async (): Promise<void> => {
      const records = group;
      group = [];
      bytes = 0;
      if (records.length > 0)
        await this.withRetry(control, () =>
          this.startedProducer.send(this.topics.deadLetter, records, "gzip"),
        );
    };
    for (const letter of letters) {
      const size = recordBytes(letter);
      if (bytes + size > DEAD_LETTER_MAX_BYTES) await send();
      group.push(letter);
      bytes += size;
    }
    await send();
  }

  /**
   * A record PostgreSQL refused for what it holds: dead-lettered (`DB_REJECTED`, its SQLSTATE in
   * `mcpo-dlq-sqlstate` and the reason) before the partition's position moves past it.
   */
  private async refused(
    control: BatchControl,
    record: ConsumedRecord,
    rejection: RecordRejection,
  ): Promise<void> {
    const reason = `SQLSTATE ${rejection.sqlstate}: ${rejection.message}`;
    await this.sendDeadLetters(control, [
      deadLetterRecord(record, "DB_REJECTED", reason, {
        headers: { "mcpo-dlq-sqlstate": rejection.sqlstate },
      }),
    ]);
    this.count.deadLettered.inc(1, { code: "DB_REJECTED" });
    this.logger.warn("PostgreSQL refused a record; dead-lettered it", {
      topic: record.topic,
      partition: record.partition,
      offset: record.offset,
      sqlstate: rejection.sqlstate,
      reason: rejection.message,
    });
  }

  private topicIdOf(topic: string): { topicId?: string } {
    const topicId = this.topicIds.get(topic);
    return topicId === undefined ? {} : { topicId };
  }

  /** Waits a random time up to `ms` (full jitter), heartbeating. */
  private async pause(control: BatchControl, ms = this.retryInitialMs): Promise<void> {
    await pauseWithHeartbeats(control, Math.random() * ms);
  }
}
