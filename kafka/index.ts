/**
 * The one boundary around the Kafka client. kafkajs has had no release since 2023, so nothing
 * else in the project imports it: producer, processor and sink use the small interfaces here, and
 * a kafkajs-compatible client can replace it in this file alone.
 *
 * @module
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, randomUUID } from "node:crypto";
import { connect as connectTcp, isIP, type Socket } from "node:net";
import { connect as connectTls, type ConnectionOptions } from "node:tls";

import kafkajs, { type IHeaders, type Message, type Producer, type SASLOptions } from "kafkajs";
import createSnappyCodec from "kafkajs-snappy";

import { isTlsFailure, ObservatoryError, type ErrorContext } from "../config/errors.js";
import type { ConnectionConfig } from "../config/index.js";
import type { KafkaSasl, KafkaTls } from "../config/security.js";

export type { KafkaSasl, KafkaTls, OAuthBearerTokenProvider } from "../config/security.js";

// kafkajs is CommonJS: Node's ESM loader sees only some of its named exports, so take them from
// the default export.
const { CompressionCodecs, CompressionTypes, ConfigResourceTypes, Kafka, logLevel, Partitioners } =
  kafkajs;
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
  /**
   * How often clients refresh the topics' metadata, ms (kafkajs's default 300 000). A producer
   * silently leaves out records for partitions its metadata does not have yet: writers to
   * partitions added to a topic need it short.
   */
  readonly metadataMaxAgeMs?: number;
  /** TLS to the brokers; undefined: plaintext. */
  readonly tls?: KafkaTls;
  /** SASL authentication; undefined: none. */
  readonly sasl?: KafkaSasl;
}

/**
 * A failed CreateTopics as one error that names each topic and the broker's reason (kafkajs says
 * only "Topic creation errors"); a refusal for want of rights says how to do without them.
 */
function topicCreationError(error: unknown, names: readonly string[]): KafkaError {
  const parts = (error as { errors?: unknown }).errors;
  const details = Array.isArray(parts)
    ? parts.map((part) => {
        const topic = (part as { topic?: unknown }).topic;
        const type = (part as { type?: unknown }).type;
        return `${typeof topic === "string" ? topic : "?"}: ${typeof type === "string" ? `${type} ` : ""}(${part instanceof Error ? part.message : String(part)})`;
      })
    : [error instanceof Error ? error.message : String(error)];
  const types = Array.isArray(parts)
    ? parts.map((part) => (part as { type?: unknown }).type)
    : [(error as { type?: unknown }).type];
  const denied = types.find(
    (type): type is string => typeof type === "string" && type.endsWith("AUTHORIZATION_FAILED"),
  );
  if (denied)
    return new KafkaError(
      `creating ${names.join(", ")}: ${details.join("; ")}. These credentials may not create ` +
        "topics: have an operator run `mcp-observatory topics create` once, and run this " +
        "component with autoCreateTopics: false (MCPO_AUTO_CREATE_TOPICS=false)",
      denied,
      false,
      { cause: error, type: denied },
    );
  return new KafkaError(
    `creating ${names.join(", ")}: ${details.join("; ")}`,
    error instanceof Error ? error.name : "Error",
    kafkaRetriable(error),
    { cause: error },
  );
}

/** The settings of a client named `clientId` of the brokers, security included, of a connection. */
export function kafkaSettingsOf(
  connection: Pick<ConnectionConfig, "kafkaBrokers" | "kafkaTls" | "kafkaSasl">,
  clientId: string,
): KafkaSettings {
  return {
    brokers: connection.kafkaBrokers,
    clientId,
    ...(connection.kafkaTls === undefined ? {} : { tls: connection.kafkaTls }),
    ...(connection.kafkaSasl === undefined ? {} : { sasl: connection.kafkaSasl }),
  };
}

/** One record to produce. */
export interface OutgoingRecord {
  readonly key: string | Buffer | null;
  /** null: a tombstone (compacted topics drop the key). */
  readonly value: Buffer | null;
  readonly headers?: Readonly<Record<string, string | Buffer>>;
  /** An explicit partition; by default the key's hash picks it. */
  readonly partition?: number;
}

/** Records for one topic, for {@link RecordProducer.sendMany}. */
export interface TopicRecords {
  readonly topic: string;
  readonly records: readonly OutgoingRecord[];
}

/** A failure talking to Kafka, with a code a caller can branch on. */
export class KafkaError extends ObservatoryError {
  /**
   * @param code kafkajs's error name or the broker's error type, e.g. `KafkaJSConnectionError`.
   * @param retriable worth trying again (broker down, leader moving, timeouts).
   */
  /**
   * The broker's error type when there is one (`REBALANCE_IN_PROGRESS`, `ILLEGAL_GENERATION`,
   * `UNKNOWN_MEMBER_ID`, …), under the name kafkajs's consumer reads: an error thrown from a batch
   * handler keeps it, so the consumer rejoins the group instead of crashing.
   */
  readonly type: string | undefined;

  constructor(
    message: string,
    code: string,
    retriable: boolean,
    options?: { cause?: unknown; context?: ErrorContext; type?: string },
  ) {
    super(code, message, { ...options, retriable });
    this.name = "KafkaError";
    this.type = options?.type;
  }
}

/**
 * A record the broker refuses as too large even alone (the broker's `message.max.bytes` or the
 * topic's `max.message.bytes` is smaller than its batch): sending it again can never succeed.
 * Carries where it was, never its content.
 */
export class RecordTooLargeError extends KafkaError {
  /**
   * @param topic where it was to go.
   * @param index its position in the records given for that topic (the send's `records`, or the
   *   topic's `records` in `sendMany`).
   * @param bytes its size as counted for requests: key, value, headers and per-record overhead.
   * @param key its key, when it is text (the context names it).
   */
  constructor(
    readonly topic: string,
    readonly index: number,
    readonly bytes: number,
    key: string | undefined,
    cause: unknown,
  ) {
    super(
      `producing to ${topic}: the broker refuses record ${index} (${bytes} bytes) as too large ` +
        "even alone; the topic's max.message.bytes (or the broker's message.max.bytes) is smaller",
      "RECORD_TOO_LARGE",
      false,
      {
        cause,
        context: { topic, ...(key === undefined ? {} : { key }) },
        ...(brokerErrorType(cause) === undefined ? {} : { type: brokerErrorType(cause) }),
      },
    );
    this.name = "RecordTooLargeError";
  }
}

/** How a send goes on when the broker refuses a record as too large. */
export interface SendOptions {
  /**
   * Called with each record the broker refuses as too large even alone; the send leaves it out
   * and goes on with the records after it. Without it, such a record ends the send with that
   * {@link RecordTooLargeError}.
   */
  readonly onTooLarge?: (error: RecordTooLargeError) => void;
  /**
   * Called after each produce request with how many of the topic's records (a prefix of them)
   * are settled now: acknowledged, or refused and passed to `onTooLarge`. A caller that retries
   * a failed send can start after them.
   */
  readonly onProgress?: (topic: string, settled: number) => void;
}

/** An idempotent producer of record batches. */
export interface RecordProducer {
  connect(): Promise<void>;
  /**
   * Sends one batch and resolves once every broker acknowledged it (acks = all), in produce
   * requests of at most 500 records and about {@link ProducerSettings.maxRequestBytes} bytes,
   * one after another, in order. A request the broker refuses as too large is sent again split
   * by partition and then in halves; a record refused even alone is a
   * {@link RecordTooLargeError} (see {@link SendOptions.onTooLarge}).
   *
   * @throws {KafkaError}
   */
  send(
    topic: string,
    records: readonly OutgoingRecord[],
    compression: Compression,
    options?: SendOptions,
  ): Promise<void>;
  /**
   * Sends records for several topics as {@link send} does, one request carrying up to 500
   * records of each topic and about `maxRequestBytes` in all (more go in further requests, in
   * order); resolves once all are acknowledged.
   *
   * @throws {KafkaError}
   */
  sendMany(
    batches: readonly TopicRecords[],
    compression: Compression,
    options?: SendOptions,
  ): Promise<void>;
  disconnect(): Promise<void>;
}

