import fc from "fast-check";
import { describe, expect, it } from "vitest";

import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { MetricRollup, MetricThresholds, ModelCallEvent } from "../avro/generated.js";
import {
  LatencySketch,
  DEFAULT_THRESHOLDS,
  merge,
  METRIC_NAMES,
  rollupEvents,
  rollupKey,
  WindowAccumulator,
  windowOf,
} from "../metrics/index.js";
import { eventArbitrary, sampleEvent } from "./support/events.js";

/**
 * The oracle: every metric of DESIGN.md §4 computed directly from the events, written apart
 * from the accumulator (filters and counts over the whole batch).
 */
function oracle(events: readonly ModelCallEvent[], thresholds: MetricThresholds) {
  const count = (predicate: (e: ModelCallEvent) => boolean): number =>
    events.filter(predicate).length;
  const rate = (numerator: number, denominator: number): number | null =>
    denominator === 0 ? null : numerator / denominator;
  const withCost = events.filter((e) => e.cost_nano_usd !== null);
  const costSum = withCost.reduce((sum, e) => sum + BigInt(e.cost_nano_usd ?? 0), 0n);
  const withConfidence = events.filter((e) => e.confidence !== null);
  const withGate = events.filter(
    (e) => e.confidence !== null && e.confidence_gate_threshold !== null,
  );
  const withDiff = events.filter((e) => e.prompt_diff_score !== null);
  const withShadow = events.filter((e) => e.shadow_agreement !== null);
  const highRisk = events.filter((e) => e.high_risk_path);
  const golden = events.filter(
    (e) => e.is_golden_financial_scenario && e.golden_scenario_passed !== null,
  );
  const n = events.length;
  return {
    calls: n,
    cost_nano_usd: costSum,
    prompt_tokens: events.reduce((sum, e) => sum + (e.prompt_tokens ?? 0), 0),
    completion_tokens: events.reduce((sum, e) => sum + (e.completion_tokens ?? 0), 0),
    calls_tokens_none: count((e) => e.token_source === "none"),
    errors: count((e) => e.status === "error"),
    rates: {
      avg_cost_usd: withCost.length === 0 ? null : (Number(costSum) / withCost.length) * 1e-9,
      fallback_rate: rate(
        count((e) => e.fallback_used),
        n,
      ),
      retry_rate: rate(
        count((e) => e.retries > 0),
        n,
      ),
      low_confidence_rate: rate(
        withConfidence.filter((e) => (e.confidence ?? 1) < thresholds.low_confidence).length,
        withConfidence.length,
      ),
      confidence_gate_block_rate: rate(
        withGate.filter((e) => (e.confidence ?? 1) < (e.confidence_gate_threshold ?? 0)).length,
        withGate.length,
      ),
      prompt_diff_violation_rate: rate(
        withDiff.filter((e) => (e.prompt_diff_score ?? 0) > thresholds.prompt_diff).length,
        withDiff.length,
      ),
      shadow_disagreement_rate: rate(
        withShadow.filter((e) => e.shadow_agreement === false).length,
        withShadow.length,
      ),
      deterministic_fallback_rate: rate(
        highRisk.filter((e) => e.deterministic_fallback_triggered).length,
        highRisk.length,
      ),
      high_risk_path_rate: rate(highRisk.length, n),
      golden_financial_failure_rate: rate(
        golden.filter((e) => e.golden_scenario_passed === false).length,
        golden.length,
      ),
      error_rate: rate(
        count((e) => e.status === "error"),
        n,
      ),
    },
    latenciesMs: events.map((e) => (e.end_time - e.start_time) / 1000).sort((a, b) => a - b),
  };
}

function accumulate(
  events: readonly ModelCallEvent[],
  thresholds = DEFAULT_THRESHOLDS,
): WindowAccumulator {
  const accumulator = new WindowAccumulator(thresholds);
  for (const event of events) accumulator.add(event);
  return accumulator;
}

