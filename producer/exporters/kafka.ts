/**
 * The fleet path: ModelCallEvents as Avro (Confluent wire format, schema from the registry) to
 * the model-calls topic, key = service, so one service's events share a partition.
 *
 * Never blocks the host: `export` puts the event in a bounded buffer and returns. A background
 * pump sends batches (by size, or after a linger time) through an idempotent producer with
 * compression; a failed batch stays at the head of the buffer and is retried with exponential
 * backoff and full jitter, so a broker or registry that is down at start or goes down mid-stream
 * only delays delivery. A full buffer drops by policy and counts (one warning per overflow
 * episode). Timers are unref'd: a pending linger never keeps the process alive.
 */
import type { ModelCallEvent } from "../../avro/generated.js";
import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import { ConfigError, loadConnectionConfig, topicNames } from "../../config/index.js";
import {
  connectAdmin,
  createRecordProducer,
  KafkaError,
  type Compression,
  type OutgoingRecord,
  type RecordProducer,
} from "../../kafka/index.js";
import { stderrLogger, type Logger } from "../logger.js";
import { RingQueue } from "./ring.js";
import type { EventExporter, ExporterStats, FlushResult, OverflowPolicy } from "./types.js";

/** Options of {@link KafkaExporter}; each falls back to the environment, then a default. */
export interface KafkaExporterOptions {
  /** Default `KAFKA_BROKERS`, then `127.0.0.1:9092`. */
  readonly brokers?: string | readonly string[];
  /** Default `SCHEMA_REGISTRY_URL`, then the local stack's. */
  readonly schemaRegistryUrl?: string;
  /** Default `<MCPO_TOPIC_PREFIX>model-calls`. */
  readonly topic?: string;
  /** Partitions when the exporter has to create the topic (default 6). */
  readonly topicPartitions?: number;
  readonly clientId?: string;
  /** Buffer capacity in events (default 10 000). */
  readonly maxQueueSize?: number;
  /** Most events per produce request (default 500). */
  readonly maxBatchSize?: number;
  /** How long a partial batch waits for more events, ms (default 20). */
  readonly lingerMs?: number;
  /** Default `gzip`. */
  readonly compression?: Compression;
  /** What a full buffer does (default `drop-newest`). */
  readonly overflow?: OverflowPolicy;
  /** With `block`: how long `export` waits for room before dropping, ms (default 1000). */
  readonly blockTimeoutMs?: number;
  /** Backoff between failed attempts: first delay and cap, ms (defaults 100 and 10 000). */
  readonly retryInitialMs?: number;
  readonly retryMaxMs?: number;
  readonly logger?: Logger;
}

interface BlockedExport {
  readonly event: ModelCallEvent;
  readonly resolve: () => void;
  readonly timer: NodeJS.Timeout;
}

type State = "running" | "closing" | "closed";

function positiveInt(key: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value <= 0)
    throw new ConfigError(key, `expected a positive integer (got ${value})`);
  return value;
}

export class KafkaExporter implements EventExporter {
  private readonly brokers: readonly string[];
  private readonly registryUrl: string;
  readonly topic: string;
  private readonly topicPartitions: number;
  private readonly clientId: string;
  private readonly maxQueueSize: number;
  private readonly maxBatchSize: number;
  private readonly lingerMs: number;
  private readonly compression: Compression;
  private readonly overflow: OverflowPolicy;
  private readonly blockTimeoutMs: number;
  private readonly retryInitialMs: number;
  private readonly retryMaxMs: number;
  private readonly logger: Logger;

  private readonly queue: RingQueue<ModelCallEvent>;
  private inFlight: ModelCallEvent[] = [];
  private inFlightRecords: OutgoingRecord[] = [];
  private readonly blocked: BlockedExport[] = [];
  private flushWaiters: (() => void)[] = [];

  private state: State = "running";
  private producer: RecordProducer | undefined;
  private connected = false;
  private topicReady = false;
  private codec: AvroCodec<ModelCallEvent> | undefined;
  private pumping = false;
  private lingerTimer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private backoffTimer: NodeJS.Timeout | undefined;
  private wakeBackoff: (() => void) | undefined;
  private retryDelay: number;
  private overflowing = false;
  private failing = false;
  private shutdownPromise: Promise<FlushResult> | undefined;

  private counters = { sent: 0, dropped: 0, retried: 0 };

