/**
 * The direct mode for a single replica, no Kafka: spans go straight to PostgreSQL through the
 * sink's own writer (the same upserts), and this replica's calls go through the processor's
 * state machine ({@link LocalDriver}: tumbling windows, grace, the late rule, the AlertTracker),
 * with the wall clock as its ticks. Closed windows are written as rollup rows and their alert
 * transitions as alert rows; open windows are written as partial rows on every flush. A call
 * whose window has already closed is late (counted in `late`), so it never re-opens a window
 * that was written. On first connecting, the rows of the windows that may still be open are
 * read back and restored, so a restart mid-window adds to its row instead of overwriting it.
 * Buffering, batching, retries and overflow are the shared {@link BatchingExporter}'s: the host
 * never waits on the database.
 *
 * The seed's quick start — `new PostgresExporter("postgresql://…")`, no explicit flush — still
 * leaves its rows: before the process exits, anything unwritten is flushed.
 */
import type pg from "pg";

import type { AlertEvent, MetricRollup, ModelCallEvent } from "../../avro/generated.js";
import { loadConnectionConfig, windowConfigSchema } from "../../config/index.js";
import { countsTowardMetrics, MICROS_PER_MILLI, parseMetricsConfig } from "../../metrics/index.js";
import { LocalDriver } from "../../processor/driver.js";
import type { PartitionOutput, WindowSettings } from "../../processor/partition.js";
import { migrate } from "../../sink/migrate.js";
import { openPool, PostgresWriter } from "../../sink/writer.js";
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
  /**
   * Calls this long after their window was written revise it (the row is written again,
   * complete, with a higher revision), ms (default: the processor's, 3 600 000; 0: they are
   * late). Windows written before the process started are not revised.
   */
  readonly allowedLatenessMs?: number;
  /** Thresholds and alert rules (see metrics/README.md). */
  readonly metrics?: unknown;
  /** Apply the schema migrations on first use (default true). */
  readonly migrate?: boolean;
  readonly logger?: Logger;
  /** Wall clock in ms (injectable for tests). */
  readonly now?: () => number;
}

