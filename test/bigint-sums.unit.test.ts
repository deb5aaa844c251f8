/**
 * The sums of a window (cost, prompt and completion tokens, retries) are exact 64-bit integers,
 * bigint in TypeScript: past 2^53 through the partition state machine, the MetricRollup codec and
 * a checkpoint; at the int64 limit an event that would take a sum past 2^63 − 1 is refused as an
 * `overflow` before anything changes, and the window goes on.
 */
import avro from "avsc";
import { describe, expect, it } from "vitest";

import { AvroCodec, EncodeError, type SchemaLookup } from "../avro/codec.js";
import { METRIC_ROLLUP } from "../avro/contracts.js";
import type { MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { METRIC_ROLLUP_SCHEMA } from "../avro/generated.js";
import { merge, rollupEvents, WindowAccumulator } from "../metrics/index.js";
import { parseCheckpoint, serializeCheckpoint, type Checkpoint } from "../processor/checkpoints.js";
import {
  DEFAULT_WINDOW_SETTINGS,
  PartitionState,
  type PartitionInput,
  type PartitionOutput,
  type WindowSettings,
} from "../processor/partition.js";
import { sampleEvent } from "./support/events.js";

const SIZE = 60_000_000;
const GRACE = 10_000_000;
const ORIGIN = 1_764_000_000_000_000 - (1_764_000_000_000_000 % SIZE);
const SETTINGS: WindowSettings = {
  ...DEFAULT_WINDOW_SETTINGS,
  windowSizeMicros: SIZE,
  graceMicros: GRACE,
  allowedLatenessMicros: 0,
  rules: [],
};
const MAX = Number.MAX_SAFE_INTEGER; // 2^53 − 1: the most one event may carry
const INT64_MAX = 2n ** 63n - 1n;
const INT_MAX = 2 ** 31 - 1;

const call = (end: number, overrides: Partial<ModelCallEvent> = {}): ModelCallEvent =>
  sampleEvent({
    service: "svc",
    model: "gpt-4o",
    kind: "model_call",
    start_time: end - 1_000,
    end_time: end,
    ...overrides,
  });

const rollupsOf = (outputs: readonly PartitionOutput[]): MetricRollup[] =>
  outputs.flatMap((output) => (output.type === "rollup" ? [output.rollup] : []));

function feed(state: PartitionState, inputs: readonly PartitionInput[]): PartitionOutput[] {
  return inputs.flatMap((input) => state.apply(input));
}

/** A codec of the contract's MetricRollup; the lookup answers only for `writers`. */
function rollupCodec(writers: ReadonlyMap<number, avro.Type> = new Map()): AvroCodec<MetricRollup> {
  type RegistrySchema = Awaited<ReturnType<SchemaLookup["getSchema"]>>;
  const registry: SchemaLookup = {
    getSchema: (id: number) => {
      const type = writers.get(id);
      return type
        ? Promise.resolve(type as unknown as RegistrySchema)
        : Promise.reject(Object.assign(new Error(`no schema ${id}`), { status: 404 }));
    },
  };
  return AvroCodec.forRegisteredSchema(METRIC_ROLLUP, 1, { subject: "rollups-value", registry });
}

/** A valid rollup whose sums are `sums`. */
function rollupWith(sums: Partial<MetricRollup["counts"]>): MetricRollup {
  const [base] = rollupEvents([call(ORIGIN + 1_000)], SIZE);
  if (!base) throw new Error("no rollup");
  return { ...base, counts: { ...base.counts, ...sums } };
}

describe("window sums past 2^53", () => {
  it("two events of 2^53 − 1 nano-USD and tokens close their window with the exact sums", () => {
    const state = new PartitionState(SETTINGS);
    const events = [0, 1].map((i) =>
      call(ORIGIN + 1_000_000 + i, {
        cost_nano_usd: MAX,
        prompt_tokens: MAX,
        completion_tokens: MAX - 1,
        retries: INT_MAX,
      }),
    );
    const rollups = rollupsOf(
      feed(state, [
        ...events.map((event) => ({ type: "event" as const, event })),
        { type: "flush" },
      ]),
    );
    expect(rollups.map((rollup) => rollup.model)).toEqual([null, "gpt-4o"]);
    for (const rollup of rollups) {
      expect(rollup.counts).toMatchObject({
        calls: 2,
        calls_with_cost: 2,
        cost_nano_usd: 2n * BigInt(MAX),
        prompt_tokens: 2n * BigInt(MAX),
        completion_tokens: 2n * BigInt(MAX - 1),
        calls_with_retries: 2,
        retries: 2n * BigInt(INT_MAX),
      });
      // A ratio converts to a number only for the division.
      expect(rollup.rates.avg_cost_usd).toBeCloseTo(MAX * 1e-9, 6);
      expect(METRIC_ROLLUP.check(rollup)).toBeUndefined();
    }
  });

  it("the MetricRollup codec keeps sums up to 2^63 − 1 exact, and refuses one past it", async () => {
    const codec = rollupCodec();
    const rollup = rollupWith({
      cost_nano_usd: INT64_MAX,
      prompt_tokens: 2n ** 53n + 1n,
      completion_tokens: 2n ** 62n + 3n,
      retries: 2n ** 53n + 5n,
    });
    const decoded = await codec.decode(codec.encode(rollup));
    expect(decoded).toMatchObject({ ok: true });
    if (!decoded.ok) return;
    expect(decoded.value).toEqual(rollup);
    expect(decoded.value.counts.cost_nano_usd).toBe(INT64_MAX);
    expect(decoded.value.counts.prompt_tokens).toBe(2n ** 53n + 1n);
    // Past int64 (and below 0) is refused before a byte is written: never wrapped.
    expect(() => codec.encode(rollupWith({ cost_nano_usd: INT64_MAX + 1n }))).toThrow(EncodeError);
    expect(() => codec.encode(rollupWith({ retries: -1n }))).toThrow(/retries.*below minimum 0/);
    // A number where the contract has a bigint is a caller's bug, named.
    expect(() => codec.encode(rollupWith({ prompt_tokens: 5 as unknown as bigint }))).toThrow(
      /counts\.prompt_tokens/,
    );
  });

  it("rollups written with the plain-long schema (before bigint sums) decode to bigints", async () => {
    const plain = JSON.parse(
      JSON.stringify(METRIC_ROLLUP_SCHEMA, (_key, value: unknown) =>
        typeof value === "object" &&
        value !== null &&
        (value as Record<string, unknown>)["mcpo.bigint"] === true
          ? "long"
          : value,
      ),
    ) as avro.Schema;
    const writer = avro.Type.forSchema(plain);
    const codec = rollupCodec(new Map([[7, writer]]));
    // avsc writes a plain long as a number up to 2^53 − 2.
    const rollup = rollupWith({ cost_nano_usd: BigInt(MAX - 1), prompt_tokens: 12n });
    const body = writer.toBuffer({
      ...rollup,
      counts: {
        ...rollup.counts,
        cost_nano_usd: MAX - 1,
        prompt_tokens: 12,
        completion_tokens: Number(rollup.counts.completion_tokens),
        retries: Number(rollup.counts.retries),
      },
    });
    const header = Buffer.from([0, 0, 0, 0, 7]);
    const decoded = await codec.decode(Buffer.concat([header, body]));
    expect(decoded).toMatchObject({ ok: true });
    if (decoded.ok) expect(decoded.value).toEqual(rollup);
  });
});

describe("one event's values", () => {
  it("are refused past avsc's largest long as a number (2^53 − 2), naming the field, before encoding", async () => {
    const { MODEL_CALL_EVENT } = await import("../avro/contracts.js");
    const events = AvroCodec.forRegisteredSchema(MODEL_CALL_EVENT, 1, {
      subject: "calls-value",
      registry: { getSchema: () => Promise.reject(new Error("not asked")) },
    });
    const largest = call(ORIGIN, { cost_nano_usd: MAX - 1, prompt_tokens: MAX - 1 });
    const decoded = await events.decode(events.encode(largest));
    expect(decoded.ok && decoded.value.cost_nano_usd).toBe(MAX - 1);
    expect(MODEL_CALL_EVENT.check(call(ORIGIN, { cost_nano_usd: MAX }))).toMatchObject({
      path: "cost_nano_usd",
    });
    expect(() => events.encode(call(ORIGIN, { prompt_tokens: MAX }))).toThrow(EncodeError);
  });
});

describe("a checkpoint keeps the sums exact", () => {
  const checkpointOf = (state: PartitionState): Checkpoint => ({
    version: 1,
    group: "g",
    topic: "t",
    partition: 0,
    nextOffset: "9",
    state: state.snapshot(),
  });

  it("as decimal strings, read back as bigints; numbers of earlier checkpoints read too", () => {
    const state = new PartitionState(SETTINGS);
    const events = [0, 1, 2].map((i) =>
      call(ORIGIN + 1_000_000 + i, { cost_nano_usd: MAX, prompt_tokens: MAX }),
    );
    feed(
      state,
      events.map((event) => ({ type: "event", event })),
    );
    const checkpoint = checkpointOf(state);
    const json = serializeCheckpoint(checkpoint);
    expect(json).toContain(`"cost_nano_usd":"${3n * BigInt(MAX)}"`);
    const read = parseCheckpoint(JSON.parse(json));
    expect(read).toEqual(checkpoint);
    const restored = new PartitionState(SETTINGS, read?.state);
    const rollups = rollupsOf(restored.apply({ type: "flush" }));
    expect(rollups[0]?.counts.cost_nano_usd).toBe(3n * BigInt(MAX));
    expect(rollups[0]?.counts.prompt_tokens).toBe(3n * BigInt(MAX));

    // An earlier version wrote every count as a JSON number.
    const small = new PartitionState(SETTINGS);
    feed(small, [{ type: "event", event: call(ORIGIN + 5, { cost_nano_usd: 7, retries: 2 }) }]);
    const numbers = JSON.parse(serializeCheckpoint(checkpointOf(small)), (key, value: unknown) =>
      typeof value === "string" && /^\d+$/.test(value) && key !== "nextOffset"
        ? Number(value)
        : value,
    ) as unknown;
    const old = parseCheckpoint(numbers);
    expect(old?.state.windows[0]?.counts.cost_nano_usd).toBe(7n);
    expect(old?.state.windows[0]?.counts.retries).toBe(2n);
    expect(old).toEqual(checkpointOf(small));
  });
});

describe("the accumulator's sums", () => {
  it("merge and restore exactly past 2^53, and a merge past 2^63 − 1 throws before changing anything", () => {
    const big = (count: number, cost: number): WindowAccumulator => {
      const accumulator = new WindowAccumulator();
      for (let i = 0; i < count; i++)
        accumulator.add(call(ORIGIN + i, { cost_nano_usd: cost, prompt_tokens: 3 }));
      return accumulator;
    };
    // Below 2^53 on each side, past it merged.
    const merged = merge(big(1, MAX - 1), big(1, MAX - 1));
    expect(merged.counts().cost_nano_usd).toBe(2n * BigInt(MAX - 1));
    const half = big(512, MAX);
    const whole = merge(half, half);
    expect(whole.counts().cost_nano_usd).toBe(1024n * BigInt(MAX));
    expect(whole.counts().prompt_tokens).toBe(3072n);
    // Through a rollup (a checkpoint's open window, a revision's start) and on.
    const restored = WindowAccumulator.fromRollup(
      whole.toRollup("svc", null, { start: ORIGIN, end: ORIGIN + SIZE }),
    );
    expect(restored.counts()).toEqual(whole.counts());
    expect(restored.overflow(call(ORIGIN, { cost_nano_usd: MAX }))).toContain("cost_nano_usd");
    expect(restored.overflow(call(ORIGIN, { cost_nano_usd: 1023 }))).toBeUndefined();
    restored.add(call(ORIGIN, { cost_nano_usd: 1023 }));
    expect(restored.counts().cost_nano_usd).toBe(INT64_MAX);
    // One more nano-USD does not fit: refused, the counts as they were.
    const before = restored.counts();
    expect(() => {
      restored.add(call(ORIGIN, { cost_nano_usd: 1 }));
    }).toThrow(RangeError);
    expect(() => {
      restored.mergeFrom(big(1, 1));
    }).toThrow(/would pass 2\^63 - 1/);
    expect(restored.counts()).toEqual(before);
  });
});

describe("at the int64 limit", () => {
  it("an event that would take a sum past 2^63 − 1 is refused, as an overflow, before anything changes", () => {
    const state = new PartitionState(SETTINGS);
    // 1024 × (2^53 − 1) = 2^63 − 1024: the 1025th such cost does not fit.
    const fits = Array.from({ length: 1024 }, (_, i) =>
      call(ORIGIN + 1_000 + i, { cost_nano_usd: MAX }),
    );
    expect(
      feed(
        state,
        fits.map((event) => ({ type: "event", event })),
      ),
    ).toEqual([]);
    const before = serializeCheckpoint({
      version: 1,
      group: "g",
      topic: "t",
      partition: 0,
      nextOffset: "0",
      state: state.snapshot(),
    });
    // Within the event time read so far: the refused event changes nothing at all (a later one
    // would move event time forward, as every valid event does).
    const over = call(ORIGIN + 1_500, { cost_nano_usd: MAX });
    const outputs = state.apply({ type: "event", event: over });
    expect(outputs).toEqual([
      { type: "overflow", event: over, reason: expect.stringContaining("cost_nano_usd") as string },
    ]);
    expect(
      serializeCheckpoint({
        version: 1,
        group: "g",
        topic: "t",
        partition: 0,
        nextOffset: "0",
        state: state.snapshot(),
      }),
    ).toBe(before);
    // The window goes on: a call without a cost still counts, and the window closes whole.
    const free = call(ORIGIN + 6_000, { cost_nano_usd: null });
    expect(state.apply({ type: "event", event: free })).toEqual([]);
    const rollups = rollupsOf(state.apply({ type: "flush" }));
    expect(rollups).toHaveLength(2);
    for (const rollup of rollups) {
      expect(rollup.counts).toMatchObject({
        calls: 1025,
        calls_with_cost: 1024,
        cost_nano_usd: 1024n * BigInt(MAX),
      });
      expect(METRIC_ROLLUP.check(rollup)).toBeUndefined();
    }
  });

  it("token sums too, and a revision of a closed window is refused alike", () => {
    const state = new PartitionState({ ...SETTINGS, allowedLatenessMicros: 10 * SIZE });
    const fits = Array.from({ length: 1024 }, (_, i) =>
      call(ORIGIN + 1_000 + i, { completion_tokens: MAX }),
    );
    feed(
      state,
      fits.map((event) => ({ type: "event", event })),
    );
    const over = call(ORIGIN + 7_000, { completion_tokens: MAX });
    expect(state.apply({ type: "event", event: over })).toEqual([
      {
        type: "overflow",
        event: over,
        reason: expect.stringContaining("completion_tokens") as string,
      },
    ]);
    // Close the window; a revisable event of it that would overflow is refused, one that fits
    // revises it.
    const closed = rollupsOf(state.apply({ type: "tick", eventTimeMicros: ORIGIN + SIZE + GRACE }));
    expect(closed[0]?.counts.completion_tokens).toBe(1024n * BigInt(MAX));
    const lateOver = call(ORIGIN + 8_000, { completion_tokens: MAX });
    expect(state.apply({ type: "event", event: lateOver })).toEqual([
      {
        type: "overflow",
        event: lateOver,
        reason: expect.stringContaining("completion_tokens") as string,
      },
    ]);
    const lateFits = call(ORIGIN + 9_000, { completion_tokens: 1023 });
    state.apply({ type: "event", event: lateFits });
    const revised = rollupsOf(state.apply({ type: "flush" }));
    const total = revised.find((rollup) => rollup.model === null);
    expect(total?.revision).toBe(1);
    expect(total?.counts.completion_tokens).toBe(INT64_MAX);
    expect(total?.counts.calls).toBe(1025);
  });
});
