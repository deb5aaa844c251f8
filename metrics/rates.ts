/**
 * The derived metrics of metrics/README.md, once: each derived metric as a numerator and a denominator over the window's
 * counts. A rate whose denominator is 0 is null, never 0.
 */
import type { DerivedRates, WindowCounts } from "../avro/generated.js";
import type { LatencySketch } from "./sketch.js";

/** A count in {@link WindowCounts}. */
export type CountName = keyof WindowCounts;
/** A sum of {@link WindowCounts} (cost, tokens, retries): an exact 64-bit integer, a bigint. */
export type SumName = {
  [K in CountName]: WindowCounts[K] extends bigint ? K : never;
}[CountName];
/** A count of calls in {@link WindowCounts}: a number (a window never holds 2^53 calls). */
export type TallyName = Exclude<CountName, SumName>;

/** A metric derived as numerator / denominator. */
export type RatioMetric = Exclude<keyof DerivedRates, LatencyMetric>;
/** A latency quantile from the sketch. */
export type LatencyMetric = "latency_p50_ms" | "latency_p95_ms" | "latency_p99_ms";
/** Any derived metric; alert rules watch these. */
export type MetricName = keyof DerivedRates;

/** How a ratio metric is computed. */
export interface RatioDefinition {
  readonly numerator: CountName;
  readonly denominator: TallyName;
  /** Multiplies the ratio (avg_cost_usd: nano-USD to USD). */
  readonly scale: number;
}

/** The table of metrics/README.md. */
export const RATIO_METRICS: Readonly<Record<RatioMetric, RatioDefinition>> = Object.freeze({
  avg_cost_usd: { numerator: "cost_nano_usd", denominator: "calls_with_cost", scale: 1e-9 },
  fallback_rate: { numerator: "fallbacks", denominator: "calls", scale: 1 },
  retry_rate: { numerator: "calls_with_retries", denominator: "calls", scale: 1 },
  low_confidence_rate: {
    numerator: "low_confidence",
    denominator: "calls_with_confidence",
    scale: 1,
  },
  confidence_gate_block_rate: {
    numerator: "gate_blocks",
    denominator: "calls_with_gate",
    scale: 1,
  },
  prompt_diff_violation_rate: {
    numerator: "prompt_diff_violations",
    denominator: "calls_with_prompt_diff",
    scale: 1,
  },
  shadow_disagreement_rate: {
    numerator: "shadow_disagreements",
    denominator: "calls_with_shadow",
    scale: 1,
  },
  deterministic_fallback_rate: {
    numerator: "deterministic_fallbacks",
    denominator: "high_risk",
    scale: 1,
  },
  high_risk_path_rate: { numerator: "high_risk", denominator: "calls", scale: 1 },
  golden_financial_failure_rate: {
    numerator: "golden_failures",
    denominator: "golden_with_result",
    scale: 1,
  },
  error_rate: { numerator: "errors", denominator: "calls", scale: 1 },
});

/** Quantile of each latency metric. */
export const LATENCY_METRICS: Readonly<Record<LatencyMetric, number>> = Object.freeze({
  latency_p50_ms: 0.5,
  latency_p95_ms: 0.95,
  latency_p99_ms: 0.99,
});

export const METRIC_NAMES: readonly MetricName[] = Object.freeze([
  ...(Object.keys(RATIO_METRICS) as RatioMetric[]),
  ...(Object.keys(LATENCY_METRICS) as LatencyMetric[]),
]);

export function isMetricName(name: string): name is MetricName {
  return (METRIC_NAMES as readonly string[]).includes(name);
}

/** The number of samples a metric stands on in a window: its denominator (latency: the calls). */
export function sampleCount(metric: MetricName, counts: WindowCounts): number {
  return metric in RATIO_METRICS
    ? counts[RATIO_METRICS[metric as RatioMetric].denominator]
    : counts.calls;
}

/** Derives every metric from the counts and the latency sketch. */
export function deriveRates(counts: WindowCounts, latency: LatencySketch): DerivedRates {
  const ratio = (metric: RatioMetric): number | null => {
    const { numerator, denominator, scale } = RATIO_METRICS[metric];
    const n = counts[denominator];
    // A sum (a bigint) becomes a number only for the division: the ratio is a double anyway.
    return n === 0 ? null : (Number(counts[numerator]) / n) * scale;
  };
  return {
    avg_cost_usd: ratio("avg_cost_usd"),
    fallback_rate: ratio("fallback_rate"),
    retry_rate: ratio("retry_rate"),
    low_confidence_rate: ratio("low_confidence_rate"),
    confidence_gate_block_rate: ratio("confidence_gate_block_rate"),
    prompt_diff_violation_rate: ratio("prompt_diff_violation_rate"),
    shadow_disagreement_rate: ratio("shadow_disagreement_rate"),
    deterministic_fallback_rate: ratio("deterministic_fallback_rate"),
    high_risk_path_rate: ratio("high_risk_path_rate"),
    golden_financial_failure_rate: ratio("golden_financial_failure_rate"),
    error_rate: ratio("error_rate"),
    latency_p50_ms: latency.quantile(LATENCY_METRICS.latency_p50_ms),
    latency_p95_ms: latency.quantile(LATENCY_METRICS.latency_p95_ms),
    latency_p99_ms: latency.quantile(LATENCY_METRICS.latency_p99_ms),
  };
}
