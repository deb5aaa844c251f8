/**
 * Idempotent counting: an event delivered twice (same `event_id`: an exporter resending a batch
 * after a partial success, a producer replaced mid-send) counts once while its window is open or
 * revisable, and is reported as a duplicate; a checkpoint keeps what was counted.
 */
import { randomUUID } from "node:crypto";

import fc from "fast-check";
import { describe, expect, it } from "vitest";

import type { MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { bigintReplacer } from "../avro/bigint.js";
import { snapshotFromJson } from "../processor/checkpoints.js";
import { EventIdSet } from "../processor/event-ids.js";
import {
  DEFAULT_WINDOW_SETTINGS,
  PartitionState,
  type PartitionInput,
  type PartitionOutput,
  type PartitionSnapshot,
  type WindowSettings,
} from "../processor/partition.js";
import { eventArbitrary, sampleEvent } from "./support/events.js";
import { testSeed } from "./support/seed.js";

const SEED = testSeed("dedupe.unit.test.ts fast-check");
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

const call = (end: number, overrides: Partial<ModelCallEvent> = {}): ModelCallEvent =>
  sampleEvent({
    service: "svc",
    model: "gpt-4o",
    kind: "model_call",
    start_time: end - 1_000,
    end_time: end,
    cost_nano_usd: 1_000,
    ...overrides,
  });

const rollupsOf = (outputs: readonly PartitionOutput[]): MetricRollup[] =>
  outputs.flatMap((output) => (output.type === "rollup" ? [output.rollup] : []));
const duplicatesOf = (outputs: readonly PartitionOutput[]): ModelCallEvent[] =>
  outputs.flatMap((output) => (output.type === "duplicate" ? [output.event] : []));

function feed(state: PartitionState, inputs: readonly PartitionInput[]): PartitionOutput[] {
  return inputs.flatMap((input) => state.apply(input));
}

describe("the same event_id counts once", () => {
  it("a record delivered twice in an open window is one call, and one duplicate", () => {
    const state = new PartitionState(SETTINGS);
    const event = call(ORIGIN + 1_000_000);
    const outputs = feed(state, [
      { type: "event", event },
      { type: "event", event: call(ORIGIN + 2_000_000) },
      { type: "event", event: { ...event } },
      { type: "flush" },
    ]);
    const total = rollupsOf(outputs).find((rollup) => rollup.model === null);
    expect(total?.counts.calls).toBe(2);
    expect(total?.counts.cost_nano_usd).toBe(2_000n);
    expect(duplicatesOf(outputs).map((e) => e.event_id)).toEqual([event.event_id]);
  });

  it("a copy of an event already counted in a closed but revisable window does not revise it", () => {
    const state = new PartitionState({ ...SETTINGS, allowedLatenessMicros: 5 * SIZE });
    const event = call(ORIGIN + 1_000_000);
    const first = feed(state, [
      { type: "event", event },
      // Closes the first window (watermark past its end), which stays revisable.
      { type: "event", event: call(ORIGIN + SIZE + GRACE + 1_000_000) },
    ]);
    expect(rollupsOf(first).find((r) => r.model === null)?.counts.calls).toBe(1);
    const again = feed(state, [
      { type: "event", event: { ...event } },
      { type: "tick", eventTimeMicros: ORIGIN + SIZE + GRACE + 2_000_000 },
    ]);
    expect(rollupsOf(again)).toEqual([]);
    expect(duplicatesOf(again)).toHaveLength(1);
    // A new event of that window does revise it, to 2 calls.
    const revised = feed(state, [
      { type: "event", event: call(ORIGIN + 3_000_000) },
      { type: "tick", eventTimeMicros: ORIGIN + SIZE + GRACE + 3_000_000 },
    ]);
    const total = rollupsOf(revised).find((r) => r.model === null);
    expect(total?.counts.calls).toBe(2);
    expect(total?.revision).toBe(1);
  });

  it("what a window counted survives a checkpoint: restored, the duplicate still counts once", () => {
    const state = new PartitionState(SETTINGS);
    const event = call(ORIGIN + 1_000_000);
    feed(state, [{ type: "event", event }]);
    // As a checkpoint stores it: JSON, sums as decimal strings.
    const snapshot = snapshotFromJson(
      JSON.parse(JSON.stringify(state.snapshot(), bigintReplacer)) as PartitionSnapshot,
    );
    const restored = new PartitionState(SETTINGS, snapshot);
    const again = feed(restored, [{ type: "event", event: { ...event } }]);
    expect(duplicatesOf(again)).toHaveLength(1);
    // The restored state snapshots to what the uninterrupted one does.
    feed(state, [{ type: "event", event: { ...event } }]);
    expect(restored.snapshot()).toEqual(state.snapshot());
    const outputs = feed(restored, [{ type: "flush" }]);
    expect(rollupsOf(outputs).find((r) => r.model === null)?.counts.calls).toBe(1);
  });

  it("tool calls (not counted in rollups) are not duplicates", () => {
    const state = new PartitionState(SETTINGS);
    const tool = call(ORIGIN + 1_000_000, { kind: "tool_call", model: null });
    const outputs = feed(state, [
      { type: "event", event: tool },
      { type: "event", event: tool },
      { type: "flush" },
    ]);
    expect(duplicatesOf(outputs)).toEqual([]);
  });

  it("a log with duplicates gives the rollups and alerts of the log without them (property)", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            event: eventArbitrary(),
            step: fc.integer({ min: 0, max: 3_000_000 }),
            jitter: fc.integer({ min: 0, max: GRACE }),
            copies: fc.oneof(
              { weight: 5, arbitrary: fc.constant(0) },
              { weight: 1, arbitrary: fc.integer({ min: 1, max: 3 }) },
            ),
            delay: fc.integer({ min: 0, max: 5 }),
          }),
          { minLength: 1, maxLength: 300 },
        ),
        (steps) => {
          let clock = ORIGIN;
          const unique: PartitionInput[] = [];
          const withCopies: PartitionInput[] = [];
          const queued: { at: number; event: ModelCallEvent }[] = [];
          let expectedDuplicates = 0;
          let maxEnd = Number.NEGATIVE_INFINITY;
          steps.forEach(({ event, step, jitter, copies, delay }, index) => {
            clock += step;
            const end = clock - jitter;
            const placed: ModelCallEvent = {
              ...event,
              event_id: randomUUID(),
              start_time: end - (event.end_time - event.start_time),
              end_time: end,
            };
            unique.push({ type: "event", event: placed });
            withCopies.push({ type: "event", event: placed });
            for (let i = 0; i < copies; i++) queued.push({ at: index + delay, event: placed });
            maxEnd = Math.max(maxEnd, end);
            for (const copy of queued.filter((q) => q.at === index)) {
              withCopies.push({ type: "event", event: { ...copy.event } });
              // A copy whose window the watermark has passed is late, like any event of that
              // window: the log without duplicates has it too. Otherwise it is a duplicate.
              const windowEnd = copy.event.end_time - (copy.event.end_time % SIZE) + SIZE;
              if (windowEnd <= maxEnd - GRACE) unique.push({ type: "event", event: copy.event });
              else if (copy.event.kind === "model_call" || copy.event.kind === "sampling")
                expectedDuplicates++;
            }
          });
          // No original is late (jitter within the grace); a copy lands a few events after it.
          const plain = feed(new PartitionState(SETTINGS), [...unique, { type: "flush" }]);
          const duplicated = feed(new PartitionState(SETTINGS), [...withCopies, { type: "flush" }]);
          expect(duplicated.filter((o) => o.type !== "duplicate")).toEqual(plain);
          expect(duplicatesOf(duplicated)).toHaveLength(expectedDuplicates);
        },
      ),
      { numRuns: 100, seed: SEED },
    );
  });
});

