import { bigintFrom, INT64_MAX } from "../avro/bigint.js";
import type {
  MetricRollup,
  MetricThresholds,
  ModelCallEvent,
  WindowCounts,
} from "../avro/generated.js";
import { deriveRates, type SumName, type TallyName } from "./rates.js";
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

/** Every count as a number: a sum's part that is a safe integer (see {@link WindowAccumulator}). */
type Counts = { -readonly [K in keyof WindowCounts]: number };
type Sums<T> = { -readonly [K in SumName]: T };

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

/** Every sum at 0n (typed: a sum the contract adds that is missing here fails to compile). */
function zeroSums(): Sums<bigint> {
  return { cost_nano_usd: 0n, prompt_tokens: 0n, completion_tokens: 0n, retries: 0n };
}

/** The sums of {@link WindowCounts}: exact 64-bit integers, bigints in the rollup. */
export const SUM_NAMES: readonly SumName[] = Object.freeze(Object.keys(zeroSums()) as SumName[]);
const COUNT_NAMES = (Object.keys(zeroCounts()) as (keyof WindowCounts)[]).filter(
  (name): name is TallyName => !(SUM_NAMES as readonly string[]).includes(name),
);

/**
 * {@link WindowCounts} from what JSON or SQL text holds for them (a checkpoint, a row read as
 * text, an earlier version's numbers): the sums as bigints, the other counts as numbers.
 *
 * @throws {RangeError} when a count is missing or not an integer, or a sum outside int64.
 */
export function countsFrom(counts: object): WindowCounts {
  const raw = counts as Readonly<Record<string, unknown>>;
  const exact: Record<string, number | bigint> = {};
  for (const name of COUNT_NAMES) {
    const value = Number(raw[name]);
    if (!Number.isSafeInteger(value))
      throw new RangeError(`count ${name} is not an integer: ${String(raw[name])}`);
    exact[name] = value;
  }
  for (const name of SUM_NAMES) exact[name] = bigintFrom(raw[name]);
  return exact as unknown as WindowCounts;
}

const SAFE = Number.MAX_SAFE_INTEGER;

/**
 * The numerators, denominators and sums of one window for one service (and model), plus a
 * latency sketch. Mutable for speed while a window is open; {@link merge} and
 * {@link WindowAccumulator.toRollup} give values.
 *
 * Counts are exact integers. The sums (cost, tokens, retries) are exact 64-bit integers, bigints
 * in {@link counts}. Each is added as a number while it stays a safe integer (the usual case, and
 * fast); what passes 2^53 moves into a bigint part, so a sum is its bigint part plus its number
 * part. A sum never passes 2^63 − 1, the Avro long's (and PostgreSQL bigint's) largest value:
 * {@link overflow} tells an event that would take one past it, which is then not counted; {@link
 * add} refuses it before changing anything.
 */
export class WindowAccumulator {
  /** The counts; of a sum, its part below 2^53. */
  private readonly c: Counts = zeroCounts();
  /** The sums' bigint parts, once one passed 2^53 (undefined before: every sum is in `c`). */
  private high: Sums<bigint> | undefined;
  private readonly latency = new LatencySketch();

  constructor(readonly thresholds: MetricThresholds = DEFAULT_THRESHOLDS) {}

  /**
   * Why `event` cannot be counted here: a sum would pass 2^63 − 1 (the message names it); undefined
   * when it can. A function of the counts and the event only, so every reader of the log decides
   * alike.
   */
  overflow(event: ModelCallEvent): string | undefined {
    // Every sum below 2^53 and an event's values below 2^53 (the contract's longs): it fits.
    if (this.high === undefined) return undefined;
    return (
      this.exceeds("cost_nano_usd", event.cost_nano_usd) ??
      this.exceeds("prompt_tokens", event.prompt_tokens) ??
      this.exceeds("completion_tokens", event.completion_tokens) ??
      this.exceeds("retries", event.retries)
    );
  }

  private exceeds(name: SumName, value: number | null): string | undefined {
    if (value === null) return undefined;
    const sum = this.sum(name);
    return sum + BigInt(value) > INT64_MAX
      ? `counts.${name} ${sum} + ${value} would pass 2^63 - 1 (${INT64_MAX})`
      : undefined;
  }

