import type { MetricRollup, MetricThresholds, ModelCallEvent } from "../avro/generated.js";
import {
  evaluateRule,
  merge,
  MICROS_PER_MILLI,
  ServiceWindows,
  WindowAccumulator,
  type AlertRule,
} from "../metrics/index.js";

/**
 * This replica's own metrics over a rolling window, with the same accumulators, derived rates and
 * rules as the processor: calls land in small tumbling buckets (by `end_time`), and a snapshot
 * merges the buckets that overlap the last `rollingWindowMs`.
 */
export class LocalMetrics {
  private readonly windows: ServiceWindows;
  private readonly bucketMicros: number;
  private readonly rollingMicros: number;

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
  }

  record(event: ModelCallEvent): void {
    this.windows.add(event);
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

  /** Keys of the rules that breach over the rolling window, in rule order. */
  activeAlerts(rollup: MetricRollup): string[] {
    return this.rules
      .filter((rule) => evaluateRule(rule, rollup).verdict === "breach")
      .map((rule) => rule.key);
  }
}
