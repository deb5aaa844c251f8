/**
 * Cardinality guards: model names come from clients, so each (service, window) has at most
 * `maxModelsPerWindow` model series (default 200): the first models seen in the window, in log
 * order. Calls of further models are folded into one overflow series of the window (`other_models`
 * true), which no model name can address.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";

import { METRIC_ROLLUP } from "../avro/contracts.js";
import type { MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { settingOf, SettingsResolver } from "../cli/config.js";
import {
  ConfigError,
  processorConfigSchema,
  replayConfigSchema,
  windowConfigSchema,
} from "../config/index.js";
import {
  DEFAULT_MAX_MODELS_PER_WINDOW,
  OTHER_MODELS_NAME,
  rollupEvents,
  rollupKey,
} from "../metrics/index.js";
import {
  DEFAULT_WINDOW_SETTINGS,
  PartitionState,
  type PartitionInput,
  type PartitionOutput,
  type PartitionSnapshot,
  type WindowSettings,
} from "../processor/partition.js";
import { sampleEvent } from "./support/events.js";
import { expectMatchesOracle, oracleRollups, type ComparableRollup } from "./support/oracle.js";
import { testSeed } from "./support/seed.js";

const SIZE = DEFAULT_WINDOW_SETTINGS.windowSizeMicros;
const ORIGIN = 1_764_000_000_000_000 - (1_764_000_000_000_000 % SIZE);

function call(model: string | null, at: number, service = "svc"): PartitionInput {
  const event: ModelCallEvent = sampleEvent({
    service,
    model,
    start_time: at - 1_000,
    end_time: at,
  });
  return { type: "event", event };
}

function rollupsOf(outputs: readonly PartitionOutput[]): MetricRollup[] {
  return outputs.flatMap((output) => (output.type === "rollup" ? [output.rollup] : []));
}

/** `model-000` … */
const modelName = (i: number): string => `model-${String(i).padStart(3, "0")}`;

