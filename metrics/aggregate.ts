import type { MetricRollup, MetricThresholds, ModelCallEvent } from "../avro/generated.js";
import { DEFAULT_THRESHOLDS, WindowAccumulator } from "./accumulator.js";
import { windowOf, type TimeWindow } from "./window.js";

/**
 * Whether an event counts in the metrics: model calls do (`model_call`, and `sampling`, a model
 * call made through the MCP client). Tool, resource and prompt spans are traces only: counting
 * them would dilute every rate's N with calls that make no model decision.
 */
export function countsTowardMetrics(event: Pick<ModelCallEvent, "kind">): boolean {
  return event.kind === "model_call" || event.kind === "sampling";
}

/** How many models of a service get a series of their own in one window, by default. */
export const DEFAULT_MAX_MODELS_PER_WINDOW = 200;

/**
 * The key of a window's overflow series, the calls of the models beyond its first
 * `maxModelsPerWindow`: a symbol, so no model name (a string) can address it.
 */
export const OTHER_MODELS: unique symbol = Symbol("other models");

/**
 * The `model` of an overflow rollup (`other_models` true): readers that predate the field see a
 * model of this name, never the service total (model null).
 */
export const OTHER_MODELS_NAME = "(other models)";

/** A series of a service's window: the total (null), one model (its name), or the overflow. */
export type SeriesKey = string | null | typeof OTHER_MODELS;

/**
 * The series a rollup is of. `other_models` may be absent: rollups of checkpoints written before
 * the field have none.
 */
export function seriesOf(
  rollup: Pick<MetricRollup, "model"> & { readonly other_models?: boolean },
): SeriesKey {
  return rollup.other_models ? OTHER_MODELS : rollup.model;
}

/**
 * The series a call of `model` counts in, in a window where the model has a series already
 * (`hasSeries`) or not, and `models` models have one: the model's own when it has one or the
 * window has fewer than `maxModels` models, else the overflow. So the models with a series of
 * their own are the first `maxModels` seen in the window, in the order its calls were counted.
 */
export function seriesForModel(
  model: string,
  hasSeries: boolean,
  models: number,
  maxModels: number,
): string | typeof OTHER_MODELS {
  return hasSeries || models < maxModels ? model : OTHER_MODELS;
}

/** How many models have a series of their own among `series` (the total and overflow aside). */
export function modelSeriesCount(series: ReadonlyMap<SeriesKey, unknown>): number {
  return series.size - (series.has(null) ? 1 : 0) - (series.has(OTHER_MODELS) ? 1 : 0);
}

/** A series' rollup of a window. */
export function seriesRollup(
  accumulator: WindowAccumulator,
  service: string,
  series: SeriesKey,
  window: TimeWindow,
): MetricRollup {
  return series === OTHER_MODELS
    ? { ...accumulator.toRollup(service, OTHER_MODELS_NAME, window), other_models: true }
    : accumulator.toRollup(service, series, window);
}

/**
 * The accumulators of one service's windows: a service-level total per window (model null), one
 * per model for the first `maxModelsPerWindow` models seen in the window, and one overflow series
 * ({@link OTHER_MODELS}) for the calls of the models after those. Events without a model count in
 * the total only.
 */
export class ServiceWindows {
  /** window start → series (null: total) → accumulator */
  private readonly windows = new Map<number, Map<SeriesKey, WindowAccumulator>>();
  private folded = 0;

  constructor(
    readonly service: string,
    readonly windowSizeMicros: number,
    readonly thresholds: MetricThresholds = DEFAULT_THRESHOLDS,
    readonly maxModelsPerWindow: number = DEFAULT_MAX_MODELS_PER_WINDOW,
  ) {}

  /** Calls (late ones included) counted in an overflow series so far. */
  get foldedEvents(): number {
    return this.folded;
  }

  /**
   * Counts a model call (of this service) in its window, by `end_time`, and returns the window;
   * returns undefined for spans that do not count toward metrics ({@link countsTowardMetrics}).
   */
  add(event: ModelCallEvent): TimeWindow | undefined {
    if (!countsTowardMetrics(event)) return undefined;
    const window = windowOf(event.end_time, this.windowSizeMicros);
    const byModel = this.window(window.start);
    this.accumulator(byModel, null).add(event);
    if (event.model !== null)
      this.accumulator(byModel, this.seriesFor(byModel, event.model)).add(event);
    return window;
  }

  /**
   * Why `event` cannot be counted in its window: one of the window's sums would pass 2^63 − 1
   * ({@link WindowAccumulator.overflow}); undefined when it can. The service total counts every
   * call its window's series count, so its sums are the largest: it is the one asked.
   */
  overflow(event: ModelCallEvent): string | undefined {
    const start = windowOf(event.end_time, this.windowSizeMicros).start;
    return this.windows.get(start)?.get(null)?.overflow(event);
  }

  /** Counts a late event of the given model against a window that has already closed. */
  addLate(windowStart: number, model: string | null, count = 1): void {
    const byModel = this.window(windowStart);
    this.accumulator(byModel, null).addLate(count);
    if (model !== null)
      this.accumulator(byModel, this.seriesFor(byModel, model, count)).addLate(count);
  }

  private seriesFor(
    byModel: ReadonlyMap<SeriesKey, WindowAccumulator>,
    model: string,
    count = 1,
  ): string | typeof OTHER_MODELS {
    const series = seriesForModel(
      model,
      byModel.has(model),
      modelSeriesCount(byModel),
      this.maxModelsPerWindow,
    );
    if (series === OTHER_MODELS) this.folded += count;
    return series;
  }

