/**
 * The one boundary around the Kafka client. kafkajs has had no release since 2023, so nothing
 * else in the project imports it: producer, processor and sink use the small interfaces here, and
 * a kafkajs-compatible client can replace it in this file alone.
 *
 * @module
 */
import kafkajs, { type Producer } from "kafkajs";
import createSnappyCodec from "kafkajs-snappy";

// kafkajs is CommonJS: Node's ESM loader sees only some of its named exports, so take them from
// the default export.
const { CompressionCodecs, CompressionTypes, Kafka, logLevel } = kafkajs;
type Kafka = InstanceType<typeof Kafka>;
type CompressionTypes = (typeof CompressionTypes)[keyof typeof CompressionTypes];

// Snappy through a pure-JavaScript codec (no native build); gzip is built into kafkajs.
CompressionCodecs[CompressionTypes.Snappy] = createSnappyCodec;

/** Batch compression on the wire. */
export type Compression = "none" | "gzip" | "snappy";

const COMPRESSION: Record<Compression, CompressionTypes> = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
};

/** Where the brokers are and who we are to them. */
export interface KafkaSettings {
  readonly brokers: readonly string[];
  readonly clientId: string;
  /** How long to wait for a TCP connection, ms (default 3000). */
  readonly connectionTimeoutMs?: number;
  /** How long to wait for a request's answer, ms (default 10000). */
  readonly requestTimeoutMs?: number;
}

/** One record to produce. */
export interface OutgoingRecord {
  readonly key: string | Buffer | null;
  readonly value: Buffer;
  readonly headers?: Readonly<Record<string, string | Buffer>>;
}

/** A failure talking to Kafka, with a code a caller can branch on. */
export class KafkaError extends Error {
  constructor(
    message: string,
    /** kafkajs's error name or the broker's error type, e.g. `KafkaJSConnectionError`. */
    readonly code: string,
    /** Worth trying again (broker down, leader moving, timeouts). */
    readonly retriable: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "KafkaError";
  }
}

/** An idempotent producer of record batches. */
export interface RecordProducer {
  connect(): Promise<void>;
  /**
   * Sends one batch and resolves once every broker acknowledged it (acks = all).
   *
   * @throws {KafkaError}
   */
  send(topic: string, records: readonly OutgoingRecord[], compression: Compression): Promise<void>;
  disconnect(): Promise<void>;
}

function toKafkaError(error: unknown, what: string): KafkaError {
  const name = error instanceof Error ? error.name : "Error";
  const type = (error as { type?: unknown }).type;
  const retriable = (error as { retriable?: unknown }).retriable;
  return new KafkaError(
    `${what}: ${error instanceof Error ? error.message : String(error)}`,
    typeof type === "string" ? type : name,
    // kafkajs marks transient failures retriable; a connection failure or timeout is transient too.
    retriable === true || /Connection|Timeout|NumberOfRetriesExceeded/.test(name),
    { cause: error },
  );
}

function client(settings: KafkaSettings): Kafka {
  return new Kafka({
    clientId: settings.clientId,
    brokers: [...settings.brokers],
    connectionTimeout: settings.connectionTimeoutMs ?? 3000,
    requestTimeout: settings.requestTimeoutMs ?? 10_000,
    // Our callers retry with their own backoff and keep their data; kafkajs should fail fast.
    retry: { retries: 2, initialRetryTime: 100, maxRetryTime: 1000 },
    logLevel: logLevel.NOTHING,
  });
}

/**
 * An idempotent producer (one request in flight per connection, so the broker drops duplicates
 * of its own retries and keeps order).
 */
export function createRecordProducer(settings: KafkaSettings): RecordProducer {
  const producer: Producer = client(settings).producer({
    idempotent: true,
    maxInFlightRequests: 1,
    allowAutoTopicCreation: false,
  });
  return {
    async connect() {
      try {
        await producer.connect();
      } catch (error) {
        throw toKafkaError(error, "connecting the producer");
      }
    },
    async send(topic, records, compression) {
      try {
        await producer.send({
          topic,
          acks: -1,
          compression: COMPRESSION[compression],
          messages: records.map((record) => ({
            key: record.key,
            value: record.value,
            ...(record.headers === undefined ? {} : { headers: { ...record.headers } }),
          })),
        });
      } catch (error) {
        throw toKafkaError(error, `producing ${records.length} record(s) to ${topic}`);
      }
    },
    async disconnect() {
      await producer.disconnect();
    },
  };
}

/** Topic administration: what the project's processes create on start. */
export interface TopicAdmin {
  /** Creates the topics that do not exist yet; returns the names it created. */
  ensureTopics(
    topics: readonly {
      name: string;
      partitions: number;
      config?: Readonly<Record<string, string>>;
    }[],
  ): Promise<string[]>;
  close(): Promise<void>;
}

export async function connectAdmin(settings: KafkaSettings): Promise<TopicAdmin> {
  const admin = client(settings).admin();
  try {
    await admin.connect();
  } catch (error) {
    throw toKafkaError(error, "connecting the admin client");
  }
  return {
    async ensureTopics(topics) {
      const existing = new Set(await admin.listTopics());
      const missing = topics.filter((topic) => !existing.has(topic.name));
      if (missing.length === 0) return [];
      await admin.createTopics({
        waitForLeaders: true,
        topics: missing.map((topic) => ({
          topic: topic.name,
          numPartitions: topic.partitions,
          configEntries: Object.entries(topic.config ?? {}).map(([name, value]) => ({
            name,
            value,
          })),
        })),
      });
      return missing.map((topic) => topic.name);
    },
    async close() {
      await admin.disconnect();
    },
  };
}