describe("models per window, through PartitionState.apply", () => {
  it("250 distinct models in one window at the default cap: 200 model rollups, one overflow rollup with the other 50 models' calls, and the total with all 250", () => {
    const state = new PartitionState();
    const inputs: PartitionInput[] = [];
    // Model i calls i % 3 + 1 times, interleaved: the first 200 models seen are 000 … 199.
    for (let round = 0; round < 3; round++)
      for (let i = 0; i < 250; i++)
        if (round <= i % 3) inputs.push(call(modelName(i), ORIGIN + 1_000_000 + i * 1_000));
    const rollups = rollupsOf([
      ...inputs.flatMap((input) => state.apply(input)),
      ...state.apply({ type: "flush" }),
    ]);
    const callsOf = (from: number, to: number): number => {
      let calls = 0;
      for (let i = from; i < to; i++) calls += (i % 3) + 1;
      return calls;
    };
    const overflow = rollups.filter((rollup) => rollup.other_models);
    const totals = rollups.filter((rollup) => rollup.model === null);
    const models = rollups.filter((rollup) => rollup.model !== null && !rollup.other_models);
    expect(
      models.map((rollup) => rollup.model),
      "one model rollup for each of the first 200 models",
    ).toEqual(Array.from({ length: 200 }, (_, i) => modelName(i)));
    expect(overflow, "one overflow rollup").toHaveLength(1);
    expect(overflow[0]?.counts.calls, "the overflow holds the other 50 models' calls").toBe(
      callsOf(200, 250),
    );
    expect(totals.map((rollup) => rollup.counts.calls)).toEqual([callsOf(0, 250)]);
    expect(rollups).toHaveLength(202);
    expect(overflow[0]?.model).toBe(OTHER_MODELS_NAME);
    expect(state.foldedEvents).toBe(callsOf(200, 250));
    // Every rollup is valid for the contract, and each has a key of its own.
    for (const rollup of rollups) expect(METRIC_ROLLUP.check(rollup)).toBeUndefined();
    expect(new Set(rollups.map(rollupKey)).size).toBe(rollups.length);
  });

  it("the default is config/'s (200), one per (service, window): another service and the next window start with none", () => {
    expect(windowConfigSchema.parse({}).maxModelsPerWindow).toBe(200);
    expect(DEFAULT_MAX_MODELS_PER_WINDOW).toBe(200);
    expect(DEFAULT_WINDOW_SETTINGS.maxModelsPerWindow).toBe(200);
    const state = new PartitionState({ ...DEFAULT_WINDOW_SETTINGS, maxModelsPerWindow: 2 });
    const inputs = [
      call("a", ORIGIN + 1_000_000),
      call("b", ORIGIN + 2_000_000),
      call("c", ORIGIN + 3_000_000),
      call("c", ORIGIN + 3_000_000, "svc-2"),
      call("d", ORIGIN + 4_000_000, "svc-2"),
      call("e", ORIGIN + 5_000_000, "svc-2"),
      call(null, ORIGIN + 5_000_000, "svc-2"),
      call("c", ORIGIN + SIZE + 1_000_000),
      call("d", ORIGIN + SIZE + 2_000_000),
      call("a", ORIGIN + SIZE + 3_000_000),
    ];
    const rollups = rollupsOf([
      ...inputs.flatMap((input) => state.apply(input)),
      ...state.apply({ type: "flush" }),
    ]);
    expect(rollups.map(series)).toEqual([
      "svc@0 total 3",
      "svc@0 a 1",
      "svc@0 b 1",
      "svc@0 (other) 1",
      "svc-2@0 total 4",
      "svc-2@0 c 1",
      "svc-2@0 d 1",
      "svc-2@0 (other) 1",
      "svc@1 total 3",
      "svc@1 c 1",
      "svc@1 d 1",
      "svc@1 (other) 1",
    ]);
  });

  it("the models kept are the first seen in the window (log order, not name order): the same log gives the same series", () => {
    const log = ["zeta", "alpha", "mu", "alpha", "beta", "zeta", "omega"].map((model, i) =>
      call(model, ORIGIN + (i + 1) * 1_000_000),
    );
    const outputs = (inputs: readonly PartitionInput[]) => {
      const state = new PartitionState({ ...DEFAULT_WINDOW_SETTINGS, maxModelsPerWindow: 3 });
      return rollupsOf([
        ...inputs.flatMap((input) => state.apply(input)),
        ...state.apply({ type: "flush" }),
      ]);
    };
    expect(outputs(log).map(series)).toEqual([
      "svc@0 total 7",
      "svc@0 alpha 2",
      "svc@0 mu 1",
      "svc@0 zeta 2",
      "svc@0 (other) 2",
    ]);
    expect(outputs(log)).toEqual(outputs(log));
    expect(outputs([...log].reverse()).map(series)).toEqual([
      "svc@0 total 7",
      "svc@0 beta 1",
      "svc@0 omega 1",
      "svc@0 zeta 2",
      "svc@0 (other) 3",
    ]);
  });

  it("a late event counts in the late count of the window the watermark is in under the same rule: its model's series if it has one or there is room, else the overflow's", () => {
    const state = new PartitionState({
      ...DEFAULT_WINDOW_SETTINGS,
      allowedLatenessMicros: 0,
      maxModelsPerWindow: 2,
    });
    const inputs = [
      call("a", ORIGIN + 1_000_000),
      // Minute 2 is open with a and b: the watermark is in it, minute 0 closed.
      call("a", ORIGIN + 2 * SIZE + 30_000_000),
      call("b", ORIGIN + 2 * SIZE + 31_000_000),
      // Late (minute 0): b has a series in minute 2, c does not and there is no room.
      call("b", ORIGIN + 2_000_000),
      call("c", ORIGIN + 3_000_000),
      call("c", ORIGIN + 4_000_000),
    ];
    const outputs = [
      ...inputs.flatMap((input) => state.apply(input)),
      ...state.apply({ type: "flush" }),
    ];
    expect(outputs.filter((output) => output.type === "late")).toHaveLength(3);
    const rollups = rollupsOf(outputs).filter(
      (rollup) => rollup.window_start === ORIGIN + 2 * SIZE,
    );
    expect(
      rollups.map((rollup) => [label(rollup), rollup.counts.calls, rollup.counts.late]),
    ).toEqual([
      ["total", 2, 3],
      ["a", 1, 0],
      ["b", 1, 1],
      ["(other)", 0, 2],
    ]);
    expect(state.foldedEvents).toBe(2);
  });

  it("a revision follows the window's rule: a model with a series revises it, a new one takes a free place, then the overflow series; the revision emits the overflow series again, complete", () => {
    const state = new PartitionState({
      ...DEFAULT_WINDOW_SETTINGS,
      allowedLatenessMicros: 10 * SIZE,
      maxModelsPerWindow: 3,
    });
    const first = [
      call("a", ORIGIN + 1_000_000),
      call("b", ORIGIN + 2_000_000),
      // Minute 0 closes with a and b: room for one more model.
      call("a", ORIGIN + SIZE + 20_000_000),
    ];
    const emitted = rollupsOf(first.flatMap((input) => state.apply(input)));
    expect(emitted.map(series)).toEqual(["svc@0 total 2", "svc@0 a 1", "svc@0 b 1"]);
    const revising = [
      call("c", ORIGIN + 3_000_000),
      call("d", ORIGIN + 4_000_000),
      call("b", ORIGIN + 5_000_000),
      call("e", ORIGIN + 6_000_000),
    ];
    for (const input of revising) expect(rollupsOf(state.apply(input))).toEqual([]);
    // Restored (from a copy of its snapshot) before the revision goes out: the pending overflow
    // series and the window's models come back.
    const restored = new PartitionState(state.settings, structuredClone(state.snapshot()));
    for (const current of [state, restored]) {
      const revision = rollupsOf(
        current.apply({ type: "tick", eventTimeMicros: ORIGIN + SIZE + 21_000_000 }),
      );
      expect(revision.map((rollup) => [series(rollup), rollup.revision])).toEqual([
        ["svc@0 total 6", 1],
        ["svc@0 b 2", 1],
        ["svc@0 c 1", 1],
        ["svc@0 (other) 2", 1],
      ]);
      // A later revision: a goes to its series, f to the overflow series, emitted complete.
      current.apply(call("a", ORIGIN + 7_000_000));
      current.apply(call("f", ORIGIN + 8_000_000));
      const again = rollupsOf(
        current.apply({ type: "tick", eventTimeMicros: ORIGIN + SIZE + 22_000_000 }),
      );
      expect(again.map((rollup) => [series(rollup), rollup.revision])).toEqual([
        ["svc@0 total 8", 2],
        ["svc@0 a 2", 2],
        ["svc@0 (other) 3", 2],
      ]);
    }
    expect(state.foldedEvents).toBe(3);
    expect(restored.foldedEvents).toBe(1);
  });

  it("rollupKey keeps the overflow series apart from the total and from a model named (other models)", () => {
    const state = new PartitionState({ ...DEFAULT_WINDOW_SETTINGS, maxModelsPerWindow: 1 });
    const rollups = rollupsOf([
      ...[call(OTHER_MODELS_NAME, ORIGIN + 1), call("x", ORIGIN + 2)].flatMap((input) =>
        state.apply(input),
      ),
      ...state.apply({ type: "flush" }),
    ]);
    expect(rollups.map(rollupKey)).toEqual([
      JSON.stringify(["svc", null, ORIGIN, SIZE]),
      JSON.stringify(["svc", OTHER_MODELS_NAME, ORIGIN, SIZE]),
      JSON.stringify(["svc", OTHER_MODELS_NAME, ORIGIN, SIZE, "other_models"]),
    ]);
    expect(rollups.map((rollup) => rollup.other_models)).toEqual([false, false, true]);
  });
});

