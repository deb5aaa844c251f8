/**
 * The metrics core against the brute-force oracle of test/support/oracle.ts (every count and rate,
 * written apart from metrics/), on realistic logs: hundreds to thousands of events of every kind,
 * services and models with edge names, late counts, random thresholds.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";

import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import { CALL_KIND_SYMBOLS } from "../avro/generated.js";
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
import { EDGE_NAMES, eventArbitrary, RESERVED_MODEL_NAMES, sampleEvent } from "./support/events.js";
import {
  expectMatchesOracle,
  oracleKey,
  oracleRollups,
  oracleWindow,
  type ComparableRollup,
  type OracleWindow,
} from "./support/oracle.js";
import { testSeed } from "./support/seed.js";

/** Every property of this file runs from this seed (`MCPO_TEST_SEED=<seed>` replays a failure). */
const SEED = testSeed("metrics.unit.test.ts fast-check");
const runs = (numRuns: number) => ({ numRuns, seed: SEED });
/** Generous: the properties take seconds on a loaded two-core machine. */
const PROPERTY_TIMEOUT = 120_000;

function accumulate(
  events: readonly ModelCallEvent[],
  thresholds = DEFAULT_THRESHOLDS,
  late = 0,
): WindowAccumulator {
  const accumulator = new WindowAccumulator(thresholds);
  for (const event of events) accumulator.add(event);
  if (late > 0) accumulator.addLate(late);
  return accumulator;
}

const comparable = (rollup: MetricRollup): ComparableRollup => ({
  service: rollup.service,
  model: rollup.model,
  windowStart: rollup.window_start,
  counts: rollup.counts,
  rates: rollup.rates,
});

/**
 * `rollup` holds exactly the oracle's window: every count (the whole record, so a count the
 * product drops or adds fails too), every rate and the sketch's sample count.
 */
function expectWindow(rollup: MetricRollup, want: OracleWindow, where: string): void {
  expect(rollup.counts, `${where}: counts`).toEqual(want.counts);
  expect(Object.keys(rollup.rates).sort(), `${where}: rate names`).toEqual(
    Object.keys(want.rates).sort(),
  );
  expectMatchesOracle(
    [comparable(rollup)],
    new Map([[oracleKey(want.service, want.model, want.windowStart), want]]),
    where,
  );
  const sketch = rollup.latency;
  expect(sketch.zero_count + sketch.counts.reduce((a, b) => a + b, 0), `${where}: sketch`).toBe(
    want.counts.calls,
  );
}

const WINDOW = { start: 1_764_000_000_000_000, end: 1_764_000_060_000_000 };
const thresholdsArb: fc.Arbitrary<MetricThresholds> = fc.record({
  low_confidence: fc.oneof(
    fc.double({ min: 0, max: 1, noNaN: true }),
    fc.constantFrom(0, 0.3, 0.5, 0.7, 1),
  ),
  prompt_diff: fc.oneof(
    fc.double({ min: 0, max: 1, noNaN: true }),
    fc.constantFrom(0, 0.25, 0.3, 0.5, 1),
  ),
});
/** Late counts: none, or a few additions of 1–50. */
const lateArb = fc.array(fc.integer({ min: 1, max: 50 }), { maxLength: 4 });
const sum = (values: readonly number[]): number => values.reduce((a, b) => a + b, 0);

/**
 * Arrays of realistic size: with fast-check's default size ("small") every array is capped at
 * 10 elements whatever its `maxLength`; `size: "max"` lets lengths spread up to `maxLength`.
 */
const sized = <T>(
  arbitrary: fc.Arbitrary<T>,
  options: { minLength?: number; maxLength: number },
): fc.Arbitrary<T[]> =>
  fc.array(arbitrary, {
    minLength: options.minLength ?? 0,
    maxLength: options.maxLength,
    size: "max",
  });

/** Logs of every kind of event, with edge and reserved names. */
const events = (options: { minLength?: number; maxLength: number; spanMicros?: number }) =>
  sized(eventArbitrary({ spanMicros: options.spanMicros }), options);