  /** @throws {ConfigError} naming the option or variable that is invalid. */
  constructor(options: KafkaExporterOptions = {}) {
    const connection = loadConnectionConfig({
      ...(options.brokers === undefined ? {} : { kafkaBrokers: options.brokers }),
      ...(options.schemaRegistryUrl === undefined
        ? {}
        : { schemaRegistryUrl: options.schemaRegistryUrl }),
    });
    this.brokers = connection.kafkaBrokers;
    this.registryUrl = connection.schemaRegistryUrl;
    this.topic = options.topic ?? topicNames(connection.topicPrefix).modelCalls;
    this.topicPartitions = positiveInt("topicPartitions", options.topicPartitions, 6);
    this.clientId = options.clientId ?? "mcp-observatory-exporter";
    this.maxQueueSize = positiveInt("maxQueueSize", options.maxQueueSize, 10_000);
    this.maxBatchSize = positiveInt("maxBatchSize", options.maxBatchSize, 500);
    this.lingerMs = options.lingerMs ?? 20;
    if (!Number.isFinite(this.lingerMs) || this.lingerMs < 0)
      throw new ConfigError("lingerMs", `expected a non-negative number (got ${this.lingerMs})`);
    this.compression = options.compression ?? "gzip";
    if (!["none", "gzip", "snappy"].includes(this.compression))
      throw new ConfigError(
        "compression",
        `expected none, gzip or snappy (got ${JSON.stringify(this.compression)})`,
      );
    this.overflow = options.overflow ?? "drop-newest";
    if (!["drop-newest", "drop-oldest", "block"].includes(this.overflow))
      throw new ConfigError(
        "overflow",
        `expected drop-newest, drop-oldest or block (got ${JSON.stringify(this.overflow)})`,
      );
    this.blockTimeoutMs = positiveInt("blockTimeoutMs", options.blockTimeoutMs, 1000);
    this.retryInitialMs = positiveInt("retryInitialMs", options.retryInitialMs, 100);
    this.retryMaxMs = positiveInt("retryMaxMs", options.retryMaxMs, 10_000);
    this.retryDelay = this.retryInitialMs;
    this.logger = options.logger ?? stderrLogger;
    this.queue = new RingQueue(this.maxQueueSize);
  }

  export(event: ModelCallEvent): void | Promise<void> {
    if (this.state !== "running") {
      this.drop(1, "the exporter is shut down");
      return;
    }
    if (this.buffered() >= this.maxQueueSize) {
      switch (this.overflow) {
        case "drop-newest":
          this.drop(1, "the buffer is full (drop-newest)");
          return;
        case "drop-oldest":
          if (this.queue.length > 0) {
            this.queue.shift();
            this.drop(1, "the buffer is full (drop-oldest)");
            break;
          }
          // Only a batch in flight is buffered: it cannot be dropped, so the new event is.
          this.drop(1, "the buffer is full (drop-oldest, batch in flight)");
          return;
        case "block":
          return this.waitForRoom(event);
      }
    }
    this.queue.push(event);
    this.overflowing = false;
    this.schedule();
  }

