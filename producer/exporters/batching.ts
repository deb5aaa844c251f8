/**
 * What every network exporter shares: a bounded buffer the host's calls drop events into, and a
 * background pump that delivers them in batches (by size, or after a linger time). A batch that
 * fails stays at the head of the buffer and is retried with exponential backoff and full jitter
 * (config's `retry`, with no limit on attempts: only the shutdown ends them), so a destination
 * that is down at start or goes down mid-stream only delays delivery. A full buffer follows the
 * overflow policy and counts its drops (one warning per overflow episode).
 * Timers are unref'd: a pending linger or backoff never keeps the process alive. A flush and the
 * shutdown do, until they settle (at the latest after their timeout): a process that awaits them
 * with nothing else to do gets their result rather than exiting with the await unsettled.
 *
 * Subclasses say how to deliver a batch ({@link BatchingExporter.deliver}) and how to let go of
 * their connections ({@link BatchingExporter.release}).
 */
import type { ModelCallEvent } from "../../avro/generated.js";
import { ConfigError, retry, type RetryPolicy } from "../../config/index.js";
import type { Logger } from "../logger.js";
import { RingQueue } from "./ring.js";
import type { EventExporter, ExporterStats, FlushResult, OverflowPolicy } from "./types.js";

/** Buffer and retry settings shared by the exporters. */
export interface BatchingOptions {
  /** Buffer capacity in events (default 10 000). */
  readonly maxQueueSize?: number;
  /** Most events per delivery (default 500). */
  readonly maxBatchSize?: number;
  /** How long a partial batch waits for more events, ms (default 20). */
  readonly lingerMs?: number;
  /** What a full buffer does (default `drop-newest`). */
  readonly overflow?: OverflowPolicy;
  /** With `block`: how long `export` waits for room before dropping, ms (default 1000). */
  readonly blockTimeoutMs?: number;
  /** Backoff between failed attempts: first delay and cap, ms (defaults 100 and 10 000). */
  readonly retryInitialMs?: number;
  readonly retryMaxMs?: number;
}

interface BlockedExport {
  readonly event: ModelCallEvent;
  readonly resolve: () => void;
  readonly timer: NodeJS.Timeout;
}

type State = "running" | "closing" | "closed";

export function positiveInt(key: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value <= 0)
    throw new ConfigError(key, `expected a positive integer (got ${value})`);
  return value;
}

export abstract class BatchingExporter implements EventExporter {
  protected readonly maxQueueSize: number;
  protected readonly maxBatchSize: number;
  private readonly lingerMs: number;
  private readonly overflow: OverflowPolicy;
  private readonly blockTimeoutMs: number;
  private readonly retryPolicy: RetryPolicy;
  /** Ends a batch's retries at shutdown. */
  private readonly stopRetrying = new AbortController();

  private readonly queue: RingQueue<ModelCallEvent>;
  private inFlight: ModelCallEvent[] = [];
  private readonly blocked: BlockedExport[] = [];
  private flushWaiters: (() => void)[] = [];

  private state: State = "running";
  private pumping = false;
  private lingerTimer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private backoffTimer: NodeJS.Timeout | undefined;
  private wakeBackoff: (() => void) | undefined;
  private overflowing = false;
  private failing = false;
  private shutdownPromise: Promise<FlushResult> | undefined;
  private counters = { sent: 0, dropped: 0, retried: 0 };

  /** @throws {ConfigError} naming the option that is invalid. */
  protected constructor(
    options: BatchingOptions,
    /** Where events go, for log lines (e.g. the topic). */
    protected readonly destination: string,
    protected readonly logger: Logger,
  ) {
    this.maxQueueSize = positiveInt("maxQueueSize", options.maxQueueSize, 10_000);
    this.maxBatchSize = positiveInt("maxBatchSize", options.maxBatchSize, 500);
    this.lingerMs = options.lingerMs ?? 20;
    if (!Number.isFinite(this.lingerMs) || this.lingerMs < 0)
      throw new ConfigError("lingerMs", `expected a non-negative number (got ${this.lingerMs})`);
    const overflow: string = options.overflow ?? "drop-newest";
    if (overflow !== "drop-newest" && overflow !== "drop-oldest" && overflow !== "block")
      throw new ConfigError(
        "overflow",
        `expected drop-newest, drop-oldest or block (got ${JSON.stringify(overflow)})`,
      );
    this.overflow = overflow;
    this.blockTimeoutMs = positiveInt("blockTimeoutMs", options.blockTimeoutMs, 1000);
    this.retryPolicy = {
      maxAttempts: Infinity,
      baseDelayMs: positiveInt("retryInitialMs", options.retryInitialMs, 100),
      maxDelayMs: positiveInt("retryMaxMs", options.retryMaxMs, 10_000),
      // Whatever the failure, the batch stays buffered and is tried again: only the shutdown
      // (the abort signal) ends its retries.
      shouldRetry: () => true,
    };
    this.queue = new RingQueue(this.maxQueueSize);
  }

  /**
   * Delivers one batch (the same array again after a failure). Resolves once the destination
   * has it; throws to have it retried. Returns how many of its events were dropped as
   * undeliverable (e.g. unencodable), which are not retried.
   */
  protected abstract deliver(batch: readonly ModelCallEvent[]): Promise<number>;

  /** Releases connections at shutdown, after the last delivery. */
  protected abstract release(): Promise<void>;

  /** Called once per failure episode, with the error; the batch stays buffered. */
  protected onFailure(_error: unknown): void {
    // Nothing by default.
  }

  /** Whether the subclass has work of its own waiting (e.g. rollups), so flush must run. */
  protected hasPendingWork(): boolean {
    return false;
  }

