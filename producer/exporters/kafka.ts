/**
 * The fleet path: ModelCallEvents as Avro (Confluent wire format, schema from the registry) to
 * the model-calls topic, key = service, so one service's events share a partition. Batches go out
 * through an idempotent producer with compression; buffering, batching, retries and overflow are
 * the shared {@link BatchingExporter}'s.
 */
import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import type { ModelCallEvent } from "../../avro/generated.js";
import {
  ConfigError,
  connectionFromOptions,
  topicNames,
  UNLIMITED_RETENTION_MS,
} from "../../config/index.js";
import {
  connectAdmin,
  createRecordProducer,
  KafkaError,
  type Compression,
  type OutgoingRecord,
  type RecordProducer,
} from "../../kafka/index.js";
import { stderrLogger, type Logger } from "../logger.js";
import { BatchingExporter, positiveInt, type BatchingOptions } from "./batching.js";

/** Options of {@link KafkaExporter}; each falls back to the environment, then a default. */
export interface KafkaExporterOptions extends BatchingOptions {
  /** Default `KAFKA_BROKERS`, then `127.0.0.1:9092`. */
  readonly brokers?: string | readonly string[];
  /** Default `SCHEMA_REGISTRY_URL`, then the local stack's. */
  readonly schemaRegistryUrl?: string;
  /** Default `<MCPO_TOPIC_PREFIX>model-calls`. */
  readonly topic?: string;
  /** Partitions when the exporter has to create the topic (default 6). */
  readonly topicPartitions?: number;
  readonly clientId?: string;
  /** Default `gzip`. */
  readonly compression?: Compression;
  readonly logger?: Logger;
}

export class KafkaExporter extends BatchingExporter {
  readonly topic: string;
  private readonly brokers: readonly string[];
  private readonly registryUrl: string;
  private readonly topicPartitions: number;
  private readonly clientId: string;
  private readonly compression: Compression;
  private producer: RecordProducer | undefined;
  private connected = false;
  private topicReady = false;
  private codec: AvroCodec<ModelCallEvent> | undefined;
  /** The encoded form of the batch in flight, kept across retries. */
  private encoded:
    { batch: readonly ModelCallEvent[]; records: OutgoingRecord[]; dropped: number } | undefined;

  /** @throws {ConfigError} naming the option or variable that is invalid. */
  constructor(options: KafkaExporterOptions = {}) {
    const connection = connectionFromOptions(options);
    const topic = options.topic ?? topicNames(connection.topicPrefix).modelCalls;
    super(options, topic, options.logger ?? stderrLogger);
    this.topic = topic;
    this.brokers = connection.kafkaBrokers;
    this.registryUrl = connection.schemaRegistryUrl;
    this.topicPartitions = positiveInt("topicPartitions", options.topicPartitions, 6);
    this.clientId = options.clientId ?? "mcp-observatory-exporter";
    const compression: string = options.compression ?? "gzip";
    if (compression !== "none" && compression !== "gzip" && compression !== "snappy")
      throw new ConfigError(
        "compression",
        `expected none, gzip or snappy (got ${JSON.stringify(compression)})`,
      );
    this.compression = compression;
  }

  /**
   * Connects, creates the topic if it is missing and registers the schema now rather than with the
   * first batch. Optional: for hosts that want to fail fast at start-up, and for benchmarks.
   *
   * @throws the Kafka or registry error that stopped it (the exporter retries later anyway).
   */
  async connect(): Promise<void> {
    await this.ensureReady();
  }

  protected async deliver(batch: readonly ModelCallEvent[]): Promise<number> {
    await this.ensureReady();
    if (this.encoded?.batch !== batch) {
      const records: OutgoingRecord[] = [];
      let dropped = 0;
      for (const event of batch) {
        try {
          records.push({
            key: event.service,
            value: (this.codec as AvroCodec<ModelCallEvent>).encode(event),
          });
        } catch (error) {
          dropped++;
          this.logger.error("event cannot be encoded; dropped", {
            error: (error as Error).message,
          });
        }
      }
      this.encoded = { batch, records, dropped };
    }
    if (this.encoded.records.length > 0)
      await (this.producer as RecordProducer).send(
        this.topic,
        this.encoded.records,
        this.compression,
      );
    const dropped = this.encoded.dropped;
    this.encoded = undefined;
    return dropped;
  }

  protected override onFailure(error: unknown): void {
    // A producer that failed for a reason other than a transient one is replaced.
    if (error instanceof KafkaError && !error.retriable && this.producer) {
      const old = this.producer;
      this.producer = undefined;
      this.connected = false;
      old.disconnect().catch(() => undefined);
    }
  }

  protected async release(): Promise<void> {
    const producer = this.producer;
    this.producer = undefined;
    if (producer && this.connected) await producer.disconnect();
  }

  private async ensureReady(): Promise<void> {
    if (!this.producer) {
      this.producer = createRecordProducer({ brokers: this.brokers, clientId: this.clientId });
      this.connected = false;
    }
    if (!this.connected) {
      await this.producer.connect();
      this.connected = true;
    }
    if (!this.topicReady) {
      const admin = await connectAdmin({ brokers: this.brokers, clientId: this.clientId });
      try {
        // As the processor and the sink create it: the log is kept for ever.
        await admin.ensureTopics([
          {
            name: this.topic,
            partitions: this.topicPartitions,
            config: { "retention.ms": String(UNLIMITED_RETENTION_MS) },
          },
        ]);
      } finally {
        await admin.close();
      }
      this.topicReady = true;
    }
    this.codec ??= await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: this.registryUrl,
      subject: valueSubject(this.topic),
    });
  }
}
