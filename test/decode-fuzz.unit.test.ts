/**
 * Decoding untrusted bytes is bounded (issue 13 item 1): mutated records of the three contract
 * records — bit flips, truncations, inserted varints, huge or negative counts written where
 * counts, lengths and indexes live, random splices — each decode to a value or a typed failure,
 * never a throw, none running away (each within 250 ms). Crafted cases pin the refusals: what,
 * which field, at which byte offset. Writer schemas of other versions (a newer event with fields
 * the reader skips, an older rollup) are decoded too: the bounds are checked against the
 * writer's schema.
 *
 * The codecs are built without a registry (the registry is not under test here): an in-memory
 * lookup answers the writer schemas of other ids.
 */
import { performance } from "node:perf_hooks";

import avro from "avsc";
import fc from "fast-check";
import { beforeAll, describe, expect, it } from "vitest";

import { contractType } from "../avro/bigint.js";
import { AvroCodec, type DecodeResult, type SchemaLookup } from "../avro/codec.js";
import {
  ALERT_EVENT,
  METRIC_ROLLUP,
  MODEL_CALL_EVENT,
  type EventContract,
} from "../avro/contracts.js";
import {
  ALERT_EVENT_SCHEMA,
  METRIC_ROLLUP_SCHEMA,
  MODEL_CALL_EVENT_SCHEMA,
  type AlertEvent,
  type AvroSchema,
  type MetricRollup,
} from "../avro/generated.js";
import { rollupEvents } from "../metrics/index.js";
import { eventArbitrary, sampleEvent } from "./support/events.js";
import { testSeed } from "./support/seed.js";

const SEED = testSeed("decode-fuzz.unit.test.ts fast-check");
/**
 * The bound on one decode, ms: a guard against a decode that runs away (a hostile count or length
 * that allocated or looped on its word takes seconds), not a speed target (those are benchmarks'):
 * the best of up to five timings, far above a normal decode's fraction of a millisecond, so a
 * loaded machine's pauses do not fail it.
 */
const DECODE_BUDGET_MS = 250;

// ---------------------------------------------------------------------------------------------
// Writer schemas: ours, and other versions an in-memory lookup answers by id.

interface SchemaJson {
  readonly type: "record";
  readonly name: string;
  readonly fields: readonly { readonly name: string }[];
}
const withFields = (schema: unknown, fields: readonly object[]): avro.Schema => {
  const record = schema as SchemaJson;
  return { ...record, fields: [...record.fields, ...fields] } as avro.Schema;
};
const withoutField = (schema: unknown, name: string): avro.Schema => {
  const record = schema as SchemaJson;
  return { ...record, fields: record.fields.filter((f) => f.name !== name) } as avro.Schema;
};

const ID = { event: 1, rollup: 2, alert: 3, eventV2: 11, eventV3: 12, rollupV0: 21 } as const;

/** A newer event: two fields this reader does not know (it skips them). */
const EVENT_V2 = withFields(MODEL_CALL_EVENT_SCHEMA, [
  { name: "tags", type: { type: "map", values: { type: "array", items: "long" } }, default: {} },
  { name: "region", type: ["null", "string"], default: null },
]);
/**
 * Another newer event: an array of items that take no bytes (null), a record inside a union, and
 * an array of doubles (items of one size, 8 bytes) last.
 */
const EVENT_V3 = withFields(MODEL_CALL_EVENT_SCHEMA, [
  { name: "marks", type: { type: "array", items: "null" }, default: [] },
  {
    name: "origin",
    type: [
      "null",
      {
        type: "record",
        name: "Origin",
        fields: [
          { name: "region", type: "string" },
          { name: "zone", type: ["null", "string"], default: null },
        ],
      },
    ],
    default: null,
  },
  { name: "weights", type: { type: "array", items: "double" }, default: [] },
]);
/** An older rollup, from before revisions. */
const ROLLUP_V0 = withoutField(METRIC_ROLLUP_SCHEMA, "revision");

const WRITER_SCHEMAS: Readonly<Record<number, avro.Schema>> = {
  [ID.event]: MODEL_CALL_EVENT_SCHEMA as avro.Schema,
  [ID.rollup]: METRIC_ROLLUP_SCHEMA as avro.Schema,
  [ID.alert]: ALERT_EVENT_SCHEMA as avro.Schema,
  [ID.eventV2]: EVENT_V2,
  [ID.eventV3]: EVENT_V3,
  [ID.rollupV0]: ROLLUP_V0,
};
const WRITER_TYPES = new Map(
  Object.entries(WRITER_SCHEMAS).map(([id, schema]) => [
    Number(id),
    // As the codec parses them (a rollup's sums are bigints): the same bytes as a plain long.
    contractType(schema as AvroSchema),
  ]),
);

