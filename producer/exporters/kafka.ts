/**
 * The fleet path: ModelCallEvents as Avro (Confluent wire format, schema from the registry) to
 * the model-calls topic, key = service, so one service's events share a partition. Batches go out
 * through an idempotent producer with compression; buffering, batching, retries and overflow are
 * the shared {@link BatchingExporter}'s.
 *
 * One event never blocks the others: an event the broker refuses as too large even alone (after
 * the request that carried it was split, see `createRecordProducer`), or one larger than
 * `maxRecordBytes` encoded, is dropped, counted (`tooLarge`, part of `dropped`) and reported
 * with a warning that names its size and service, never its content; the events after it are
 * sent.
 *
 * For replicas whose credentials may only write to model-calls and read the registry,
 * `autoCreateTopics: false` and `autoRegisterSchemas: false` make it create nothing: it checks the
 * topic exists and looks up the schema's id. While either is missing (an operator has not run
 * `mcp-observatory topics create` yet), deliveries fail as any failed delivery does: the error,
 * which names the topic or subject and the command, is logged once; the events stay buffered and
 * are retried with backoff, and those the buffer cannot hold are dropped and counted.
 */
import { redactingLogger } from "../../config/errors.js";
import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import type { ModelCallEvent } from "../../avro/generated.js";
import {
  ConfigError,
  connectionFromOptions,
  modelCallsTopicConfig,
  topicNames,
  UNLIMITED_RETENTION_MS,
  type RegistryTarget,
  type SecurityEndpointOptions,
} from "../../config/index.js";
import { provisioningSwitch } from "../../config/provisioning.js";
import {
  connectAdmin,
  createRecordProducer,
  DEFAULT_MAX_REQUEST_BYTES,
  KafkaError,
  kafkaSettingsOf,
  type Compression,
  type KafkaSettings,
  type OutgoingRecord,
  type RecordProducer,
  type RecordTooLargeError,
} from "../../kafka/index.js";
import { provideTopics } from "../../kafka/topics.js";
import { stderrLogger, type Logger } from "../logger.js";
import { BatchingExporter, positiveInt, type BatchingOptions } from "./batching.js";
import type { ExporterStats } from "./types.js";

/** Counters of a {@link KafkaExporter}. */
export interface KafkaExporterStats extends ExporterStats {
  /**
   * Of `dropped`: events too large to send, refused by the broker even alone (larger than the
   * topic's `max.message.bytes` after compression) or larger than `maxRecordBytes` encoded.
   */
  readonly tooLarge: number;
}

/** Default {@link KafkaExporterOptions.maxRecordBytes}. */
const DEFAULT_MAX_RECORD_BYTES = 8 * 1024 * 1024;

/** Options of {@link KafkaExporter}; each falls back to the environment, then a default. */
export interface KafkaExporterOptions extends BatchingOptions, SecurityEndpointOptions {
  /** Default `KAFKA_BROKERS`, then `127.0.0.1:9092`. */
  readonly brokers?: string | readonly string[];
  /** Default `SCHEMA_REGISTRY_URL`, then the local stack's. */
  readonly schemaRegistryUrl?: string;
  /** Default `<MCPO_TOPIC_PREFIX>model-calls`. */
  readonly topic?: string;
  /** Partitions when the exporter has to create the topic (default 6). */
  readonly topicPartitions?: number;
  /**
   * Create the topic when it is missing (default `MCPO_AUTO_CREATE_TOPICS`, then true). false:
   * only check that it exists; while it does not, deliveries fail with a
   * `TopicsNotProvisionedError` that names it (for credentials without CREATE).
   */
  readonly autoCreateTopics?: boolean;
  /**
   * Register the schema and set its subject's compatibility (default `MCPO_AUTO_REGISTER_SCHEMAS`,
   * then true). false: write nothing to the registry, look the schema's id up; while it is not
   * registered, deliveries fail with a `SchemaNotRegisteredError` that names the subject.
   */
  readonly autoRegisterSchemas?: boolean;
  readonly clientId?: string;
  /** Default `gzip`. */
  readonly compression?: Compression;
  /**
   * Encoded events larger than this are dropped without being sent (counted in `tooLarge`),
   * bytes; default 8 MiB. The broker refuses records over its message size limit (1 MiB by
   * default, after compression) anyway; this keeps far larger ones (which a broker answers by
   * closing the connection) off the wire.
   */
  readonly maxRecordBytes?: number;
  /**
   * The most bytes of events in one produce request, before compression (default 512 KiB): each
   * partition's record batch stays well under the broker's limit.
   */
  readonly maxRequestBytes?: number;
  readonly logger?: Logger;
}

/**
 * The model-calls topic as a writer of events needs it: created when it is missing and the writer
 * may (as the processor and the sink create it: `modelCallsTopicConfig`), else only checked, and
 * its subject's codec (registered, or only looked up). Each step is done once; a step that failed
 * is tried again at the next {@link ready}. The library's exporter and the OTLP receiver
 * (otlp/ingest.ts) both write through it.
 */
export class ModelCallsTopic {
  private provided = false;
  private codec: AvroCodec<ModelCallEvent> | undefined;

  constructor(
    private readonly options: {
      readonly kafka: KafkaSettings;
      readonly topic: string;
      readonly partitions: number;
      readonly retentionMs: number;
      readonly autoCreateTopics: boolean;
      readonly registry: RegistryTarget;
      readonly autoRegisterSchemas: boolean;
    },
  ) {}

  /** The codec, once {@link ready} has resolved. */
  get readyCodec(): AvroCodec<ModelCallEvent> | undefined {
    return this.codec;
  }

