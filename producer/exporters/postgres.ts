/**
 * The direct mode for a single replica, no Kafka: spans go straight to PostgreSQL through the
 * sink's own writer (the same upserts), and this replica's calls are rolled up with the metrics
 * core into tumbling windows (by wall-clock event time), written as rollup rows when a window
 * closes (its end plus grace has passed) and, as a partial row, on every flush. Buffering,
 * batching, retries and overflow are the shared {@link BatchingExporter}'s: the host never
 * waits on the database.
 *
 * The seed's quick start — `new PostgresExporter("postgresql://…")`, no explicit flush — still
 * leaves its rows: before the process exits, anything unwritten is flushed.
 */
import pg from "pg";

import type { MetricRollup, ModelCallEvent } from "../../avro/generated.js";
import { loadConnectionConfig, windowConfigSchema } from "../../config/index.js";
import { MICROS_PER_MILLI, parseMetricsConfig, ServiceWindows } from "../../metrics/index.js";
import { migrate } from "../../sink/migrate.js";
import { PostgresWriter } from "../../sink/writer.js";
import { stderrLogger, type Logger } from "../logger.js";
import { BatchingExporter, positiveInt, type BatchingOptions } from "./batching.js";

/** Options of {@link PostgresExporter}. */
export interface PostgresExporterOptions extends BatchingOptions {
  /** Default `DATABASE_URL`, then the local stack's. */
  readonly databaseUrl?: string;
  /** Rollup window, ms (default: the processor's, 60 000). */
  readonly windowSizeMs?: number;
  /** A window is written as final this long after its end, ms (default: the processor's grace, 10 000). */
  readonly graceMs?: number;
  /** Thresholds (see metrics/README.md). */
  readonly metrics?: unknown;
  /** Apply the schema migrations on first use (default true). */
  readonly migrate?: boolean;
  readonly logger?: Logger;
  /** Wall clock in ms (injectable for tests). */
  readonly now?: () => number;
}

export class PostgresExporter extends BatchingExporter {
  private readonly databaseUrl: string;
  private readonly windowSizeMicros: number;
  private readonly graceMicros: number;
  private readonly thresholds: ReturnType<typeof parseMetricsConfig>["thresholds"];
  private readonly migrateFirst: boolean;
  private readonly now: () => number;
  private pool: pg.Pool | undefined;
  private writer: PostgresWriter | undefined;
  private migrated = false;
  private readonly windows = new Map<string, ServiceWindows>();
  private pendingRollups: MetricRollup[] = [];
  /** Changes to open windows: `written` is the count their partial rows were last written at. */
  private changes = 0;
  private written = 0;
  private readonly closeTimer: NodeJS.Timeout;
  private readonly beforeExit = (): void => {
    if (
      !this.closing &&
      (this.stats().buffered > 0 || this.changes !== this.written || this.pendingRollups.length > 0)
    )
      void this.flush();
  };

  /**
   * @param options a connection string (the seed's form) or options.
   * @throws {ConfigError} naming the option or variable that is invalid.
   */
  constructor(options: string | PostgresExporterOptions = {}) {
    const settings: PostgresExporterOptions =
      typeof options === "string" ? { databaseUrl: options } : options;
    const connection = loadConnectionConfig(
      settings.databaseUrl === undefined ? {} : { databaseUrl: settings.databaseUrl },
    );
    super(
      { maxBatchSize: 1000, lingerMs: 50, ...settings },
      "postgres spans",
      settings.logger ?? stderrLogger,
    );
    this.databaseUrl = connection.databaseUrl;
    const defaults = windowConfigSchema.parse({});
    this.windowSizeMicros =
      positiveInt("windowSizeMs", settings.windowSizeMs, defaults.windowSizeMs) * MICROS_PER_MILLI;
    this.graceMicros = (settings.graceMs ?? defaults.graceMs) * MICROS_PER_MILLI;
    this.thresholds = parseMetricsConfig(settings.metrics ?? {}, "metrics").thresholds;
    this.migrateFirst = settings.migrate ?? true;
    this.now = settings.now ?? Date.now;
    // Windows close with time even when no calls come: look now and then.
    this.closeTimer = setInterval(
      () => {
        if (this.hasDueWindows()) this.schedule();
      },
      Math.min(10_000, this.windowSizeMicros / MICROS_PER_MILLI),
    );
    this.closeTimer.unref();
    process.on("beforeExit", this.beforeExit);
  }

  protected override accepted(event: ModelCallEvent): void {
    let windows = this.windows.get(event.service);
    if (!windows) {
      windows = new ServiceWindows(event.service, this.windowSizeMicros, this.thresholds);
      this.windows.set(event.service, windows);
    }
    if (windows.add(event)) this.changes++;
  }

  protected override hasPendingWork(): boolean {
    return (
      this.pendingRollups.length > 0 ||
      this.hasDueWindows() ||
      (this.flushing && this.changes !== this.written)
    );
  }

  protected async deliver(batch: readonly ModelCallEvent[]): Promise<number> {
    const writer = await this.ready();
    this.closeDueWindows(this.closing);
    // On a flush, open windows go out as partial rows too (upserted again when they close).
    const snapshotAt = this.changes;
    const partial = this.flushing && snapshotAt !== this.written ? this.openRollups() : [];
    const closed = this.pendingRollups;
    await writer.write({
      spans: batch.map((event) => ({ event })),
      rollups: [...closed, ...partial],
    });
    this.pendingRollups = this.pendingRollups.filter((rollup) => !closed.includes(rollup));
    if (this.flushing) this.written = snapshotAt;
    return 0;
  }

  protected async release(): Promise<void> {
    clearInterval(this.closeTimer);
    process.off("beforeExit", this.beforeExit);
    // Whatever is still open is final now.
    this.closeDueWindows(true);
    if (this.pendingRollups.length > 0 && this.writer) {
      await this.writer.write({ rollups: this.pendingRollups });
      this.pendingRollups = [];
    }
    await this.pool?.end();
  }

  private async ready(): Promise<PostgresWriter> {
    if (this.migrateFirst && !this.migrated) {
      await migrate(this.databaseUrl);
      this.migrated = true;
    }
    if (!this.pool) {
      this.pool = new pg.Pool({
        connectionString: this.databaseUrl,
        max: 2,
        connectionTimeoutMillis: 5000,
      });
      // An idle client that loses its connection must not crash the host.
      this.pool.on("error", (error) => {
        this.logger.warn("postgres connection lost", { error: error.message });
      });
      this.writer = new PostgresWriter(this.pool);
    }
    return this.writer as PostgresWriter;
  }

  private hasDueWindows(): boolean {
    const horizon = this.now() * MICROS_PER_MILLI - this.graceMicros;
    for (const windows of this.windows.values())
      for (const start of windows.windowStarts())
        if (start + this.windowSizeMicros <= horizon) return true;
    return false;
  }

  private closeDueWindows(all: boolean): void {
    const horizon = all
      ? Number.POSITIVE_INFINITY
      : this.now() * MICROS_PER_MILLI - this.graceMicros;
    for (const windows of this.windows.values())
      for (const start of windows.windowStarts())
        if (start + this.windowSizeMicros <= horizon)
          this.pendingRollups.push(...windows.close(start));
  }

  private openRollups(): MetricRollup[] {
    return [...this.windows.values()].flatMap((windows) => windows.openRollups());
  }
}