describe("event generator", () => {
  it("makes only events the contract accepts, of every kind, with every edge name as a service and every edge and once-reserved name as a model", () => {
    const sample = fc.sample(eventArbitrary(), { numRuns: 4000, seed: SEED });
    for (const event of sample)
      expect(MODEL_CALL_EVENT.check(event), JSON.stringify(event.service)).toBeUndefined();
    expect(new Set(sample.map((e) => e.kind))).toEqual(new Set(CALL_KIND_SYMBOLS));
    const services = new Set(sample.map((e) => e.service));
    for (const name of EDGE_NAMES) expect(services.has(name), `service ${name}`).toBe(true);
    const models = new Set(sample.map((e) => e.model));
    for (const name of [...EDGE_NAMES, ...RESERVED_MODEL_NAMES])
      expect(models.has(name), `model ${name}`).toBe(true);
    // Random unicode names too, beyond the fixed lists.
    const known = new Set(["svc-a", "svc-b", "svc-c", ...EDGE_NAMES]);
    expect([...services].filter((s) => !known.has(s)).length).toBeGreaterThan(10);
  });

  it("makes arrays of hundreds to thousands of events with the file's size settings", () => {
    // The same sizing as the properties below, on cheap elements.
    const lengths = fc
      .sample(sized(fc.constant(0), { maxLength: 1500 }), { numRuns: 40, seed: SEED })
      .map((log) => log.length);
    // About 80 % are longer than 100 and half longer than 500 (with the default size: none).
    expect(lengths.filter((n) => n > 100).length, `lengths ${lengths.join(" ")}`).toBeGreaterThan(
      15,
    );
    expect(Math.max(...lengths)).toBeGreaterThan(500);
  });
});

describe("window accumulator against the brute-force oracle", () => {
  it(
    "accumulate-then-derive equals the oracle in every count (retries and token sources included), every rate and the late count, for random thresholds",
    () => {
      fc.assert(
        fc.property(
          events({ maxLength: 1500 }),
          thresholdsArb,
          lateArb,
          (log, thresholds, late) => {
            const rollup = accumulate(log, thresholds, sum(late)).toRollup("svc", null, WINDOW);
            const want = oracleWindow(
              log,
              { service: "svc", model: null, start: WINDOW.start, end: WINDOW.end },
              thresholds,
              sum(late),
            );
            expectWindow(rollup, want, "accumulated window");
            expect(rollup.thresholds).toEqual(thresholds);
          },
        ),
        runs(60),
      );
    },
    PROPERTY_TIMEOUT,
  );

  it(
    "merge is commutative and associative, equals accumulating the union, adds late counts, and equals the oracle of the union",
    () => {
      fc.assert(
        fc.property(
          events({ maxLength: 400 }),
          events({ maxLength: 400 }),
          events({ maxLength: 400 }),
          fc.tuple(lateArb, lateArb, lateArb),
          (a, b, c, [lateA, lateB, lateC]) => {
            const [x, y, z] = [
              accumulate(a, DEFAULT_THRESHOLDS, sum(lateA)),
              accumulate(b, DEFAULT_THRESHOLDS, sum(lateB)),
              accumulate(c, DEFAULT_THRESHOLDS, sum(lateC)),
            ];
            const roll = (acc: WindowAccumulator): MetricRollup =>
              acc.toRollup("svc", null, WINDOW);
            const late = sum([...lateA, ...lateB, ...lateC]);
            const union = roll(accumulate([...a, ...b, ...c], DEFAULT_THRESHOLDS, late));
            expect(roll(merge(x, y))).toEqual(roll(merge(y, x)));
            expect(roll(merge(merge(x, y), z))).toEqual(roll(merge(x, merge(y, z))));
            expect(roll(merge(merge(x, y), z))).toEqual(union);
            expectWindow(
              roll(merge(merge(x, y), z)),
              oracleWindow(
                [...a, ...b, ...c],
                { service: "svc", model: null, start: WINDOW.start, end: WINDOW.end },
                DEFAULT_THRESHOLDS,
                late,
              ),
              "merged window",
            );
            // Inputs are left unchanged by merge.
            expect(roll(x)).toEqual(roll(accumulate(a, DEFAULT_THRESHOLDS, sum(lateA))));
          },
        ),
        runs(40),
      );
    },
    PROPERTY_TIMEOUT,
  );

  it(
    "rebuilds an accumulator from its rollup (late counts included), so minute rollups merge into the hour's, equal to the oracle's hourly windows",
    () => {
      const HOUR = 3_600_000_000;
      fc.assert(
        fc.property(
          events({ maxLength: 1500, spanMicros: 3 * HOUR }),
          fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 200, maxLength: 200 }),
          (log, lates) => {
            const minute = rollupEvents(log, 60_000_000).filter((r) => r.model === null);
            const hour = rollupEvents(log, HOUR).filter((r) => r.model === null);
            // Late counts on some minute windows: they must add up in the hour.
            const lateByHour = new Map<string, number>();
            const minuteWithLate = minute.map((r, i) => {
              const late = lates[i % lates.length] ?? 0;
              const hourKey = oracleKey(r.service, null, windowOf(r.window_start, HOUR).start);
              lateByHour.set(hourKey, (lateByHour.get(hourKey) ?? 0) + late);
              const accumulator = WindowAccumulator.fromRollup(r);
              accumulator.addLate(late);
              return accumulator.toRollup(r.service, null, {
                start: r.window_start,
                end: r.window_end,
              });
            });
            const expected = oracleRollups(log, HOUR, { lateByKey: lateByHour });
            const merged: MetricRollup[] = [];
            for (const hourly of hour) {
              const parts = minuteWithLate.filter(
                (r) =>
                  r.service === hourly.service &&
                  r.window_start >= hourly.window_start &&
                  r.window_end <= hourly.window_end,
              );
              expect(parts.length).toBeGreaterThan(0);
              const total = parts
                .map((r) => WindowAccumulator.fromRollup(r))
                .reduce((acc, next) => merge(acc, next), new WindowAccumulator());
              const window = { start: hourly.window_start, end: hourly.window_end };
              const rollup = total.toRollup(hourly.service, null, window);
              // Bit for bit the hour's own rollup, but for the late count added on the way.
              expect({ ...rollup, counts: { ...rollup.counts, late: 0 } }).toEqual(hourly);
              merged.push(rollup);
            }
            expectMatchesOracle(
              merged.map(comparable),
              new Map([...expected].filter(([, w]) => w.model === null)),
              "hours merged from minutes",
            );
          },
        ),
        runs(25),
      );
    },
    PROPERTY_TIMEOUT,
  );
});