describe("the setting", () => {
  it("is a window setting of the processor and of replays: --max-models-per-window, MCPO_MAX_MODELS_PER_WINDOW, processor.maxModelsPerWindow; a bad value names where it was given", () => {
    for (const schema of [processorConfigSchema, replayConfigSchema]) {
      const setting = settingOf(schema, "maxModelsPerWindow");
      expect([setting.flag, setting.env, setting.key, setting.kind]).toEqual([
        "--max-models-per-window",
        "MCPO_MAX_MODELS_PER_WINDOW",
        "processor.maxModelsPerWindow",
        "int",
      ]);
      expect(new SettingsResolver({}, undefined, {}).options(schema).maxModelsPerWindow).toBe(200);
      expect(
        new SettingsResolver({ maxModelsPerWindow: "50" }, undefined, {}).options(schema)
          .maxModelsPerWindow,
      ).toBe(50);
      expect(
        new SettingsResolver({}, undefined, { MCPO_MAX_MODELS_PER_WINDOW: "7" }).options(schema)
          .maxModelsPerWindow,
      ).toBe(7);
      let error: unknown;
      try {
        new SettingsResolver({ maxModelsPerWindow: "0" }, undefined, {}).options(schema);
      } catch (caught) {
        error = caught;
      }
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as ConfigError).key).toBe("--max-models-per-window");
    }
  });
});

