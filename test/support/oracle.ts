/**
 * An oracle written apart from `metrics/`: every count, rate and alert transition of the product
 * contract computed by brute force from the events (filters and counts over a whole window),
 * importing nothing from the metrics core but its types. Tests above the unit tier compare what
 * the processor, the sink and the CLI produce with this, so a wrong formula in the core cannot
 * hide by being used on both sides of an assertion.
 */
import { expect } from "vitest";

import type {
  AlertEvent,
  MetricThresholds,
  ModelCallEvent,
  WindowCounts,
  DerivedRates,
} from "../../avro/generated.js";

/** Confidence below 0.7 is low; a prompt-diff score above 0.3 is a violation (the README's defaults). */
export const ORACLE_DEFAULT_THRESHOLDS: MetricThresholds = {
  low_confidence: 0.7,
  prompt_diff: 0.3,
};

/**
 * Models of a service with a series of their own per window (the first seen), written out here
 * (the README's default `maxModelsPerWindow`), not imported from the processor.
 */
export const ORACLE_MAX_MODELS_PER_WINDOW = 200;

/** The model of a window's overflow series, as the contract states it. */
export const ORACLE_OTHER_MODELS_NAME = "(other models)";

/**
 * The counts and rates of one window of one service (model `null`: every model; `otherModels`:
 * the window's overflow series, the models after its first {@link ORACLE_MAX_MODELS_PER_WINDOW}).
 */
export interface OracleWindow {
  readonly service: string;
  readonly model: string | null;
  readonly otherModels: boolean;
  /** µs since the epoch. */
  readonly windowStart: number;
  readonly windowEnd: number;
  /** Every count, `late` included (0 unless the test adds late events). */
  /** The sums (cost, tokens, retries) as bigints, exact; the other counts as numbers. */
  readonly counts: { -readonly [K in keyof WindowCounts]: WindowCounts[K] };
  readonly rates: { -readonly [K in keyof DerivedRates]: number | null };
  /** Latencies in ms, ascending. */
  readonly latenciesMs: readonly number[];
}

/**
 * `service`, model and window start, joined by NUL (which no name may contain); the overflow
 * series (`otherModels`) has a model of its own, `\u0001other`.
 */
export function oracleKey(
  service: string,
  model: string | null,
  windowStart: number,
  otherModels = false,
): string {
  return `${service}\u0000${otherModels ? OTHER_KEY : (model ?? TOTAL_KEY)}\u0000${windowStart}`;
}
const TOTAL_KEY = "\u0001total";
const OTHER_KEY = "\u0001other";

const countsModelCalls = (event: ModelCallEvent): boolean =>
  event.kind === "model_call" || event.kind === "sampling";

/** The nearest-rank sample at quantile `q` (rank ⌊q·(n−1)⌋ of the ascending latencies). */
export function exactQuantile(sortedMs: readonly number[], q: number): number | null {
  if (sortedMs.length === 0) return null;
  return sortedMs[Math.floor(q * (sortedMs.length - 1))] ?? null;
}

