import type {
  MetricRollup,
  MetricThresholds,
  ModelCallEvent,
  WindowCounts,
} from "../avro/generated.js";
import { deriveRates } from "./rates.js";
import { LatencySketch } from "./sketch.js";
import type { TimeWindow } from "./window.js";
import { MICROS_PER_MILLI } from "./window.js";

/**
 * The thresholds the counts are taken with (metrics/README.md). Defaults: confidence below 0.7 is
 * low; a prompt diff score above 0.3 is a violation.
 */
export const DEFAULT_THRESHOLDS: MetricThresholds = Object.freeze({
  low_confidence: 0.7,
  prompt_diff: 0.3,
});

type Counts = { -readonly [K in keyof WindowCounts]: number };

function zeroCounts(): Counts {
  return {
    calls: 0,
    calls_with_cost: 0,
    cost_nano_usd: 0,
    prompt_tokens: 0,
    completion_tokens: 0,
    calls_tokens_reported: 0,
    calls_tokens_estimated: 0,
    calls_tokens_none: 0,
    fallbacks: 0,
    calls_with_retries: 0,
    retries: 0,
    low_confidence: 0,
    calls_with_confidence: 0,
    gate_blocks: 0,
    calls_with_gate: 0,
    prompt_diff_violations: 0,
    calls_with_prompt_diff: 0,
    shadow_disagreements: 0,
    calls_with_shadow: 0,
    deterministic_fallbacks: 0,
    high_risk: 0,
    golden_failures: 0,
    golden_with_result: 0,
    errors: 0,
    late: 0,
  };
}

const COUNT_NAMES = Object.keys(zeroCounts()) as (keyof Counts)[];

/**
 * The numerators, denominators and sums of one window for one service (and model), plus a
 * latency sketch. Mutable for speed while a window is open; {@link merge} and
 * {@link WindowAccumulator.toRollup} give values.
 *
 * Counts are exact integers. The cost sum is kept as a bigint, so it stays exact however many
 * calls add up; {@link counts} checks it still fits the Avro long's exact range as a number.
 */
export class WindowAccumulator {
  private readonly c: Counts = zeroCounts();
  private cost = 0n;
  private readonly latency = new LatencySketch();

  constructor(readonly thresholds: MetricThresholds = DEFAULT_THRESHOLDS) {}

  /** Counts one event (which must be valid: see `MODEL_CALL_EVENT.check`). */
  add(event: ModelCallEvent): void {
    const c = this.c;
    const thresholds = this.thresholds;
    c.calls++;
    if (event.cost_nano_usd !== null) {
      c.calls_with_cost++;
      this.cost += BigInt(event.cost_nano_usd);
    }
    if (event.prompt_tokens !== null) c.prompt_tokens += event.prompt_tokens;
    if (event.completion_tokens !== null) c.completion_tokens += event.completion_tokens;
    switch (event.token_source) {
      case "reported":
        c.calls_tokens_reported++;
        break;
      case "estimated":
        c.calls_tokens_estimated++;
        break;
      case "none":
        c.calls_tokens_none++;
        break;
    }
    if (event.fallback_used) c.fallbacks++;
    if (event.retries > 0) {
      c.calls_with_retries++;
      c.retries += event.retries;
    }
    const confidence = event.confidence;
    if (confidence !== null) {
      c.calls_with_confidence++;
      if (confidence < thresholds.low_confidence) c.low_confidence++;
      const gate = event.confidence_gate_threshold;
      if (gate !== null) {
        c.calls_with_gate++;
        if (confidence < gate) c.gate_blocks++;
      }
    }
    if (event.prompt_diff_score !== null) {
      c.calls_with_prompt_diff++;
      if (event.prompt_diff_score > thresholds.prompt_diff) c.prompt_diff_violations++;
    }
    if (event.shadow_agreement !== null) {
      c.calls_with_shadow++;
      if (!event.shadow_agreement) c.shadow_disagreements++;
    }
    if (event.high_risk_path) {
      c.high_risk++;
      if (event.deterministic_fallback_triggered) c.deterministic_fallbacks++;
    }
    if (event.is_golden_financial_scenario && event.golden_scenario_passed !== null) {
      c.golden_with_result++;
      if (!event.golden_scenario_passed) c.golden_failures++;
    }
    if (event.status === "error") c.errors++;
    this.latency.add((event.end_time - event.start_time) / MICROS_PER_MILLI);
  }

