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
 * - Each (service, window) has a series of its own for at most `maxModelsPerWindow` models: the
 *   first seen in the window, in log order (late events and revisions of the window included).
 *   The calls of further models count in the window's overflow series (`other_models`), and in
 *   the service total like every call.
 * - With a routing, every service has one home partition. An event that arrives elsewhere is not
 *   counted where it arrived: it is forwarded (a `forward` output; the processor writes a copy into
 *   the home partition's log) and only advances this partition's event time. At the home
 *   partition, copies count like events. They come in a chain per source partition (each names
 *   the previous one), so a copy forwarded twice (a source partition read again after a crash) or
 *   out of order (by an owner that lost the partition) counts once. Each source partition also
 *   reports its event time (on each copy, and in progress records); the home partition's event
 *   time is its own, held back to the slowest source's, so no window closes while a source may
 *   still forward an on-time event of it.
 * - A window's sums (cost, tokens, retries) are exact 64-bit integers: an event that would take
 *   one past 2^63 − 1 is not counted, and nothing but event time changes; it is emitted as an
 *   `overflow` (the processor dead-letters it, SUM_OVERFLOW).
 * - An event counts once: a window keeps the ids of the events it counted while it is open or
 *   revisable, and an event whose id it already holds (the same event delivered twice) is not
 *   counted again but emitted as a `duplicate`. Late events (in no window's counts but `late`)
 *   are not deduplicated.
 */
import type {
  AlertEvent,
  MetricRollup,
  MetricThresholds,
  ModelCallEvent,
} from "../avro/generated.js";
import type { CopyOrigin, SourceProgress } from "../avro/control.js";
import { windowConfigSchema } from "../config/index.js";
import { EventIdSet } from "./event-ids.js";
import {
  AlertTracker,
  compareSeries,
  countsTowardMetrics,
  WindowAccumulator,
  DEFAULT_ALERT_RULES,
  DEFAULT_THRESHOLDS,
  MICROS_PER_MILLI,
  modelSeriesCount,
  OTHER_MODELS,
  seriesForModel,
  seriesOf,
  seriesRollup,
  ServiceWindows,
  windowOf,
  type AlertRule,
  type AlertTrackerState,
  type SeriesKey,
  type TimeWindow,
} from "../metrics/index.js";

/** Window settings, in microseconds. */
export interface WindowSettings {
  readonly windowSizeMicros: number;
  readonly graceMicros: number;
  /**
   * How long after a window closed (watermark past its end) events of it still revise it: its
   * rollups are emitted again, complete, with a higher `revision`. 0 (or absent): never; such
   * events are late.
   */
  readonly allowedLatenessMicros?: number;
  /**
   * How many models of a service have a series of their own in one window: the first seen in the
   * window, in log order; the calls of further models count in the window's overflow series.
   * Absent: config/'s default (200).
   */
  readonly maxModelsPerWindow?: number;
  readonly thresholds: MetricThresholds;
  readonly rules: readonly AlertRule[];
}

const WINDOW_DEFAULTS = windowConfigSchema.parse({});

/** The window settings every component defaults to (config/'s window schema). */
export const DEFAULT_WINDOW_SETTINGS: WindowSettings = Object.freeze({
  windowSizeMicros: WINDOW_DEFAULTS.windowSizeMs * MICROS_PER_MILLI,
  graceMicros: WINDOW_DEFAULTS.graceMs * MICROS_PER_MILLI,
  allowedLatenessMicros: WINDOW_DEFAULTS.allowedLatenessMs * MICROS_PER_MILLI,
  maxModelsPerWindow: WINDOW_DEFAULTS.maxModelsPerWindow,
  thresholds: DEFAULT_THRESHOLDS,
  rules: DEFAULT_ALERT_RULES,
});

/** Which partition a state is, and where each service's home is. */
export interface PartitionRouting {
  readonly partition: number;
  /** Services' homes are partitions 0 to `homePartitions` − 1. */
  readonly homePartitions: number;
  readonly homeOf: (service: string) => number;
}

/** What a partition's state machine is fed, in offset order. */
export type PartitionInput =
  /** `offset` (the record's) is needed when the event is forwarded to its home partition. */
  | { readonly type: "event"; readonly event: ModelCallEvent; readonly offset?: string }
  | { readonly type: "copy"; readonly event: ModelCallEvent; readonly origin: CopyOrigin }
  | { readonly type: "progress"; readonly progress: SourceProgress }
  | { readonly type: "tick"; readonly eventTimeMicros: number }
  | { readonly type: "flush" };

/** The dead-letter code of an event refused because a window's sum would pass 2^63 − 1. */
export const SUM_OVERFLOW = "SUM_OVERFLOW";

/** What it emits. */
export type PartitionOutput =
  | { readonly type: "rollup"; readonly rollup: MetricRollup }
  | { readonly type: "alert"; readonly alert: AlertEvent }
  | { readonly type: "late"; readonly event: ModelCallEvent; readonly watermarkMicros: number }
  /** An event whose id its window already counted: not counted again. */
  | { readonly type: "duplicate"; readonly event: ModelCallEvent }
  /**
   * An event not counted: one of its window's sums (cost, tokens, retries) would pass 2^63 − 1,
   * the largest Avro long. `reason` names the sum. The processor dead-letters it (SUM_OVERFLOW).
   */
  | { readonly type: "overflow"; readonly event: ModelCallEvent; readonly reason: string }
  /** Write the event's record into `partition`, its service's home, as a copy from `origin`. */
  | {
      readonly type: "forward";
      readonly event: ModelCallEvent;
      readonly partition: number;
      readonly origin: CopyOrigin;
    };

/** Plain data: everything needed to continue exactly where the state was. */
export interface PartitionSnapshot {
  /**
   * 1: written before routing (no `forwarded` or `sources`); 2: before revisions (no
   * `retained`); 3: before deduplication (no `seen`); 4: now.
   */
  readonly version: 1 | 2 | 3 | 4;
  /** The largest event time read in this partition itself (its own events, copies, ticks). */
  readonly maxEventTimeMicros: number | null;
  /** Open windows, as rollups of what they hold so far. */
  readonly windows: readonly MetricRollup[];
  readonly alerts: AlertTrackerState;
  /** Per home partition this one reports to: the offset of the last event forwarded there. */
  readonly forwarded?: readonly {
    readonly partition: number;
    readonly lastOffset: string | null;
  }[];
  /** Per source partition that forwarded here: its last copy counted and its event time. */
  readonly sources?: readonly {
    readonly partition: number;
    readonly lastOffset: string | null;
    readonly timeMicros: number;
  }[];
  /**
   * Closed windows still within the allowed lateness: each window's last revision and its
   * rollups as last emitted, and (`pending`) what events that arrived since hold, not yet emitted.
   */
  readonly retained?: readonly RetainedSnapshot[];
  /**
   * Windows that end at or before this closed before the state kept closed windows (a snapshot
   * of version 1 or 2): they are not revised. Null: every closed window is known.
   */
  readonly revisableAfterMicros?: number | null;
  /**
   * The ids of the events each open or revisable window counted (base64 of 16 bytes per id, in
   * the order they were counted), by service and window start.
   */
  readonly seen?: readonly {
    readonly service: string;
    readonly windowStart: number;
    readonly ids: string;
  }[];
}

/** A closed window kept for revisions, as plain data. */
export interface RetainedSnapshot {
  readonly service: string;
  readonly windowStart: number;
  readonly revision: number;
  readonly rollups: readonly MetricRollup[];
  readonly pending: readonly MetricRollup[];
}

/** A closed window kept for revisions. */
interface Retained {
  readonly service: string;
  readonly windowStart: number;
  /** The revision last emitted (0: its first emission; -1 for none, a window that closed empty). */
  revision: number;
  /** By series (null: the service total): the rollup last emitted. */
  readonly rollups: Map<SeriesKey, MetricRollup>;
  /** By series: the window's content with the events that arrived since, until emitted. */
  pending: Map<SeriesKey, WindowAccumulator> | undefined;
  /** How many models have a series of their own (emitted or pending). */
  models: number;
}

/** How many models have a series of their own in a retained window. */
function retainedModels(
  rollups: ReadonlyMap<SeriesKey, MetricRollup>,
  pending: ReadonlyMap<SeriesKey, WindowAccumulator> | undefined,
): number {
  let models = modelSeriesCount(rollups);
  for (const series of pending?.keys() ?? [])
    if (typeof series === "string" && !rollups.has(series)) models++;
  return models;
}

/** Locale-independent name order, so every machine sorts alike. */
function byCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export class PartitionState {
  /** Services with an open window (a service whose windows all closed is evicted). */
  private readonly services = new Map<string, ServiceWindows>();
  /** Open windows: by start, the services with that window open. */
  private readonly openByStart = new Map<number, Set<string>>();
  /** The keys of `openByStart`, ascending: closing walks only the windows due. */
  private readonly openStarts: number[] = [];
  private readonly alerts: AlertTracker;
  private maxEventTime: number | null = null;
  private readonly forwarded = new Map<number, string | null>();
  private readonly sources = new Map<number, { lastOffset: string | null; timeMicros: number }>();
  /** Closed windows within the allowed lateness, by `service\u0000start`. */
  private readonly retained = new Map<string, Retained>();
  /** Retained windows with events not yet emitted, in the order they were first revised. */
  private readonly dirty = new Set<Retained>();
  private revisableAfter: number | null = null;
  /** Calls counted in overflow series (see {@link foldedEvents}). */
  private folded = 0;
  /** By service, then window start: the ids of the events the window counted. */
  private readonly seen = new Map<string, Map<number, EventIdSet>>();

  constructor(
    readonly settings: WindowSettings = DEFAULT_WINDOW_SETTINGS,
    snapshot?: PartitionSnapshot,
    private readonly routing?: PartitionRouting,
  ) {
    this.alerts = new AlertTracker(settings.rules, snapshot?.alerts);
    if (snapshot) {
      this.maxEventTime = snapshot.maxEventTimeMicros;
      for (const rollup of snapshot.windows) {
        this.windowsOf(rollup.service).restore(rollup);
        this.trackOpen(rollup.service, rollup.window_start);
      }
      for (const entry of snapshot.forwarded ?? [])
        this.forwarded.set(entry.partition, entry.lastOffset);
      for (const entry of snapshot.sources ?? [])
        this.sources.set(entry.partition, {
          lastOffset: entry.lastOffset,
          timeMicros: entry.timeMicros,
        });
      for (const entry of snapshot.retained ?? []) {
        const rollups = new Map<SeriesKey, MetricRollup>(
          entry.rollups.map((rollup) => [seriesOf(rollup), rollup]),
        );
        const pending =
          entry.pending.length === 0
            ? undefined
            : new Map<SeriesKey, WindowAccumulator>(
                entry.pending.map((rollup) => [
                  seriesOf(rollup),
                  WindowAccumulator.fromRollup(rollup),
                ]),
              );
        const retained: Retained = {
          service: entry.service,
          windowStart: entry.windowStart,
          revision: entry.revision,
          rollups,
          pending,
          models: retainedModels(rollups, pending),
        };
        this.retained.set(retainedKey(entry.service, entry.windowStart), retained);
        if (retained.pending) this.dirty.add(retained);
      }
      // Closed windows of an older snapshot are not known: only later ones are revised.
      this.revisableAfter =
        snapshot.version >= 3 ? (snapshot.revisableAfterMicros ?? null) : this.watermarkMicros;
      for (const entry of snapshot.seen ?? []) {
        let byStart = this.seen.get(entry.service);
        if (!byStart) {
          byStart = new Map();
          this.seen.set(entry.service, byStart);
        }
        byStart.set(entry.windowStart, EventIdSet.fromBase64(entry.ids));
      }
    }
    // A partition beyond the homes (added to the topic later) holds only other homes' events:
    // every home waits for its progress, so it reports to every home from the start.
    if (routing && routing.partition >= routing.homePartitions)
      for (let home = 0; home < routing.homePartitions; home++)
        if (!this.forwarded.has(home)) this.forwarded.set(home, null);
  }

  /**
   * The event time windows close on: this partition's own, held back to the slowest source
   * partition's; null before the first record.
   */
  get eventTimeMicros(): number | null {
    if (this.maxEventTime === null) return null;
    let time = this.maxEventTime;
    for (const source of this.sources.values())
      if (source.timeMicros < time) time = source.timeMicros;
    return time;
  }

  /** Event time minus the grace period; null before the first record. */
  get watermarkMicros(): number | null {
    const time = this.eventTimeMicros;
    return time === null ? null : time - this.settings.graceMicros;
  }

  /** The largest event time read in this partition itself (what it reports to home partitions). */
  get ownEventTimeMicros(): number | null {
    return this.maxEventTime;
  }

  /** The home partitions this one reports to, with the offset of the last event forwarded there. */
  get forwardedTo(): ReadonlyMap<number, string | null> {
    return this.forwarded;
  }

  /**
   * How many calls (late ones included) this state counted in overflow series since it was
   * created or restored: calls of models beyond their window's first `maxModelsPerWindow`.
   */
  get foldedEvents(): number {
    return this.folded;
  }

  /** How many (service, model, window) accumulators are open. */
  get openSeries(): number {
    let count = 0;
    for (const windows of this.services.values()) count += windows.openCount();
    return count;
  }

  /** How many closed windows are kept for revisions. */
  get retainedWindows(): number {
    return this.retained.size;
  }

  /** Whether revisions wait to be emitted (the next input that is not one emits them). */
  get revisionsPending(): boolean {
    return this.dirty.size > 0;
  }

  apply(input: PartitionInput): PartitionOutput[] {
    const outputs = this.applyInput(input);
    // Revisions wait for the next windows that close (see closeThrough), or a tick.
    if (this.dirty.size > 0 && (input.type === "tick" || input.type === "flush"))
      for (const output of this.emitRevisions()) outputs.push(output);
    return outputs;
  }

  private applyInput(input: PartitionInput): PartitionOutput[] {
    switch (input.type) {
      case "event": {
        const home = this.routing?.homeOf(input.event.service);
        if (home === undefined || home === this.routing?.partition) return this.accept(input.event);
        return this.forward(input.event, home, input.offset);
      }
      case "copy":
        return this.acceptCopy(input.event, input.origin);
      case "progress":
        return this.acceptProgress(input.progress);
      case "tick":
        return this.advance(input.eventTimeMicros);
      case "flush":
        return this.closeThrough(Number.POSITIVE_INFINITY);
    }
  }

  /** An event of another partition's service: only this partition's event time moves. */
  private forward(
    event: ModelCallEvent,
    home: number,
    offset: string | undefined,
  ): PartitionOutput[] {
    if (offset === undefined)
      throw new Error(
        `an event of ${event.service} must be forwarded to partition ${home}: its offset is needed`,
      );
    const previousOffset = this.forwarded.get(home) ?? null;
    this.forwarded.set(home, offset);
    const outputs = this.advance(event.end_time);
    outputs.push({
      type: "forward",
      event,
      partition: home,
      origin: {
        sourcePartition: this.routing?.partition ?? -1,
        sourceOffset: offset,
        previousOffset,
        sourceTimeMicros: this.maxEventTime ?? event.end_time,
      },
    });
    return outputs;
  }

  /** A copy counts once, in its source's order. */
  private acceptCopy(event: ModelCallEvent, origin: CopyOrigin): PartitionOutput[] {
    const source = this.sources.get(origin.sourcePartition);
    // Each copy names the one before it: one already counted (forwarded again by a restarted
    // source) or one that does not follow the last counted (from a former owner running ahead)
    // does not follow the chain. The current owner forwards the next one in order.
    if (source && origin.previousOffset !== source.lastOffset) return [];
    const before = this.eventTimeMicros;
    const outputs = this.count(event);
    this.sources.set(origin.sourcePartition, {
      lastOffset: origin.sourceOffset,
      timeMicros: Math.max(source?.timeMicros ?? origin.sourceTimeMicros, origin.sourceTimeMicros),
    });
    if (this.maxEventTime === null || event.end_time > this.maxEventTime)
      this.maxEventTime = event.end_time;
    outputs.push(...this.closeIfAdvanced(before));
    return outputs;
  }

  /** A source's event time counts only when every copy it forwarded so far is counted here. */
  private acceptProgress(progress: SourceProgress): PartitionOutput[] {
    const source = this.sources.get(progress.sourcePartition);
    if (source && source.lastOffset !== progress.lastOffset) return [];
    const before = this.eventTimeMicros;
    this.sources.set(progress.sourcePartition, {
      lastOffset: progress.lastOffset,
      timeMicros: Math.max(
        source?.timeMicros ?? progress.sourceTimeMicros,
        progress.sourceTimeMicros,
      ),
    });
    return this.closeIfAdvanced(before);
  }

  private closeIfAdvanced(before: number | null): PartitionOutput[] {
    const after = this.eventTimeMicros;
    if (after === null || (before !== null && after <= before)) return [];
    return this.closeThrough(after - this.settings.graceMicros);
  }

  /** Counts an event (or marks it late), then closes what the new watermark passes. */
  accept(event: ModelCallEvent): PartitionOutput[] {
    const outputs = this.count(event);
    outputs.push(...this.advance(event.end_time));
    return outputs;
  }

  /** Whether the event falls in a closed window still within the allowed lateness. */
  private revisable(event: ModelCallEvent): boolean {
    const allowed = this.settings.allowedLatenessMicros ?? 0;
    const watermark = this.watermarkMicros;
    if (allowed <= 0 || watermark === null || !countsTowardMetrics(event)) return false;
    const window = windowOf(event.end_time, this.settings.windowSizeMicros);
    return (
      window.end <= watermark &&
      window.end + allowed > watermark &&
      (this.revisableAfter === null || window.end > this.revisableAfter)
    );
  }

  /** Adds an event to its closed window's pending revision. */
  private revise(event: ModelCallEvent): void {
    const start = windowOf(event.end_time, this.settings.windowSizeMicros).start;
    const key = retainedKey(event.service, start);
    let retained = this.retained.get(key);
    if (!retained) {
      // It closed empty: its first rollups are this revision's.
      retained = {
        service: event.service,
        windowStart: start,
        revision: -1,
        rollups: new Map(),
        pending: undefined,
        models: 0,
      };
      this.retained.set(key, retained);
    }
    const pending = (retained.pending ??= new Map<SeriesKey, WindowAccumulator>());
    const accumulatorOf = (series: SeriesKey): WindowAccumulator => {
      let accumulator = pending.get(series);
      if (!accumulator) {
        const emitted = retained.rollups.get(series);
        accumulator = emitted
          ? WindowAccumulator.fromRollup(emitted)
          : new WindowAccumulator(this.settings.thresholds);
        pending.set(series, accumulator);
      }
      return accumulator;
    };
    accumulatorOf(null).add(event);
    if (event.model !== null) {
      // The same rule as the window had while open: the model's series, if it has one or the
      // window has room for another, else the overflow.
      const hasSeries = pending.has(event.model) || retained.rollups.has(event.model);
      const series = seriesForModel(event.model, hasSeries, retained.models, this.maxModels);
      if (series === OTHER_MODELS) this.folded++;
      else if (!hasSeries) retained.models++;
      accumulatorOf(series).add(event);
    }
    this.dirty.add(retained);
  }

  /** Emits the pending revisions: each window's changed rollups, with its next revision. */
  private emitRevisions(): PartitionOutput[] {
    const outputs: PartitionOutput[] = [];
    const windows = [...this.dirty].sort(
      (a, b) =>
        a.windowStart - b.windowStart ||
        (a.service < b.service ? -1 : a.service > b.service ? 1 : 0),
    );
    this.dirty.clear();
    for (const retained of windows) {
      const pending = retained.pending;
      if (!pending) continue;
      retained.pending = undefined;
      retained.revision = Math.max(retained.revision + 1, 1);
      const window = {
        start: retained.windowStart,
        end: retained.windowStart + this.settings.windowSizeMicros,
      };
      for (const [series, accumulator] of [...pending].sort(([a], [b]) => compareSeries(a, b))) {
        const rollup: MetricRollup = {
          ...seriesRollup(accumulator, retained.service, series, window),
          revision: retained.revision,
        };
        retained.rollups.set(series, rollup);
        outputs.push({ type: "rollup", rollup });
      }
    }
    return outputs;
  }

  /** Counts an event in its window, or as late when the watermark has passed that window. */
  private count(event: ModelCallEvent): PartitionOutput[] {
    const outputs: PartitionOutput[] = [];
    const watermark = this.watermarkMicros;
    if (countsTowardMetrics(event)) {
      const window = windowOf(event.end_time, this.settings.windowSizeMicros);
      const revisable = this.revisable(event);
      const refused = this.overflow(event, window, watermark, revisable);
      if (refused !== undefined) {
        // Refused before anything changes; a function of the log, so every replay refuses it.
        outputs.push({ type: "overflow", event, reason: refused });
      } else if (revisable) {
        if (!this.firstTime(event, window.start)) outputs.push({ type: "duplicate", event });
        else this.revise(event);
      } else if (watermark !== null && window.end <= watermark) {
        const current = windowOf(watermark, this.settings.windowSizeMicros);
        const windows = this.windowsOf(event.service);
        const folded = windows.foldedEvents;
        windows.addLate(current.start, event.model);
        this.folded += windows.foldedEvents - folded;
        this.trackOpen(event.service, current.start);
        outputs.push({ type: "late", event, watermarkMicros: watermark });
      } else if (!this.firstTime(event, window.start)) {
        outputs.push({ type: "duplicate", event });
      } else {
        const windows = this.windowsOf(event.service);
        const folded = windows.foldedEvents;
        windows.add(event);
        this.folded += windows.foldedEvents - folded;
        this.trackOpen(event.service, window.start);
      }
    }
    return outputs;
  }

  /**
   * Why `event` cannot be counted: a sum of its window (open, or closed and revisable) would pass
   * 2^63 − 1 (the window's total holds the largest sums); undefined when it can. A late event
   * adds only to `late`.
   */
  private overflow(
    event: ModelCallEvent,
    window: TimeWindow,
    watermark: number | null,
    revisable: boolean,
  ): string | undefined {
    if (revisable) {
      const retained = this.retained.get(retainedKey(event.service, window.start));
      const pending = retained?.pending?.get(null);
      if (pending) return pending.overflow(event);
      const emitted = retained?.rollups.get(null);
      return emitted ? WindowAccumulator.fromRollup(emitted).overflow(event) : undefined;
    }
    if (watermark !== null && window.end <= watermark) return undefined;
    return this.services.get(event.service)?.overflow(event);
  }

  /** Records that the window at `windowStart` counts `event`; false when it already did. */
  private firstTime(event: ModelCallEvent, windowStart: number): boolean {
    let byStart = this.seen.get(event.service);
    if (!byStart) {
      byStart = new Map();
      this.seen.set(event.service, byStart);
    }
    let ids = byStart.get(windowStart);
    if (!ids) {
      ids = new EventIdSet();
      byStart.set(windowStart, ids);
    }
    return ids.add(event.event_id);
  }

  /** Forgets the ids a window counted (it is closed and no longer revisable). */
  private forgetSeen(service: string, windowStart: number): void {
    const byStart = this.seen.get(service);
    if (!byStart) return;
    byStart.delete(windowStart);
    if (byStart.size === 0) this.seen.delete(service);
  }

  /** Moves this partition's event time forward (never back) and closes what the watermark passes. */
  advance(eventTimeMicros: number): PartitionOutput[] {
    if (this.maxEventTime !== null && eventTimeMicros <= this.maxEventTime) return [];
    const before = this.eventTimeMicros;
    this.maxEventTime = eventTimeMicros;
    return this.closeIfAdvanced(before);
  }

  /**
   * Closes every window whose end is at or before `watermark`, oldest first, services in name
   * order; emits each window's rollups and the alert transitions of its service total.
   */
  private closeThrough(watermark: number): PartitionOutput[] {
    // Only the windows due are visited (the open starts are kept in order), and only their
    // services sorted: not every service the partition has seen.
    const due: { start: number; service: string }[] = [];
    let closing = 0;
    for (const start of this.openStarts) {
      if (start + this.settings.windowSizeMicros > watermark) break;
      for (const service of [...(this.openByStart.get(start) ?? [])].sort(byCodeUnits))
        due.push({ start, service });
      this.openByStart.delete(start);
      closing++;
    }
    if (closing === 0) return [];
    this.openStarts.splice(0, closing);
    // Revisions go out with the windows that close next: the events of closed windows read since
    // the last ones (a replica's buffer delivered after an outage, interleaved with the others'
    // calls) make one revision of each window they touched. A function of the log, so a replay
    // emits the same revisions at the same places.
    const outputs = this.dirty.size > 0 ? this.emitRevisions() : [];
    this.expireRetained(watermark);
    const allowed = this.settings.allowedLatenessMicros ?? 0;
    for (const { start, service } of due) {
      const windows = this.services.get(service);
      const rollups = windows?.close(start) ?? [];
      // A service with nothing open is evicted; its retained windows and firing alerts are kept
      // apart (`retained`, the alert tracker).
      if (windows?.openWindows === 0) this.services.delete(service);
      for (const rollup of rollups) outputs.push({ type: "rollup", rollup });
      if (allowed > 0 && start + this.settings.windowSizeMicros + allowed > watermark)
        this.retained.set(retainedKey(service, start), {
          service,
          windowStart: start,
          revision: 0,
          rollups: new Map(rollups.map((rollup) => [seriesOf(rollup), rollup])),
          pending: undefined,
          models: rollups.filter((rollup) => typeof seriesOf(rollup) === "string").length,
        });
      else this.forgetSeen(service, start);
      const total = rollups.find((rollup) => rollup.model === null);
      if (total)
        for (const alert of this.alerts.observe(total)) outputs.push({ type: "alert", alert });
    }
    return outputs;
  }

  /** Forgets closed windows the watermark has taken past the allowed lateness. */
  private expireRetained(watermark: number): void {
    if (this.retained.size === 0) return;
    const allowed = this.settings.allowedLatenessMicros ?? 0;
    for (const [key, retained] of this.retained)
      if (
        retained.pending === undefined &&
        retained.windowStart + this.settings.windowSizeMicros + allowed <= watermark
      ) {
        this.retained.delete(key);
        this.forgetSeen(retained.service, retained.windowStart);
      }
  }

  /** The state as plain data (JSON-safe). */
  snapshot(): PartitionSnapshot {
    const windows: MetricRollup[] = [];
    for (const service of [...this.services.keys()].sort())
      windows.push(...(this.services.get(service)?.openRollups() ?? []));
    const byPartition = (a: number, b: number) => a - b;
    const retained = [...this.retained.values()]
      .sort(
        (a, b) =>
          a.windowStart - b.windowStart ||
          (a.service < b.service ? -1 : a.service > b.service ? 1 : 0),
      )
      .map((entry): RetainedSnapshot => {
        const window = {
          start: entry.windowStart,
          end: entry.windowStart + this.settings.windowSizeMicros,
        };
        return {
          service: entry.service,
          windowStart: entry.windowStart,
          revision: entry.revision,
          rollups: [...entry.rollups.values()].sort((a, b) =>
            compareSeries(seriesOf(a), seriesOf(b)),
          ),
          pending: [...(entry.pending ?? [])]
            .sort(([a], [b]) => compareSeries(a, b))
            .map(([series, accumulator]) =>
              seriesRollup(accumulator, entry.service, series, window),
            ),
        };
      });
    return {
      version: 4,
      maxEventTimeMicros: this.maxEventTime,
      windows,
      alerts: this.alerts.snapshot(),
      forwarded: [...this.forwarded.keys()].sort(byPartition).map((partition) => ({
        partition,
        lastOffset: this.forwarded.get(partition) ?? null,
      })),
      sources: [...this.sources.keys()].sort(byPartition).map((partition) => {
        const source = this.sources.get(partition) ?? { lastOffset: null, timeMicros: 0 };
        return { partition, ...source };
      }),
      retained,
      revisableAfterMicros: this.revisableAfter,
      seen: [...this.seen.keys()]
        .sort(byCodeUnits)
        .flatMap((service) =>
          [...(this.seen.get(service) ?? [])]
            .sort(([a], [b]) => a - b)
            .map(([windowStart, ids]) => ({ service, windowStart, ids: ids.toBase64() })),
        ),
    };
  }

  /** Records that `service` has the window at `start` open. */
  private trackOpen(service: string, start: number): void {
    let services = this.openByStart.get(start);
    if (!services) {
      services = new Set();
      this.openByStart.set(start, services);
      // Binary insertion: a new start is rare (about one per window size of event time).
      let low = 0;
      let high = this.openStarts.length;
      while (low < high) {
        const middle = (low + high) >>> 1;
        if ((this.openStarts[middle] as number) < start) low = middle + 1;
        else high = middle;
      }
      this.openStarts.splice(low, 0, start);
    }
    services.add(service);
  }

  private windowsOf(service: string): ServiceWindows {
    let windows = this.services.get(service);
    if (!windows) {
      windows = new ServiceWindows(
        service,
        this.settings.windowSizeMicros,
        this.settings.thresholds,
        this.maxModels,
      );
      this.services.set(service, windows);
    }
    return windows;
  }

  private get maxModels(): number {
    return this.settings.maxModelsPerWindow ?? WINDOW_DEFAULTS.maxModelsPerWindow;
  }
}

function retainedKey(service: string, windowStart: number): string {
  return `${service}\u0000${windowStart}`;
}
