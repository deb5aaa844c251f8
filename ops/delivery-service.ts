/**
 * The base of the consumer services that deliver what they read to another system over HTTP (the
 * alert forwarder, processor/forward.ts; the OTLP exporter, otlp/export.ts), on the
 * consumer-service shell (./service.ts). It owns what their deliveries share:
 *
 * - **Stopping**: an abort signal raised at stop, so that no new attempt or wait starts (the
 *   attempt in flight finishes within its timeout), and {@link DeliveryService.stopped}.
 * - **Consuming**: one source topic in the configured group, partitions handled concurrently
 *   (a destination retrying one partition's records does not hold the others'), each
 *   partition's records in order.
 * - **Decoding**: a record whose schema the registry does not answer for waits, heartbeating.
 * - **Retrying**: the project's retry loop (config/retry.ts) paced with heartbeats, its end as a
 *   typed outcome (done, stopped, refused, exhausted).
 * - **Dead letters**: written with retries until they are, counted by code.
 * - **Position**: the group's offset moved past a record only once it is finished.
 *
 * @module
 */
import type { Counter } from "prom-client";

import type { AvroCodec } from "../avro/codec.js";
import {
  isRetriable,
  retry,
  RetryExhaustedError,
  type RetryPolicy,
  type TopicNames,
} from "../config/index.js";
import type {
  BatchControl,
  ConsumedBatch,
  ConsumedRecord,
  GroupConsumerOptions,
  OutgoingRecord,
} from "../kafka/index.js";
import { DeliveryError } from "./http-destination.js";
import type { OpsLogger } from "./index.js";
import {
  ConsumerService,
  pauseWithHeartbeats,
  Tally,
  type ServiceShellOptions,
} from "./service.js";

/** The settings of a delivery service's consumer and retries (keys of its parsed config). */
export interface DeliveryConfig {
  readonly groupId: string;
  readonly fromBeginning: boolean;
  readonly sessionTimeoutMs: number;
  /** The first retry's longest wait, ms (also the longest wait for a registry that does not answer). */
  readonly retryInitialMs: number;
  /** The longest wait between attempts, ms. */
  readonly retryMaxMs: number;
}

/** What a delivery service gives its base besides the shell's options. */
export interface DeliveryParts {
  /** Its counter of records sent to the dead-letter topic, labelled by `code`. */
  readonly deadLettered: Counter;
  /** The reason of the stop signal, e.g. "the forwarder is stopping". */
  readonly stopReason: string;
}

/** A record's decoded value, a reason to set it aside, or undefined when stopping. */
export type Decoded<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly code: string; readonly reason: string }
  | undefined;

/** How a retried delivery ended. */
export type DeliveryResult<T> =
  | { readonly kind: "done"; readonly value: T }
  /** The service is stopping (or the batch stopped running): the records are read again later. */
  | { readonly kind: "stopped" }
  /** The destination refused for good (a status other than 408, 429, 5xx). */
  | { readonly kind: "refused"; readonly error: DeliveryError }
  /** Every attempt failed with a retriable error. */
  | { readonly kind: "exhausted"; readonly error: RetryExhaustedError };

/**
 * A consumer service that delivers each record of one source topic somewhere. A subclass names
 * the topic ({@link sourceTopic}) and handles batches ({@link onBatch}) with the helpers here.
 */
export abstract class DeliveryService<
  Stats extends { readonly [K in keyof Stats]: number },