/**
 * kafkajs errors that only say kafkajs's own retries stopped: whether trying later may succeed is
 * the error they wrap (their `cause`): a connection refused is transient, an authorization
 * failure is not.
 */
const GAVE_UP = new Set(["KafkaJSNumberOfRetriesExceeded", "KafkaJSNonRetriableError"]);

/**
 * kafkajs errors it flags not retriable because its own retrier must not loop on them, though a
 * later attempt may succeed: a wait for leaders or for a lock that ran out of time.
 */
const TRANSIENT = new Set(["KafkaJSTimeout", "KafkaJSLockTimeout"]);

/** Whether trying again later may succeed, from kafkajs's `retriable` flag and the lists above. */
export function kafkaRetriable(error: unknown): boolean {
  let current = error;
  for (let depth = 0; depth < 6 && current instanceof Error; depth++) {
    if (!GAVE_UP.has(current.name))
      return TRANSIENT.has(current.name) || (current as { retriable?: unknown }).retriable === true;
    if (current.cause === current) return false;
    current = current.cause;
  }
  return false;
}

/**
 * A kafkajs failure as a {@link KafkaError}: `what` was being done, the code is the broker's error
 * type or kafkajs's error name, retriable as {@link kafkaRetriable} decides, the original as cause.
 */
export function toKafkaError(error: unknown, what: string): KafkaError {
  const raw = error instanceof Error ? error.name : "Error";
  // One code for a refused authentication, whichever client met it (see probeBrokers).
  const name = raw === "KafkaJSSASLAuthenticationError" ? "SASL_AUTHENTICATION_FAILED" : raw;
  const type = error instanceof Error ? (error as { type?: unknown }).type : undefined;
  return new KafkaError(
    `${what}: ${error instanceof Error ? error.message : String(error)}`,
    typeof type === "string" ? type : name,
    kafkaRetriable(error),
    { cause: error, ...(typeof type === "string" ? { type } : {}) },
  );
}

/**
 * Broker answers meaning a partition's leader is not serving yet or has moved: a topic created a
 * moment ago, a broker restarting, a reassignment. kafkajs's admin gives up on them at once and
 * keeps its stale metadata for minutes, so {@link whileLeadersSettle} asks again with a fresh client.
 */
const LEADER_MOVING = new Set([
  "NOT_LEADER_FOR_PARTITION",
  "LEADER_NOT_AVAILABLE",
  "REPLICA_NOT_AVAILABLE",
  "OFFSET_NOT_AVAILABLE",
  "PREFERRED_LEADER_NOT_AVAILABLE",
]);

/** How long an admin request waits for partitions' leaders to settle before it fails. */
const LEADER_SETTLE_MS = 20_000;

function leaderMoving(error: unknown): boolean {
  let current = error;
  for (let depth = 0; depth < 6 && current instanceof Error; depth++) {
    const type = (current as { type?: unknown }).type;
    if (typeof type === "string" && LEADER_MOVING.has(type)) return true;
    if (current.cause === current) return false;
    current = current.cause;
  }
  return false;
}

/**
 * Runs an admin `request` on `admin`; while the broker answers that a partition's leader is moving
 * ({@link LEADER_MOVING}), asks again with a fresh admin client (so fresh metadata) with a growing
 * pause, for up to {@link LEADER_SETTLE_MS}. Fails as a {@link KafkaError} naming `what`.
 */
async function whileLeadersSettle<T>(
  settings: KafkaSettings,
  admin: kafkajs.Admin,
  what: string,
  request: (admin: kafkajs.Admin) => Promise<T>,
): Promise<T> {
  const deadline = Date.now() + LEADER_SETTLE_MS;
  let pauseMs = 100;
  let fresh: kafkajs.Admin | undefined;
  try {
    for (;;) {
      try {
        return await request(fresh ?? admin);
      } catch (error) {
        if (!leaderMoving(error) || Date.now() + pauseMs > deadline) throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, pauseMs));
      pauseMs = Math.min(pauseMs * 2, 1_000);
      await fresh?.disconnect();
      fresh = client(settings).admin();
      await fresh.connect();
    }
  } catch (error) {
    throw error instanceof KafkaError ? error : toKafkaError(error, what);
  } finally {
    await fresh?.disconnect().catch(() => undefined);
  }
}

/**
 * Waits, up to 15 s, until every partition of `names` has a leader in the cluster's metadata, so
 * the first fetch or produce does not meet "does not host this topic-partition" for a topic just
 * created (by this process or another). A metadata request that fails counts as not yet; past the
 * deadline it returns, and the requests after it retry as they do for any leader change.
 */
export async function awaitLeaders(admin: kafkajs.Admin, names: readonly string[]): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const ready = await admin.fetchTopicMetadata({ topics: [...names] }).then(
      (metadata) =>
        names.every((name) => {
          const topic = metadata.topics.find((entry) => entry.name === name);
          return (
            topic !== undefined &&
            topic.partitions.length > 0 &&
            topic.partitions.every((partition) => partition.leader >= 0)
          );
        }),
      () => false,
    );
    if (ready || Date.now() > deadline) return;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** kafkajs's TLS options from {@link KafkaTls}. */
function tlsOptions(tls: KafkaTls): ConnectionOptions {
  return {
    ...(tls.ca === undefined ? {} : { ca: tls.ca }),
    ...(tls.cert === undefined ? {} : { cert: tls.cert }),
    ...(tls.key === undefined ? {} : { key: tls.key }),
    ...(tls.keyPassword === undefined ? {} : { passphrase: tls.keyPassword }),
    rejectUnauthorized: true,
    // Node checks the name by default; turning it off keeps the chain check.
    ...(tls.verifyHostname === false ? { checkServerIdentity: () => undefined } : {}),
  };
}

function saslOptions(sasl: KafkaSasl): SASLOptions {
  if (sasl.mechanism === "oauthbearer")
    return { mechanism: "oauthbearer", oauthBearerProvider: sasl.oauthBearerProvider };
  return { mechanism: sasl.mechanism, username: sasl.username, password: sasl.password };
}

function client(settings: KafkaSettings): Kafka {
  return new Kafka({
    clientId: settings.clientId,
    brokers: [...settings.brokers],
    ...(settings.tls === undefined ? {} : { ssl: tlsOptions(settings.tls) }),
    ...(settings.sasl === undefined ? {} : { sasl: saslOptions(settings.sasl) }),
    connectionTimeout: settings.connectionTimeoutMs ?? 3000,
    requestTimeout: settings.requestTimeoutMs ?? 10_000,
    // Our callers retry with their own backoff and keep their data; kafkajs should fail fast.
    retry: { retries: 2, initialRetryTime: 100, maxRetryTime: 1000 },
    logLevel: logLevel.NOTHING,
  });
}

/** The most records of one topic in one produce request (see `sendMany`). */
const SEND_CHUNK = 500;

/**
 * The default of {@link ProducerSettings.maxRequestBytes}: half of the broker's default message
 * size limit (`message.max.bytes`, 1 MiB), so no partition's record batch in a request comes near
 * it even uncompressed.
 */
export const DEFAULT_MAX_REQUEST_BYTES = 512 * 1024;

/** What a record adds to a request besides its key, value and headers, at most (varints, attributes). */
const RECORD_OVERHEAD_BYTES = 32;

/** The broker's error types for a record batch larger than it or the topic accepts. */
const TOO_LARGE_TYPES = new Set(["MESSAGE_TOO_LARGE", "RECORD_LIST_TOO_LARGE"]);

/** Settings of {@link createRecordProducer}. */
export interface ProducerSettings extends KafkaSettings {
  /**
   * The most bytes of records (keys, values, headers and a per-record overhead, before
   * compression) one produce request carries, over all its topics and partitions, so also each
   * partition's batch in it (default {@link DEFAULT_MAX_REQUEST_BYTES}). A larger record goes in
   * a request of its own.
   */
  readonly maxRequestBytes?: number;
}