  /** Adds a non-negative integer to a sum's number part, moving it to the bigint part past 2^53. */
  private addSum(name: SumName, value: number): void {
    const low = this.c[name] + value;
    if (low <= SAFE) this.c[name] = low;
    else {
      const high = (this.high ??= zeroSums());
      high[name] += BigInt(this.c[name]) + BigInt(value);
      this.c[name] = 0;
    }
  }

  /** A sum's exact value. */
  private sum(name: SumName): bigint {
    const low = BigInt(this.c[name]);
    return this.high === undefined ? low : this.high[name] + low;
  }

  /**
   * Counts one event (which must be valid: see `MODEL_CALL_EVENT.check`).
   *
   * @throws {RangeError} when a sum would pass 2^63 − 1 (see {@link overflow}); nothing is
   *   counted then.
   */
  add(event: ModelCallEvent): void {
    if (this.high !== undefined) {
      const refused = this.overflow(event);
      if (refused !== undefined) throw new RangeError(refused);
    }
    const c = this.c;
    const thresholds = this.thresholds;
    c.calls++;
    const cost = event.cost_nano_usd;
    if (cost !== null) {
      c.calls_with_cost++;
      if (c.cost_nano_usd + cost <= SAFE) c.cost_nano_usd += cost;
      else this.addSum("cost_nano_usd", cost);
    }
    const prompt = event.prompt_tokens;
    if (prompt !== null) {
      if (c.prompt_tokens + prompt <= SAFE) c.prompt_tokens += prompt;
      else this.addSum("prompt_tokens", prompt);
    }
    const completion = event.completion_tokens;
    if (completion !== null) {
      if (c.completion_tokens + completion <= SAFE) c.completion_tokens += completion;
      else this.addSum("completion_tokens", completion);
    }
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
      if (c.retries + event.retries <= SAFE) c.retries += event.retries;
      else this.addSum("retries", event.retries);
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

  /**
   * Adds everything `other` holds into this accumulator.
   *
   * @throws {RangeError} when the thresholds differ, or a sum would pass 2^63 − 1; nothing is
   *   added then.
   */
  mergeFrom(other: WindowAccumulator): void {
    assertSameThresholds(this.thresholds, other.thresholds);
    // Below 2^53 on both sides, the sums fit: only bigint parts can take one past 2^63 − 1.
    if (this.high !== undefined || other.high !== undefined)
      for (const name of SUM_NAMES) {
        const sum = this.sum(name) + other.sum(name);
        if (sum > INT64_MAX)
          throw new RangeError(`merged counts.${name} ${sum} would pass 2^63 - 1`);
      }
    for (const name of COUNT_NAMES) this.c[name] += other.c[name];
    for (const name of SUM_NAMES) {
      const high = other.high?.[name];
      if (high !== undefined && high !== 0n) (this.high ??= zeroSums())[name] += high;
      this.addSum(name, other.c[name]);
    }
    this.latency.mergeFrom(other.latency);
  }

  /** Sets a sum (restoring a rollup). */
  private setSum(name: SumName, value: bigint): void {
    if (value <= BigInt(SAFE)) {
      this.c[name] = Number(value);
      if (this.high !== undefined) this.high[name] = 0n;
    } else {
      this.c[name] = 0;
      (this.high ??= zeroSums())[name] = value;
    }
  }

  /** How many calls were counted (late events excluded). */
  get calls(): number {
    return this.c.calls;
  }

  /** The latency sketch (read it, do not add to it). */
  get latencySketch(): LatencySketch {
    return this.latency;
  }

  /** The counts as a record: the sums as bigints. */
  counts(): WindowCounts {
    return {
      ...this.c,
      cost_nano_usd: this.sum("cost_nano_usd"),
      prompt_tokens: this.sum("prompt_tokens"),
      completion_tokens: this.sum("completion_tokens"),
      retries: this.sum("retries"),
    };
  }

  /** The exact cost sum in nano-USD. */
  get costNanoUsd(): bigint {
    return this.sum("cost_nano_usd");
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
      other_models: false,
    };
  }

  /** Rebuilds an accumulator from a rollup (to merge rollups, or to restore a checkpoint). */
  static fromRollup(rollup: MetricRollup): WindowAccumulator {
    const accumulator = new WindowAccumulator(rollup.thresholds);
    for (const name of COUNT_NAMES) accumulator.c[name] = rollup.counts[name];
    for (const name of SUM_NAMES) accumulator.setSum(name, rollup.counts[name]);
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