type RegistrySchema = Awaited<ReturnType<SchemaLookup["getSchema"]>>;
/** The registry lookup, in memory: the writer types by id, 404 for any other id. */
const lookup: SchemaLookup = {
  getSchema: (id: number) => {
    const type = WRITER_TYPES.get(id);
    return type
      ? Promise.resolve(type as unknown as RegistrySchema)
      : Promise.reject(Object.assign(new Error(`no schema ${id}`), { status: 404 }));
  },
};

const codecFor = <T>(contract: EventContract<T>, id: number): AvroCodec<T> =>
  AvroCodec.forRegisteredSchema(contract, id, {
    subject: `${contract.name}-value`,
    registry: lookup,
  });
const events = codecFor(MODEL_CALL_EVENT, ID.event);
const rollups = codecFor(METRIC_ROLLUP, ID.rollup);
const alerts = codecFor(ALERT_EVENT, ID.alert);
const codecOf: Readonly<Record<number, AvroCodec<unknown>>> = {
  [ID.event]: events,
  [ID.eventV2]: events,
  [ID.eventV3]: events,
  [ID.rollup]: rollups,
  [ID.rollupV0]: rollups,
  [ID.alert]: alerts,
};

/** Wire-format bytes of `value` written with the writer schema of `id`. */
function wire(id: number, value: unknown): Buffer {
  const type = WRITER_TYPES.get(id);
  if (!type) throw new Error(`no writer ${id}`);
  const header = Buffer.alloc(5);
  header.writeInt32BE(id, 1);
  return Buffer.concat([header, type.toBuffer(value)]);
}

// ---------------------------------------------------------------------------------------------
// Where counts, lengths and indexes live in a record's bytes.

/** A varint that is a count, a length or an index, with the field it belongs to. */
interface CountPlace {
  readonly offset: number;
  readonly path: string;
  readonly kind: "block count" | "length" | "index";
}

/** What the places reader needs of avsc's types (its typings declare them on each class). */
interface TypeParts {
  readonly name?: string | undefined;
  readonly fields?: readonly { readonly name: string; readonly type: avro.Type }[];
  readonly itemsType?: avro.Type;
  readonly valuesType?: avro.Type;
  readonly types?: readonly avro.Type[];
}
const parts = (type: avro.Type): TypeParts => type;

const encodedLength = (type: avro.Type, value: unknown): number => type.toBuffer(value).length;
const join = (path: string, name: string): string => (path === "" ? name : `${path}.${name}`);

/**
 * The places of `value`'s counts, lengths and indexes when `type` encodes it at `offset`;
 * returns the offset after it. Written apart from the product's walker, from avsc's encoding.
 */
function countPlaces(
  type: avro.Type,
  value: unknown,
  offset: number,
  path: string,
  out: CountPlace[],
): number {
  const name = type.typeName;
  if (name === "record") {
    let at = offset;
    const record = value as Record<string, unknown>;
    for (const field of parts(type).fields ?? [])
      at = countPlaces(field.type, record[field.name], at, join(path, field.name), out);
    return at;
  }
  if (name === "array" || name === "map") {
    const entries: [string | undefined, unknown][] =
      name === "array"
        ? (value as unknown[]).map((item) => [undefined, item])
        : Object.entries(value as Record<string, unknown>);
    out.push({ offset, path, kind: "block count" });
    if (entries.length === 0) return offset + 1;
    let at = offset + encodedLength(avro.Type.forSchema("long"), entries.length);
    const inner = name === "array" ? parts(type).itemsType : parts(type).valuesType;
    if (!inner) throw new Error(`${path}: no item type`);
    entries.forEach(([key, item], index) => {
      const itemPath = key === undefined ? `${path}[${index}]` : `${path}[${JSON.stringify(key)}]`;
      if (key !== undefined) {
        out.push({ offset: at, path: itemPath, kind: "length" });
        at += encodedLength(avro.Type.forSchema("string"), key);
      }
      at = countPlaces(inner, item, at, itemPath, out);
    });
    return at + 1; // the closing empty block
  }
  if (name === "union:unwrapped" || name === "union:wrapped") {
    const branches = parts(type).types ?? [];
    const index = branches.findIndex((branch) => branch.isValid(value));
    out.push({ offset, path, kind: "index" });
    const branch = branches[index];
    if (!branch) throw new Error(`${path}: no branch for ${String(value)}`);
    return countPlaces(branch, value, offset + 1, path, out);
  }
  if (name === "string" || name === "bytes") out.push({ offset, path, kind: "length" });
  if (name === "enum") out.push({ offset, path, kind: "index" });
  return offset + encodedLength(type, value);
}