/** The broker's error type (e.g. `MESSAGE_TOO_LARGE`) of a kafkajs error or of one it wraps. */
function brokerErrorType(error: unknown): string | undefined {
  let current = error;
  for (let depth = 0; depth < 6 && current instanceof Error; depth++) {
    const type = (current as { type?: unknown }).type;
    if (typeof type === "string") return type;
    if (current.cause === current) return undefined;
    current = current.cause;
  }
  return undefined;
}

/** One record on its way: where it goes, its place among its topic's records, and its size. */
interface Pending {
  readonly topic: string;
  readonly index: number;
  readonly record: OutgoingRecord;
  readonly message: Message;
  readonly bytes: number;
}

function recordBytes(record: OutgoingRecord): number {
  let bytes = RECORD_OVERHEAD_BYTES + (record.value?.length ?? 0);
  if (typeof record.key === "string") bytes += Buffer.byteLength(record.key, "utf8");
  else if (record.key !== null) bytes += record.key.length;
  for (const name in record.headers) {
    const value = record.headers[name] ?? "";
    bytes +=
      Buffer.byteLength(name, "utf8") +
      (typeof value === "string" ? Buffer.byteLength(value, "utf8") : value.length);
  }
  return bytes;
}

/**
 * An idempotent producer (one request in flight per connection, so the broker drops duplicates
 * of its own retries and keeps order).
 *
 * A request the broker refuses as too large (`MESSAGE_TOO_LARGE`, `RECORD_LIST_TOO_LARGE`): kafkajs
 * then takes back the sequence numbers of every partition in it, also of those whose batch the
 * broker wrote. So the request's records are sent again partition by partition first, each
 * partition's batch as it was (the broker recognises a batch it wrote by its sequence numbers and
 * acknowledges it without writing it twice; with several brokers, the batches of the other
 * brokers' partitions were acknowledged already and may be written twice), and only a batch
 * refused on its own is split into halves, down to single records.
 */
export function createRecordProducer(settings: ProducerSettings): RecordProducer {
  const maxRequestBytes = settings.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES;
  if (!Number.isInteger(maxRequestBytes) || maxRequestBytes <= 0)
    throw new RangeError(
      `maxRequestBytes must be a positive integer (got ${String(settings.maxRequestBytes)})`,
    );
  // The partition kafkajs gave each message last (read when a request is refused as too large).
  const assigned = new WeakMap<Message, number>();
  const producer: Producer = client(settings).producer({
    idempotent: true,
    maxInFlightRequests: 1,
    allowAutoTopicCreation: false,
    createPartitioner: () => {
      const partitioner = Partitioners.DefaultPartitioner();
      return (args) => {
        const partition = partitioner(args);
        assigned.set(args.message, partition);
        return partition;
      };
    },
    ...(settings.metadataMaxAgeMs === undefined
      ? {}
      : { metadataMaxAge: settings.metadataMaxAgeMs }),
  });

  /** Sends one request; `ok: false` with the broker's error when it refused it as too large. */
  const produce = async (
    items: readonly Pending[],
    compression: Compression,
  ): Promise<{ ok: true } | { ok: false; error: unknown }> => {
    const topicMessages: { topic: string; messages: Message[] }[] = [];
    for (const item of items) {
      const last = topicMessages.at(-1);
      if (last?.topic === item.topic) last.messages.push(item.message);
      else topicMessages.push({ topic: item.topic, messages: [item.message] });
    }
    try {
      await producer.sendBatch({ acks: -1, compression: COMPRESSION[compression], topicMessages });
      return { ok: true };
    } catch (error) {
      if (TOO_LARGE_TYPES.has(brokerErrorType(error) ?? "")) return { ok: false, error };
      const topics = [...new Set(items.map((item) => item.topic))].join(", ");
      throw toKafkaError(error, `producing ${items.length} record(s) to ${topics}`);
    }
  };

  const refuse = (item: Pending, cause: unknown, options: SendOptions | undefined): void => {
    const key = typeof item.record.key === "string" ? item.record.key : undefined;
    const error = new RecordTooLargeError(item.topic, item.index, item.bytes, key, cause);
    if (!options?.onTooLarge) throw error;
    options.onTooLarge(error);
  };

  /** Sends one partition's records, in halves while the broker refuses them as too large. */
  const sendSplitting = async (
    items: readonly Pending[],
    compression: Compression,
    options: SendOptions | undefined,
  ): Promise<void> => {
    const result = await produce(items, compression);
    if (result.ok) return;
    await splitHalves(items, result.error, compression, options);
  };

  /** Sends a refused partition's records again in two halves (a single record is refused). */
  const splitHalves = async (
    items: readonly Pending[],
    cause: unknown,
    compression: Compression,
    options: SendOptions | undefined,
  ): Promise<void> => {
    const [only] = items;
    if (items.length === 1 && only) {
      refuse(only, cause, options);
      return;
    }
    const middle = Math.ceil(items.length / 2);
    await sendSplitting(items.slice(0, middle), compression, options);
    await sendSplitting(items.slice(middle), compression, options);
  };

  /** Sends one request's records; a refusal as too large goes on partition by partition. */
  const sendRequest = async (
    items: readonly Pending[],
    compression: Compression,
    options: SendOptions | undefined,
  ): Promise<void> => {
    const result = await produce(items, compression);
    if (result.ok) return;
    const byPartition = new Map<string, Pending[]>();
    for (const item of items) {
      const partition = item.record.partition ?? assigned.get(item.message);
      const slot = `${item.topic}\u0000${partition ?? "?"}`;
      // Pinned to the partition it went to, so a keyless record's batch is the same again.
      const pinned: Pending =
        partition === undefined || item.message.partition !== undefined
          ? item
          : { ...item, message: { ...item.message, partition } };
      const group = byPartition.get(slot);
      if (group) group.push(pinned);
      else byPartition.set(slot, [pinned]);
    }
    const [only] = byPartition.values();
    // One partition: that batch was refused, so it is split right away.
    if (byPartition.size === 1 && only) await splitHalves(only, result.error, compression, options);
    else for (const group of byPartition.values()) await sendSplitting(group, compression, options);
  };

  const sendMany = async (
    batches: readonly TopicRecords[],
    compression: Compression,
    options: SendOptions | undefined,
  ): Promise<void> => {
    // kafkajs groups a topic's messages by partition in time quadratic in their number (it
    // copies the partition's list for every message): 150 000 late records of one catch-up
    // went at 2 300 records/s. Each request carries at most SEND_CHUNK records per topic and
    // about maxRequestBytes in all; requests go one after another, so every partition's records
    // keep their order.
    const pending = batches.filter((batch) => batch.records.length > 0);
    const next = pending.map(() => 0);
    while (pending.some((batch, i) => (next[i] ?? 0) < batch.records.length)) {
      const items: Pending[] = [];
      let bytes = 0;
      pending.forEach((batch, i) => {
        const from = next[i] ?? 0;
        let at = from;
        while (at < batch.records.length && at - from < SEND_CHUNK) {
          const record = batch.records[at] as OutgoingRecord;
          const size = recordBytes(record);
          if (items.length > 0 && bytes + size > maxRequestBytes) break;
          items.push({
            topic: batch.topic,
            index: at,
            record,
            message: toMessage(record),
            bytes: size,
          });
          bytes += size;
          at++;
        }
        next[i] = at;
      });
      await sendRequest(items, compression, options);
      if (options?.onProgress)
        pending.forEach((batch, i) => options.onProgress?.(batch.topic, next[i] ?? 0));
    }
  };

  return {
    async connect() {
      try {
        await producer.connect();
      } catch (error) {
        throw toKafkaError(error, "connecting the producer");
      }
    },
    send(topic, records, compression, options) {
      return sendMany([{ topic, records }], compression, options);
    },
    sendMany,
    async disconnect() {
      await producer.disconnect();
    },
  };
}

function toMessage(record: OutgoingRecord): Message {
  return {
    key: record.key,
    value: record.value,
    ...(record.headers === undefined ? {} : { headers: { ...record.headers } }),
    ...(record.partition === undefined ? {} : { partition: record.partition }),
  };
}

