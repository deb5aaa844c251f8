import type { MetricRollup, MetricThresholds, ModelCallEvent } from "../avro/generated.js";
import {
  merge,
  MICROS_PER_MILLI,
  ServiceWindows,
  WindowAccumulator,
  type AlertRule,
} from "../metrics/index.js";
import { LocalDriver } from "../processor/driver.js";
import { DEFAULT_WINDOW_SETTINGS } from "../processor/partition.js";

/**
 * This replica's own metrics and alerts, with the same accumulators, derived rates and rules as
 * the processor.
 *
 * - The snapshot is a rolling window: calls land in small tumbling buckets (by `end_time`), and a
 *   snapshot merges the buckets that overlap the last `rollingWindowMs`.
 * - Alerts come from the processor's own state machine ({@link LocalDriver}): tumbling windows of
 *   the processor's size and grace, closed by the wall clock, transitions from the AlertTracker.
 *   The active alerts are the incidents firing once the open windows close as they stand, so a
 *   replica reports what the processor reports for the same calls when it closes those windows.
 */
export class LocalMetrics {
  private readonly windows: ServiceWindows;
  private readonly bucketMicros: number;
  private readonly rollingMicros: number;
  private readonly driver: LocalDriver;

  constructor(
    readonly service: string,
    readonly thresholds: MetricThresholds,
    readonly rules: readonly AlertRule[],
    /** The rolling window, ms. */
    readonly rollingWindowMs: number,
    /** Bucket size, ms: the snapshot's time resolution. */
    readonly bucketMs: number,
  ) {
    this.bucketMicros = bucketMs * MICROS_PER_MILLI;
    this.rollingMicros = rollingWindowMs * MICROS_PER_MILLI;
    this.windows = new ServiceWindows(service, this.bucketMicros, thresholds);
    this.driver = new LocalDriver({ ...DEFAULT_WINDOW_SETTINGS, thresholds, rules });
  }

  /**
   * Adds a call recorded at `nowMs` (wall clock); one the skew rule refuses, or one that would
   * take a sum of its bucket past 2^63 − 1, changes nothing.
   */
  record(event: ModelCallEvent, nowMs: number = Date.now()): void {
    if (this.driver.record(event, nowMs).rejected) return;
    if (this.windows.overflow(event) === undefined) this.windows.add(event);
  }

  /** A rollup of the rolling window ending at `nowMicros` (its window is the covered span). */
  rollup(nowMicros: number): MetricRollup {
    const oldest = nowMicros - this.rollingMicros;
    let total = new WindowAccumulator(this.thresholds);
    for (const start of this.windows.windowStarts()) {
      if (start + this.bucketMicros <= oldest) {
        this.windows.close(start);
        continue;
      }
      const bucket = this.windows.peek(start, null);
      if (bucket) total = merge(total, bucket);
    }
    return total.toRollup(this.service, null, {
      start: Math.max(0, oldest),
      end: Math.max(1, nowMicros),
    });
  }

  /**
   * Keys of the rules whose incidents are firing for this service at `nowMicros` (the windows it
   * passes closed, the open ones judged as they stand), in rule order.
   */
  activeAlerts(nowMicros: number): string[] {
    this.driver.tick(nowMicros);
    const firing = new Set(this.driver.firingOnceClosed(this.service).map((alert) => alert.rule));
    return this.rules.filter((rule) => firing.has(rule.key)).map((rule) => rule.key);
  }
}