describe("snapshots written before the overflow series", () => {
  it("restore their rollups (no other_models field) as the total and model series", () => {
    const state = new PartitionState({ ...DEFAULT_WINDOW_SETTINGS, maxModelsPerWindow: 2 });
    state.apply(call("a", ORIGIN + 1_000_000));
    state.apply(call("b", ORIGIN + 2_000_000));
    const snapshot = state.snapshot();
    const older: PartitionSnapshot = {
      ...snapshot,
      windows: snapshot.windows.map((rollup) => {
        const { other_models: _field, ...rest } = rollup;
        return rest as MetricRollup;
      }),
    };
    const restored = new PartitionState(state.settings, older);
    restored.apply(call("c", ORIGIN + 3_000_000));
    restored.apply(call("a", ORIGIN + 4_000_000));
    expect(rollupsOf(restored.apply({ type: "flush" })).map(series)).toEqual([
      "svc@0 total 4",
      "svc@0 a 2",
      "svc@0 b 1",
      "svc@0 (other) 1",
    ]);
  });
});

/** `svc@<minute> <model | total | (other)> <calls>`. */
function series(rollup: MetricRollup): string {
  return `${rollup.service}@${(rollup.window_start - ORIGIN) / SIZE} ${label(rollup)} ${rollup.counts.calls}`;
}

function label(rollup: MetricRollup): string {
  return rollup.other_models ? "(other)" : (rollup.model ?? "total");
}

const SEED = testSeed("cardinality.unit.test.ts fast-check");
const GRACE = DEFAULT_WINDOW_SETTINGS.graceMicros;
/** Every closed window stays revisable, so no event is late: each counts where it belongs. */
const REVISING: WindowSettings = {
  ...DEFAULT_WINDOW_SETTINGS,
  allowedLatenessMicros: 1_000 * SIZE,
  maxModelsPerWindow: 3,
};

/**
 * Logs of two services calling models m0 … m9 (or none), event time drifting forward with
 * out-of-order jitter, often beyond the grace period (those events revise their closed window).
 */
const logArbitrary = fc
  .array(
    fc.record({
      service: fc.constantFrom("svc-a", "svc-b"),
      model: fc.option(fc.integer({ min: 0, max: 9 }), { freq: 8 }),
      step: fc.integer({ min: 0, max: 4_000_000 }),
      jitter: fc.oneof(
        { weight: 6, arbitrary: fc.constant(0) },
        { weight: 2, arbitrary: fc.integer({ min: 0, max: GRACE }) },
        { weight: 2, arbitrary: fc.integer({ min: GRACE, max: 3 * SIZE }) },
      ),
      status: fc.constantFrom("ok" as const, "error" as const),
    }),
    { minLength: 1, maxLength: 400, size: "max" },
  )
  .map((steps) => {
    let clock = ORIGIN;
    return steps.map(({ service, model, step, jitter, status }, i): PartitionInput => {
      clock += step;
      const end = clock - jitter;
      return {
        type: "event",
        event: sampleEvent({
          event_id: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
          service,
          model: model === null ? null : `m${model}`,
          start_time: end - 1_000 - i,
          end_time: end,
          status,
          error_type: status === "error" ? "timeout" : null,
        }),
      };
    });
  });