const keyPartitioner = Partitioners.DefaultPartitioner();

/**
 * The partition a record with this key lands on in a topic of `partitions` partitions, with the
 * producer's default partitioner (murmur2 of the key, as the Java client's): where a service's
 * events go when they are keyed by the service.
 */
export function partitionForKey(key: string, partitions: number): number {
  if (!Number.isInteger(partitions) || partitions <= 0)
    throw new RangeError(`partition count must be a positive integer (got ${partitions})`);
  return keyPartitioner({
    topic: "",
    partitionMetadata: Array.from({ length: partitions }, (_, partitionId) => ({
      partitionId,
      leader: 0,
      partitionErrorCode: 0,
      replicas: [0],
      isr: [0],
    })),
    message: { key, value: null },
  });
}

/** A record as consumed. Headers are decoded as UTF-8. */
export interface ConsumedRecord {
  readonly topic: string;
  readonly partition: number;
  /** Offsets are 64-bit: kept as decimal strings. */
  readonly offset: string;
  readonly key: Buffer | null;
  readonly value: Buffer | null;
  readonly headers: Readonly<Record<string, string>>;
  /**
   * The record's timestamp, ms since the epoch, as the log holds it: on a topic with
   * `message.timestamp.type=LogAppendTime` the broker's clock when it appended the record's batch
   * (every record of a batch carries the batch's time), otherwise the producer's (CreateTime); -1
   * when the record has none (the old message format).
   */
  readonly timestamp: number;
}

/** The records of one partition fetched together, in offset order. */
export interface ConsumedBatch {
  readonly topic: string;
  readonly partition: number;
  readonly records: readonly ConsumedRecord[];
  /** The partition's end offset (next offset to be written) when fetched. */
  readonly highWatermark: string;
}

/** What a batch handler can do while it holds a batch. */
export interface BatchControl {
  heartbeat(): Promise<void>;
  /** False once the consumer is stopping. */
  isRunning(): boolean;
  /** True when a rebalance took the partition away meanwhile. */
  isStale(): boolean;
  /** Marks records up to `offset` as processed, for this consumer's own fetch position. */
  resolveOffset(offset: string): void;
  /** Fetches this partition from `offset` next (the rest of this batch should be dropped). */
  seek(offset: string): void;
  /**
   * Commits `offset` (the next offset to read) of this batch's partition for the group, also
   * while the consumer is stopping (the batch in flight then still commits before the member
   * leaves; {@link GroupConsumer.commit} does nothing once stopping).
   */
  commit(offset: string): Promise<void>;
}

/** Options of {@link createGroupConsumer}. */
export interface GroupConsumerOptions {
  readonly groupId: string;
  readonly topics: readonly string[];
  /** Where a partition without a committed offset starts. */
  readonly fromBeginning: boolean;
  readonly sessionTimeoutMs?: number;
  /**
   * How often the topics' metadata is refreshed, ms (default 30 000): partitions added to a
   * subscribed topic are assigned at the first refresh after they appear.
   */
  readonly metadataMaxAgeMs?: number;
  /**
   * How many partitions' batches may be handled at once (default 1). Each partition's batches
   * still come one at a time and in order.
   */
  readonly partitionsConcurrently?: number;
  /** Handles one partition's batch. */
  readonly onBatch: (batch: ConsumedBatch, control: BatchControl) => Promise<void>;
  /** Called when this member's assignment changes. */
  readonly onAssignment?: (partitions: readonly { topic: string; partition: number }[]) => void;
  /** Called when the consumer stopped because of an error it could not recover from. */
  readonly onCrash?: (error: Error) => void;
}

/** A consumer-group member with manual offset commits. */
export interface GroupConsumer {
  start(): Promise<void>;
  /** Commits `offset` (the next offset to read) for the group. */
  commit(topic: string, partition: number, offset: string): Promise<void>;
  /** The next fetch of an assigned partition starts at `offset` (while running). */
  seek(topic: string, partition: number, offset: string): void;
  stop(): Promise<void>;
}

export function createGroupConsumer(
  settings: KafkaSettings,
  options: GroupConsumerOptions,
): GroupConsumer {
  const kafka = client(settings);
  const consumer = kafka.consumer({
    groupId: options.groupId,
    sessionTimeout: options.sessionTimeoutMs ?? 30_000,
    // Rebalances hand partitions over while a batch may still be in flight elsewhere; the
    // processor's checkpoints make that safe, so there is no reason to wait long.
    rebalanceTimeout: 30_000,
    metadataMaxAge: options.metadataMaxAgeMs ?? 30_000,
    retry: { retries: 8, initialRetryTime: 200, maxRetryTime: 5000 },
  });
  consumer.on(consumer.events.GROUP_JOIN, (event) => {
    const assignment = event.payload.memberAssignment;
    options.onAssignment?.(
      Object.entries(assignment).flatMap(([topic, partitions]) =>
        partitions.map((partition) => ({ topic, partition })),
      ),
    );
  });
  consumer.on(consumer.events.CRASH, (event) => {
    const error = event.payload.error;
    if (!event.payload.restart) options.onCrash?.(error);
  });
  return {
    async start() {
      try {
        await consumer.connect();
        for (const topic of options.topics)
          await consumer.subscribe({ topic, fromBeginning: options.fromBeginning });
      } catch (error) {
        throw toKafkaError(error, "starting the consumer");
      }
      await consumer.run({
        autoCommit: false,
        eachBatchAutoResolve: false,
        partitionsConsumedConcurrently: options.partitionsConcurrently ?? 1,
        eachBatch: async (payload) => {
          const batch = payload.batch;
          const records: ConsumedRecord[] = batch.messages.map((message) => ({
            topic: batch.topic,
            partition: batch.partition,
            offset: message.offset,
            key: message.key,
            value: message.value,
            headers: decodeHeaders(message.headers),
            timestamp: recordTimestamp(message.timestamp),
          }));
          await options.onBatch(
            {
              topic: batch.topic,
              partition: batch.partition,
              records,
              highWatermark: batch.highWatermark,
            },
            {
              heartbeat: () => payload.heartbeat(),
              isRunning: () => payload.isRunning(),
              isStale: () => payload.isStale(),
              resolveOffset: (offset) => {
                payload.resolveOffset(offset);
              },
              seek: (offset) => {
                consumer.seek({ topic: batch.topic, partition: batch.partition, offset });
              },
              commit: async (offset) => {
                try {
                  await payload.commitOffsetsIfNecessary({
                    topics: [
                      { topic: batch.topic, partitions: [{ partition: batch.partition, offset }] },
                    ],
                  });
                } catch (error) {
                  throw toKafkaError(
                    error,
                    `committing ${batch.topic}[${batch.partition}]@${offset}`,
                  );
                }
              },
            },
          );
        },
      });
    },
    async commit(topic, partition, offset) {
      try {
        await consumer.commitOffsets([{ topic, partition, offset }]);
      } catch (error) {
        throw toKafkaError(error, `committing ${topic}[${partition}]@${offset}`);
      }
    },
    seek(topic, partition, offset) {
      consumer.seek({ topic, partition, offset });
    },
    async stop() {
      await consumer.disconnect();
    },
  };
}

/**
 * A fetched record's timestamp as a number (kafkajs gives a decimal string: under LogAppendTime
 * its record batch's max timestamp, the broker's append time); -1 when it has none.
 */
function recordTimestamp(timestamp: string | undefined): number {
  const ms = Number(timestamp);
  return timestamp !== undefined && timestamp !== "" && Number.isSafeInteger(ms) ? ms : -1;
}

function decodeHeaders(headers: IHeaders | undefined): Record<string, string> {
  const decoded: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers ?? {})) {
    if (value === undefined) continue;
    const first = Array.isArray(value) ? value[0] : value;
    if (first !== undefined) decoded[name] = first.toString();
  }
  return decoded;
}

/**
 * Reads a whole topic as it is now: every record up to the end offsets taken at the start, then
 * stops. For small topics (checkpoints). Uses a throwaway consumer group, deleted afterwards.
 */