  flush(timeoutMs = 30_000): Promise<FlushResult> {
    if (this.buffered() === 0) return Promise.resolve({ complete: true, remaining: 0 });
    return new Promise((resolve) => {
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        this.flushWaiters = this.flushWaiters.filter((waiter) => waiter !== done);
        resolve({ complete: false, remaining: this.buffered() });
      }, timeoutMs);
      timer.unref();
      const done = (): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({ complete: this.buffered() === 0, remaining: this.buffered() });
      };
      this.flushWaiters.push(done);
      this.wake();
    });
  }

  shutdown(timeoutMs = 30_000): Promise<FlushResult> {
    this.shutdownPromise ??= this.close(timeoutMs);
    return this.shutdownPromise;
  }

  stats(): ExporterStats {
    return { ...this.counters, buffered: this.buffered() };
  }

  private async close(timeoutMs: number): Promise<FlushResult> {
    this.state = "closing";
    for (const blocked of this.blocked.splice(0)) {
      clearTimeout(blocked.timer);
      this.drop(1, "the exporter is shutting down");
      blocked.resolve();
    }
    let result: FlushResult = { complete: true, remaining: 0 };
    try {
      result = await this.flush(timeoutMs);
    } finally {
      this.state = "closed";
      this.clearTimers();
      const lost = this.buffered();
      if (lost > 0) {
        this.counters.dropped += lost;
        this.logger.warn("events not delivered at shutdown", { lost, topic: this.topic });
        this.queue.take(lost);
        this.inFlight = [];
        this.inFlightRecords = [];
      }
      const producer = this.producer;
      this.producer = undefined;
      if (producer && this.connected) {
        try {
          await producer.disconnect();
        } catch (error) {
          this.logger.warn("disconnecting the producer failed", { error: String(error) });
        }
      }
      this.resolveFlushWaiters();
    }
    return result;
  }

  /** Read through a method: the state changes while a pump awaits. */
  private isClosed(): boolean {
    return this.state === "closed";
  }

  private buffered(): number {
    return this.queue.length + this.inFlight.length;
  }

  private drop(count: number, reason: string): void {
    this.counters.dropped += count;
    if (!this.overflowing) {
      this.overflowing = true;
      this.logger.warn("dropping events", {
        reason,
        topic: this.topic,
        dropped: this.counters.dropped,
      });
    }
  }

  private waitForRoom(event: ModelCallEvent): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const index = this.blocked.findIndex((blocked) => blocked.event === event);
        if (index >= 0) this.blocked.splice(index, 1);
        this.drop(1, `the buffer stayed full for ${this.blockTimeoutMs} ms (block)`);
        resolve();
      }, this.blockTimeoutMs);
      timer.unref();
      this.blocked.push({ event, resolve, timer });
    });
  }

  /** Moves blocked exports into the buffer while there is room. */
  private admitBlocked(): void {
    while (this.blocked.length > 0 && this.buffered() < this.maxQueueSize) {
      const next = this.blocked.shift();
      if (!next) break;
      clearTimeout(next.timer);
      this.queue.push(next.event);
      next.resolve();
    }
  }

  private schedule(): void {
    if (this.pumping || this.immediate) return;
    if (
      this.queue.length >= this.maxBatchSize ||
      this.flushWaiters.length > 0 ||
      this.lingerMs === 0
    ) {
      this.cancelLinger();
      this.immediate = setImmediate(() => {
        this.immediate = undefined;
        void this.pump();
      });
      this.immediate.unref();
    } else if (!this.lingerTimer) {
      this.lingerTimer = setTimeout(() => {
        this.lingerTimer = undefined;
        void this.pump();
      }, this.lingerMs);
      this.lingerTimer.unref();
    }
  }

  /** Sends now: cuts a linger or a backoff short. */
  private wake(): void {
    if (this.wakeBackoff) {
      this.wakeBackoff();
      return;
    }
    this.schedule();
  }

  private cancelLinger(): void {
    if (this.lingerTimer) {
      clearTimeout(this.lingerTimer);
      this.lingerTimer = undefined;
    }
  }

  private clearTimers(): void {
    this.cancelLinger();
    if (this.immediate) clearImmediate(this.immediate);
    this.immediate = undefined;
    this.wakeBackoff?.();
  }

  private async pump(): Promise<void> {
    if (this.pumping || this.state === "closed") return;
    this.pumping = true;
    try {
      while (this.buffered() > 0 && !this.isClosed()) {
        try {
          await this.sendOneBatch();
          this.retryDelay = this.retryInitialMs;
          if (this.failing) {
            this.failing = false;
            this.logger.warn("delivering again", { topic: this.topic, buffered: this.buffered() });
          }
          this.admitBlocked();
          if (this.buffered() === 0) this.resolveFlushWaiters();
          // A partial batch waits for its linger unless someone is waiting for it.
          if (
            this.queue.length < this.maxBatchSize &&
            this.flushWaiters.length === 0 &&
            this.state === "running" &&
            this.lingerMs > 0
          )
            break;
        } catch (error) {
          this.counters.retried++;
          this.onFailure(error);
          await this.backoff();
        }
      }
    } finally {
      this.pumping = false;
    }
    if (this.buffered() > 0 && !this.isClosed()) this.schedule();
  }

  private async sendOneBatch(): Promise<void> {
    await this.ensureReady();
    if (this.inFlight.length === 0) {
      const batch = this.queue.take(this.maxBatchSize);
      const records: OutgoingRecord[] = [];
      const kept: ModelCallEvent[] = [];
      for (const event of batch) {
        try {
          records.push({
            key: event.service,
            value: (this.codec as AvroCodec<ModelCallEvent>).encode(event),
          });
          kept.push(event);
        } catch (error) {
          this.counters.dropped++;
          this.logger.error("event cannot be encoded; dropped", {
            error: (error as Error).message,
          });
        }
      }
      this.inFlight = kept;
      this.inFlightRecords = records;
    }
    if (this.inFlightRecords.length > 0)
      await (this.producer as RecordProducer).send(
        this.topic,
        this.inFlightRecords,
        this.compression,
      );
    this.counters.sent += this.inFlight.length;
    this.inFlight = [];
    this.inFlightRecords = [];
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
        await admin.ensureTopics([{ name: this.topic, partitions: this.topicPartitions }]);
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

  private onFailure(error: unknown): void {
    if (!this.failing) {
      this.failing = true;
      this.logger.warn("delivery failed; events stay buffered and are retried", {
        topic: this.topic,
        buffered: this.buffered(),
        error: error instanceof Error ? error.message : String(error),
      });
    }
    // A producer that failed for a reason other than a transient one is replaced.
    if (error instanceof KafkaError && !error.retriable && this.producer) {
      const old = this.producer;
      this.producer = undefined;
      this.connected = false;
      old.disconnect().catch(() => undefined);
    }
  }

  /** Waits the current backoff with full jitter, then doubles it up to the cap. */
  private backoff(): Promise<void> {
    const delay = Math.random() * this.retryDelay;
    this.retryDelay = Math.min(this.retryDelay * 2, this.retryMaxMs);
    return new Promise((resolve) => {
      const done = (): void => {
        if (this.backoffTimer) clearTimeout(this.backoffTimer);
        this.backoffTimer = undefined;
        this.wakeBackoff = undefined;
        resolve();
      };
      this.backoffTimer = setTimeout(done, delay);
      this.backoffTimer.unref();
      this.wakeBackoff = done;
    });
  }

  private resolveFlushWaiters(): void {
    const waiters = this.flushWaiters;
    this.flushWaiters = [];
    for (const waiter of waiters) waiter();
  }
}