  /** Provides the topic and the codec (what is not done yet), and gives the codec. */
  async ready(): Promise<AvroCodec<ModelCallEvent>> {
    const { kafka, topic, partitions, retentionMs, autoCreateTopics } = this.options;
    if (!this.provided) {
      const admin = await connectAdmin(kafka);
      try {
        await provideTopics(
          admin,
          [{ name: topic, partitions, config: modelCallsTopicConfig(retentionMs) }],
          autoCreateTopics,
        );
      } finally {
        await admin.close();
      }
      this.provided = true;
    }
    this.codec ??= await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: this.options.registry,
      subject: valueSubject(topic),
      autoRegister: this.options.autoRegisterSchemas,
    });
    return this.codec;
  }
}

export class KafkaExporter extends BatchingExporter {
  readonly topic: string;
  private readonly kafka: KafkaSettings;
  private readonly output: ModelCallsTopic;
  private readonly clientId: string;
  private readonly compression: Compression;
  private readonly maxRecordBytes: number;
  private readonly maxRequestBytes: number;
  private producer: RecordProducer | undefined;
  private connected = false;
  private tooLarge = 0;
  /**
   * The encoded form of the batch in flight, kept across retries: how many of its records are
   * settled (acknowledged or refused), and which ones the broker refused as too large.
   */
  private encoded:
    | {
        readonly batch: readonly ModelCallEvent[];
        readonly records: OutgoingRecord[];
        readonly dropped: number;
        settled: number;
        readonly refused: Set<number>;
      }
    | undefined;

  /** @throws {ConfigError} naming the option or variable that is invalid. */
  constructor(options: KafkaExporterOptions = {}) {
    const connection = connectionFromOptions(options);
    const topic = options.topic ?? topicNames(connection.topicPrefix).modelCalls;
    super(options, topic, redactingLogger(options.logger ?? stderrLogger));
    this.topic = topic;
    this.clientId = options.clientId ?? "mcp-observatory-exporter";
    this.kafka = kafkaSettingsOf(connection, this.clientId);
    this.output = new ModelCallsTopic({
      kafka: this.kafka,
      topic,
      partitions: positiveInt("topicPartitions", options.topicPartitions, 6),
      // As the processor and the sink create it: kept for ever, stamped with the broker's clock.
      retentionMs: UNLIMITED_RETENTION_MS,
      autoCreateTopics: provisioningSwitch("autoCreateTopics", options.autoCreateTopics),
      registry: connection.schemaRegistry,
      autoRegisterSchemas: provisioningSwitch("autoRegisterSchemas", options.autoRegisterSchemas),
    });
    const compression: string = options.compression ?? "gzip";
    if (compression !== "none" && compression !== "gzip" && compression !== "snappy")
      throw new ConfigError(
        "compression",
        `expected none, gzip or snappy (got ${JSON.stringify(compression)})`,
      );
    this.compression = compression;
    this.maxRecordBytes = positiveInt(
      "maxRecordBytes",
      options.maxRecordBytes,
      DEFAULT_MAX_RECORD_BYTES,
    );
    this.maxRequestBytes = positiveInt(
      "maxRequestBytes",
      options.maxRequestBytes,
      DEFAULT_MAX_REQUEST_BYTES,
    );
  }

  override stats(): KafkaExporterStats {
    return { ...super.stats(), tooLarge: this.tooLarge };
  }

  /**
   * Connects, creates the topic if it is missing (checks it exists, with `autoCreateTopics: false`)
   * and registers the schema (looks it up, with `autoRegisterSchemas: false`) now rather than with
   * the first batch. Optional: for hosts that want to fail fast at start-up, and for benchmarks.
   *
   * @throws the Kafka or registry error that stopped it (the exporter retries later anyway):
   *   a `TopicsNotProvisionedError` or `SchemaNotRegisteredError` when it may not create what is
   *   missing.
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
        let value: Buffer;
        try {
          value = (this.output.readyCodec as AvroCodec<ModelCallEvent>).encode(event);
        } catch (error) {
          dropped++;
          this.logger.error("event cannot be encoded; dropped", {
            error: (error as Error).message,
          });
          continue;
        }
        if (value.length > this.maxRecordBytes) {
          dropped++;
          this.tooLarge++;
          this.logger.warn("event too large to send; dropped", {
            topic: this.topic,
            service: event.service,
            eventId: event.event_id,
            bytes: value.length,
            maxRecordBytes: this.maxRecordBytes,
          });
          continue;
        }
        records.push({ key: event.service, value });
      }
      this.encoded = { batch, records, dropped, settled: 0, refused: new Set() };
    }
    const pending = this.encoded;
    if (pending.settled < pending.records.length) {
      // After a failure, the records acknowledged already are not sent again.
      const base = pending.settled;
      await (this.producer as RecordProducer).send(
        this.topic,
        pending.records.slice(base),
        this.compression,
        {
          onTooLarge: (error) => {
            this.refused(pending.refused, base + error.index, error);
          },
          onProgress: (_topic, settled) => {
            pending.settled = base + settled;
          },
        },
      );
    }
    this.encoded = undefined;
    return pending.dropped + pending.refused.size;
  }

  /** A record the broker refused as too large even alone: counted and reported once. */
  private refused(refused: Set<number>, index: number, error: RecordTooLargeError): void {
    if (refused.has(index)) return;
    refused.add(index);
    this.tooLarge++;
    this.logger.warn("event too large for the broker even alone; dropped", {
      topic: this.topic,
      service: error.context?.key,
      bytes: error.bytes,
      error: error.message,
    });
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
      this.producer = createRecordProducer({
        ...this.kafka,
        maxRequestBytes: this.maxRequestBytes,
      });
      this.connected = false;
    }
    if (!this.connected) {
      await this.producer.connect();
      this.connected = true;
    }
    await this.output.ready();
  }
}