export async function readTopicToEnd(
  settings: KafkaSettings,
  topic: string,
): Promise<ConsumedRecord[]> {
  const admin = client(settings).admin();
  await admin.connect();
  let offsets: Awaited<ReturnType<typeof admin.fetchTopicOffsets>>;
  try {
    offsets = await whileLeadersSettle(
      settings,
      admin,
      `reading the offsets of ${topic}`,
      (asked) => asked.fetchTopicOffsets(topic),
    );
  } finally {
    await admin.disconnect();
  }
  const records: ConsumedRecord[] = [];
  await streamTopicRanges(
    settings,
    topic,
    offsets.map((entry) => ({
      partition: entry.partition,
      start: BigInt(entry.low),
      end: BigInt(entry.high),
    })),
    (_partition, batch) => {
      records.push(...batch);
      return Promise.resolve();
    },
  );
  return records;
}

/** A range of one partition to read: from `start` (inclusive) to `end` (exclusive). */
export interface PartitionRange {
  readonly partition: number;
  readonly start: bigint;
  readonly end: bigint;
}

/**
 * Streams the given ranges of a topic, batch by batch, in offset order per partition, and resolves
 * once every range was read (replays, audits). `onBatch` is awaited before the next batch of that
 * partition, so a slow consumer holds the reader back rather than buffering the log in memory.
 * Uses a throwaway consumer group that commits nothing and is deleted afterwards.
 */
export async function streamTopicRanges(
  settings: KafkaSettings,
  topic: string,
  ranges: readonly PartitionRange[],
  onBatch: (partition: number, records: readonly ConsumedRecord[]) => Promise<void>,
): Promise<void> {
  const pending = new Map(
    ranges.filter((range) => range.end > range.start).map((range) => [range.partition, range]),
  );
  if (pending.size === 0) return;
  const kafka = client(settings);
  const groupId = `${settings.clientId}-range-${randomUUID()}`;
  const consumer = kafka.consumer({
    groupId,
    // Replays read far more than live consumers: fetch big batches.
    maxBytesPerPartition: 16 * 1024 * 1024,
    maxBytes: 64 * 1024 * 1024,
    maxWaitTimeInMs: 100,
    sessionTimeout: 60_000,
  });
  const admin = kafka.admin();
  try {
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
  } catch (error) {
    throw toKafkaError(error, `reading ${topic}`);
  }
  try {
    await new Promise<void>((resolve, reject) => {
      consumer.on(consumer.events.CRASH, (event) => {
        if (!event.payload.restart) reject(toKafkaError(event.payload.error, `reading ${topic}`));
      });
      consumer
        .run({
          autoCommit: false,
          eachBatchAutoResolve: false,
          eachBatch: async (payload) => {
            const batch = payload.batch;
            const range = pending.get(batch.partition);
            if (!range) return;
            const records: ConsumedRecord[] = [];
            let done = false;
            for (const message of batch.messages) {
              const offset = BigInt(message.offset);
              if (offset < range.start) continue;
              if (offset >= range.end) {
                done = true;
                break;
              }
              records.push({
                topic,
                partition: batch.partition,
                offset: message.offset,
                key: message.key,
                value: message.value,
                headers: decodeHeaders(message.headers),
                timestamp: recordTimestamp(message.timestamp),
              });
            }
            const last = records.at(-1);
            if (records.length > 0) await onBatch(batch.partition, records);
            if (last) payload.resolveOffset(last.offset);
            if (done || (last !== undefined && BigInt(last.offset) + 1n >= range.end)) {
              pending.delete(batch.partition);
              consumer.pause([{ topic, partitions: [batch.partition] }]);
            }
            if (pending.size === 0) resolve();
            await payload.heartbeat();
          },
        })
        .then(() => {
          for (const range of pending.values())
            consumer.seek({ topic, partition: range.partition, offset: range.start.toString() });
        })
        // A failed join (no rights on the group, say) leaves the consumer uninitialised, and the
        // seeks throw: the caller gets that as the error, never an unhandled rejection.
        .catch((error: unknown) => {
          reject(toKafkaError(error, `reading ${topic}`));
        });
    });
  } finally {
    await consumer.disconnect().catch(() => undefined);
    await admin
      .connect()
      .then(() => admin.deleteGroups([groupId]))
      .catch(() => undefined)
      .finally(() => admin.disconnect());
  }
}

/**
 * A produce/consume round trip, the proof that a broker serves clients: creates `topic` when
 * missing (keeping records for `retentionMs`), starts a consumer in a fresh group, produces a
 * unique value with an idempotent producer (whose InitProducerId waits for the transaction
 * coordinator, which a fresh broker loads after it starts serving plain requests) and waits up
 * to `timeoutMs` for the value to come back. Throws a retriable {@link KafkaError} otherwise.
 */
export async function roundTrip(
  settings: KafkaSettings,
  options: { readonly topic: string; readonly timeoutMs: number; readonly retentionMs: number },
): Promise<void> {
  const kafka = client(settings);
  const admin = kafka.admin();
  const producer = kafka.producer({
    allowAutoTopicCreation: false,
    idempotent: true,
    maxInFlightRequests: 1,
  });
  const groupId = `${options.topic}_${randomUUID()}`;
  const consumer = kafka.consumer({ groupId, sessionTimeout: 10_000, rebalanceTimeout: 10_000 });
  const value = randomUUID();
  let timer: NodeJS.Timeout | undefined;
  try {
    await admin.connect();
    if (!(await admin.listTopics()).includes(options.topic)) {
      await admin.createTopics({
        waitForLeaders: false,
        topics: [
          {
            topic: options.topic,
            numPartitions: 1,
            configEntries: [{ name: "retention.ms", value: String(options.retentionMs) }],
          },
        ],
      });
      await awaitLeaders(admin, [options.topic]);
    }
    await consumer.connect();
    await consumer.subscribe({ topic: options.topic, fromBeginning: true });
    const seen = new Promise<void>((resolve) => {
      void consumer.run({
        eachMessage: ({ message }) => {
          if (message.value?.toString() === value) resolve();
          return Promise.resolve();
        },
      });
    });
    await producer.connect();
    await producer.send({ topic: options.topic, acks: -1, messages: [{ value }] });
    await Promise.race([
      seen,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          reject(
            new KafkaError(
              `the probe message did not come back within ${options.timeoutMs} ms`,
              "ROUND_TRIP_TIMEOUT",
              true,
            ),
          );
        }, options.timeoutMs);
      }),
    ]);
  } catch (error) {
    throw error instanceof KafkaError ? error : toKafkaError(error, "a produce/consume round trip");
  } finally {
    clearTimeout(timer);
    await Promise.allSettled([consumer.disconnect(), producer.disconnect()]);
    await admin.deleteGroups([groupId]).catch(() => undefined);
    await admin.disconnect();
  }
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
  /** Each partition's end offset (the next offset to be written), as decimal strings. */
  endOffsets(topic: string): Promise<Map<number, string>>;
  /** Whether a topic exists. */
  exists(topic: string): Promise<boolean>;
  /** How many partitions a topic has now (from the cluster's metadata; no leader needed). */
  partitionCount(topic: string): Promise<number>;
  /** Each partition's earliest offset still in the log. */
  startOffsets(topic: string): Promise<Map<number, string>>;
  /**
   * Each partition's first offset whose record timestamp is at or after `timestampMs` (the end
   * offset when there is none).
   */
  offsetsAtTime(topic: string, timestampMs: number): Promise<Map<number, string>>;
  /** The offsets `group` committed for each partition of `topic` (partitions without one left out). */
  committedOffsets(group: string, topic: string): Promise<Map<number, string>>;
  /** The current values of `names` among `topic`'s settings (names the broker does not report are left out). */
  topicConfig(topic: string, names: readonly string[]): Promise<Map<string, string>>;
  close(): Promise<void>;
}