  export(event: ModelCallEvent): void | Promise<void> {
    if (this.state !== "running") {
      this.drop(1, "the exporter is shut down");
      return;
    }
    if (this.bufferedEvents() >= this.maxQueueSize) {
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
    this.accepted(event);
    this.schedule();
  }

  /** Called for every event that entered the buffer. */
  protected accepted(_event: ModelCallEvent): void {
    // Nothing by default.
  }

  flush(timeoutMs = 30_000): Promise<FlushResult> {
    if (this.bufferedEvents() === 0 && !this.hasPendingWork())
      return Promise.resolve({ complete: true, remaining: 0 });
    return new Promise((resolve) => {
      let settled = false;
      // Not unref'd: the flush keeps the process alive until it settles (the timer is cleared
      // as soon as it does).
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        this.flushWaiters = this.flushWaiters.filter((waiter) => waiter !== done);
        resolve({ complete: false, remaining: this.bufferedEvents() });
      }, timeoutMs);
      const done = (): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({ complete: this.bufferedEvents() === 0, remaining: this.bufferedEvents() });
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
    return { ...this.counters, buffered: this.bufferedEvents() };
  }

  /** True while a flush or the shutdown waits: partial work should go out now. */
  protected get flushing(): boolean {
    return this.flushWaiters.length > 0 || this.state !== "running";
  }

  protected get closing(): boolean {
    return this.state !== "running";
  }

  private async close(timeoutMs: number): Promise<FlushResult> {
    // The buffer's own timers are unref'd, and releasing connections may wait on promises alone:
    // this interval keeps the process alive until the shutdown settles.
    const keepAlive = setInterval(() => undefined, 1000);
    try {
      return await this.closeBuffer(timeoutMs);
    } finally {
      clearInterval(keepAlive);
    }
  }

  private async closeBuffer(timeoutMs: number): Promise<FlushResult> {
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
      this.stopRetrying.abort();
      this.clearTimers();
      const lost = this.bufferedEvents();
      if (lost > 0) {
        this.counters.dropped += lost;
        this.logger.warn("events not delivered at shutdown", {
          lost,
          destination: this.destination,
        });
        this.queue.take(lost);
        this.inFlight = [];
      }
      try {
        await this.release();
      } catch (error) {
        this.logger.warn("releasing the exporter's connections failed", { error: String(error) });
      }
      this.resolveFlushWaiters();
    }
    return result;
  }

  /** Read through a method: the state changes while a pump awaits. */
  private isClosed(): boolean {
    return this.state === "closed";
  }

  private bufferedEvents(): number {
    return this.queue.length + this.inFlight.length;
  }

  private drop(count: number, reason: string): void {
    this.counters.dropped += count;
    if (!this.overflowing) {
      this.overflowing = true;
      this.logger.warn("dropping events", {
        reason,
        destination: this.destination,
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
    while (this.blocked.length > 0 && this.bufferedEvents() < this.maxQueueSize) {
      const next = this.blocked.shift();
      if (!next) break;
      clearTimeout(next.timer);
      this.queue.push(next.event);
      this.accepted(next.event);
      next.resolve();
    }
  }

  protected schedule(): void {
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

  /**
   * Sends now: cuts a linger or a backoff short. The pump starts right away rather than from an
   * unref'd timer, so a flush keeps the process alive until it is done (e.g. from `beforeExit`).
   */
  private wake(): void {
    if (this.wakeBackoff) {
      this.wakeBackoff();
      return;
    }
    this.cancelLinger();
    void this.pump();
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
    if (this.pumping || this.isClosed()) return;
    this.pumping = true;
    try {
      while ((this.bufferedEvents() > 0 || this.hasPendingWork()) && !this.isClosed()) {
        let lingering: boolean;
        try {
          lingering = await retry(() => this.deliverNext(), this.retryPolicy, {
            signal: this.stopRetrying.signal,
            sleep: (ms) => this.backoff(ms),
            onRetry: (error) => {
              this.failed(error);
            },
          });
        } catch {
          // Shut down while retrying: the events left are counted as lost there.
          break;
        }
        if (lingering) break;
      }
    } finally {
      this.pumping = false;
    }
    if (this.bufferedEvents() > 0 && !this.isClosed()) this.schedule();
  }

  /**
   * Delivers the batch in flight (the next one when there is none) and settles its accounts.
   * Resolves true when a partial batch should now wait for its linger.
   */
  private async deliverNext(): Promise<boolean> {
    if (this.inFlight.length === 0) this.inFlight = this.queue.take(this.maxBatchSize);
    const undeliverable = await this.deliver(this.inFlight);
    this.counters.sent += this.inFlight.length - undeliverable;
    this.counters.dropped += undeliverable;
    this.inFlight = [];
    if (this.failing) {
      this.failing = false;
      this.logger.warn("delivering again", {
        destination: this.destination,
        buffered: this.bufferedEvents(),
      });
    }
    this.admitBlocked();
    if (this.bufferedEvents() === 0 && !this.hasPendingWork()) this.resolveFlushWaiters();
    // A partial batch waits for its linger unless someone is waiting for it.
    return this.queue.length < this.maxBatchSize && !this.flushing && this.lingerMs > 0;
  }

  /** A delivery failed: counted, warned about once per failure episode; the batch stays. */
  private failed(error: Error): void {
    this.counters.retried++;
    if (!this.failing) {
      this.failing = true;
      this.logger.warn("delivery failed; events stay buffered and are retried", {
        destination: this.destination,
        buffered: this.bufferedEvents(),
        error: error.message,
      });
    }
    this.onFailure(error);
  }

  /**
   * The retries' wait (the delay comes from {@link retry}'s backoff): an unref'd timer that a
   * flush or the shutdown cuts short.
   */
  private backoff(delay: number): Promise<void> {
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