/** One window's counts and rates from its events, by filtering and counting. */
export function oracleWindow(
  events: readonly ModelCallEvent[],
  window: {
    service: string;
    model: string | null;
    start: number;
    end: number;
    otherModels?: boolean;
  },
  thresholds: MetricThresholds = ORACLE_DEFAULT_THRESHOLDS,
  late = 0,
): OracleWindow {
  const count = (predicate: (e: ModelCallEvent) => boolean): number =>
    events.filter(predicate).length;
  const sum = (pick: (e: ModelCallEvent) => number | null): bigint =>
    events.reduce((total, e) => total + BigInt(pick(e) ?? 0), 0n);
  const rate = (numerator: number, denominator: number): number | null =>
    denominator === 0 ? null : numerator / denominator;
  const withCost = events.filter((e) => e.cost_nano_usd !== null);
  const costSum = withCost.reduce((total, e) => total + BigInt(e.cost_nano_usd ?? 0), 0n);
  const counts = {
    calls: events.length,
    calls_with_cost: withCost.length,
    cost_nano_usd: costSum,
    prompt_tokens: sum((e) => e.prompt_tokens),
    completion_tokens: sum((e) => e.completion_tokens),
    calls_tokens_reported: count((e) => e.token_source === "reported"),
    calls_tokens_estimated: count((e) => e.token_source === "estimated"),
    calls_tokens_none: count((e) => e.token_source === "none"),
    fallbacks: count((e) => e.fallback_used),
    calls_with_retries: count((e) => e.retries > 0),
    retries: sum((e) => e.retries),
    low_confidence: count((e) => e.confidence !== null && e.confidence < thresholds.low_confidence),
    calls_with_confidence: count((e) => e.confidence !== null),
    gate_blocks: count(
      (e) =>
        e.confidence !== null &&
        e.confidence_gate_threshold !== null &&
        e.confidence < e.confidence_gate_threshold,
    ),
    calls_with_gate: count((e) => e.confidence !== null && e.confidence_gate_threshold !== null),
    prompt_diff_violations: count(
      (e) => e.prompt_diff_score !== null && e.prompt_diff_score > thresholds.prompt_diff,
    ),
    calls_with_prompt_diff: count((e) => e.prompt_diff_score !== null),
    shadow_disagreements: count((e) => e.shadow_agreement === false),
    calls_with_shadow: count((e) => e.shadow_agreement !== null),
    deterministic_fallbacks: count((e) => e.high_risk_path && e.deterministic_fallback_triggered),
    high_risk: count((e) => e.high_risk_path),
    golden_failures: count(
      (e) => e.is_golden_financial_scenario && e.golden_scenario_passed === false,
    ),
    golden_with_result: count(
      (e) => e.is_golden_financial_scenario && e.golden_scenario_passed !== null,
    ),
    errors: count((e) => e.status === "error"),
    late,
  };
  const latenciesMs = events.map((e) => (e.end_time - e.start_time) / 1000).sort((a, b) => a - b);
  const n = counts.calls;
  return {
    service: window.service,
    model: window.model,
    otherModels: window.otherModels === true,
    windowStart: window.start,
    windowEnd: window.end,
    counts,
    latenciesMs,
    rates: {
      avg_cost_usd:
        counts.calls_with_cost === 0 ? null : (Number(costSum) / counts.calls_with_cost) * 1e-9,
      fallback_rate: rate(counts.fallbacks, n),
      retry_rate: rate(counts.calls_with_retries, n),
      low_confidence_rate: rate(counts.low_confidence, counts.calls_with_confidence),
      confidence_gate_block_rate: rate(counts.gate_blocks, counts.calls_with_gate),
      prompt_diff_violation_rate: rate(
        counts.prompt_diff_violations,
        counts.calls_with_prompt_diff,
      ),
      shadow_disagreement_rate: rate(counts.shadow_disagreements, counts.calls_with_shadow),
      deterministic_fallback_rate: rate(counts.deterministic_fallbacks, counts.high_risk),
      high_risk_path_rate: rate(counts.high_risk, n),
      golden_financial_failure_rate: rate(counts.golden_failures, counts.golden_with_result),
      error_rate: rate(counts.errors, n),
      latency_p50_ms: exactQuantile(latenciesMs, 0.5),
      latency_p95_ms: exactQuantile(latenciesMs, 0.95),
      latency_p99_ms: exactQuantile(latenciesMs, 0.99),
    },
  };
}

/**
 * Every window of every service (model `null`) and of every (service, model) that has model
 * calls, from on-time events; tool, resource and prompt spans are not counted. Of each (service,
 * window), the first `maxModelsPerWindow` models in the events' order (the log's) have a window
 * of their own; the calls of the others make the window's overflow series. `lateByKey` (by
 * {@link oracleKey}) adds late counts, creating a window that has only late events; its models
 * take their places after the window's on-time events (a late event of a model beyond the cap
 * counts in the overflow series).
 */