const WINDOW = { start: 1_764_000_000_000_000, end: 1_764_000_060_000_000 };
const thresholdsArb = fc.record({
  low_confidence: fc.double({ min: 0, max: 1, noNaN: true }),
  prompt_diff: fc.double({ min: 0, max: 1, noNaN: true }),
});

describe("window accumulator against a brute-force oracle", () => {
  it("generates only events the contract accepts", () => {
    fc.assert(
      fc.property(eventArbitrary(), (event) => {
        expect(MODEL_CALL_EVENT.check(event)).toBeUndefined();
      }),
      { numRuns: 500 },
    );
  });

  it("accumulate-then-derive equals a direct batch computation of every metric", () => {
    fc.assert(
      fc.property(
        fc.array(eventArbitrary(), { maxLength: 60 }),
        thresholdsArb,
        (events, thresholds) => {
          const rollup = accumulate(events, thresholds).toRollup("svc", null, WINDOW);
          const expected = oracle(events, thresholds);
          expect(rollup.counts.calls).toBe(expected.calls);
          expect(BigInt(rollup.counts.cost_nano_usd)).toBe(expected.cost_nano_usd);
          expect(rollup.counts.prompt_tokens).toBe(expected.prompt_tokens);
          expect(rollup.counts.completion_tokens).toBe(expected.completion_tokens);
          expect(rollup.counts.calls_tokens_none).toBe(expected.calls_tokens_none);
          expect(rollup.counts.errors).toBe(expected.errors);
          for (const [metric, value] of Object.entries(expected.rates)) {
            const actual = rollup.rates[metric as keyof typeof expected.rates];
            if (value === null) expect(actual, metric).toBeNull();
            else expect(actual, metric).toBeCloseTo(value, 12);
          }
          // Latency quantiles: within DDSketch's 1% relative accuracy of the sample at that rank.
          for (const [metric, q] of [
            ["latency_p50_ms", 0.5],
            ["latency_p95_ms", 0.95],
            ["latency_p99_ms", 0.99],
          ] as const) {
            const actual = rollup.rates[metric];
            if (events.length === 0) {
              expect(actual).toBeNull();
              continue;
            }
            const exact = expected.latenciesMs[Math.floor(q * (events.length - 1))] ?? 0;
            expect(actual).not.toBeNull();
            expect(
              Math.abs((actual ?? 0) - exact),
              `${metric}: ${actual} vs ${exact}`,
            ).toBeLessThanOrEqual(exact * 0.01 + 1e-9);
          }
        },
      ),
      { numRuns: 2000 },
    );
  });

  it("merge is commutative and associative, and equals accumulating the union", () => {
    fc.assert(
      fc.property(
        fc.array(eventArbitrary(), { maxLength: 30 }),
        fc.array(eventArbitrary(), { maxLength: 30 }),
        fc.array(eventArbitrary(), { maxLength: 30 }),
        (a, b, c) => {
          const [x, y, z] = [accumulate(a), accumulate(b), accumulate(c)];
          const roll = (acc: WindowAccumulator): MetricRollup => acc.toRollup("svc", null, WINDOW);
          const union = roll(accumulate([...a, ...b, ...c]));
          expect(roll(merge(x, y))).toEqual(roll(merge(y, x)));
          expect(roll(merge(merge(x, y), z))).toEqual(roll(merge(x, merge(y, z))));
          expect(roll(merge(merge(x, y), z))).toEqual(union);
          // Inputs are left unchanged by merge.
          expect(roll(x)).toEqual(roll(accumulate(a)));
        },
      ),
      { numRuns: 700 },
    );
  });

  it("rebuilds an accumulator from its rollup, so rollups of small windows add up to larger ones", () => {
    fc.assert(
      fc.property(
        fc.array(eventArbitrary({ spanMicros: 3_600_000_000 }), { maxLength: 80 }),
        (events) => {
          const minute = rollupEvents(events, 60_000_000).filter((r) => r.model === null);
          const hour = rollupEvents(events, 3_600_000_000).filter((r) => r.model === null);
          for (const hourly of hour) {
            const parts = minute.filter(
              (r) =>
                r.service === hourly.service &&
                r.window_start >= hourly.window_start &&
                r.window_end <= hourly.window_end,
            );
            const merged = parts
              .map((r) => WindowAccumulator.fromRollup(r))
              .reduce((sum, next) => merge(sum, next), new WindowAccumulator());
            const window = { start: hourly.window_start, end: hourly.window_end };
            expect(merged.toRollup(hourly.service, null, window)).toEqual(hourly);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe("rollups of a batch", () => {
  it("keep every model call exactly once in its service total, models add up, tool spans stay out", () => {
    fc.assert(
      fc.property(fc.array(eventArbitrary(), { maxLength: 80 }), (events) => {
        const rollups = rollupEvents(events, 60_000_000);
        const modelCalls = events.filter((e) => e.kind === "model_call" || e.kind === "sampling");
        const totals = rollups.filter((r) => r.model === null);
        expect(totals.reduce((sum, r) => sum + r.counts.calls, 0)).toBe(modelCalls.length);
        const modelled = rollups.filter((r) => r.model !== null);
        expect(modelled.reduce((sum, r) => sum + r.counts.calls, 0)).toBe(
          modelCalls.filter((e) => e.model !== null).length,
        );
        expect(new Set(rollups.map(rollupKey)).size).toBe(rollups.length);
        // The same events in another order give the same rollups, bit for bit.
        expect(rollupEvents([...events].reverse(), 60_000_000)).toEqual(rollups);
      }),
      { numRuns: 500 },
    );
  });
});

describe("derived metrics at their edges", () => {
  const empty = new WindowAccumulator().toRollup("svc", null, WINDOW);

  it("are all null for an empty window, never 0", () => {
    for (const metric of METRIC_NAMES) expect(empty.rates[metric], metric).toBeNull();
  });

  it.each([
    ["avg_cost_usd", { cost_nano_usd: null }],
    ["low_confidence_rate", { confidence: null }],
    ["confidence_gate_block_rate", { confidence_gate_threshold: null }],
    ["confidence_gate_block_rate", { confidence: null }],
    ["prompt_diff_violation_rate", { prompt_diff_score: null }],
    ["shadow_disagreement_rate", { shadow_agreement: null }],
    ["deterministic_fallback_rate", { high_risk_path: false }],
    ["golden_financial_failure_rate", { is_golden_financial_scenario: false }],
    ["golden_financial_failure_rate", { golden_scenario_passed: null }],
  ] as const)("%s is null when its denominator is 0 (%o)", (metric, overrides) => {
    const rollup = accumulate([sampleEvent(overrides)]).toRollup("svc", null, WINDOW);
    expect(rollup.counts.calls).toBe(1);
    expect(rollup.rates[metric]).toBeNull();
  });

  it("counts a value on a threshold as not breaching it (strict comparisons)", () => {
    const rollup = accumulate([
      sampleEvent({ confidence: 0.7, confidence_gate_threshold: 0.7, prompt_diff_score: 0.3 }),
    ]).toRollup("svc", null, WINDOW);
    expect(rollup.rates.low_confidence_rate).toBe(0);
    expect(rollup.rates.confidence_gate_block_rate).toBe(0);
    expect(rollup.rates.prompt_diff_violation_rate).toBe(0);
  });

  it("keeps the cost sum exact beyond what floating point adds exactly", () => {
    const accumulator = new WindowAccumulator();
    // 0.1 USD, 0.2 USD: as floats 0.1 + 0.2 !== 0.3; as nano-USD integers it is exact.
    accumulator.add(sampleEvent({ cost_nano_usd: 100_000_000 }));
    accumulator.add(sampleEvent({ cost_nano_usd: 200_000_000 }));
    expect(accumulator.costNanoUsd).toBe(300_000_000n);
    const big = new WindowAccumulator();
    for (let i = 0; i < 3; i++)
      big.add(sampleEvent({ cost_nano_usd: Number.MAX_SAFE_INTEGER - 1 }));
    expect(big.costNanoUsd).toBe(3n * BigInt(Number.MAX_SAFE_INTEGER - 1));
    expect(() => big.counts()).toThrow(/exceeds the exact range/);
  });

  it("counts late events apart from the calls", () => {
    const accumulator = accumulate([sampleEvent()]);
    accumulator.addLate(2);
    const rollup = accumulator.toRollup("svc", null, WINDOW);
    expect(rollup.counts.late).toBe(2);
    expect(rollup.counts.calls).toBe(1);
  });

  it("refuses to merge counts taken with different thresholds", () => {
    expect(() =>
      merge(
        new WindowAccumulator(),
        new WindowAccumulator({ low_confidence: 0.5, prompt_diff: 0.3 }),
      ),
    ).toThrow(/different thresholds/);
  });
});

describe("tumbling window assignment", () => {
  const size = 60_000_000;

  it("aligns to the epoch and holds the event, for any time and size", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: -1e15, max: 4e15 }),
        fc.integer({ min: 1, max: 86_400_000_000 }),
        (t, s) => {
          const window = windowOf(t, s);
          expect(window.start % s === 0).toBe(true);
          expect(window.start <= t && t < window.end).toBe(true);
          expect(window.end - window.start).toBe(s);
          // Stable at the boundary: an event exactly at the end is in the next window.
          expect(windowOf(window.end, s).start).toBe(window.end);
          expect(windowOf(window.end - 1, s).start).toBe(window.start);
        },
      ),
      { numRuns: 2000 },
    );
  });

  it("puts an event exactly at a window end into the next window", () => {
    expect(windowOf(60_000_000, size)).toEqual({ start: 60_000_000, end: 120_000_000 });
    expect(windowOf(59_999_999, size)).toEqual({ start: 0, end: 60_000_000 });
    expect(windowOf(-1, size)).toEqual({ start: -60_000_000, end: 0 });
  });

  it("rejects a size or time that is not a safe integer", () => {
    expect(() => windowOf(1, 0)).toThrow(RangeError);
    expect(() => windowOf(1.5, size)).toThrow(RangeError);
    expect(() => windowOf(Number.NaN, size)).toThrow(RangeError);
  });
});

describe("latency sketch merges", () => {
  // Found by the merge property (seed 1815436302): the library's own merge copied the first
  // sketch's store into an empty one, and merging a wider store into that copy lost a bin.
  it("keep every bin, whatever the order, including into an empty sketch", () => {
    const single = new LatencySketch();
    single.add(0.001);
    const wider = new LatencySketch();
    wider.add(0.981);
    wider.add(0.001);
    const direct = new LatencySketch();
    for (const value of [0.001, 0.981, 0.001]) direct.add(value);
    for (const order of [
      [single, wider],
      [wider, single],
    ]) {
      const merged = new LatencySketch();
      for (const sketch of order) merged.mergeFrom(sketch);
      expect(merged.toRecord()).toEqual(direct.toRecord());
      expect(merged.count).toBe(3);
    }
    // The inputs are unchanged by being merged from.
    expect(single.toRecord().counts).toEqual([1]);
  });

  it("equal adding every value, for random latencies and splits", () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 0, max: 1e6, noNaN: true }), { maxLength: 60 }),
        fc.array(fc.double({ min: 0, max: 1e6, noNaN: true }), { maxLength: 60 }),
        fc.array(fc.double({ min: 0, max: 1e6, noNaN: true }), { maxLength: 60 }),
        (a, b, c) => {
          const sketches = [a, b, c].map((values) => {
            const sketch = new LatencySketch();
            for (const value of values) sketch.add(value);
            return sketch;
          });
          const all = new LatencySketch();
          for (const value of [...a, ...b, ...c]) all.add(value);
          const merged = new LatencySketch();
          for (const sketch of sketches) merged.mergeFrom(sketch);
          expect(merged.toRecord()).toEqual(all.toRecord());
        },
      ),
      { numRuns: 500 },
    );
  });
});