  /** Open window starts, ascending. */
  windowStarts(): number[] {
    return [...this.windows.keys()].sort((a, b) => a - b);
  }

  /**
   * Removes a window and returns its rollups: the service total first, then models by name, then
   * the overflow series. Empty when the window holds nothing.
   */
  close(windowStart: number): MetricRollup[] {
    const byModel = this.windows.get(windowStart);
    if (!byModel) return [];
    this.windows.delete(windowStart);
    const window = { start: windowStart, end: windowStart + this.windowSizeMicros };
    return [...byModel.entries()]
      .sort(([a], [b]) => compareSeries(a, b))
      .map(([series, accumulator]) => seriesRollup(accumulator, this.service, series, window));
  }

  /** How many windows are open. */
  get openWindows(): number {
    return this.windows.size;
  }

  /** How many (window, model) accumulators are open, the service totals included. */
  openCount(): number {
    let count = 0;
    for (const byModel of this.windows.values()) count += byModel.size;
    return count;
  }

  /** Every open window's rollup (for a checkpoint), in window then model order; windows stay open. */
  openRollups(): MetricRollup[] {
    const rollups: MetricRollup[] = [];
    for (const start of this.windowStarts()) {
      const byModel = this.windows.get(start);
      if (!byModel) continue;
      const window = { start, end: start + this.windowSizeMicros };
      for (const [series, accumulator] of [...byModel.entries()].sort(([a], [b]) =>
        compareSeries(a, b),
      ))
        rollups.push(seriesRollup(accumulator, this.service, series, window));
    }
    return rollups;
  }

  /**
   * Puts back an open window's accumulator from its rollup (restoring a checkpoint).
   *
   * @throws {RangeError} when the rollup is of another service or window size.
   */
  restore(rollup: MetricRollup): void {
    if (
      rollup.service !== this.service ||
      rollup.window_end - rollup.window_start !== this.windowSizeMicros
    )
      throw new RangeError(
        `rollup ${rollupKey(rollup)} does not belong to ${this.service}'s windows`,
      );
    this.window(rollup.window_start).set(seriesOf(rollup), WindowAccumulator.fromRollup(rollup));
  }

  /** The accumulator of a window and series, if any (read-only use). */
  peek(windowStart: number, model: SeriesKey): WindowAccumulator | undefined {
    return this.windows.get(windowStart)?.get(model);
  }

  private window(start: number): Map<SeriesKey, WindowAccumulator> {
    let byModel = this.windows.get(start);
    if (!byModel) {
      byModel = new Map();
      this.windows.set(start, byModel);
    }
    return byModel;
  }

  private accumulator(
    byModel: Map<SeriesKey, WindowAccumulator>,
    model: SeriesKey,
  ): WindowAccumulator {
    let accumulator = byModel.get(model);
    if (!accumulator) {
      accumulator = new WindowAccumulator(this.thresholds);
      byModel.set(model, accumulator);
    }
    return accumulator;
  }
}

/**
 * The service total (null) first, then models in code-unit order (locale-independent), then the
 * overflow series.
 */
export function compareSeries(a: SeriesKey, b: SeriesKey): number {
  if (a === b) return 0;
  if (a === null || b === OTHER_MODELS) return -1;
  if (b === null || a === OTHER_MODELS) return 1;
  return a < b ? -1 : 1;
}

/**
 * The compacted-topic key of a rollup: a JSON array of the service, the model (null for the
 * service total), the window start and the window size (µs), e.g.
 * `["payments-mcp",null,1733390400000000,60000000]`; the overflow series' has a fifth element,
 * `["payments-mcp","(other models)",1733390400000000,60000000,"other_models"]`. Unique per
 * (service, series, window): JSON's quoting keeps every name apart, so no service or model name,
 * not even "*" or one holding `|` or `"`, can address the total, the overflow series or another
 * series.
 */
export function rollupKey(
  rollup: Pick<MetricRollup, "service" | "model" | "window_start" | "window_end"> &
    Partial<Pick<MetricRollup, "other_models">>,
): string {
  const size = rollup.window_end - rollup.window_start;
  return JSON.stringify(
    rollup.other_models === true
      ? [rollup.service, OTHER_MODELS_NAME, rollup.window_start, size, "other_models"]
      : [rollup.service, rollup.model, rollup.window_start, size],
  );
}

/**
 * Every rollup of a bounded set of events, as a batch: sorted by service, window start, then
 * model (total first, overflow series last). The reference the streaming processor's output must
 * equal: the events in log order (the models with a series of their own are each window's first
 * `maxModelsPerWindow`).
 */
export function rollupEvents(
  events: Iterable<ModelCallEvent>,
  windowSizeMicros: number,
  thresholds: MetricThresholds = DEFAULT_THRESHOLDS,
  maxModelsPerWindow: number = DEFAULT_MAX_MODELS_PER_WINDOW,
): MetricRollup[] {
  const services = new Map<string, ServiceWindows>();
  for (const event of events) {
    if (!countsTowardMetrics(event)) continue;
    let windows = services.get(event.service);
    if (!windows) {
      windows = new ServiceWindows(event.service, windowSizeMicros, thresholds, maxModelsPerWindow);
      services.set(event.service, windows);
    }
    // As the processor: an event that would take a sum past 2^63 − 1 is not counted.
    if (windows.overflow(event) === undefined) windows.add(event);
  }
  const rollups: MetricRollup[] = [];
  for (const service of [...services.keys()].sort()) {
    const windows = services.get(service);
    if (!windows) continue;
    for (const start of windows.windowStarts()) rollups.push(...windows.close(start));
  }
  return rollups;
}