function placesOf(id: number, value: unknown): CountPlace[] {
  const type = WRITER_TYPES.get(id);
  if (!type) throw new Error(`no writer ${id}`);
  const out: CountPlace[] = [];
  countPlaces(type, value, 5, "", out);
  return out;
}

function placeOf(id: number, value: unknown, path: string, kind?: CountPlace["kind"]): CountPlace {
  const place = placesOf(id, value).find(
    (p) => p.path === path && (kind === undefined || p.kind === kind),
  );
  if (!place) throw new Error(`no ${kind ?? "count, length or index"} at ${path}`);
  return place;
}

/**
 * Where the value of the long field `path` (a record's field, not a count) starts: after the
 * fields before it, measured with avsc.
 */
function fieldOffset(id: number, value: unknown, path: string): number {
  const type = WRITER_TYPES.get(id);
  if (!type) throw new Error(`no writer ${id}`);
  const names = path.split(".");
  let offset = 5;
  let current: avro.Type = type;
  let record = value as Record<string, unknown>;
  for (const [depth, name] of names.entries()) {
    for (const field of parts(current).fields ?? []) {
      if (field.name === name) {
        if (depth < names.length - 1) {
          current = field.type;
          record = record[name] as Record<string, unknown>;
        }
        break;
      }
      offset += encodedLength(field.type, record[field.name]);
    }
  }
  return offset;
}

/** The zigzag varint of `n`, as Avro writes an int or a long (any length, for crafting). */
function varint(n: bigint): Buffer {
  let zigzag = n >= 0n ? n << 1n : (-n << 1n) - 1n;
  const bytes: number[] = [];
  do {
    let byte = Number(zigzag & 0x7fn);
    zigzag >>= 7n;
    if (zigzag !== 0n) byte |= 0x80;
    bytes.push(byte);
  } while (zigzag !== 0n);
  return Buffer.from(bytes);
}

/** How many bytes the varint at `offset` takes (up to the end of the buffer). */
function varintLength(bytes: Buffer, offset: number): number {
  let end = offset;
  while (end < bytes.length && ((bytes[end] ?? 0) & 0x80) !== 0) end++;
  return Math.min(end + 1, bytes.length) - offset;
}

/** `bytes` with the varint at `offset` replaced by `replacement`. */
function replaceVarint(bytes: Buffer, offset: number, replacement: Buffer): Buffer {
  return Buffer.concat([
    bytes.subarray(0, offset),
    replacement,
    bytes.subarray(offset + varintLength(bytes, offset)),
  ]);
}

// ---------------------------------------------------------------------------------------------
// Timed decoding.

let slowest = { ms: 0, where: "" };

/**
 * Decodes synchronously and times it. A decode over budget is timed again (twice at most) and
 * the fastest kept, so a scheduler pause on the shared machine is not taken for a slow decode; a
 * decode that is slow every time stays slow.
 */
function timedDecode(bytes: Buffer, where: string): DecodeResult<unknown> {
  const codec = codecOf[bytes.readInt32BE(1)] ?? events;
  let best = Number.POSITIVE_INFINITY;
  let result: DecodeResult<unknown> | undefined;
  for (let attempt = 0; attempt < 5 && best > DECODE_BUDGET_MS; attempt++) {
    const start = performance.now();
    try {
      result = codec.decodeIfKnown(bytes);
    } catch (error) {
      throw new Error(`${where}: decode threw ${String(error)}`, { cause: error });
    }
    best = Math.min(best, performance.now() - start);
  }
  if (best > slowest.ms) slowest = { ms: best, where };
  if (result === undefined) throw new Error(`${where}: the writer schema is not known`);
  return result;
}

/** The field a refusal's message names first (`attributes: map block count …`). */
function fieldOf(result: DecodeResult<unknown>): string | undefined {
  return result.ok ? undefined : result.error.message.split(": ")[0];
}

/** A decode's result is a value or a typed, non-retriable failure with a message. */
function expectTyped(result: DecodeResult<unknown>, where: string): void {
  if (result.ok) {
    expect(result.value, where).toBeTypeOf("object");
    return;
  }
  expect(["TRUNCATED", "MALFORMED_BODY", "INVALID_FIELD"], where).toContain(result.error.code);
  expect(result.error.message, where).not.toBe("");
  expect(result.error.retriable, where).toBe(false);
}

// ---------------------------------------------------------------------------------------------
// Valid records of the three schemas, in every writer version.