export class PostgresExporter extends BatchingExporter {
  private readonly databaseUrl: string;
  private readonly settings: WindowSettings;
  private readonly migrateFirst: boolean;
  private readonly now: () => number;
  /** The wall clock at construction, µs: where the restored state's event time starts. */
  private readonly startedMicros: number;
  private pool: pg.Pool | undefined;
  private writer: PostgresWriter | undefined;
  private migrated = false;
  /** The state machine; created once the open windows are read back (first connection). */
  private driver: LocalDriver | undefined;
  /** Calls accepted before the state was restored: fed to it, in order, once it is. */
  private readonly unrestored: ModelCallEvent[] = [];
  private readonly pendingRollups: MetricRollup[] = [];
  private readonly pendingAlerts: AlertEvent[] = [];
  /** Changes to open windows: `written` is the count their partial rows were last written at. */
  private changes = 0;
  private written = 0;
  private readonly closeTimer: NodeJS.Timeout;
  private readonly beforeExit = (): void => {
    if (
      !this.closing &&
      (this.stats().buffered > 0 || this.changes !== this.written || this.hasPendingWork())
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
    const metrics = parseMetricsConfig(settings.metrics ?? {}, "metrics");
    this.settings = {
      windowSizeMicros:
        positiveInt("windowSizeMs", settings.windowSizeMs, defaults.windowSizeMs) *
        MICROS_PER_MILLI,
      graceMicros: (settings.graceMs ?? defaults.graceMs) * MICROS_PER_MILLI,
      allowedLatenessMicros:
        (settings.allowedLatenessMs ?? defaults.allowedLatenessMs) * MICROS_PER_MILLI,
      thresholds: metrics.thresholds,
      rules: metrics.rules,
    };
    this.migrateFirst = settings.migrate ?? true;
    this.now = settings.now ?? Date.now;
    this.startedMicros = Math.round(this.now() * MICROS_PER_MILLI);
    // Windows close with time even when no calls come: tick the state machine now and then.
    this.closeTimer = setInterval(
      () => {
        this.tick();
        if (this.pendingRollups.length > 0 || this.pendingAlerts.length > 0) this.schedule();
      },
      Math.min(10_000, this.settings.windowSizeMicros / MICROS_PER_MILLI),
    );
    this.closeTimer.unref();
    process.on("beforeExit", this.beforeExit);
  }

  protected override accepted(event: ModelCallEvent): void {
    if (!this.driver) {
      // Not restored yet: the call waits (as its span does in the buffer, of the same bound).
      this.unrestored.push(event);
      if (this.unrestored.length > this.maxQueueSize) this.unrestored.shift();
      return;
    }
    this.take(this.driver.record(event));
    if (countsTowardMetrics(event)) this.changes++;
  }

  protected override hasPendingWork(): boolean {
    this.tick();
    return (
      this.pendingRollups.length > 0 ||
      this.pendingAlerts.length > 0 ||
      (this.flushing && this.changes !== this.written)
    );
  }

  protected async deliver(batch: readonly ModelCallEvent[]): Promise<number> {
    const { writer, driver } = await this.ready();
    this.tick();
    // On a flush, open windows go out as partial rows too (upserted again when they close).
    const snapshotAt = this.changes;
    const partial = this.flushing && snapshotAt !== this.written ? driver.openRollups() : [];
    const rollups = this.pendingRollups.length;
    const alerts = this.pendingAlerts.length;
    await writer.write({
      spans: batch.map((event) => ({ event })),
      rollups: [...this.pendingRollups, ...partial],
      alerts: [...this.pendingAlerts],
    });
    // What closed while the write was under way stays pending.
    this.pendingRollups.splice(0, rollups);
    this.pendingAlerts.splice(0, alerts);
    if (this.flushing) this.written = snapshotAt;
    return 0;
  }

  protected async release(): Promise<void> {
    clearInterval(this.closeTimer);
    process.off("beforeExit", this.beforeExit);
    // Whatever is still open is final now.
    if (this.driver) this.take(this.driver.flush());
    if ((this.pendingRollups.length > 0 || this.pendingAlerts.length > 0) && this.writer) {
      await this.writer.write({ rollups: this.pendingRollups, alerts: this.pendingAlerts });
      this.pendingRollups.length = 0;
      this.pendingAlerts.length = 0;
    }
    await this.pool?.end();
  }

  /**
   * Connects (migrating first, once), and on the first connection restores the state machine:
   * the rows of the windows that may still be open — ending after the start's watermark minus a
   * window — are read back as its open windows, and the calls accepted meanwhile are fed to it.
   */
  private async ready(): Promise<{ writer: PostgresWriter; driver: LocalDriver }> {
    if (this.migrateFirst && !this.migrated) {
      await migrate(this.databaseUrl);
      this.migrated = true;
    }
    if (!this.pool) {
      // A connection that breaks must not crash the host.
      this.pool = openPool(this.databaseUrl, {
        max: 2,
        onLost: (error) => {
          this.logger.warn("postgres connection lost", { error: error.message });
        },
      });
      this.writer = new PostgresWriter(this.pool);
    }
    const writer = this.writer as PostgresWriter;
    if (!this.driver) {
      const { windowSizeMicros, graceMicros } = this.settings;
      const rows = await writer.openRollups(this.startedMicros - graceMicros - windowSizeMicros);
      // Rows of another window size (written with other settings) are other windows.
      const restored = rows.filter((row) => row.window_end - row.window_start === windowSizeMicros);
      const driver = new LocalDriver(this.settings, restored, this.startedMicros);
      this.driver = driver;
      for (const event of this.unrestored.splice(0)) this.accepted(event);
    }
    return { writer, driver: this.driver };
  }

  /** The wall clock as a tick: closes the windows it passes (once the state is restored). */
  private tick(): void {
    if (this.driver) this.take(this.driver.tick(Math.round(this.now() * MICROS_PER_MILLI)));
  }

  /** Closed windows' rollups and alert transitions wait to be written. */
  private take(outputs: readonly PartitionOutput[]): void {
    for (const output of outputs)
      if (output.type === "rollup") this.pendingRollups.push(output.rollup);
      else if (output.type === "alert") this.pendingAlerts.push(output.alert);
  }
}
