/**
 * The sink: a consumer group over the model-calls, metric-rollups and alerts topics that writes
 * spans, rollups and alerts into PostgreSQL through the shared writer. Each batch's rows and the
 * next offsets go in one transaction, and the sink reads from the offsets stored in PostgreSQL
 * (not the group's), so a crash between the write and the Kafka commit neither duplicates nor
 * loses anything. Undecodable records go to the dead-letter topic; PostgreSQL being down pauses
 * the partition (the batch is retried with backoff and jitter, heartbeats continue) until it is back.
 */
import { randomUUID } from "node:crypto";

import pg from "pg";

import { AvroCodec, valueSubject, type DecodeResult } from "../avro/codec.js";
import { ALERT_EVENT, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import { readControl } from "../avro/control.js";
import type { AlertEvent, MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { connectionFromOptions, topicNames, type TopicNames } from "../config/index.js";
import {
  connectAdmin,
  createGroupConsumer,
  createRecordProducer,
  type BatchControl,
  type ConsumedBatch,
  type GroupConsumer,
  type KafkaSettings,
  type OutgoingRecord,
  type RecordProducer,
} from "../kafka/index.js";
import { pinoLogger, type MetricsServer, type OpsLogger } from "../ops/index.js";
import { SinkMetrics } from "./metrics.js";
import { migrate } from "./migrate.js";
import { PostgresWriter, type SpanRow } from "./writer.js";

/** Settings of {@link Sink}; each falls back to the environment, then a default. */
export interface SinkOptions {
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
  readonly logger?: OpsLogger;
  /** Serve Prometheus metrics on this port (`/metrics`, loopback); none by default. 0: any free port. */
  readonly metricsPort?: number;
  /** Backoff while PostgreSQL is down: first delay and cap, ms (defaults 200 and 10 000). */
  readonly retryInitialMs?: number;
  readonly retryMaxMs?: number;
}

/** Counters since start. */
export interface SinkStats {
  readonly batches: number;
  readonly spansInserted: number;
  readonly spansDuplicate: number;
  readonly rollupsUpserted: number;
  readonly alertsUpserted: number;
  readonly deadLettered: number;
  readonly retries: number;
}

export class Sink {
  readonly topics: TopicNames;
  readonly groupId: string;
  private readonly kafka: KafkaSettings;
  private readonly registryUrl: string;
  private readonly databaseUrl: string;
  private readonly migrateFirst: boolean;
  private readonly sessionTimeoutMs: number;
  private readonly partitions: number;
  private readonly logger: OpsLogger;
  private readonly retryInitialMs: number;
  private readonly retryMaxMs: number;
  private pool: pg.Pool | undefined;
  private writer: PostgresWriter | undefined;
  private producer: RecordProducer | undefined;
  private consumer: GroupConsumer | undefined;
  private codecs:
    | {
        events: AvroCodec<ModelCallEvent>;
        rollups: AvroCodec<MetricRollup>;
        alerts: AvroCodec<AlertEvent>;
      }
    | undefined;
  /** Next offsets stored in PostgreSQL, by `topic|partition`; loaded on assignment. */
  private stored: Map<string, bigint> | undefined;
  private stopping: Promise<void> | undefined;
  /** Prometheus metrics of this sink. */
  readonly metrics = new SinkMetrics();
  private readonly metricsPort: number | undefined;
  private metricsServer: MetricsServer | undefined;
  private counters = {
    batches: 0,
    spansInserted: 0,
    spansDuplicate: 0,
    rollupsUpserted: 0,
    alertsUpserted: 0,
    deadLettered: 0,
    retries: 0,
  };

  constructor(options: SinkOptions = {}) {
    const connection = connectionFromOptions(options);
    this.topics = topicNames(connection.topicPrefix);
    this.groupId = options.groupId ?? "mcpo-sink";
    this.kafka = {
      brokers: connection.kafkaBrokers,
      clientId: `mcpo-sink-${randomUUID().slice(0, 8)}`,
    };
    this.registryUrl = connection.schemaRegistryUrl;
    this.databaseUrl = connection.databaseUrl;
    this.migrateFirst = options.migrate ?? true;
    this.sessionTimeoutMs = options.sessionTimeoutMs ?? 30_000;
    this.partitions = options.partitions ?? 6;
    this.metricsPort = options.metricsPort;
    this.logger = options.logger ?? pinoLogger("sink");
    this.retryInitialMs = options.retryInitialMs ?? 200;
    this.retryMaxMs = options.retryMaxMs ?? 10_000;
  }

  async start(): Promise<void> {
    if (this.migrateFirst) await migrate(this.databaseUrl);
    const admin = await connectAdmin(this.kafka);
    try {
      await admin.ensureTopics([
        { name: this.topics.modelCalls, partitions: this.partitions },
        {
          name: this.topics.metricRollups,
          partitions: this.partitions,
          config: { "cleanup.policy": "compact" },
        },
        { name: this.topics.alerts, partitions: this.partitions },
        { name: this.topics.deadLetter, partitions: this.partitions },
      ]);
    } finally {
      await admin.close();
    }
    this.pool = new pg.Pool({
      connectionString: this.databaseUrl,
      max: 4,
      connectionTimeoutMillis: 5000,
    });
    this.pool.on("error", (error) => {
      this.logger.warn("postgres connection lost", { error: error.message });
    });
    this.writer = new PostgresWriter(this.pool);
    const register = <T>(contract: Parameters<typeof AvroCodec.register<T>>[0], topic: string) =>
      AvroCodec.register(contract, { registryUrl: this.registryUrl, subject: valueSubject(topic) });
    this.codecs = {
      events: await register(MODEL_CALL_EVENT, this.topics.modelCalls),
      rollups: await register(METRIC_ROLLUP, this.topics.metricRollups),
      alerts: await register(ALERT_EVENT, this.topics.alerts),
    };
    this.producer = createRecordProducer(this.kafka);
    await this.producer.connect();
    this.consumer = createGroupConsumer(this.kafka, {
      groupId: this.groupId,
      topics: [this.topics.modelCalls, this.topics.metricRollups, this.topics.alerts],
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
    });
    await this.consumer.start();
    if (this.metricsPort !== undefined)
      this.metricsServer = await this.metrics.serve(this.metricsPort);
    this.logger.info("sink started", {
      group: this.groupId,
      ...(this.metricsServer
        ? { metrics: `http://127.0.0.1:${this.metricsServer.port}/metrics` }
        : {}),
    });
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      try {
        await this.consumer?.stop();
      } finally {
        await this.producer?.disconnect().catch(() => undefined);
        await this.pool?.end().catch(() => undefined);
        await this.metricsServer?.close();
        this.logger.info("sink stopped", { ...this.counters });
      }
    })();
    return this.stopping;
  }

  /** Where the Prometheus metrics are served, once started with `metricsPort`. */
  get metricsUrl(): string | undefined {
    return this.metricsServer ? `http://127.0.0.1:${this.metricsServer.port}/metrics` : undefined;
  }

  stats(): SinkStats {
    return { ...this.counters };
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
    if (stored !== undefined && BigInt(first.offset) > stored) {
      control.seek(stored.toString()); // the group's offset is ahead of what PostgreSQL holds
      return;
    }
    const codecs = this.codecs;
    if (!codecs) throw new Error("sink not started");
    const spans: SpanRow[] = [];
    const rollups: MetricRollup[] = [];
    const alerts: AlertEvent[] = [];
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
        await this.pause(control, "schema registry unavailable");
      }
      if (!decoded.ok) {
        dead.push({
          key: record.key,
          value,
          headers: {
            "mcpo-source-topic": record.topic,
            "mcpo-source-partition": String(record.partition),
            "mcpo-source-offset": record.offset,
            "mcpo-dlq-code": decoded.error.code,
            "mcpo-dlq-reason": decoded.error.message.slice(0, 1000),
          },
        });
        continue;
      }
      if (batch.topic === this.topics.modelCalls)
        spans.push({
          event: decoded.value as ModelCallEvent,
          source: { topic: record.topic, partition: record.partition, offset: record.offset },
        });
      else if (batch.topic === this.topics.metricRollups)
        rollups.push(decoded.value as MetricRollup);
      else alerts.push(decoded.value as AlertEvent);
    }
    if (dead.length > 0) {
      await this.withRetry(control, () =>
        (this.producer as RecordProducer).send(this.topics.deadLetter, dead, "gzip"),
      );
      this.counters.deadLettered += dead.length;
      for (const record of dead)
        this.metrics.deadLettered.inc({
          code: record.headers?.["mcpo-dlq-code"]?.toString() ?? "unknown",
        });
      this.logger.warn("dead-lettered records", {
        topic: batch.topic,
        partition: batch.partition,
        count: dead.length,
      });
    }
    const nextOffset = (BigInt(last.offset) + 1n).toString();
    const result = await this.withRetry(control, () =>
      (this.writer as PostgresWriter).write({
        spans,
        rollups,
        alerts,
        offsets: [
          { group: this.groupId, topic: batch.topic, partition: batch.partition, nextOffset },
        ],
      }),
    );
    this.stored?.set(`${batch.topic}|${batch.partition}`, BigInt(nextOffset));
    this.counters.batches++;
    this.counters.spansInserted += result.spansInserted;
    this.counters.spansDuplicate += result.spansDuplicate;
    this.counters.rollupsUpserted += result.rollupsUpserted;
    this.counters.alertsUpserted += result.alertsUpserted;
    this.metrics.batchSize.observe(batch.records.length);
    this.metrics.rows.inc({ table: "spans", outcome: "inserted" }, result.spansInserted);
    this.metrics.rows.inc({ table: "spans", outcome: "duplicate" }, result.spansDuplicate);
    this.metrics.rows.inc({ table: "metric_rollups", outcome: "upserted" }, result.rollupsUpserted);
    this.metrics.rows.inc({ table: "alerts", outcome: "upserted" }, result.alertsUpserted);
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

  /** Runs `work` until it succeeds, pausing (with heartbeats) between attempts. */
  private async withRetry<T>(control: BatchControl, work: () => Promise<T>): Promise<T> {
    let delay = this.retryInitialMs;
    for (;;) {
      try {
        return await work();
      } catch (error) {
        if (!control.isRunning()) throw error;
        this.counters.retries++;
        this.metrics.retries.inc();
        this.logger.warn("write failed; retrying", {
          error: error instanceof Error ? error.message : String(error),
          delayMs: Math.round(delay),
        });
        await this.pause(control, "retry", delay);
        delay = Math.min(delay * 2, this.retryMaxMs);
      }
    }
  }

  private async pause(
    control: BatchControl,
    _why: string,
    ms = this.retryInitialMs,
  ): Promise<void> {
    const until = Date.now() + Math.random() * ms;
    while (Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(1000, until - Date.now())));
      await control.heartbeat().catch(() => undefined);
    }
  }
}
