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

/**
 * The accumulators of one service's windows: a service-level total per window (model null) and
 * one per model. Events without a model count in the total only.
 */
export class ServiceWindows {
  /** window start → model (null: total) → accumulator */
  private readonly windows = new Map<number, Map<string | null, WindowAccumulator>>();

  constructor(
    readonly service: string,
    readonly windowSizeMicros: number,
    readonly thresholds: MetricThresholds = DEFAULT_THRESHOLDS,
  ) {}

  /**
   * Counts a model call (of this service) in its window, by `end_time`, and returns the window;
   * returns undefined for spans that do not count toward metrics ({@link countsTowardMetrics}).
   */
  add(event: ModelCallEvent): TimeWindow | undefined {
    if (!countsTowardMetrics(event)) return undefined;
    const window = windowOf(event.end_time, this.windowSizeMicros);
    const byModel = this.window(window.start);
    this.accumulator(byModel, null).add(event);
    if (event.model !== null) this.accumulator(byModel, event.model).add(event);
    return window;
  }

  /** Counts a late event of the given model against a window that has already closed. */
  addLate(windowStart: number, model: string | null, count = 1): void {
    const byModel = this.window(windowStart);
    this.accumulator(byModel, null).addLate(count);
    if (model !== null) this.accumulator(byModel, model).addLate(count);
  }

  /** Open window starts, ascending. */
  windowStarts(): number[] {
    return [...this.windows.keys()].sort((a, b) => a - b);
  }

  /**
   * Removes a window and returns its rollups: the service total first, then models by name.
   * Empty when the window holds nothing.
   */
  close(windowStart: number): MetricRollup[] {
    const byModel = this.windows.get(windowStart);
    if (!byModel) return [];
    this.windows.delete(windowStart);
    const window = { start: windowStart, end: windowStart + this.windowSizeMicros };
    return [...byModel.entries()]
      .sort(([a], [b]) => compareModels(a, b))
      .map(([model, accumulator]) => accumulator.toRollup(this.service, model, window));
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
      for (const [model, accumulator] of [...byModel.entries()].sort(([a], [b]) =>
        compareModels(a, b),
      ))
        rollups.push(accumulator.toRollup(this.service, model, window));
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
    this.window(rollup.window_start).set(rollup.model, WindowAccumulator.fromRollup(rollup));
  }

  /** The accumulator of a window and model, if any (read-only use). */
  peek(windowStart: number, model: string | null): WindowAccumulator | undefined {
    return this.windows.get(windowStart)?.get(model);
  }

  private window(start: number): Map<string | null, WindowAccumulator> {
    let byModel = this.windows.get(start);
    if (!byModel) {
      byModel = new Map();
      this.windows.set(start, byModel);
    }
    return byModel;
  }

  private accumulator(
    byModel: Map<string | null, WindowAccumulator>,
    model: string | null,
  ): WindowAccumulator {
    let accumulator = byModel.get(model);
    if (!accumulator) {
      accumulator = new WindowAccumulator(this.thresholds);
      byModel.set(model, accumulator);
    }
    return accumulator;
  }
}

/** The service total (null) first, then models in code-unit order (locale-independent). */
function compareModels(a: string | null, b: string | null): number {
  if (a === b) return 0;
  if (a === null) return -1;
  if (b === null) return 1;
  return a < b ? -1 : 1;
}

/**
 * The compacted-topic key of a rollup: a JSON array of the service, the model (null for the
 * service total), the window start and the window size (µs), e.g.
 * `["payments-mcp",null,1733390400000000,60000000]`. Unique per (service, model, window): JSON's
 * quoting keeps every name apart, so no service or model name, not even "*" or one holding `|`
 * or `"`, can address the total or another series.
 */
export function rollupKey(
  rollup: Pick<MetricRollup, "service" | "model" | "window_start" | "window_end">,
): string {
  return JSON.stringify([
    rollup.service,
    rollup.model,
    rollup.window_start,
    rollup.window_end - rollup.window_start,
  ]);
}

/**
 * Every rollup of a bounded set of events, as a batch: sorted by service, window start, then
 * model (total first). The reference the streaming processor's output must equal.
 */
export function rollupEvents(
  events: Iterable<ModelCallEvent>,
  windowSizeMicros: number,
  thresholds: MetricThresholds = DEFAULT_THRESHOLDS,
): MetricRollup[] {
  const services = new Map<string, ServiceWindows>();
  for (const event of events) {
    if (!countsTowardMetrics(event)) continue;
    let windows = services.get(event.service);
    if (!windows) {
      windows = new ServiceWindows(event.service, windowSizeMicros, thresholds);
      services.set(event.service, windows);
    }
    windows.add(event);
  }
  const rollups: MetricRollup[] = [];
  for (const service of [...services.keys()].sort()) {
    const windows = services.get(service);
    if (!windows) continue;
    for (const start of windows.windowStarts()) rollups.push(...windows.close(start));
  }
  return rollups;
}
