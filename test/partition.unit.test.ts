/**
 * The processor's partition state machine against the brute-force oracle of
 * test/support/oracle.ts (lateness by a plain loop, windows and alerts by filtering and counting),
 * on logs of hundreds to thousands of events in which late events are common; and its snapshots:
 * restoring one anywhere and going on gives what an uninterrupted run gives.
 */
import fc from "fast-check";
import { lastValueFrom, mergeMap, Subject, toArray } from "rxjs";
import { describe, expect, it } from "vitest";

import { bigintReplacer } from "../avro/bigint.js";
import type { MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { rollupEvents, WindowAccumulator, type AlertRule } from "../metrics/index.js";
import { snapshotFromJson } from "../processor/checkpoints.js";
import { eventTimeWindows } from "../processor/driver.js";
import {
  DEFAULT_WINDOW_SETTINGS,
  PartitionState,
  type PartitionInput,
  type PartitionOutput,
  type WindowSettings,
} from "../processor/partition.js";
import { eventArbitrary, sampleEvent } from "./support/events.js";
import {
  expectMatchesOracle,
  oracleAlerts,
  oracleKey,
  oracleRollups,
  transitionOf,
} from "./support/oracle.js";
import { testSeed } from "./support/seed.js";

/** Every property of this file runs from this seed (`MCPO_TEST_SEED=<seed>` replays a failure). */
const SEED = testSeed("partition.unit.test.ts fast-check");
const runs = (numRuns: number) => ({ numRuns, seed: SEED });
/** Generous: the properties take seconds on a loaded two-core machine. */
const PROPERTY_TIMEOUT = 120_000;

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
 * A partition log of `minLength` to `maxLength` events (fast-check's default size would cap it
 * at 10): event times drift forward with out-of-order jitter (mostly within the grace period,
 * sometimes far beyond it: late), idle gaps, and watermark ticks. Every kind of event, services
 * and models with edge names.
 */
function logArbitrary(minLength: number, maxLength: number): fc.Arbitrary<PartitionInput[]> {
  return fc
    .array(
      fc.record({
        event: eventArbitrary(),
        step: fc.oneof(
          { weight: 10, arbitrary: fc.integer({ min: 0, max: 3_000_000 }) },
          { weight: 3, arbitrary: fc.constant(0) },
          { weight: 1, arbitrary: fc.integer({ min: 60_000_000, max: 200_000_000 }) },
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
      { minLength, maxLength, size: "max" },
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
}

function run(
  inputs: readonly PartitionInput[],
  state = new PartitionState(SETTINGS),
): PartitionOutput[] {
  return inputs.flatMap((input) => state.apply(input));
}

/** The window start of `t`, by floor division (apart from metrics/windowOf). */
const floorWindow = (t: number): number => t - (((t % SIZE) + SIZE) % SIZE);
const modelCall = (event: ModelCallEvent): boolean =>
  event.kind === "model_call" || event.kind === "sampling";

/**
 * Lateness by a plain loop: the watermark is the largest event time so far minus the grace; a
 * model call whose window ends at or before it revises that window while its end plus the
 * allowed lateness is after the watermark, and is late otherwise, counted in the window the
 * watermark is in, for its service total and its model.
 */
function lateness(
  inputs: readonly PartitionInput[],
  allowedLateness = 0,
): {
  onTime: ModelCallEvent[];
  revising: ModelCallEvent[];
  late: { event: ModelCallEvent; watermark: number }[];
  lateByKey: Map<string, number>;
} {
  let max: number | null = null;
  const onTime: ModelCallEvent[] = [];
  const revising: ModelCallEvent[] = [];
  const late: { event: ModelCallEvent; watermark: number }[] = [];
  const lateByKey = new Map<string, number>();
  for (const input of inputs) {
    if (input.type === "flush" || input.type === "progress") continue;
    const time = input.type === "tick" ? input.eventTimeMicros : input.event.end_time;
    if (input.type === "event" && modelCall(input.event)) {
      const event = input.event;
      const watermark = max === null ? null : max - GRACE;
      const end = floorWindow(event.end_time) + SIZE;
      if (watermark !== null && end <= watermark && end + allowedLateness > watermark)
        revising.push(event);
      else if (watermark !== null && end <= watermark) {
        late.push({ event, watermark });
        const start = floorWindow(watermark);
        for (const model of event.model === null ? [null] : [null, event.model]) {
          const key = oracleKey(event.service, model, start);
          lateByKey.set(key, (lateByKey.get(key) ?? 0) + 1);
        }
      } else onTime.push(event);
    }
    max = max === null ? time : Math.max(max, time);
  }
  return { onTime, revising, late, lateByKey };
}

/** The core's own batch computation with the late counts added: for a bit-for-bit comparison. */
function coreRollups(
  onTime: readonly ModelCallEvent[],
  lateByKey: ReadonlyMap<string, number>,
): Map<string, MetricRollup> {
  const byKey = new Map(rollupEvents(onTime, SIZE).map((r) => [keyOf(r), r]));
  for (const [key, count] of lateByKey) {
    const [service = "", model = "", start = "0"] = key.split("\u0000");
    const existing = byKey.get(key);
    const accumulator = existing ? WindowAccumulator.fromRollup(existing) : new WindowAccumulator();
    accumulator.addLate(count);
    const window = { start: Number(start), end: Number(start) + SIZE };
    byKey.set(key, accumulator.toRollup(service, model === "\u0001total" ? null : model, window));
  }
  return byKey;
}

/** A series' key that no name can collide in (rollupKey's `|` and `*` can: issue 13). */
const keyOf = (rollup: MetricRollup): string =>
  oracleKey(rollup.service, rollup.model, rollup.window_start);
const rollupsOf = (outputs: readonly PartitionOutput[]) =>
  outputs.flatMap((output) => (output.type === "rollup" ? [output.rollup] : []));
const alertsOf = (outputs: readonly PartitionOutput[]) =>
  outputs.flatMap((output) => (output.type === "alert" ? [output.alert] : []));
const lateOf = (outputs: readonly PartitionOutput[]) =>
  outputs.flatMap((output) =>
    output.type === "late" ? [{ event: output.event, watermark: output.watermarkMicros }] : [],
  );
/** Stable: keeps each service's transitions in the order they came. */
const byService = <T extends { service: string }>(items: readonly T[]): T[] =>
  [...items].sort((a, b) => (a.service < b.service ? -1 : a.service > b.service ? 1 : 0));

describe("partition windows against the oracle", () => {
  it(
    "emit every window once on time, equal to the oracle's counts, rates and late counts (and bit for bit to the core's batch); revise it with the events that arrive within the allowed lateness, each revision higher, the last equal to the oracle over every event it holds; forward each event beyond it itself with its watermark; emit the oracle's alert transitions, judged on the first emissions; most logs have late events",
    () => {
      let logs = 0;
      let withLate = 0;
      let withRevisions = 0;
      let longer = 0;
      fc.assert(
        fc.property(
          logArbitrary(20, 1500),
          fc.constantFrom(0, SIZE, 2 * SIZE, 3 * SIZE),
          (log, allowedLateness) => {
            logs++;
            const settings: WindowSettings = {
              ...SETTINGS,
              allowedLatenessMicros: allowedLateness,
            };
            const outputs = run([...log, { type: "flush" }], new PartitionState(settings));
            const emitted = rollupsOf(outputs);
            const { onTime, revising, late, lateByKey } = lateness(log, allowedLateness);
            if (late.length > 0 || revising.length > 0) withLate++;
            if (revising.length > 0) withRevisions++;
            if (log.length > 100) longer++;
            if (allowedLateness === 0) expect(revising).toEqual([]);

            // First emissions: each window once, with what was on time.
            const first = emitted.filter((r) => r.revision === 0);
            const keys = first.map(keyOf);
            expect(new Set(keys).size, "each window once on time").toBe(keys.length);
            const expected = oracleRollups(onTime, SIZE, {
              thresholds: SETTINGS.thresholds,
              lateByKey,
            });
            const shape = (r: MetricRollup) => ({
              service: r.service,
              model: r.model,
              windowStart: r.window_start,
              counts: r.counts,
              rates: r.rates,
            });
            expectMatchesOracle(first.map(shape), expected, "first emissions");
            expect(new Map(first.map((r) => [keyOf(r), r]))).toEqual(
              coreRollups(onTime, lateByKey),
            );

            // Revisions: per key ever higher; the last one holds every event of its window.
            const last = new Map<string, MetricRollup>();
            for (const rollup of emitted) {
              const before = last.get(keyOf(rollup));
              if (before) expect(rollup.revision).toBeGreaterThan(before.revision);
              last.set(keyOf(rollup), rollup);
            }
            const complete = oracleRollups([...onTime, ...revising], SIZE, {
              thresholds: SETTINGS.thresholds,
              lateByKey,
            });
            expectMatchesOracle([...last.values()].map(shape), complete, "last revisions");
            expect(new Map([...last].map(([key, r]) => [key, { ...r, revision: 0 }]))).toEqual(
              coreRollups([...onTime, ...revising], lateByKey),
            );
            expect(emitted.length - first.length > 0).toBe(revising.length > 0);

            const forwarded = lateOf(outputs);
            expect(forwarded.length).toBe(late.length);
            forwarded.forEach((output, i) => {
              expect(output.event).toEqual(late[i]?.event);
              expect(output.watermark).toBe(late[i]?.watermark);
            });
            expect(byService(alertsOf(outputs).map(transitionOf))).toEqual(
              byService(oracleAlerts(expected.values(), RULES)),
            );
          },
        ),
        runs(40),
      );
      // The generator must keep making long logs with late events (fast-check's default size
      // made 10-event logs, about 1 in 10 with a late event), and revisions.
      expect(longer / logs, `${longer} of ${logs} logs longer than 100`).toBeGreaterThan(0.5);
      expect(withLate / logs, `${withLate} of ${logs} logs with late events`).toBeGreaterThan(0.5);
      expect(withRevisions / logs, `${withRevisions} of ${logs} logs revise`).toBeGreaterThan(0.3);
    },
    PROPERTY_TIMEOUT,
  );

  it("close a window exactly when the watermark reaches its end", () => {
    const state = new PartitionState({ ...SETTINGS, allowedLatenessMicros: 0 });
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

describe("revisions", () => {
  it("an event of a closed window within the allowed lateness revises it: one revision for the events read until the next windows close (or a tick), complete; beyond the lateness it is late", () => {
    const state = new PartitionState({ ...SETTINGS, allowedLatenessMicros: 2 * SIZE });
    state.apply({ type: "event", event: eventAt(ORIGIN + 5_000_000) });
    const closed = rollupsOf(state.apply({ type: "tick", eventTimeMicros: ORIGIN + SIZE + GRACE }));
    expect(closed.map((r) => [r.revision, r.counts.calls])).toEqual([
      [0, 1],
      [0, 1],
    ]);
    // Two events of the closed minute, with an on-time one between them: nothing yet.
    expect(state.apply({ type: "event", event: eventAt(ORIGIN + 59_000_000) })).toEqual([]);
    expect(state.apply({ type: "event", event: eventAt(ORIGIN + SIZE + 20_000_000) })).toEqual([]);
    expect(state.apply({ type: "event", event: eventAt(ORIGIN + 30_000_000) })).toEqual([]);
    expect(state.revisionsPending).toBe(true);
    // The next windows to close bring one revision with all three calls of minute 0, first.
    const next = rollupsOf(
      state.apply({ type: "event", event: eventAt(ORIGIN + 2 * SIZE + GRACE + 1) }),
    );
    expect(
      next.map((r) => [r.window_start, r.model, r.revision, r.counts.calls, r.counts.late]),
    ).toEqual([
      [ORIGIN, null, 1, 3, 0],
      [ORIGIN, "gpt-4o", 1, 3, 0],
      [ORIGIN + SIZE, null, 0, 1, 0],
      [ORIGIN + SIZE, "gpt-4o", 0, 1, 0],
    ]);
    expect(state.revisionsPending).toBe(false);
    // A tick emits what is pending too.
    state.apply({ type: "event", event: eventAt(ORIGIN + 45_000_000) });
    const ticked = rollupsOf(
      state.apply({ type: "tick", eventTimeMicros: ORIGIN + 2 * SIZE + GRACE + 2 }),
    );
    expect(ticked.map((r) => [r.window_start, r.revision, r.counts.calls])).toEqual([
      [ORIGIN, 2, 4],
      [ORIGIN, 2, 4],
    ]);
    // Past end + allowed lateness, the minute is forgotten: its events are late.
    state.apply({ type: "tick", eventTimeMicros: ORIGIN + 3 * SIZE + GRACE });
    expect(state.retainedWindows).toBe(2); // minutes 1 and 2 are still revisable
    const late = state.apply({ type: "event", event: eventAt(ORIGIN + 1_000_000) });
    expect(late.map((output) => output.type)).toEqual(["late"]);
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
  it(
    "restored anywhere (through JSON, at three random cuts of each log) continue exactly as the uninterrupted run",
    () => {
      fc.assert(
        fc.property(
          logArbitrary(20, 800),
          fc.array(fc.nat(), { minLength: 3, maxLength: 3 }),
          (log, cuts) => {
            const inputs: PartitionInput[] = [...log, { type: "flush" }];
            const whole = run(inputs);
            for (const cut of cuts) {
              const k = cut % inputs.length;
              const first = new PartitionState(SETTINGS);
              const before = run(inputs.slice(0, k), first);
              // As a checkpoint holds it: JSON, the sums as decimal strings.
              const snapshot = snapshotFromJson(
                JSON.parse(JSON.stringify(first.snapshot(), bigintReplacer)) as ReturnType<
                  PartitionState["snapshot"]
                >,
              );
              const after = run(inputs.slice(k), new PartitionState(SETTINGS, snapshot));
              expect([...before, ...after]).toEqual(whole);
            }
          },
        ),
        runs(25),
      );
    },
    PROPERTY_TIMEOUT,
  );
});

describe("services passing through", () => {
  it("a service whose windows all closed is evicted (none retained, no alert firing in the state's per-service structures); it comes back as new, with the same outputs", () => {
    const state = new PartitionState({ ...SETTINGS, allowedLatenessMicros: 0 });
    const held = (): number =>
      (Reflect.get(state, "services") as ReadonlyMap<unknown, unknown>).size;
    const call = (service: string, at: number): PartitionInput => ({
      type: "event",
      event: { ...sampleEvent({ service }), start_time: at - 1_000, end_time: at },
    });
    const inputs: PartitionInput[] = [];
    // 2 000 services in minute 0, then one in minute 2: minute 0 closes for all of them.
    for (let i = 0; i < 2_000; i++) inputs.push(call(`svc-${i}`, ORIGIN + (i % 50) * 1_000_000));
    inputs.push(call("svc-0", ORIGIN + 2 * SIZE + 20_000_000));
    const outputs = run(inputs, state);
    expect(rollupsOf(outputs)).toHaveLength(4_000);
    // Before: 2 000 (every service ever seen stayed, and each watermark advance walked them all).
    expect(held()).toBe(1);
    expect(state.openSeries).toBe(2);
    // A service evicted comes back as new: its next window is counted from nothing.
    const again = run([call("svc-7", ORIGIN + 2 * SIZE + 30_000_000), { type: "flush" }], state);
    expect(
      rollupsOf(again)
        .filter((rollup) => rollup.service === "svc-7")
        .map((rollup) => [rollup.model, rollup.counts.calls]),
    ).toEqual([
      [null, 1],
      ["gpt-4o", 1],
    ]);
    expect(held()).toBe(0);
  });
});

describe("eventTimeWindows (RxJS)", () => {
  it(
    "gives four interleaved subscriptions (partitions) of one operator what four separate states give: non-empty, several services each, with late events and alerts",
    async () => {
      const logs = fc.sample(logArbitrary(300, 600), { numRuns: 4, seed: SEED });
      const inputs = logs.map((log): PartitionInput[] => [...log, { type: "flush" }]);
      // An allowed lateness of one window: the logs revise windows and have late events too.
      const settings: WindowSettings = { ...SETTINGS, allowedLatenessMicros: SIZE };
      const operator = eventTimeWindows(settings);
      const subjects = inputs.map(() => new Subject<PartitionInput>());
      const results = subjects.map((subject) =>
        lastValueFrom(
          subject.pipe(
            operator,
            mergeMap((batch) => batch),
            toArray(),
          ),
        ),
      );
      // Round robin, as records of several partitions arrive.
      const longest = Math.max(...inputs.map((log) => log.length));
      for (let i = 0; i < longest; i++)
        inputs.forEach((log, p) => {
          const input = log[i];
          if (input) subjects[p]?.next(input);
        });
      for (const subject of subjects) subject.complete();
      const outputs = await Promise.all(results);
      expect(outputs).toHaveLength(4);
      outputs.forEach((output, p) => {
        const alone = run(inputs[p] ?? [], new PartitionState(settings));
        expect(output.length, `partition ${p} outputs`).toBe(alone.length);
        expect(output).toEqual(alone);
        const rollups = rollupsOf(output);
        expect(rollups.length, `partition ${p} rollups`).toBeGreaterThan(0);
        expect(new Set(rollups.map((r) => r.service)).size, `partition ${p}`).toBeGreaterThan(1);
      });
      expect(outputs.flatMap(lateOf).length, "late events").toBeGreaterThan(0);
      expect(
        outputs.flatMap(rollupsOf).filter((r) => r.revision > 0).length,
        "revisions",
      ).toBeGreaterThan(0);
      expect(outputs.flatMap(alertsOf).length, "alerts").toBeGreaterThan(0);
    },
    PROPERTY_TIMEOUT,
  );
});