export function oracleRollups(
  events: readonly ModelCallEvent[],
  windowMicros: number,
  options: {
    thresholds?: MetricThresholds;
    lateByKey?: ReadonlyMap<string, number>;
    maxModelsPerWindow?: number;
  } = {},
): Map<string, OracleWindow> {
  const maxModels = options.maxModelsPerWindow ?? ORACLE_MAX_MODELS_PER_WINDOW;
  const groups = new Map<
    string,
    {
      service: string;
      model: string | null;
      otherModels: boolean;
      start: number;
      events: ModelCallEvent[];
      late: number;
    }
  >();
  /** By service and window start: the models with a window of their own, in order. */
  const own = new Map<string, string[]>();
  const add = (
    service: string,
    model: string | null,
    start: number,
    event: ModelCallEvent | undefined,
    late = 0,
  ) => {
    let otherModels = false;
    if (model !== null) {
      const slot = `${service}\u0000${start}`;
      const models = own.get(slot) ?? [];
      own.set(slot, models);
      if (!models.includes(model)) {
        if (models.length < maxModels) models.push(model);
        else otherModels = true;
      }
    }
    const key = oracleKey(service, model, start, otherModels);
    let group = groups.get(key);
    if (!group) {
      group = {
        service,
        model: otherModels ? ORACLE_OTHER_MODELS_NAME : model,
        otherModels,
        start,
        events: [],
        late: 0,
      };
      groups.set(key, group);
    }
    if (event) group.events.push(event);
    group.late += late;
  };
  for (const event of events) {
    if (!countsModelCalls(event)) continue;
    const start =
      event.end_time - (((event.end_time % windowMicros) + windowMicros) % windowMicros);
    add(event.service, null, start, event);
    if (event.model !== null) add(event.service, event.model, start, event);
  }
  for (const [key, late] of options.lateByKey ?? []) {
    const [service = "", model = "", start = "0"] = key.split("\u0000");
    add(service, model === TOTAL_KEY ? null : model, Number(start), undefined, late);
  }
  const result = new Map<string, OracleWindow>();
  for (const [key, group] of groups)
    result.set(
      key,
      oracleWindow(
        group.events,
        {
          service: group.service,
          model: group.model,
          start: group.start,
          end: group.start + windowMicros,
          otherModels: group.otherModels,
        },
        options.thresholds,
        group.late,
      ),
    );
  return result;
}

/** A rule as the oracle judges it. */
export interface OracleRule {
  readonly key: string;
  readonly metric: keyof DerivedRates;
  readonly comparator: "gt" | "gte" | "lt" | "lte";
  readonly threshold: number;
  readonly minSamples: number;
}

/** The denominator a metric stands on (latency: the calls). */
const SAMPLES: Record<
  keyof DerivedRates,
  Exclude<keyof WindowCounts, "cost_nano_usd" | "prompt_tokens" | "completion_tokens" | "retries">
> = {
  avg_cost_usd: "calls_with_cost",
  fallback_rate: "calls",
  retry_rate: "calls",
  low_confidence_rate: "calls_with_confidence",
  confidence_gate_block_rate: "calls_with_gate",
  prompt_diff_violation_rate: "calls_with_prompt_diff",
  shadow_disagreement_rate: "calls_with_shadow",
  deterministic_fallback_rate: "high_risk",
  high_risk_path_rate: "calls",
  golden_financial_failure_rate: "golden_with_result",
  error_rate: "calls",
  latency_p50_ms: "calls",
  latency_p95_ms: "calls",
  latency_p99_ms: "calls",
};

/** An alert transition as the oracle derives it. */
export interface OracleTransition {
  readonly service: string;
  readonly rule: string;
  readonly state: "firing" | "resolved";
  /** The window that caused the transition. */
  readonly windowStart: number;
  /** The window the incident fired in. */
  readonly firedWindowStart: number;
  readonly observed: number | null;
  readonly samples: number;
}

