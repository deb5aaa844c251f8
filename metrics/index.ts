/**
 * The one metrics core (definitions: metrics/README.md), pure code without I/O, used by the interceptor, the
 * processor, the sink and replay alike: window assignment, accumulators of numerators and
 * denominators, derived rates, latency sketches, and alert rules.
 *
 * @module
 */
export {
  countsFrom,
  DEFAULT_THRESHOLDS,
  merge,
  SUM_NAMES,
  WindowAccumulator,
} from "./accumulator.js";
export {
  compareSeries,
  countsTowardMetrics,
  DEFAULT_MAX_MODELS_PER_WINDOW,
  modelSeriesCount,
  OTHER_MODELS,
  OTHER_MODELS_NAME,
  rollupEvents,
  rollupKey,
  seriesForModel,
  seriesOf,
  seriesRollup,
  ServiceWindows,
  type SeriesKey,
} from "./aggregate.js";
export { parseMetricsConfig, type MetricsConfig } from "./config.js";
export {
  deriveRates,
  isMetricName,
  LATENCY_METRICS,
  METRIC_NAMES,
  RATIO_METRICS,
  sampleCount,
  type CountName,
  type LatencyMetric,
  type MetricName,
  type RatioDefinition,
  type RatioMetric,
  type SumName,
  type TallyName,
} from "./rates.js";
export {
  AlertTracker,
  alertId,
  compare,
  DEFAULT_ALERT_RULES,
  evaluateRule,
  type ActiveAlert,
  type AlertRule,
  type AlertTrackerState,
  type RuleVerdict,
} from "./rules.js";
export { LATENCY_RELATIVE_ACCURACY, LatencySketch } from "./sketch.js";
export { MICROS_PER_MILLI, MICROS_PER_SECOND, windowOf, type TimeWindow } from "./window.js";