export async function connectAdmin(settings: KafkaSettings): Promise<TopicAdmin> {
  const admin = client(settings).admin();
  try {
    await admin.connect();
  } catch (error) {
    throw toKafkaError(error, "connecting the admin client");
  }
  const topicOffsets = (topic: string) =>
    whileLeadersSettle(settings, admin, `reading the offsets of ${topic}`, (asked) =>
      asked.fetchTopicOffsets(topic),
    );
  return {
    async ensureTopics(topics) {
      const existing = new Set(await admin.listTopics());
      const missing = topics.filter((topic) => !existing.has(topic.name));
      if (missing.length > 0)
        try {
          // Not kafkajs's wait for leaders: it gives up at the first "does not host this
          // topic-partition", which a broker answers for a topic its controller created a moment
          // ago (several processes starting together); awaitLeaders below waits that out.
          await admin.createTopics({
            waitForLeaders: false,
            topics: missing.map((topic) => ({
              topic: topic.name,
              numPartitions: topic.partitions,
              configEntries: Object.entries(topic.config ?? {}).map(([name, value]) => ({
                name,
                value,
              })),
            })),
          });
        } catch (error) {
          throw topicCreationError(
            error,
            missing.map((topic) => topic.name),
          );
        }
      // Another process may have created them a moment ago, too.
      await awaitLeaders(
        admin,
        topics.map((topic) => topic.name),
      );
      return missing.map((topic) => topic.name);
    },
    async endOffsets(topic) {
      return new Map((await topicOffsets(topic)).map((entry) => [entry.partition, entry.high]));
    },
    async exists(topic) {
      return (await admin.listTopics()).includes(topic);
    },
    async partitionCount(topic) {
      try {
        const metadata = await admin.fetchTopicMetadata({ topics: [topic] });
        return metadata.topics.find((entry) => entry.name === topic)?.partitions.length ?? 0;
      } catch (error) {
        throw toKafkaError(error, `reading the metadata of ${topic}`);
      }
    },
    async committedOffsets(group, topic) {
      const [committed] = await admin.fetchOffsets({ groupId: group, topics: [topic] });
      return new Map(
        (committed?.partitions ?? [])
          .filter((entry) => BigInt(entry.offset) >= 0n)
          .map((entry) => [entry.partition, entry.offset]),
      );
    },
    async startOffsets(topic) {
      return new Map((await topicOffsets(topic)).map((entry) => [entry.partition, entry.low]));
    },
    async topicConfig(topic, names) {
      try {
        const described = await admin.describeConfigs({
          includeSynonyms: false,
          resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: [...names] }],
        });
        return new Map(
          (described.resources[0]?.configEntries ?? []).map((entry) => [
            entry.configName,
            entry.configValue,
          ]),
        );
      } catch (error) {
        throw toKafkaError(error, `reading the settings of ${topic}`);
      }
    },
    async offsetsAtTime(topic, timestampMs) {
      const [ends, found] = await Promise.all([
        topicOffsets(topic),
        whileLeadersSettle(settings, admin, `finding the offsets of ${topic} at a time`, (asked) =>
          asked.fetchTopicOffsetsByTimestamp(topic, timestampMs),
        ),
      ]);
      const high = new Map(ends.map((entry) => [entry.partition, entry.high]));
      return new Map(
        found.map((entry) => [
          entry.partition,
          BigInt(entry.offset) < 0n ? (high.get(entry.partition) ?? "0") : entry.offset,
        ]),
      );
    },
    async close() {
      await admin.disconnect();
    },
  };
}

/** One topic whose stored progress belongs to an earlier topic of the same name. */
export interface ReplacedTopic {
  readonly topic: string;
  /** The topic id the progress was stored under. */
  readonly storedId: string;
  /** The topic id the cluster has now. */
  readonly currentId: string;
}

/**
 * Stored progress (a sink's positions, a processor's checkpoints) was made on topics that were
 * deleted and created again under the same names, or on another Kafka cluster: their offsets
 * mean other records now, and going on would silently skip each partition's first records.
 */
export class TopicReplacedError extends ObservatoryError {
  /**
   * @param holder whose progress it is, e.g. `the sink's stored positions (group mcpo-sink)`.
   * @param replaced every topic whose id changed.
   * @param remedy the way out, one sentence, e.g. `To …, run with --accept-new-topics`.
   */
  constructor(
    readonly holder: string,
    readonly replaced: readonly ReplacedTopic[],
    remedy: string,
  ) {
    super(
      "TOPIC_REPLACED",
      `${holder} belong to another topic than the one of the same name now: ` +
        replaced
          .map(
            (entry) => `${entry.topic} (stored topic id ${entry.storedId}, now ${entry.currentId})`,
          )
          .join("; ") +
        ". The topic was deleted and created again, or this is another Kafka cluster; going on " +
        `would skip each partition's first records as already read. ${remedy}`,
      { context: { topic: replaced[0]?.topic ?? "" } },
    );
    this.name = "TopicReplacedError";
  }
}

// Topic ids. kafkajs speaks Metadata up to v6, which has no topic ids (they came with v10), so
// this asks a broker itself, over a plain connection: ApiVersions v0 to learn what it serves,
// then Metadata v12 for the topics. Kafka's wire format: big-endian integers, requests and
// responses framed by an int32 size; v12 is a "flexible" version (compact arrays and strings,
// tagged fields).

const API_METADATA = 3;
const API_VERSIONS = 18;
const METADATA_VERSION = 12;
const UNKNOWN_TOPIC_OR_PARTITION = 3;
const TOPIC_AUTHORIZATION_FAILED = 29;
const ZERO_UUID = Buffer.alloc(16);

/** Builds a request's bytes. */
class WireWriter {
  private readonly parts: Buffer[] = [];

  int8(value: number): this {
    const buffer = Buffer.alloc(1);
    buffer.writeInt8(value);
    this.parts.push(buffer);
    return this;
  }
  int16(value: number): this {
    const buffer = Buffer.alloc(2);
    buffer.writeInt16BE(value);
    this.parts.push(buffer);
    return this;
  }
  int32(value: number): this {
    const buffer = Buffer.alloc(4);
    buffer.writeInt32BE(value);
    this.parts.push(buffer);
    return this;
  }
  uvarint(value: number): this {
    const bytes: number[] = [];
    let rest = value;
    while (rest >= 0x80) {
      bytes.push((rest & 0x7f) | 0x80);
      rest = Math.floor(rest / 128);
    }
    bytes.push(rest);
    this.parts.push(Buffer.from(bytes));
    return this;
  }
  bytes(value: Buffer): this {
    this.parts.push(value);
    return this;
  }
  /** int16 length, then UTF-8 (the request header's client id). */
  string(value: string): this {
    const encoded = Buffer.from(value, "utf8");
    return this.int16(encoded.length).bytes(encoded);
  }
  /** Length + 1 as an unsigned varint, then UTF-8. */
  compactString(value: string): this {
    const encoded = Buffer.from(value, "utf8");
    return this.uvarint(encoded.length + 1).bytes(encoded);
  }
  /** No tagged fields. */
  noTags(): this {
    return this.uvarint(0);
  }
  /** The bytes framed by their int32 size. */
  framed(): Buffer {
    const body = Buffer.concat(this.parts);
    const size = Buffer.alloc(4);
    size.writeInt32BE(body.length);
    return Buffer.concat([size, body]);
  }
}

/** Reads a response's bytes; throws a RangeError past the end. */
class WireReader {
  private at = 0;

  constructor(private readonly buffer: Buffer) {}

  int8(): number {
    const value = this.buffer.readInt8(this.at);
    this.at += 1;
    return value;
  }
  int16(): number {
    const value = this.buffer.readInt16BE(this.at);
    this.at += 2;
    return value;
  }
  int32(): number {
    const value = this.buffer.readInt32BE(this.at);
    this.at += 4;
    return value;
  }
  uvarint(): number {
    let value = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      const byte = this.buffer.readUInt8(this.at++);
      value += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return value;
    }
    throw new RangeError("an unsigned varint longer than 5 bytes");
  }
  take(length: number): Buffer {
    if (this.at + length > this.buffer.length) throw new RangeError("past the end of the response");
    const value = this.buffer.subarray(this.at, this.at + length);
    this.at += length;
    return value;
  }
  /** A compact nullable string (null for length 0). */
  compactString(): string | null {
    const length = this.uvarint();
    return length === 0 ? null : this.take(length - 1).toString("utf8");
  }
  /** A compact array's element count (null array: 0). */
  compactCount(): number {
    return Math.max(0, this.uvarint() - 1);
  }
  skipTags(): void {
    const count = this.uvarint();
    for (let i = 0; i < count; i++) {
      this.uvarint();
      this.take(this.uvarint());
    }
  }
}

