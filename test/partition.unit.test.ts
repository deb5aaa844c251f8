/**
 * The processor's partition state machine against a brute-force oracle, and its snapshots:
 * restoring one anywhere and going on gives what an uninterrupted run gives.
 */
import fc from "fast-check";
import { lastValueFrom, from, toArray, mergeMap } from "rxjs";
import { describe, expect, it } from "vitest";

import type { AlertEvent, MetricRollup, ModelCallEvent } from "../avro/generated.js";
import {
  AlertTracker,
  rollupEvents,
  rollupKey,
  WindowAccumulator,
  windowOf,
  type AlertRule,
} from "../metrics/index.js";
import {
  DEFAULT_WINDOW_SETTINGS,
  eventTimeWindows,
  PartitionState,
  type PartitionInput,
  type PartitionOutput,
  type WindowSettings,
} from "../processor/partition.js";
import { eventArbitrary } from "./support/events.js";

const SIZE = 60_000_000;
const GRACE = 10_000_000;
const ORIGIN = 1_764_000_000_000_000 - (1_764_000_000_000_000 % SIZE);
const RULES: AlertRule[] = [
  { key: "errors", metric: "error_rate", comparator: "gt", threshold: 0.3, minSamples: 2 },
  {
    key: "gate",
    metric: "confidence_gate_block_rate",
    comparator: "gt",
    threshold: 0.5,
    minSamples: 1,
  },
];
const SETTINGS: WindowSettings = {
  ...DEFAULT_WINDOW_SETTINGS,
  windowSizeMicros: SIZE,
  graceMicros: GRACE,
  rules: RULES,
};

/**
 * A partition log: event times drift forward with out-of-order jitter (mostly within the grace
 * period, sometimes far beyond it: late), idle gaps, and watermark ticks.
 */
const logArbitrary: fc.Arbitrary<PartitionInput[]> = fc
  .array(
    fc.record({
      event: eventArbitrary(),
      step: fc.oneof(
        fc.integer({ min: 0, max: 3_000_000 }),
        fc.constant(0),
        fc.integer({ min: 60_000_000, max: 200_000_000 }),
      ),
      jitter: fc.oneof(
        { weight: 8, arbitrary: fc.constant(0) },
        { weight: 3, arbitrary: fc.integer({ min: 0, max: GRACE }) },
        { weight: 1, arbitrary: fc.integer({ min: GRACE, max: 4 * SIZE }) },
      ),
      tick: fc.oneof(
        { weight: 12, arbitrary: fc.constant(false) },
        { weight: 1, arbitrary: fc.constant(true) },
      ),
    }),
    { maxLength: 120 },
  )
  .map((steps) => {
    let clock = ORIGIN;
    const inputs: PartitionInput[] = [];
    for (const { event, step, jitter, tick } of steps) {
      clock += step;
      if (tick) inputs.push({ type: "tick", eventTimeMicros: clock });
      const end = Math.max(0, clock - jitter);
      inputs.push({
        type: "event",
        event: { ...event, start_time: end - (event.end_time - event.start_time), end_time: end },
      });
    }
    return inputs;
  });

function run(
  inputs: readonly PartitionInput[],
  state = new PartitionState(SETTINGS),
): PartitionOutput[] {
  return inputs.flatMap((input) => state.apply(input));
}

/** The oracle: which events are late, by a plain loop; windows by the core's batch function. */
function oracle(inputs: readonly PartitionInput[]): {
  rollups: MetricRollup[];
  alerts: AlertEvent[];
  late: number;
} {
  let max: number | null = null;
  const onTime: ModelCallEvent[] = [];
  const lateAt = new Map<
    string,
    { service: string; start: number; model: string | null; count: number }
  >();
  let lateCount = 0;
  for (const input of inputs) {
    if (input.type === "flush") continue;
    const time = input.type === "tick" ? input.eventTimeMicros : input.event.end_time;
    if (input.type === "event") {
      const event = input.event;
      const counts = event.kind === "model_call" || event.kind === "sampling";
      const watermark = max === null ? null : max - GRACE;
      if (counts && watermark !== null && windowOf(event.end_time, SIZE).end <= watermark) {
        lateCount++;
        const start = windowOf(watermark, SIZE).start;
        for (const model of event.model === null ? [null] : [null, event.model]) {
          const key = `${event.service}|${model ?? "*"}|${start}`;
          const entry = lateAt.get(key) ?? { service: event.service, start, model, count: 0 };
          entry.count++;
          lateAt.set(key, entry);
        }
      } else if (counts) onTime.push(event);
    }
    max = max === null ? time : Math.max(max, time);
  }
  const byKey = new Map(rollupEvents(onTime, SIZE).map((rollup) => [rollupKey(rollup), rollup]));
  for (const entry of lateAt.values()) {
    const key = rollupKey({
      service: entry.service,
      model: entry.model,
      window_start: entry.start,
      window_end: entry.start + SIZE,
    });
    const existing = byKey.get(key);
    const accumulator = existing ? WindowAccumulator.fromRollup(existing) : new WindowAccumulator();
    accumulator.addLate(entry.count);
    byKey.set(
      key,
      accumulator.toRollup(entry.service, entry.model, {
        start: entry.start,
        end: entry.start + SIZE,
      }),
    );
  }
  const rollups = [...byKey.values()];
  const alerts: AlertEvent[] = [];
  for (const service of [...new Set(rollups.map((r) => r.service))].sort()) {
    const tracker = new AlertTracker(RULES);
    for (const total of rollups
      .filter((r) => r.service === service && r.model === null)
      .sort((a, b) => a.window_start - b.window_start))
      alerts.push(...tracker.observe(total));
  }
  return { rollups, alerts, late: lateCount };
}