  /** Counts events that arrived after this window had closed (they are in no other count). */
  addLate(count = 1): void {
    this.c.late += count;
  }

  /** Adds everything `other` holds into this accumulator. */
  mergeFrom(other: WindowAccumulator): void {
    assertSameThresholds(this.thresholds, other.thresholds);
    for (const name of COUNT_NAMES) this.c[name] += other.c[name];
    this.cost += other.cost;
    this.latency.mergeFrom(other.latency);
  }

  /** How many calls were counted (late events excluded). */
  get calls(): number {
    return this.c.calls;
  }

  /** The latency sketch (read it, do not add to it). */
  get latencySketch(): LatencySketch {
    return this.latency;
  }

  /**
   * The counts as a record.
   *
   * @throws {RangeError} when the cost sum no longer fits an exact Avro long (> 2^53 − 1 nano-USD,
   *   about 9 million USD in one window).
   */
  counts(): WindowCounts {
    if (this.cost > BigInt(Number.MAX_SAFE_INTEGER))
      throw new RangeError(`cost sum ${this.cost} nano-USD exceeds the exact range of a rollup`);
    return { ...this.c, cost_nano_usd: Number(this.cost) };
  }

  /** The exact cost sum in nano-USD. */
  get costNanoUsd(): bigint {
    return this.cost;
  }

  /**
   * The rollup record of this window (rates derived from the counts), as its first emission
   * (`revision` 0; a later emission of the window sets its own).
   */
  toRollup(service: string, model: string | null, window: TimeWindow): MetricRollup {
    const counts = this.counts();
    return {
      service,
      model,
      window_start: window.start,
      window_end: window.end,
      thresholds: {
        low_confidence: this.thresholds.low_confidence,
        prompt_diff: this.thresholds.prompt_diff,
      },
      counts,
      latency: this.latency.toRecord(),
      rates: deriveRates(counts, this.latency),
      revision: 0,
    };
  }

  /** Rebuilds an accumulator from a rollup (to merge rollups, or to restore a checkpoint). */
  static fromRollup(rollup: MetricRollup): WindowAccumulator {
    const accumulator = new WindowAccumulator(rollup.thresholds);
    for (const name of COUNT_NAMES) accumulator.c[name] = rollup.counts[name];
    accumulator.cost = BigInt(rollup.counts.cost_nano_usd);
    accumulator.c.cost_nano_usd = 0; // the bigint holds the cost
    accumulator.latency.mergeFrom(LatencySketch.fromRecord(rollup.latency));
    return accumulator;
  }

  /** A copy that shares nothing with this one. */
  clone(): WindowAccumulator {
    const copy = new WindowAccumulator(this.thresholds);
    copy.mergeFrom(this);
    return copy;
  }
}

/** `a + b` as a new accumulator: associative and commutative; inputs are left unchanged. */
export function merge(a: WindowAccumulator, b: WindowAccumulator): WindowAccumulator {
  const result = a.clone();
  result.mergeFrom(b);
  return result;
}

function assertSameThresholds(a: MetricThresholds, b: MetricThresholds): void {
  if (a.low_confidence !== b.low_confidence || a.prompt_diff !== b.prompt_diff)
    throw new RangeError(
      `cannot merge counts taken with different thresholds (${JSON.stringify(a)} vs ${JSON.stringify(b)})`,
    );
}