describe("EventIdSet", () => {
  it("holds every id exactly, and its serialised form restores the same set in the same order", () => {
    const set = new EventIdSet();
    const ids = Array.from({ length: 50_000 }, (_, i) =>
      i % 2 === 0
        ? randomUUID()
        : // Sequential ids that differ in a few bits only.
          `00000000-0000-4000-8000-${i.toString(16).padStart(12, "0")}`,
    );
    for (const id of ids) expect(set.add(id)).toBe(true);
    for (const id of ids.slice(0, 1000)) expect(set.add(id)).toBe(false);
    expect(set.size).toBe(ids.length);
    const restored = EventIdSet.fromBase64(set.toBase64());
    expect(restored.size).toBe(ids.length);
    expect(restored.toBase64()).toBe(set.toBase64());
    for (const id of ids) expect(restored.has(id)).toBe(true);
    expect(restored.has(randomUUID())).toBe(false);
  });

  it("tells ids that differ in one hex digit apart, and takes ids that are not UUIDs", () => {
    const set = new EventIdSet();
    const base = "0123abcd-4567-4890-abcd-ef0123456789";
    expect(set.add(base)).toBe(true);
    for (let i = 0; i < base.length; i++) {
      if (base[i] === "-") continue;
      const other = base.slice(0, i) + (base[i] === "0" ? "1" : "0") + base.slice(i + 1);
      expect(set.add(other), other).toBe(true);
    }
    expect(set.add("not-a-uuid")).toBe(true);
    expect(set.add("not-a-uuid")).toBe(false);
    expect(set.has("not-a-uuie")).toBe(false);
  });

  it("refuses a serialised form that is not whole ids", () => {
    expect(() => EventIdSet.fromBase64(Buffer.alloc(17).toString("base64"))).toThrow(
      /17 bytes is not a whole number of 16-byte ids/,
    );
  });
});