/** An emitted alert as the oracle's transition, to compare the two. */
export function transitionOf(alert: AlertEvent): OracleTransition {
  return {
    service: alert.service,
    rule: alert.rule,
    state: alert.state,
    windowStart: alert.window_start,
    firedWindowStart: alert.fired_window_start,
    observed: alert.observed_value,
    samples: alert.sample_count,
  };
}

/** Transitions in a canonical order (service, window, rule, state), for set-like comparison. */
export function orderedTransitions(list: readonly OracleTransition[]): OracleTransition[] {
  const text = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  return [...list].sort(
    (a, b) =>
      text(a.service, b.service) ||
      a.windowStart - b.windowStart ||
      text(a.rule, b.rule) ||
      text(a.state, b.state),
  );
}

/**
 * Alert transitions of the service totals, window by window in time order: a breach while quiet
 * fires, a later window within bounds resolves, too few samples or a null value change nothing.
 */
export function oracleAlerts(
  windows: Iterable<OracleWindow>,
  rules: readonly OracleRule[],
): OracleTransition[] {
  const totals = [...windows]
    .filter((w) => w.model === null)
    .sort((a, b) =>
      a.service === b.service ? a.windowStart - b.windowStart : a.service < b.service ? -1 : 1,
    );
  const firing = new Map<string, number>();
  const transitions: OracleTransition[] = [];
  for (const window of totals)
    for (const rule of rules) {
      const slot = `${window.service}\u0000${rule.key}`;
      const value = window.rates[rule.metric];
      const samples = window.counts[SAMPLES[rule.metric]];
      if (value === null || samples === 0 || samples < rule.minSamples) continue;
      const breach =
        rule.comparator === "gt"
          ? value > rule.threshold
          : rule.comparator === "gte"
            ? value >= rule.threshold
            : rule.comparator === "lt"
              ? value < rule.threshold
              : value <= rule.threshold;
      const fired = firing.get(slot);
      if (breach && fired === undefined) {
        firing.set(slot, window.windowStart);
        transitions.push({
          service: window.service,
          rule: rule.key,
          state: "firing",
          windowStart: window.windowStart,
          firedWindowStart: window.windowStart,
          observed: value,
          samples,
        });
      } else if (!breach && fired !== undefined) {
        firing.delete(slot);
        transitions.push({
          service: window.service,
          rule: rule.key,
          state: "resolved",
          windowStart: window.windowStart,
          firedWindowStart: fired,
          observed: value,
          samples,
        });
      }
    }
  return transitions;
}

/** What a stored or emitted rollup offers for comparison (topic records and SQL rows map to it). */
export interface ComparableRollup {
  readonly service: string;
  readonly model: string | null;
  /** The window's overflow series (a rollup's `other_models`, scope 'other'); absent: false. */
  readonly otherModels?: boolean;
  readonly windowStart: number;
  readonly counts: Partial<Record<keyof WindowCounts, number | bigint | string>>;
  readonly rates: Partial<Record<keyof DerivedRates, number | string | null>>;
}

/**
 * Asserts that `actual` holds exactly the oracle's windows: the same keys, every count given
 * equal, every ratio given equal to 12 digits, every latency quantile given within the sketch's
 * 1% relative accuracy of the exact sample at its rank.
 */