describe("rollups of a batch", () => {
  it(
    "equal the oracle's windows for a whole multi-window, multi-service log: the same keys, every count and rate, tool, resource and prompt spans left out",
    () => {
      fc.assert(
        fc.property(
          events({ minLength: 100, maxLength: 2000, spanMicros: 4 * 60_000_000 }),
          fc.constantFrom(10_000_000, 60_000_000, 300_000_000),
          thresholdsArb,
          (log, size, thresholds) => {
            const rollups = rollupEvents(log, size, thresholds);
            const expected = oracleRollups(log, size, { thresholds });
            expectMatchesOracle(rollups.map(comparable), expected, `rollups of ${size} µs`);
            for (const rollup of rollups) {
              const want = expected.get(
                oracleKey(rollup.service, rollup.model, rollup.window_start),
              );
              expect(rollup.counts).toEqual(want?.counts);
              expect(rollup.window_end - rollup.window_start).toBe(size);
            }
            const modelCalls = log.filter((e) => e.kind === "model_call" || e.kind === "sampling");
            const totals = rollups.filter((r) => r.model === null);
            expect(sum(totals.map((r) => r.counts.calls))).toBe(modelCalls.length);
            // The same events in another order give the same rollups, bit for bit.
            expect(rollupEvents([...log].reverse(), size, thresholds)).toEqual(rollups);
          },
        ),
        runs(25),
      );
    },
    PROPERTY_TIMEOUT,
  );

  it(
    "have a distinct rollupKey per (service, model, window), for every name: '*', '', '|' and quotes included",
    () => {
      fc.assert(
        fc.property(sized(eventArbitrary(), { minLength: 100, maxLength: 1500 }), (log) => {
          const rollups = rollupEvents(log, 60_000_000);
          expect(new Set(rollups.map(rollupKey)).size).toBe(rollups.length);
        }),
        runs(20),
      );
    },
    PROPERTY_TIMEOUT,
  );
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
    // Past 2^53 the sum is still exact: a bigint in the counts.
    expect(big.counts().cost_nano_usd).toBe(3n * BigInt(Number.MAX_SAFE_INTEGER - 1));
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
      runs(2000),
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

  /**
   * Latencies as events give them (whole µs, in ms: 0 or ≥ 0.001, up to 2 min) and any double
   * from 0.001 ms to 1000 s. (Doubles far below a microsecond, e.g. 1e-300, are no event's
   * latency and make the sketch's dense store tens of thousands of bins wide.)
   */
  const latencyMs = fc.oneof(
    fc.integer({ min: 0, max: 120_000_000 }).map((micros) => micros / 1000),
    fc.integer({ min: 0, max: 5_000 }).map((micros) => micros / 1000),
    fc.double({ min: 0.001, max: 1e6, noNaN: true }),
  );
  const latencies = sized(latencyMs, { maxLength: 400 });

  it(
    "equal adding every value, for random latencies and splits",
    () => {
      fc.assert(
        fc.property(latencies, latencies, latencies, (a, b, c) => {
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
          expect(merged.count).toBe(a.length + b.length + c.length);
        }),
        runs(200),
      );
    },
    PROPERTY_TIMEOUT,
  );
});