const alertArbitrary: fc.Arbitrary<AlertEvent> = fc
  .record({
    alert_id: fc
      .bigInt({ min: 0n, max: 16n ** 32n - 1n })
      .map((n) => n.toString(16).padStart(32, "0")),
    service: fc.string({ minLength: 1, maxLength: 30 }),
    rule: fc.constantFrom("error_rate_high", "confidence_gate_block_rate_high"),
    metric: fc.constantFrom("error_rate", "confidence_gate_block_rate"),
    comparator: fc.constantFrom("gt", "gte", "lt", "lte" as const),
    state: fc.constantFrom("firing", "resolved" as const),
    observed_value: fc.option(fc.double({ min: 0, max: 1, noNaN: true })),
    threshold: fc.double({ min: 0, max: 1, noNaN: true }),
    min_samples: fc.nat(1000),
    sample_count: fc.nat(1_000_000),
    window: fc.nat(1_000_000),
  })
  .map(({ window, ...alert }) => {
    const start = 1_764_000_000_000_000 + window * 60_000_000;
    return {
      ...alert,
      window_start: start,
      window_end: start + 60_000_000,
      fired_window_start: start,
      emitted_at: start + 60_000_000,
    };
  });

/** A valid record's wire bytes, its writer id and the value the writer encoded. */
interface Sample {
  readonly id: number;
  readonly value: unknown;
  readonly bytes: Buffer;
}
const sample = (id: number, value: unknown): Sample => ({ id, value, bytes: wire(id, value) });

const tagsArbitrary = fc.dictionary(
  fc.string({ maxLength: 8 }),
  fc.array(fc.bigInt({ min: -(2n ** 53n) + 2n, max: 2n ** 53n - 2n }).map(Number), {
    maxLength: 5,
  }),
  { maxKeys: 4 },
);

const sampleArbitrary: fc.Arbitrary<Sample> = fc.oneof(
  eventArbitrary().map((event) => sample(ID.event, event)),
  fc
    .tuple(eventArbitrary(), tagsArbitrary, fc.option(fc.string({ maxLength: 12 })))
    .map(([event, tags, region]) => sample(ID.eventV2, { ...event, tags, region })),
  fc
    .tuple(
      eventArbitrary(),
      fc.array(fc.constant(null), { maxLength: 5 }),
      fc.option(
        fc.record({
          region: fc.string({ maxLength: 10 }),
          zone: fc.option(fc.string({ maxLength: 6 })),
        }),
      ),
      fc.array(fc.double({ noNaN: true }), { maxLength: 4 }),
    )
    .map(([event, marks, origin, weights]) =>
      sample(ID.eventV3, { ...event, marks, origin, weights }),
    ),
  fc
    .tuple(fc.array(eventArbitrary(), { minLength: 1, maxLength: 30 }), fc.nat(), fc.boolean())
    .map(([calls, pick, old]) => {
      // Calls that count toward no metric (tool calls, say) make no rollup: then a typical one.
      const all = rollupEvents([...calls, sampleEvent()], 60_000_000);
      const rollup = all[pick % all.length] as MetricRollup;
      if (!old) return sample(ID.rollup, rollup);
      const { revision: _revision, ...v0 } = rollup;
      return sample(ID.rollupV0, v0);
    }),
  alertArbitrary.map((alert) => sample(ID.alert, alert)),
);

// ---------------------------------------------------------------------------------------------
// Mutations.

type Mutation =
  | { readonly type: "flip"; readonly at: number; readonly bit: number }
  | { readonly type: "truncate"; readonly at: number }
  | { readonly type: "insertVarint"; readonly at: number; readonly bytes: Buffer }
  | { readonly type: "count"; readonly place: number; readonly value: bigint }
  | {
      readonly type: "splice";
      readonly at: number;
      readonly remove: number;
      readonly bytes: Buffer;
    };

/** Counts that break things: huge, negative, just too big, at the limits of int and long. */
const hostileCount = fc.oneof(
  fc.constantFrom(
    2n ** 60n,
    -(2n ** 60n),
    2n ** 63n - 1n,
    -(2n ** 63n),
    2n ** 32n - 1n,
    2n ** 31n,
    1_000_000n,
    100_000n,
    -1n,
    -2n,
    1n,
    0n,
  ),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
  fc.integer({ min: -300, max: 300 }).map(BigInt),
);

/** Varint bytes to insert: a value's encoding, or raw bytes with continuation bits (too long). */
const varintBytes = fc.oneof(
  hostileCount.map(varint),
  fc.integer({ min: 1, max: 14 }).map((n) => Buffer.alloc(n, 0xff)),
  fc.uint8Array({ minLength: 1, maxLength: 12 }).map((bytes) => Buffer.from(bytes)),
);