export function expectMatchesOracle(
  actual: Iterable<ComparableRollup>,
  expected: ReadonlyMap<string, OracleWindow>,
  where = "rollups",
): void {
  const seen = new Set<string>();
  for (const row of actual) {
    const key = oracleKey(row.service, row.model, row.windowStart, row.otherModels === true);
    const label = `${where} ${row.service}/${row.otherModels === true ? "(other models)" : (row.model ?? "*")}@${new Date(row.windowStart / 1000).toISOString()}`;
    const want = expected.get(key);
    expect(want, `${label}: not in the oracle`).toBeDefined();
    if (!want) continue;
    expect(seen.has(key), `${label}: twice`).toBe(false);
    seen.add(key);
    // Each check runs `expect` only when it fails (the same assertion and message): thousands
    // of rows times ~40 columns through `expect` cost seconds.
    for (const [name, value] of Object.entries(row.counts) as [
      string,
      number | bigint | string | undefined,
    ][]) {
      if (value === undefined) continue;
      const count = want.counts[name as keyof WindowCounts];
      // Compared exactly, as decimal text: a sum past 2^53 is no number.
      if (String(value) !== String(count))
        expect(String(value), `${label} ${name}`).toBe(String(count));
    }
    for (const [name, raw] of Object.entries(row.rates) as [string, unknown][]) {
      if (raw === undefined) continue;
      const metric = name as keyof DerivedRates;
      const exact = want.rates[metric];
      const value = raw === null ? null : Number(raw);
      if (exact === null) {
        if (value !== null) expect(value, `${label} ${name}`).toBeNull();
        continue;
      }
      if (value === null) expect(value, `${label} ${name}`).not.toBeNull();
      if (metric.startsWith("latency_")) {
        const error = Math.abs((value ?? 0) - exact);
        if (!(error <= exact * 0.01 + 1e-9))
          expect(error, `${label} ${name}: ${value} vs exact ${exact}`).toBeLessThanOrEqual(
            exact * 0.01 + 1e-9,
          );
      } else if (!(Math.abs((value ?? Number.NaN) - exact) < 5e-13))
        // toBeCloseTo(exact, 12): |value - exact| < 10^-12 / 2
        expect(value, `${label} ${name}`).toBeCloseTo(exact, 12);
    }
  }
  const missing = [...expected.keys()].filter((key) => !seen.has(key));
  expect(
    missing.map((key) => key.split("\u0000").join("/")),
    `${where}: windows the oracle has that are missing`,
  ).toEqual([]);
}

/** The default alert rules as metrics/README.md lists them (written out here, not imported from metrics/). */
export const ORACLE_DEFAULT_RULES: readonly OracleRule[] = [
  {
    key: "golden_financial_failure_rate_high",
    metric: "golden_financial_failure_rate",
    comparator: "gt",
    threshold: 0,
    minSamples: 1,
  },
  {
    key: "confidence_gate_block_rate_high",
    metric: "confidence_gate_block_rate",
    comparator: "gt",
    threshold: 0.2,
    minSamples: 1,
  },
  {
    key: "low_confidence_rate_high",
    metric: "low_confidence_rate",
    comparator: "gt",
    threshold: 0.25,
    minSamples: 1,
  },
  {
    key: "prompt_diff_violation_rate_high",
    metric: "prompt_diff_violation_rate",
    comparator: "gt",
    threshold: 0.2,
    minSamples: 1,
  },
  {
    key: "shadow_disagreement_rate_high",
    metric: "shadow_disagreement_rate",
    comparator: "gt",
    threshold: 0.1,
    minSamples: 1,
  },
  {
    key: "deterministic_fallback_rate_high",
    metric: "deterministic_fallback_rate",
    comparator: "gt",
    threshold: 0.5,
    minSamples: 1,
  },
  {
    key: "error_rate_high",
    metric: "error_rate",
    comparator: "gt",
    threshold: 0.05,
    minSamples: 20,
  },
  {
    key: "fallback_rate_high",
    metric: "fallback_rate",
    comparator: "gt",
    threshold: 0.2,
    minSamples: 20,
  },
  {
    key: "retry_rate_high",
    metric: "retry_rate",
    comparator: "gt",
    threshold: 0.3,
    minSamples: 20,
  },
  {
    key: "latency_p95_high",
    metric: "latency_p95_ms",
    comparator: "gt",
    threshold: 30_000,
    minSamples: 20,
  },
];