/** A plain connection to one broker that sends requests one at a time. */
class BrokerConnection {
  private received = Buffer.alloc(0);
  private waiting: { resolve: (body: Buffer) => void; reject: (error: Error) => void } | undefined;
  private closedWith: Error | undefined;
  private correlation = 0;

  private constructor(
    private readonly socket: Socket,
    private readonly address: string,
    private readonly clientId: string,
    private readonly requestTimeoutMs: number,
  ) {
    socket.on("data", (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk]);
      this.deliver();
    });
    const closed = (error: Error) => {
      this.closedWith ??= error;
      this.waiting?.reject(error);
      this.waiting = undefined;
    };
    socket.on("error", closed);
    socket.on("close", () => {
      closed(new Error(`${address} closed the connection`));
    });
  }

  static open(address: string, settings: KafkaSettings): Promise<BrokerConnection> {
    const colon = address.lastIndexOf(":");
    const host = address.slice(0, colon).replace(/^\[(.*)\]$/, "$1");
    const port = Number(address.slice(colon + 1));
    if (colon <= 0 || !Number.isInteger(port))
      return Promise.reject(new Error(`${address} is not host:port`));
    const timeoutMs = settings.connectionTimeoutMs ?? 3000;
    const tls = settings.tls;
    const opened = new Promise<BrokerConnection>((resolve, reject) => {
      const socket =
        tls === undefined
          ? connectTcp({ host, port })
          : connectTls({
              host,
              port,
              ...(isIP(host) === 0 ? { servername: host } : {}),
              ...tlsOptions(tls),
            });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(
          new Error(`no ${tls ? "TLS" : "TCP"} connection to ${address} within ${timeoutMs} ms`),
        );
      }, timeoutMs);
      socket.once("error", (error: Error) => {
        clearTimeout(timer);
        reject(error);
      });
      socket.once(tls === undefined ? "connect" : "secureConnect", () => {
        clearTimeout(timer);
        resolve(
          new BrokerConnection(
            socket,
            address,
            settings.clientId,
            settings.requestTimeoutMs ?? 10_000,
          ),
        );
      });
    });
    const sasl = settings.sasl;
    if (sasl === undefined) return opened;
    return opened.then(async (connection) => {
      try {
        await authenticate(connection, address, sasl);
        return connection;
      } catch (error) {
        connection.close();
        throw error;
      }
    });
  }

  /**
   * Sends a request and resolves with its response after the correlation id (the rest of the
   * response header is the caller's to read).
   */
  async request(
    apiKey: number,
    apiVersion: number,
    flexible: boolean,
    body: (writer: WireWriter) => void,
  ): Promise<WireReader> {
    if (this.closedWith) throw this.closedWith;
    const correlation = ++this.correlation;
    const writer = new WireWriter()
      .int16(apiKey)
      .int16(apiVersion)
      .int32(correlation)
      .string(this.clientId);
    if (flexible) writer.noTags();
    body(writer);
    let timer: NodeJS.Timeout | undefined;
    const response = new Promise<Buffer>((resolve, reject) => {
      this.waiting = { resolve, reject };
      timer = setTimeout(() => {
        reject(new Error(`${this.address} did not answer within ${this.requestTimeoutMs} ms`));
      }, this.requestTimeoutMs);
    });
    this.socket.write(writer.framed());
    try {
      const reader = new WireReader(await response);
      const answered = reader.int32();
      if (answered !== correlation)
        throw new Error(`${this.address} answered request ${answered}, not ${correlation}`);
      return reader;
    } finally {
      clearTimeout(timer);
      this.waiting = undefined;
    }
  }

  close(): void {
    this.socket.destroy();
  }

  private deliver(): void {
    if (this.received.length < 4) return;
    const size = this.received.readInt32BE(0);
    if (this.received.length < 4 + size) return;
    const body = this.received.subarray(4, 4 + size);
    this.received = this.received.subarray(4 + size);
    this.waiting?.resolve(body);
    this.waiting = undefined;
  }
}

const API_SASL_HANDSHAKE = 17;
const API_SASL_AUTHENTICATE = 36;

/**
 * SASL on a plain connection, as a Kafka client does it: SaslHandshake v1 names the mechanism,
 * then SaslAuthenticate v1 carries the mechanism's messages (RFC 4616 PLAIN, RFC 5802/7677 SCRAM,
 * RFC 7628 OAUTHBEARER).
 *
 * @throws {KafkaError} `SASL_AUTHENTICATION_FAILED` (not retriable) when the broker refuses.
 */
async function authenticate(
  connection: BrokerConnection,
  address: string,
  sasl: KafkaSasl,
): Promise<void> {
  const mechanism = sasl.mechanism.toUpperCase();
  const refused = (detail: string): KafkaError =>
    new KafkaError(
      `authenticating to ${address} with SASL ${mechanism}${"username" in sasl ? ` as ${sasl.username}` : ""} failed: ${detail}`,
      "SASL_AUTHENTICATION_FAILED",
      false,
    );
  const handshake = await connection.request(API_SASL_HANDSHAKE, 1, false, (writer) =>
    writer.string(mechanism),
  );
  const handshakeError = handshake.int16();
  if (handshakeError !== 0)
    throw refused(`the broker does not enable ${mechanism} (error code ${handshakeError})`);
  const step = async (message: Buffer): Promise<Buffer> => {
    const reader = await connection.request(API_SASL_AUTHENTICATE, 1, false, (writer) =>
      writer.int32(message.length).bytes(message),
    );
    const errorCode = reader.int16();
    const messageLength = reader.int16();
    const errorMessage = messageLength < 0 ? undefined : reader.take(messageLength).toString();
    const length = reader.int32();
    const answer = length < 0 ? Buffer.alloc(0) : Buffer.from(reader.take(length));
    if (errorCode !== 0) throw refused(errorMessage ?? `error code ${errorCode}`);
    return answer;
  };
  switch (sasl.mechanism) {
    case "plain":
      await step(Buffer.from(`\u0000${sasl.username}\u0000${sasl.password}`, "utf8"));
      return;
    case "oauthbearer": {
      const { value } = await sasl.oauthBearerProvider();
      await step(Buffer.from(`n,,\u0001auth=Bearer ${value}\u0001\u0001`, "utf8"));
      return;
    }
    case "scram-sha-256":
    case "scram-sha-512": {
      const digest = sasl.mechanism === "scram-sha-256" ? "sha256" : "sha512";
      const keyLength = digest === "sha256" ? 32 : 64;
      const nonce = randomBytes(24).toString("base64");
      const name = sasl.username.replace(/=/g, "=3D").replace(/,/g, "=2C");
      const clientFirstBare = `n=${name},r=${nonce}`;
      const serverFirst = (await step(Buffer.from(`n,,${clientFirstBare}`, "utf8"))).toString();
      const fields = new Map(
        serverFirst.split(",").map((part) => [part.slice(0, 1), part.slice(2)] as const),
      );
      const serverNonce = fields.get("r") ?? "";
      const salt = Buffer.from(fields.get("s") ?? "", "base64");
      const iterations = Number(fields.get("i"));
      if (!serverNonce.startsWith(nonce) || !Number.isInteger(iterations) || iterations < 1)
        throw refused(`the broker's SCRAM challenge is malformed (${JSON.stringify(serverFirst)})`);
      const salted = pbkdf2Sync(
        sasl.password.normalize("NFKC"),
        salt,
        iterations,
        keyLength,
        digest,
      );
      const hmac = (key: Buffer, text: string): Buffer =>
        createHmac(digest, key).update(text, "utf8").digest();
      const clientKey = hmac(salted, "Client Key");
      const storedKey = createHash(digest).update(clientKey).digest();
      const clientFinalBare = `c=biws,r=${serverNonce}`;
      const authMessage = `${clientFirstBare},${serverFirst},${clientFinalBare}`;
      const signature = hmac(storedKey, authMessage);
      const proof = Buffer.alloc(clientKey.length);
      for (let i = 0; i < proof.length; i++) proof[i] = (clientKey[i] ?? 0) ^ (signature[i] ?? 0);
      const serverFinal = (
        await step(Buffer.from(`${clientFinalBare},p=${proof.toString("base64")}`, "utf8"))
      ).toString();
      if (serverFinal.startsWith("e=")) throw refused(serverFinal.slice(2));
      const expected = hmac(hmac(salted, "Server Key"), authMessage).toString("base64");
      if (serverFinal !== `v=${expected}`)
        throw refused("the broker's SCRAM signature does not match: not the broker we know");
      return;
    }
  }
}