const mutationArbitrary: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({
    type: fc.constant("flip" as const),
    at: fc.nat(),
    bit: fc.integer({ min: 0, max: 7 }),
  }),
  fc.record({ type: fc.constant("truncate" as const), at: fc.nat() }),
  fc.record({ type: fc.constant("insertVarint" as const), at: fc.nat(), bytes: varintBytes }),
  {
    weight: 3,
    arbitrary: fc.record({
      type: fc.constant("count" as const),
      place: fc.nat(),
      value: hostileCount,
    }),
  },
  fc.record({
    type: fc.constant("splice" as const),
    at: fc.nat(),
    remove: fc.nat(16),
    bytes: fc.uint8Array({ maxLength: 16 }).map((bytes) => Buffer.from(bytes)),
  }),
);

/** Applies a mutation to the body (the 5-byte header is left alone: it is checked apart). */
function mutate(input: Sample, bytes: Buffer, mutation: Mutation): Buffer {
  const bodyLength = bytes.length - 5;
  const at = (n: number) => 5 + (bodyLength === 0 ? 0 : n % (bodyLength + 1));
  switch (mutation.type) {
    case "flip": {
      if (bodyLength === 0) return bytes;
      const out = Buffer.from(bytes);
      const index = 5 + (mutation.at % bodyLength);
      out[index] = (out[index] ?? 0) ^ (1 << mutation.bit);
      return out;
    }
    case "truncate":
      // Down to the header at most: an empty body, never a broken header.
      return bytes.subarray(0, Math.max(5, Math.min(at(mutation.at), bytes.length - 1)));
    case "insertVarint": {
      const index = at(mutation.at);
      return Buffer.concat([bytes.subarray(0, index), mutation.bytes, bytes.subarray(index)]);
    }
    case "count": {
      // The places of the valid record; after other mutations they may be elsewhere — still bytes.
      const places = placesOf(input.id, input.value);
      const place = places[mutation.place % places.length];
      if (!place || place.offset >= bytes.length) return bytes;
      return replaceVarint(bytes, place.offset, varint(mutation.value));
    }
    case "splice": {
      const index = at(mutation.at);
      return Buffer.concat([
        bytes.subarray(0, index),
        mutation.bytes,
        bytes.subarray(Math.min(index + mutation.remove, bytes.length)),
      ]);
    }
  }
}

const describeMutation = (mutation: Mutation): string =>
  JSON.stringify(mutation, (_key, value: unknown) =>
    typeof value === "bigint"
      ? value.toString()
      : value instanceof Uint8Array
        ? Buffer.from(value).toString("hex")
        : value,
  );

// ---------------------------------------------------------------------------------------------