> extends ConsumerService<Stats> {
  readonly topics: TopicNames;
  readonly groupId: string;
  protected readonly logger: OpsLogger;
  /** Records sent to the dead-letter topic (by code). */
  protected readonly deadLettered: Tally;
  /** Aborted at stop: waits between attempts end, no new attempt starts. */
  protected readonly halt = new AbortController();
  private readonly delivery: DeliveryConfig;
  private readonly stopReason: string;

  protected constructor(shell: ServiceShellOptions, config: DeliveryConfig, parts: DeliveryParts) {
    super(shell);
    this.topics = shell.topics;
    this.groupId = config.groupId;
    this.logger = shell.logger;
    this.delivery = config;
    this.deadLettered = new Tally(parts.deadLettered);
    this.stopReason = parts.stopReason;
  }

  /** The topic it reads. */
  protected abstract sourceTopic(): string;

  /** Handles a batch of one partition's records (see the helpers below). */
  protected abstract onBatch(batch: ConsumedBatch, control: BatchControl): Promise<void>;

  protected consumerOptions(): GroupConsumerOptions {
    return {
      groupId: this.groupId,
      topics: [this.sourceTopic()],
      fromBeginning: this.delivery.fromBeginning,
      sessionTimeoutMs: this.delivery.sessionTimeoutMs,
      // A destination retrying one partition's records does not hold the other partitions' (each
      // partition's records still go one at a time, in order).
      partitionsConcurrently: 4,
      onBatch: (batch, control) => this.onBatch(batch, control),
      onCrash: (error) => {
        this.logger.error("consumer stopped", { error: error.message });
      },
    };
  }

  protected override startedFields(): Record<string, unknown> {
    return { group: this.groupId, topic: this.sourceTopic() };
  }

  /** No new attempt or wait starts; the attempt in flight finishes (within its timeout). */
  protected override beforeStop(): Promise<void> {
    this.halt.abort(new Error(this.stopReason));
    return Promise.resolve();
  }

  /** True when this batch's work should end: stopping, the batch stopped, or the partition moved. */
  protected stopped(control: BatchControl): boolean {
    return !control.isRunning() || control.isStale() || this.halt.signal.aborted;
  }

  /**
   * The record's value, or the decode error's code and message when it does not decode; while
   * the registry does not answer (or does not know the schema yet) it waits, heartbeating, and
   * tries again. Undefined when the work stops meanwhile ({@link stopped}).
   */
  protected async decodeWaiting<T>(
    codec: AvroCodec<T>,
    record: ConsumedRecord,
    control: BatchControl,
  ): Promise<Decoded<T>> {
    const value = record.value ?? Buffer.alloc(0);
    for (;;) {
      const decoded = await codec.decode(value);
      if (decoded.ok) return { ok: true, value: decoded.value };
      if (!decoded.error.retriable)
        return { ok: false, code: decoded.error.code, reason: decoded.error.message };
      await pauseWithHeartbeats(
        control,
        Math.random() * this.delivery.retryInitialMs,
        () => this.halt.signal.aborted,
      );
      if (this.stopped(control)) return undefined;
    }
  }

  /** The retry policy of `maxAttempts` attempts (Infinity: until done or stopping). */
  private policy(maxAttempts: number): RetryPolicy {
    return {
      maxAttempts,
      baseDelayMs: this.delivery.retryInitialMs,
      maxDelayMs: this.delivery.retryMaxMs,
    };
  }

  /** Waits between attempts, heartbeating, ending early at stop. */
  private sleeper(control: BatchControl): (ms: number) => Promise<void> {
    return (ms) => pauseWithHeartbeats(control, ms, () => this.halt.signal.aborted);
  }

  /**
   * `attempt` tried up to `maxAttempts` times while it fails with a retriable error, waiting with
   * heartbeats between attempts (`onRetry` is told of each failure tried again); no attempt
   * starts once stopping.
   *
   * @throws any other error than a refusal ({@link DeliveryError}), unchanged, when not stopping.
   */
  protected async retryDelivery<T>(
    control: BatchControl,
    attempt: (attempt: number) => Promise<T>,
    maxAttempts: number,
    onRetry: (error: Error, attempt: number, waitMs: number) => void,
  ): Promise<DeliveryResult<T>> {
    try {
      const value = await retry(attempt, this.policy(maxAttempts), {
        signal: this.halt.signal,
        sleep: this.sleeper(control),
        onRetry,
      });
      return { kind: "done", value };
    } catch (error) {
      if (this.halt.signal.aborted || !control.isRunning()) return { kind: "stopped" };
      if (error instanceof RetryExhaustedError) return { kind: "exhausted", error };
      // A retriable failure is tried again or ends as exhausted: one that gets here is final.
      if (error instanceof DeliveryError && !error.retriable) return { kind: "refused", error };
      throw error;
    }
  }

  /**
   * Sends dead letters, retried until they are written, and counts them under `code`; false when
   * the service stops before they are (the first attempt is made even while stopping: the
   * record in flight may still finish).
   */
  protected async sendDeadLetter(
    control: BatchControl,
    letters: readonly OutgoingRecord[],
    code: string,
  ): Promise<boolean> {
    try {
      await retry(
        () => this.startedProducer.send(this.topics.deadLetter, [...letters], "gzip"),
        {
          ...this.policy(Number.POSITIVE_INFINITY),
          shouldRetry: (error) => isRetriable(error) && !this.halt.signal.aborted,
        },
        {
          sleep: this.sleeper(control),
          onRetry: (error) => {
            this.logger.warn(
              letters.length === 1
                ? "writing a dead letter failed; retrying"
                : "writing dead letters failed; retrying",
              { error: error.message },
            );
          },
        },
      );
    } catch (error) {
      if (this.halt.signal.aborted || !control.isRunning()) return false;
      throw error;
    }
    this.deadLettered.inc(letters.length, { code });
    return true;
  }

  /** Moves the group's position past `offset`: the records up to it are finished. */
  protected async commitPast(control: BatchControl, offset: string): Promise<void> {
    control.resolveOffset(offset);
    await control.commit((BigInt(offset) + 1n).toString());
  }
}