/** The highest Metadata version a broker serves, from ApiVersions v0. */
async function metadataVersionOf(connection: BrokerConnection): Promise<number> {
  const reader = await connection.request(API_VERSIONS, 0, false, () => undefined);
  const errorCode = reader.int16();
  if (errorCode !== 0) throw new Error(`ApiVersions failed with error code ${errorCode}`);
  const count = reader.int32();
  for (let i = 0; i < count; i++) {
    const apiKey = reader.int16();
    reader.int16(); // lowest version
    const highest = reader.int16();
    if (apiKey === API_METADATA) return highest;
  }
  return -1;
}

/** Metadata v12 for `topics`: each existing topic's id, as Kafka prints it. */
async function readTopicIds(
  connection: BrokerConnection,
  topics: readonly string[],
): Promise<Map<string, string>> {
  const reader = await connection.request(API_METADATA, METADATA_VERSION, true, (writer) => {
    writer.uvarint(topics.length + 1);
    for (const topic of topics) writer.bytes(ZERO_UUID).compactString(topic).noTags();
    writer.int8(0); // allow_auto_topic_creation
    writer.int8(0); // include_topic_authorized_operations
    writer.noTags();
  });
  reader.skipTags(); // response header v1
  reader.int32(); // throttle_time_ms
  for (let brokers = reader.compactCount(); brokers > 0; brokers--) {
    reader.int32(); // node_id
    reader.compactString(); // host
    reader.int32(); // port
    reader.compactString(); // rack
    reader.skipTags();
  }
  reader.compactString(); // cluster_id
  reader.int32(); // controller_id
  const ids = new Map<string, string>();
  for (let count = reader.compactCount(); count > 0; count--) {
    const errorCode = reader.int16();
    const name = reader.compactString();
    const id = reader.take(16);
    reader.int8(); // is_internal
    for (let partitions = reader.compactCount(); partitions > 0; partitions--) {
      reader.int16(); // error_code
      reader.int32(); // partition_index
      reader.int32(); // leader_id
      reader.int32(); // leader_epoch
      // replica_nodes, isr_nodes, offline_replicas
      for (let list = 0; list < 3; list++)
        for (let nodes = reader.compactCount(); nodes > 0; nodes--) reader.int32();
      reader.skipTags();
    }
    reader.int32(); // topic_authorized_operations
    reader.skipTags();
    if (name === null || errorCode === UNKNOWN_TOPIC_OR_PARTITION) continue;
    if (errorCode === TOPIC_AUTHORIZATION_FAILED)
      throw new KafkaError(
        `reading the topic id of ${name}: not authorized to describe the topic`,
        "TOPIC_AUTHORIZATION_FAILED",
        false,
        { context: { topic: name } },
      );
    if (id.equals(ZERO_UUID))
      throw new KafkaError(
        `reading the topic id of ${name}: the broker gave none (error code ${errorCode})`,
        "TOPIC_ID_MISSING",
        true,
        { context: { topic: name } },
      );
    ids.set(name, id.toString("base64url"));
  }
  return ids;
}

/**
 * Connects to the bootstrap brokers in turn as the clients will (TLS and SASL as the settings
 * say) and asks one for its API versions and metadata, so a wrong password, a missing CA or a
 * plaintext client on a TLS port is one clear error at start instead of clients retrying.
 *
 * @throws {KafkaError} `SASL_AUTHENTICATION_FAILED` or `TLS_HANDSHAKE_FAILED` (not retriable:
 *   the settings are wrong), `SECURITY_MISMATCH` (not retriable: the broker closed the connection
 *   before answering, as a TLS or SASL listener does to a client that speaks neither), or a
 *   retriable `KafkaJSConnectionError` when no broker answered.
 */
export async function probeBrokers(settings: KafkaSettings): Promise<void> {
  const failures: string[] = [];
  for (const address of settings.brokers) {
    let connection: BrokerConnection | undefined;
    try {
      connection = await BrokerConnection.open(address, settings);
      await metadataVersionOf(connection);
      await readTopicIds(connection, []);
      return;
    } catch (error) {
      if (error instanceof KafkaError) throw error;
      const message = error instanceof Error ? error.message : String(error);
      if (isTlsFailure(error))
        throw new KafkaError(
          `TLS with ${address} failed: ${message}. ` +
            (settings.tls
              ? "Check that KAFKA_SSL_CA_FILE holds the CA that signed the broker's certificate and that the address is the broker's name in it, and that the port is a TLS listener"
              : "This is not a TLS client: the port may not be a Kafka listener"),
          "TLS_HANDSHAKE_FAILED",
          false,
          { cause: error },
        );
      if (/closed the connection|ECONNRESET|did not answer/.test(message) && connection)
        throw new KafkaError(
          `${address} closed the connection without answering (${message}): the listener expects ` +
            (settings.tls
              ? "SASL, or a client certificate: set KAFKA_SASL_MECHANISM and the credentials"
              : "TLS or SASL: set KAFKA_SECURITY_PROTOCOL (SSL or SASL_SSL) and its settings"),
          "SECURITY_MISMATCH",
          false,
          { cause: error },
        );
      failures.push(`${address}: ${message}`);
    } finally {
      connection?.close();
    }
  }
  throw new KafkaError(
    `no broker answered (${failures.join("; ")})`,
    "KafkaJSConnectionError",
    true,
  );
}

/**
 * The topic ids of `topics` (those that exist; a missing topic is left out): the UUID Kafka gives
 * a topic when it creates it, so a topic deleted and created again under the same name, or a
 * topic of another cluster, has another one. As Kafka prints it (`kafka-topics --describe`): 22
 * characters, base64url without padding.
 *
 * Asks the bootstrap brokers in turn (Metadata v12, which needs Kafka 3.1 or later) over a plain
 * connection of its own (TLS and SASL as the settings say).
 *
 * @throws {KafkaError} no broker answered (retriable), or the cluster cannot give topic ids.
 */
export async function fetchTopicIds(
  settings: KafkaSettings,
  topics: readonly string[],
): Promise<Map<string, string>> {
  if (topics.length === 0) return new Map();
  const failures: string[] = [];
  for (const address of settings.brokers) {
    let connection: BrokerConnection | undefined;
    try {
      connection = await BrokerConnection.open(address, settings);
      const version = await metadataVersionOf(connection);
      if (version < METADATA_VERSION)
        throw new KafkaError(
          `reading topic ids: broker ${address} serves Metadata up to v${version}; topic ids need v${METADATA_VERSION} (Kafka 3.1 or later)`,
          "UNSUPPORTED_VERSION",
          false,
        );
      return await readTopicIds(connection, topics);
    } catch (error) {
      if (error instanceof KafkaError) throw error;
      failures.push(`${address}: ${error instanceof Error ? error.message : String(error)}`);
    } finally {
      connection?.close();
    }
  }
  throw new KafkaError(
    `reading the topic ids of ${topics.join(", ")}: no broker answered (${failures.join("; ")})`,
    "KafkaJSConnectionError",
    true,
  );
}