describe("bounded decoding of untrusted bytes", () => {
  beforeAll(async () => {
    // Fetch the other versions' writer schemas once (decode, async): the timed decodes are sync.
    const event = sampleEvent();
    const [rollup] = rollupEvents([event], 60_000_000);
    const { revision: _revision, ...rollupV0 } = rollup as MetricRollup;
    for (const [id, value] of [
      [ID.eventV2, { ...event, tags: {}, region: null }],
      [ID.eventV3, { ...event, marks: [], origin: null, weights: [] }],
      [ID.rollupV0, rollupV0],
    ] as const) {
      const decoded = await (codecOf[id] ?? events).decode(wire(id, value));
      expect(decoded.ok, `writer ${id} decodes`).toBe(true);
    }
  });

  it("refuses the crafted record (an empty attributes map whose count is 2^60) at once, naming the field and offset", () => {
    const value = sampleEvent({ attributes: {} });
    const good = events.encode(value);
    // The map's closing count, before the fields after it (the usage counts, null: a byte each).
    const mapEnd = fieldOffset(ID.event, value, "cache_read_tokens") - 1;
    expect(good[mapEnd], "the empty map's closing count").toBe(0);
    // 80 80 80 80 80 80 80 80 20: the varint of 2^61, zigzag for a count of 2^60.
    const crafted = Buffer.concat([
      good.subarray(0, mapEnd),
      Buffer.from("808080808080808020", "hex"),
      good.subarray(mapEnd + 1),
    ]);
    expect(varint(2n ** 60n).toString("hex")).toBe("808080808080808020");
    const result = timedDecode(crafted, "crafted event");
    expect(result).toEqual({
      ok: false,
      error: {
        code: "MALFORMED_BODY",
        message: `attributes: map block count 1152921504606846976 cannot fit in the ${good.length - mapEnd - 1} byte(s) left (offset ${mapEnd})`,
        schemaId: ID.event,
        path: undefined,
        retriable: false,
      },
    });
    expect(slowest.ms).toBeLessThan(DECODE_BUDGET_MS);
  });

  it("refuses a rollup whose latency.keys array claims 2^60 items, before allocating them", () => {
    const [rollup] = rollupEvents([sampleEvent()], 60_000_000);
    if (!rollup) throw new Error("no rollup");
    const good = rollups.encode(rollup);
    const place = placeOf(ID.rollup, rollup, "latency.keys");
    const huge = varint(2n ** 60n);
    const crafted = replaceVarint(good, place.offset, huge);
    const left = crafted.length - place.offset - huge.length;
    expect(timedDecode(crafted, "crafted rollup")).toEqual({
      ok: false,
      error: {
        code: "MALFORMED_BODY",
        message: `latency.keys: array block count 1152921504606846976 cannot fit in the ${left} byte(s) left (offset ${place.offset})`,
        schemaId: ID.rollup,
        path: undefined,
        retriable: false,
      },
    });
    // A count that fits an array's length (2^32 - 1): today's decoder allocated until the heap ran out.
    const big = replaceVarint(good, place.offset, varint(2n ** 32n - 1n));
    const bigResult = timedDecode(big, "rollup with 2^32-1 keys");
    expect(bigResult.ok).toBe(false);
    if (!bigResult.ok)
      expect(bigResult.error.message).toMatch(
        /^latency\.keys: array block count 4294967295 cannot fit/,
      );
  });

  /** A valid event (two attributes), and the offsets of its counts, lengths and indexes. */
  const event = sampleEvent({ attributes: { k: "v" }, parent_span_id: null });
  const eventBytes = wire(ID.event, event);
  const at = (path: string) => placeOf(ID.event, event, path).offset;
  const splice = (offset: number, remove: number, insert: Buffer) =>
    Buffer.concat([eventBytes.subarray(0, offset), insert, eventBytes.subarray(offset + remove)]);
  const attributes = at("attributes");
  // The map (count, "k", "v", closing 0) and the fields after it (the usage counts, null).
  const tail = eventBytes.length - attributes;

  it.each<[string, () => Buffer, string, string, RegExp]>([
    [
      "negative string length",
      () => replaceVarint(eventBytes, at("event_id"), varint(-5n)),
      "MALFORMED_BODY",
      "event_id",
      /^event_id: negative string length -5 \(offset 5\)$/,
    ],
    [
      "string longer than the bytes left",
      () => replaceVarint(eventBytes, at("service"), varint(100_000n)),
      "TRUNCATED",
      "service",
      /^service: string of 100000 byte\(s\) but the body ends early, \d+ byte\(s\) left \(offset \d+\)$/,
    ],
    [
      "varint longer than 10 bytes",
      () => replaceVarint(eventBytes, at("event_id"), Buffer.from("ffffffffffffffffffff01", "hex")),
      "MALFORMED_BODY",
      "event_id",
      /^event_id: varint longer than 10 bytes \(offset 5\)$/,
    ],
    [
      "varint beyond 64 bits",
      () => replaceVarint(eventBytes, at("event_id"), Buffer.from("ffffffffffffffffff7f", "hex")),
      "MALFORMED_BODY",
      "event_id",
      /^event_id: varint overflows 64 bits \(offset 5\)$/,
    ],
    [
      "varint cut by the end of the record",
      () => Buffer.concat([eventBytes.subarray(0, at("event_id")), Buffer.from("ffff", "hex")]),
      "TRUNCATED",
      "event_id",
      /^event_id: varint runs past the end: the body ends early \(offset 5\)$/,
    ],
    [
      "union index out of range",
      () => replaceVarint(eventBytes, at("parent_span_id"), varint(5n)),
      "MALFORMED_BODY",
      "parent_span_id",
      /^parent_span_id: union index 5 out of range: the union has 2 branches \(offset \d+\)$/,
    ],
    [
      "negative union index",
      () => replaceVarint(eventBytes, at("parent_span_id"), varint(-1n)),
      "MALFORMED_BODY",
      "parent_span_id",
      /^parent_span_id: union index -1 out of range/,
    ],
    [
      "enum index out of range",
      () => replaceVarint(eventBytes, at("kind"), varint(6n)),
      "MALFORMED_BODY",
      "kind",
      /^kind: enum index 6 out of range: CallKind has 6 symbols \(offset \d+\)$/,
    ],
    [
      "fixed longer than what is left",
      () => eventBytes.subarray(0, at("prompt_sha256") + 4),
      "TRUNCATED",
      "prompt_sha256",
      /^prompt_sha256: fixed of 32 byte\(s\) but the body ends early, 3 byte\(s\) left \(offset \d+\)$/,
    ],
    [
      "negative block count whose byte size cannot fit",
      () =>
        splice(
          attributes,
          tail,
          Buffer.concat([varint(-1n), varint(1000n), Buffer.from("00", "hex")]),
        ),
      "MALFORMED_BODY",
      "attributes",
      /^attributes: map block byte size 1000 cannot fit in the 1 byte\(s\) left \(offset \d+\)$/,
    ],
    [
      "negative block byte size",
      () =>
        splice(
          attributes,
          tail,
          Buffer.concat([varint(-1n), varint(-4n), Buffer.from("00", "hex")]),
        ),
      "MALFORMED_BODY",
      "attributes",
      /^attributes: negative map block byte size -4 \(offset \d+\)$/,
    ],
    [
      "negative block count whose items do not fill its byte size",
      () =>
        splice(
          attributes,
          tail,
          // One entry k -> v takes 4 bytes (length, k, length, v); the block says 5.
          Buffer.concat([varint(-1n), varint(5n), Buffer.from("026b027600", "hex")]),
        ),
      "MALFORMED_BODY",
      "attributes",
      /^attributes: map block byte size 5 but its 1 item\(s\) take 4 byte\(s\) \(offset \d+\)$/,
    ],
    [
      // -2^40: past 2^53 avsc's float arithmetic loses a varint's sign, and the walk reads
      // counts as avsc does (such a count is then a huge positive one, refused all the same).
      "huge negative block count",
      () =>
        splice(
          attributes,
          tail,
          Buffer.concat([varint(-(2n ** 40n)), varint(4n), Buffer.from("026b027600", "hex")]),
        ),
      "MALFORMED_BODY",
      "attributes",
      /^attributes: map block count 1099511627776 cannot fit in its block of 4 byte\(s\) \(offset \d+\)$/,
    ],
    [
      "map value cut short",
      () => splice(attributes, tail, Buffer.from("02026b40", "hex")),
      "TRUNCATED",
      'attributes["k"]',
      /^attributes\["k"\]: string of 32 byte\(s\) but the body ends early, 0 byte\(s\) left/,
    ],
  ])("refuses %s, naming the field and the offset", (_name, craft, code, path, message) => {
    const result = timedDecode(craft(), _name);
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.error).toMatchObject({ code, schemaId: ID.event, retriable: false });
    expect(fieldOf(result), "the field the message names").toBe(path);
    expect(result.error.message).toMatch(message);
  });

  it("reads a block with a negative count and its byte size, as Avro allows", () => {
    const bytes = splice(
      attributes,
      tail,
      Buffer.concat([
        varint(-1n),
        varint(4n),
        Buffer.from("026b027600", "hex"),
        // The fields after the map.
        eventBytes.subarray(fieldOffset(ID.event, event, "cache_read_tokens")),
      ]),
    );
    expect(timedDecode(bytes, "negative count")).toEqual({
      ok: true,
      value: { ...event, attributes: { k: "v" } },
      schemaId: ID.event,
    });
  });

  it("bounds a newer writer's fields the reader skips, and counts of items that take no bytes", () => {
    const v2 = { ...event, tags: { a: [1, 2] }, region: "eu" };
    const v2Bytes = wire(ID.eventV2, v2);
    expect(timedDecode(v2Bytes, "v2")).toMatchObject({ ok: true, value: event });
    const tags = placeOf(ID.eventV2, v2, "tags").offset;
    const skipped = timedDecode(replaceVarint(v2Bytes, tags, varint(2n ** 60n)), "v2 tags");
    expect(skipped).toMatchObject({ ok: false, error: { code: "MALFORMED_BODY" } });
    expect(fieldOf(skipped)).toBe("tags");
    const items = placeOf(ID.eventV2, v2, 'tags["a"]', "block count").offset;
    const inner = timedDecode(replaceVarint(v2Bytes, items, varint(2n ** 40n)), "v2 tag items");
    expect(inner).toMatchObject({ ok: false, error: { code: "MALFORMED_BODY" } });
    expect(fieldOf(inner)).toBe('tags["a"]');

    // null takes 0 bytes: no byte count bounds such items, a fixed limit does.
    const zero = { ...event, marks: [null, null], origin: null, weights: [] };
    const zeroBytes = wire(ID.eventV3, zero);
    const marks = placeOf(ID.eventV3, zero, "marks").offset;
    expect(timedDecode(replaceVarint(zeroBytes, marks, varint(1000n)), "1000 marks")).toMatchObject(
      {
        ok: true,
        value: event,
      },
    );
    const many = timedDecode(replaceVarint(zeroBytes, marks, varint(2_000_000n)), "2e6 marks");
    expect(many).toEqual({
      ok: false,
      error: {
        code: "MALFORMED_BODY",
        message: `marks: array block count 2000000 of items that take 0 bytes exceeds the limit of 1000000 such items per record (offset ${marks})`,
        schemaId: ID.eventV3,
        path: undefined,
        retriable: false,
      },
    });
  });

  it("refuses an int outside the 32-bit range, naming the array item", () => {
    const [rollup] = rollupEvents([sampleEvent()], 60_000_000);
    if (!rollup) throw new Error("no rollup");
    const good = rollups.encode(rollup);
    const keys = placeOf(ID.rollup, rollup, "latency.keys").offset;
    const result = timedDecode(replaceVarint(good, keys + 1, varint(2n ** 32n)), "int key");
    expect(result).toMatchObject({ ok: false, error: { code: "MALFORMED_BODY" } });
    if (!result.ok)
      expect(result.error.message).toMatch(
        /^latency\.keys\[0\]: int 4294967296 outside the 32-bit range \(offset \d+\)$/,
      );
  });

  it("names fields inside a union's record and inside a run of longs, and bounds items of one size", () => {
    const v3 = {
      ...event,
      marks: [],
      origin: { region: "eu-west", zone: null },
      weights: [1.5],
    };
    const v3Bytes = wire(ID.eventV3, v3);
    expect(timedDecode(v3Bytes, "v3")).toMatchObject({ ok: true, value: event });
    const region = placeOf(ID.eventV3, v3, "origin.region").offset;
    const cut = timedDecode(replaceVarint(v3Bytes, region, varint(5000n)), "origin.region");
    expect(cut).toMatchObject({ ok: false, error: { code: "TRUNCATED" } });
    expect(fieldOf(cut)).toBe("origin.region");
    const weights = placeOf(ID.eventV3, v3, "weights").offset;
    // One double and the closing count are left: 9 bytes, not enough for 3 doubles.
    expect(timedDecode(replaceVarint(v3Bytes, weights, varint(3n)), "3 weights")).toEqual({
      ok: false,
      error: {
        code: "MALFORMED_BODY",
        message: `weights: array block count 3 of items of at least 8 bytes cannot fit in the 9 byte(s) left (offset ${weights})`,
        schemaId: ID.eventV3,
        path: undefined,
        retriable: false,
      },
    });

    // counts.* are 25 longs in a row, walked as one run; a bad one is still named.
    const [rollup] = rollupEvents([sampleEvent()], 60_000_000);
    if (!rollup) throw new Error("no rollup");
    const good = rollups.encode(rollup);
    const retries = fieldOffset(ID.rollup, rollup, "counts.retries");
    const overlong = replaceVarint(good, retries, Buffer.from("ffffffffffffffffffff01", "hex"));
    expect(timedDecode(overlong, "counts.retries")).toMatchObject({
      ok: false,
      error: {
        code: "MALFORMED_BODY",
        message: `counts.retries: varint longer than 10 bytes (offset ${retries})`,
      },
    });
  });

  it("decodes every valid record of every writer version unchanged", () => {
    fc.assert(
      fc.property(sampleArbitrary, (input) => {
        const result = timedDecode(input.bytes, `valid writer ${input.id}`);
        expect(result.ok, result.ok ? "" : result.error.message).toBe(true);
      }),
      { seed: SEED, numRuns: 300 },
    );
  });

  it("mutated records decode to a value or a typed failure, never a throw, none running away", () => {
    slowest = { ms: 0, where: "" };
    let decoded = 0;
    const failures = new Map<string, number>();
    fc.assert(
      fc.property(
        sampleArbitrary,
        fc.array(mutationArbitrary, { minLength: 1, maxLength: 3 }),
        (input, mutations) => {
          let bytes = input.bytes;
          for (const mutation of mutations) bytes = mutate(input, bytes, mutation);
          const where = `writer ${input.id}, ${mutations.map(describeMutation).join(" then ")}, bytes ${bytes.toString("hex")}`;
          const result = timedDecode(bytes, where);
          expectTyped(result, where);
          decoded++;
          if (!result.ok)
            failures.set(result.error.code, (failures.get(result.error.code) ?? 0) + 1);
          expect(slowest.ms, `slowest decode: ${slowest.where}`).toBeLessThan(DECODE_BUDGET_MS);
        },
      ),
      { seed: SEED, numRuns: 3000 },
    );
    process.stderr.write(
      `[decode-fuzz] ${decoded} mutated records, slowest decode ${slowest.ms.toFixed(2)} ms (${slowest.where.slice(0, 300)}); failures ${JSON.stringify(Object.fromEntries(failures))}\n`,
    );
    expect(slowest.ms).toBeLessThan(DECODE_BUDGET_MS);
    // The mutations reach the walker's refusals, not only the validator.
    expect(failures.get("MALFORMED_BODY") ?? 0).toBeGreaterThan(100);
    expect(failures.get("TRUNCATED") ?? 0).toBeGreaterThan(100);
  });
});
