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
 * never waits on the database. A row PostgreSQL refuses for what it holds (SQLSTATE classes 21,
 * 22, 23, 54: a NUL, a character the database's encoding lacks, a name over the index limit) is
 * isolated by bisecting the batch and dropped — a call's span counted in `dropped`, a rollup or
 * alert row in {@link PostgresExporter.refusedRows} — and logged once per table and SQLSTATE;
 * the rest of the batch is written, and nothing is retried for ever at the head of the buffer.
 *
 * The seed's quick start — `new PostgresExporter("postgresql://…")`, no explicit flush — still
 * leaves its rows: before the process exits, anything unwritten is flushed.
 */
import type pg from "pg";

import { redactingLogger } from "../../config/errors.js";
import type { AlertEvent, MetricRollup, ModelCallEvent } from "../../avro/generated.js";
import { loadConnectionConfig, windowConfigSchema } from "../../config/index.js";
import { countsTowardMetrics, MICROS_PER_MILLI, parseMetricsConfig } from "../../metrics/index.js";
import { LocalDriver } from "../../processor/driver.js";
import type { TimeBounds } from "../../processor/log-record.js";
import type { PartitionOutput, WindowSettings } from "../../processor/partition.js";
import { migrate } from "../../sink/migrate.js";
import { writeIsolating } from "../../sink/isolate.js";
import { openPool, PostgresWriter } from "../../sink/writer.js";
import { stderrLogger, type Logger } from "../logger.js";
import { BatchingExporter, positiveInt, type BatchingOptions } from "./batching.js";

/** A row of a direct write: a call's span, a rollup or an alert transition. */
type DirectRow =
  | { readonly table: "spans"; readonly event: ModelCallEvent }
  | { readonly table: "metric_rollups"; readonly rollup: MetricRollup }
  | { readonly table: "alerts"; readonly alert: AlertEvent };

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
  /**
   * Models of a service with a row of their own per window (default: the processor's, 200): the
   * first seen in the window; the calls of further models go to the window's overflow row
   * (scope 'other').
   */
  readonly maxModelsPerWindow?: number;
  /**
   * A call that ends more than this after the wall clock when it is recorded (a host clock that
   * is wrong) is not counted in the rollups, ms (default: the processor's, 300 000). Its span is
   * written.
   */
  readonly maxClockSkewMs?: number;
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
  private readonly bounds: TimeBounds;
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
  /** Rows PostgreSQL refused, by table (spans are counted as dropped events). */
  private readonly refused = { rollups: 0, alerts: 0, clockSkew: 0, sumOverflow: 0 };
  /** `table|SQLSTATE` of the refusals logged already (each kind once). */
  private readonly refusedKinds = new Set<string>();
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
      redactingLogger(settings.logger ?? stderrLogger),
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
      maxModelsPerWindow: positiveInt(
        "maxModelsPerWindow",
        settings.maxModelsPerWindow,
        defaults.maxModelsPerWindow,
      ),
      thresholds: metrics.thresholds,
      rules: metrics.rules,
    };
    this.bounds = {
      maxClockSkewMicros:
        positiveInt("maxClockSkewMs", settings.maxClockSkewMs, defaults.maxClockSkewMs) *
        MICROS_PER_MILLI,
      maxEventAgeMicros: 0,
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
    const { outputs, rejected } = this.driver.record(event, this.now());
    if (rejected) {
      // The span is written (it is what happened, as the host saw it); the windows skip it.
      this.refused.clockSkew++;
      if (!this.refusedKinds.has(rejected.code)) {
        this.refusedKinds.add(rejected.code);
        this.logger.warn(
          `a call's time is out of bounds of the wall clock (${rejected.code}): not counted in the rollups (further ones counted in refusedRows().clockSkew, not logged)`,
          { service: event.service, reason: rejected.message },
        );
      }
      return;
    }
    this.take(outputs);
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
    const refusedSpans = await this.writeIsolated(writer, {
      spans: batch,
      rollups: [...this.pendingRollups, ...partial],
      alerts: [...this.pendingAlerts],
    });
    // What closed while the write was under way stays pending.
    this.pendingRollups.splice(0, rollups);
    this.pendingAlerts.splice(0, alerts);
    if (this.flushing) this.written = snapshotAt;
    return refusedSpans;
  }

  /**
   * Rollup and alert rows PostgreSQL refused, since start (their calls' spans count in
   * `dropped`), and calls the windows refused because they end more than the processor's
   * `maxClockSkewMs` after the wall clock when they were recorded, or because a sum of their
   * window would pass 2^63 − 1 (`sumOverflow`; their spans are written).
   */
  refusedRows(): {
    readonly rollups: number;
    readonly alerts: number;
    readonly clockSkew: number;
    readonly sumOverflow: number;
  } {
    return { ...this.refused };
  }

  /**
   * Writes spans, rollups and alerts in one transaction; rows PostgreSQL refuses for what they
   * hold (a NUL, a character the database's encoding lacks, a name over the index limit…) are
   * isolated by bisecting and dropped, the rest written: a refused row never holds up the buffer.
   * Each kind of refusal (SQLSTATE) is logged once, without the row's content. Any other failure
   * is thrown, for the batch to be retried.
   *
   * @returns how many spans were refused (dropped).
   */
  private async writeIsolated(
    writer: PostgresWriter,
    batch: {
      readonly spans: readonly ModelCallEvent[];
      readonly rollups: readonly MetricRollup[];
      readonly alerts: readonly AlertEvent[];
    },
  ): Promise<number> {
    const rows: DirectRow[] = [
      ...batch.spans.map((event): DirectRow => ({ table: "spans", event })),
      ...batch.rollups.map((rollup): DirectRow => ({ table: "metric_rollups", rollup })),
      ...batch.alerts.map((alert): DirectRow => ({ table: "alerts", alert })),
    ];
    const rejected = await writeIsolating(rows, {
      write: async (chunk) => {
        await writer.write({
          spans: chunk.flatMap((row) => (row.table === "spans" ? [{ event: row.event }] : [])),
          rollups: chunk.flatMap((row) => (row.table === "metric_rollups" ? [row.rollup] : [])),
          alerts: chunk.flatMap((row) => (row.table === "alerts" ? [row.alert] : [])),
        });
      },
      reject: (row, _index, rejection) => {
        const kind = `${row.table}|${rejection.sqlstate}`;
        if (!this.refusedKinds.has(kind)) {
          this.refusedKinds.add(kind);
          this.logger.warn(
            "PostgreSQL refused a row; dropping it (logged once per table and SQLSTATE)",
            {
              table: row.table,
              sqlstate: rejection.sqlstate,
              reason: rejection.message.slice(0, 300),
            },
          );
        }
        return Promise.resolve();
      },
    });
    let spans = 0;
    for (const { item } of rejected)
      if (item.table === "spans") spans++;
      else if (item.table === "metric_rollups") this.refused.rollups++;
      else this.refused.alerts++;
    return spans;
  }

  protected async release(): Promise<void> {
    clearInterval(this.closeTimer);
    process.off("beforeExit", this.beforeExit);
    // Whatever is still open is final now.
    if (this.driver) this.take(this.driver.flush());
    if ((this.pendingRollups.length > 0 || this.pendingAlerts.length > 0) && this.writer) {
      await this.writeIsolated(this.writer, {
        spans: [],
        rollups: this.pendingRollups,
        alerts: this.pendingAlerts,
      });
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
      const driver = new LocalDriver(this.settings, restored, this.startedMicros, this.bounds);
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
      else if (output.type === "overflow") {
        // The span is written; the windows skip the call (as the processor dead-letters it).
        if (this.refused.sumOverflow++ === 0)
          this.logger.warn(
            "a call would take a window's sum past 2^63 - 1: not counted in the rollups (further ones counted in refusedRows().sumOverflow, not logged)",
            { service: output.event.service, reason: output.reason },
          );
      }
  }
}