function events(log: readonly PartitionInput[]): ModelCallEvent[] {
  return log.flatMap((input) => (input.type === "event" ? [input.event] : []));
}

/** On time or revising, by a plain loop over the watermark (no event is late here). */
function split(log: readonly PartitionInput[]): {
  onTime: ModelCallEvent[];
  revising: ModelCallEvent[];
} {
  let max: number | null = null;
  const onTime: ModelCallEvent[] = [];
  const revising: ModelCallEvent[] = [];
  for (const event of events(log)) {
    const end = event.end_time - (event.end_time % SIZE) + SIZE;
    if (max !== null && end <= max - GRACE) revising.push(event);
    else onTime.push(event);
    if (max === null || event.end_time > max) max = event.end_time;
  }
  return { onTime, revising };
}

const comparable = (rollup: MetricRollup): ComparableRollup => ({
  service: rollup.service,
  model: rollup.model,
  otherModels: rollup.other_models,
  windowStart: rollup.window_start,
  counts: rollup.counts,
  rates: rollup.rates,
});

describe("models per window, properties", () => {
  it("at a cap of 3 over 10 models, with revisions: first emissions and last revisions equal the oracle's (its own cap, in log order) and the core's batch", () => {
    let folding = 0;
    fc.assert(
      fc.property(logArbitrary, (log) => {
        const state = new PartitionState(REVISING);
        const emitted = rollupsOf([
          ...log.flatMap((input) => state.apply(input)),
          ...state.apply({ type: "flush" }),
        ]);
        const { onTime, revising } = split(log);
        const first = emitted.filter((rollup) => rollup.revision === 0);
        expectMatchesOracle(
          first.map(comparable),
          oracleRollups(onTime, SIZE, { maxModelsPerWindow: 3 }),
          "first emissions",
        );
        const last = new Map<string, MetricRollup>();
        for (const rollup of emitted) last.set(rollupKey(rollup), rollup);
        const all = [...onTime, ...revising];
        expectMatchesOracle(
          [...last.values()].map(comparable),
          oracleRollups(all, SIZE, { maxModelsPerWindow: 3 }),
          "last revisions",
        );
        const batch = new Map(rollupEvents(all, SIZE, undefined, 3).map((r) => [rollupKey(r), r]));
        expect(new Map([...last].map(([key, r]) => [key, { ...r, revision: 0 }]))).toEqual(batch);
        const folded = [...last.values()]
          .filter((rollup) => rollup.other_models)
          .reduce((sum, rollup) => sum + rollup.counts.calls, 0);
        expect(state.foldedEvents).toBe(folded);
        if (folded > 0) folding++;
      }),
      { numRuns: 60, seed: SEED },
    );
    expect(folding, "logs that fold").toBeGreaterThan(20);
  }, 120_000);

  it("restored from a snapshot (a deep copy) anywhere, a state continues exactly as the uninterrupted run: the overflow series and each window's models come back", () => {
    fc.assert(
      fc.property(logArbitrary, fc.array(fc.nat(), { minLength: 3, maxLength: 3 }), (log, cuts) => {
        const inputs: PartitionInput[] = [...log, { type: "flush" }];
        const whole = new PartitionState(REVISING);
        const expected = inputs.flatMap((input) => whole.apply(input));
        for (const cut of cuts) {
          const k = cut % inputs.length;
          const before = new PartitionState(REVISING);
          const head = inputs.slice(0, k).flatMap((input) => before.apply(input));
          const snapshot = structuredClone(before.snapshot());
          const after = new PartitionState(REVISING, snapshot);
          const tail = inputs.slice(k).flatMap((input) => after.apply(input));
          expect([...head, ...tail]).toEqual(expected);
          expect(before.foldedEvents + after.foldedEvents).toBe(whole.foldedEvents);
        }
      }),
      { numRuns: 40, seed: SEED },
    );
  }, 120_000);
});