const rollupsOf = (outputs: readonly PartitionOutput[]) =>
  outputs.flatMap((output) => (output.type === "rollup" ? [output.rollup] : []));
const alertsOf = (outputs: readonly PartitionOutput[]) =>
  outputs.flatMap((output) => (output.type === "alert" ? [output.alert] : []));
const byKey = (rollups: readonly MetricRollup[]) =>
  new Map(rollups.map((rollup) => [rollupKey(rollup), rollup]));

describe("partition windows against an oracle", () => {
  it("emit every window once, final, equal to a batch computation, with late events counted apart", () => {
    fc.assert(
      fc.property(logArbitrary, (log) => {
        const outputs = run([...log, { type: "flush" }]);
        const emitted = rollupsOf(outputs);
        const keys = emitted.map(rollupKey);
        expect(new Set(keys).size).toBe(keys.length); // once
        const expected = oracle(log);
        expect(byKey(emitted)).toEqual(byKey(expected.rollups));
        expect(outputs.filter((output) => output.type === "late")).toHaveLength(expected.late);
        const serviceOrder = (alerts: AlertEvent[]) =>
          [...alerts].sort((a, b) => (a.service < b.service ? -1 : a.service > b.service ? 1 : 0));
        expect(serviceOrder(alertsOf(outputs))).toEqual(serviceOrder(expected.alerts));
      }),
      { numRuns: 1500 },
    );
  });

  it("close a window exactly when the watermark reaches its end", () => {
    const state = new PartitionState(SETTINGS);
    const event = eventAt(ORIGIN + 5_000_000);
    expect(state.apply({ type: "event", event })).toEqual([]);
    // Watermark = end of window − 1 µs: still open.
    expect(state.apply({ type: "tick", eventTimeMicros: ORIGIN + SIZE + GRACE - 1 })).toEqual([]);
    const closed = state.apply({ type: "tick", eventTimeMicros: ORIGIN + SIZE + GRACE });
    expect(rollupsOf(closed).map((r) => [r.model, r.counts.calls])).toEqual([
      [null, 1],
      ["gpt-4o", 1],
    ]);
    // An event for the closed window is late, counted where the watermark is now.
    const late = state.apply({ type: "event", event: eventAt(ORIGIN + 59_000_000) });
    expect(late.map((output) => output.type)).toEqual(["late"]);
    const flushed = rollupsOf(state.apply({ type: "flush" }));
    expect(flushed.map((r) => [r.window_start, r.counts.calls, r.counts.late])).toEqual([
      [ORIGIN + SIZE, 0, 1],
      [ORIGIN + SIZE, 0, 1],
    ]);
  });
});

function eventAt(endMicros: number): ModelCallEvent {
  return {
    ...fc.sample(eventArbitrary(), { numRuns: 1, seed: 7 })[0],
    kind: "model_call",
    service: "svc",
    model: "gpt-4o",
    start_time: endMicros - 1000,
    end_time: endMicros,
  } as ModelCallEvent;
}

describe("partition snapshots", () => {
  it("restored anywhere (through JSON) continue exactly as the uninterrupted run", () => {
    fc.assert(
      fc.property(logArbitrary, fc.nat(), (log, cut) => {
        const inputs: PartitionInput[] = [...log, { type: "flush" }];
        const whole = run(inputs);
        const k = inputs.length === 0 ? 0 : cut % inputs.length;
        const first = new PartitionState(SETTINGS);
        const before = run(inputs.slice(0, k), first);
        const snapshot = JSON.parse(JSON.stringify(first.snapshot())) as ReturnType<
          PartitionState["snapshot"]
        >;
        const after = run(inputs.slice(k), new PartitionState(SETTINGS, snapshot));
        expect([...before, ...after]).toEqual(whole);
      }),
      { numRuns: 1000 },
    );
  });
});

describe("eventTimeWindows (RxJS)", () => {
  it("runs the same state machine as an operator, one state per subscription", async () => {
    const log = fc.sample(logArbitrary, { numRuns: 1, seed: 42 })[0] ?? [];
    const inputs: PartitionInput[] = [...log, { type: "flush" }];
    const outputs = await lastValueFrom(
      from(inputs).pipe(
        eventTimeWindows(SETTINGS),
        mergeMap((batch) => batch),
        toArray(),
      ),
    );
    expect(outputs).toEqual(run(inputs));
  });
});
