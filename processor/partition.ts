/**
 * The deterministic heart of the processor: the state of one input partition, as a pure function
 * of the records read from it, in offset order. No clocks, no I/O: the same records give the same
 * outputs, and a snapshot taken after any record, restored and fed the rest, gives the outputs an
 * uninterrupted run gives from there on.
 *
 * - Event time is `end_time`; windows are tumbling, aligned to the epoch.
 * - The watermark is the largest event time seen minus the grace period. A window closes once,
 *   final, when the watermark reaches its end: its rollups (service total, then each model) are
 *   emitted and the alert rules judge the service total.
 * - An event whose window the watermark has already passed is late: it is counted in the `late`
 *   count of the window where the watermark now is (for its service and model), and forwarded to
 *   the late-events topic; it is in no other count.
 * - A watermark tick (a control record in the log, written when a partition was idle) advances
 *   event time without an event, so idle windows close in replays exactly as they did live.
 */
import { defer, map, type OperatorFunction } from "rxjs";

import type {
  AlertEvent,
  MetricRollup,
  MetricThresholds,
  ModelCallEvent,
} from "../avro/generated.js";
import {
  AlertTracker,
  countsTowardMetrics,
  DEFAULT_ALERT_RULES,
  DEFAULT_THRESHOLDS,
  ServiceWindows,
  windowOf,
  type AlertRule,
  type AlertTrackerState,
} from "../metrics/index.js";

/** Window settings, in microseconds. */
export interface WindowSettings {
  readonly windowSizeMicros: number;
  readonly graceMicros: number;
  readonly thresholds: MetricThresholds;
  readonly rules: readonly AlertRule[];
}

export const DEFAULT_WINDOW_SETTINGS: WindowSettings = Object.freeze({
  windowSizeMicros: 60_000_000,
  graceMicros: 10_000_000,
  thresholds: DEFAULT_THRESHOLDS,
  rules: DEFAULT_ALERT_RULES,
});

/** What a partition's state machine is fed, in offset order. */
export type PartitionInput =
  | { readonly type: "event"; readonly event: ModelCallEvent }
  | { readonly type: "tick"; readonly eventTimeMicros: number }
  | { readonly type: "flush" };

/** What it emits. */
export type PartitionOutput =
  | { readonly type: "rollup"; readonly rollup: MetricRollup }
  | { readonly type: "alert"; readonly alert: AlertEvent }
  | { readonly type: "late"; readonly event: ModelCallEvent; readonly watermarkMicros: number };

/** Plain data: everything needed to continue exactly where the state was. */
export interface PartitionSnapshot {
  readonly version: 1;
  readonly maxEventTimeMicros: number | null;
  /** Open windows, as rollups of what they hold so far. */
  readonly windows: readonly MetricRollup[];
  readonly alerts: AlertTrackerState;
}

export class PartitionState {
  private readonly services = new Map<string, ServiceWindows>();
  private readonly alerts: AlertTracker;
  private maxEventTime: number | null = null;

  constructor(
    readonly settings: WindowSettings = DEFAULT_WINDOW_SETTINGS,
    snapshot?: PartitionSnapshot,
  ) {
    this.alerts = new AlertTracker(settings.rules, snapshot?.alerts);
    if (snapshot) {
      this.maxEventTime = snapshot.maxEventTimeMicros;
      for (const rollup of snapshot.windows) this.windowsOf(rollup.service).restore(rollup);
    }
  }

  /** Largest event time seen minus the grace period; null before the first record. */
  get watermarkMicros(): number | null {
    return this.maxEventTime === null ? null : this.maxEventTime - this.settings.graceMicros;
  }

  /** How many (service, model, window) accumulators are open. */
  get openSeries(): number {
    let count = 0;
    for (const windows of this.services.values()) count += windows.openCount();
    return count;
  }

  apply(input: PartitionInput): PartitionOutput[] {
    switch (input.type) {
      case "event":
        return this.accept(input.event);
      case "tick":
        return this.advance(input.eventTimeMicros);
      case "flush":
        return this.closeThrough(Number.POSITIVE_INFINITY);
    }
  }

  /** Counts an event (or marks it late), then closes what the new watermark passes. */
  accept(event: ModelCallEvent): PartitionOutput[] {
    const outputs: PartitionOutput[] = [];
    const watermark = this.watermarkMicros;
    if (countsTowardMetrics(event)) {
      const window = windowOf(event.end_time, this.settings.windowSizeMicros);
      if (watermark !== null && window.end <= watermark) {
        const current = windowOf(watermark, this.settings.windowSizeMicros);
        this.windowsOf(event.service).addLate(current.start, event.model);
        outputs.push({ type: "late", event, watermarkMicros: watermark });
      } else {
        this.windowsOf(event.service).add(event);
      }
    }
    outputs.push(...this.advance(event.end_time));
    return outputs;
  }

  /** Moves event time forward (never back) and closes the windows the watermark passes. */
  advance(eventTimeMicros: number): PartitionOutput[] {
    if (this.maxEventTime !== null && eventTimeMicros <= this.maxEventTime) return [];
    this.maxEventTime = eventTimeMicros;
    return this.closeThrough(eventTimeMicros - this.settings.graceMicros);
  }

  /**
   * Closes every window whose end is at or before `watermark`, oldest first, services in name
   * order; emits each window's rollups and the alert transitions of its service total.
   */
  private closeThrough(watermark: number): PartitionOutput[] {
    const due: { start: number; service: string }[] = [];
    for (const [service, windows] of this.services)
      for (const start of windows.windowStarts())
        if (start + this.settings.windowSizeMicros <= watermark) due.push({ start, service });
    if (due.length === 0) return [];
    due.sort(
      (a, b) => a.start - b.start || (a.service < b.service ? -1 : a.service > b.service ? 1 : 0),
    );
    const outputs: PartitionOutput[] = [];
    for (const { start, service } of due) {
      const rollups = this.windowsOf(service).close(start);
      for (const rollup of rollups) outputs.push({ type: "rollup", rollup });
      const total = rollups.find((rollup) => rollup.model === null);
      if (total)
        for (const alert of this.alerts.observe(total)) outputs.push({ type: "alert", alert });
    }
    return outputs;
  }

  /** The state as plain data (JSON-safe). */
  snapshot(): PartitionSnapshot {
    const windows: MetricRollup[] = [];
    for (const service of [...this.services.keys()].sort())
      windows.push(...(this.services.get(service)?.openRollups() ?? []));
    return {
      version: 1,
      maxEventTimeMicros: this.maxEventTime,
      windows,
      alerts: this.alerts.snapshot(),
    };
  }

  private windowsOf(service: string): ServiceWindows {
    let windows = this.services.get(service);
    if (!windows) {
      windows = new ServiceWindows(
        service,
        this.settings.windowSizeMicros,
        this.settings.thresholds,
      );
      this.services.set(service, windows);
    }
    return windows;
  }
}

/**
 * The partition's windows as an RxJS operator: each input becomes the outputs it causes (often
 * none). Each subscription gets its own state, starting from `snapshot` when given.
 */
export function eventTimeWindows(
  settings: WindowSettings = DEFAULT_WINDOW_SETTINGS,
  snapshot?: PartitionSnapshot,
): OperatorFunction<PartitionInput, PartitionOutput[]> {
  return (source) =>
    defer(() => {
      const state = new PartitionState(settings, snapshot);
      return source.pipe(map((input) => state.apply(input)));
    });
}
