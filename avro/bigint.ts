/**
 * Longs as JavaScript bigints. A `long` type in the `.avsc` files marked `"mcpo.bigint": true`
 * (`{ "type": "long", "mcpo.bigint": true }`: the window sums of MetricRollup, which may pass
 * 2^53) is a bigint in TypeScript (`scripts/gen-avro-types.ts`), in the validator
 * (`validate.ts`) and in avsc: {@link contractType} parses a schema with a type hook that gives
 * those longs a type reading and writing bigints, all 64 bits exact. On the wire it is an
 * ordinary Avro long: writers and readers with a plain `long` there are compatible either way.
 *
 * In JSON (checkpoints, `--json` output) a bigint is a decimal string ({@link bigintReplacer}),
 * as the proto3 JSON mapping writes int64: never a number that a reader could round.
 */
import avro from "avsc";

import type { AvroSchema } from "./generated.js";

/** The attribute marking a long of a schema as a bigint. */
export const BIGINT_ATTRIBUTE = "mcpo.bigint";

/** The range of an Avro long (and of PostgreSQL's bigint): −2^63 to 2^63 − 1. */
export const INT64_MIN = -(2n ** 63n);
export const INT64_MAX = 2n ** 63n - 1n;

/** Whether an Avro type (as in a schema) is a long marked as a bigint. */
export function isBigintLong(type: unknown): boolean {
  return (
    typeof type === "object" &&
    type !== null &&
    !Array.isArray(type) &&
    (type as Record<string, unknown>).type === "long" &&
    (type as Record<string, unknown>)[BIGINT_ATTRIBUTE] === true
  );
}

const isInt64 = (value: unknown): value is bigint =>
  typeof value === "bigint" && value >= INT64_MIN && value <= INT64_MAX;

/** avsc's long as a bigint: 8 bytes little-endian, two's complement, as avsc packs longs. */
const BIGINT_LONG: avro.types.LongType = avro.types.LongType.__with({
  fromBuffer: (buffer: Buffer): bigint => buffer.readBigInt64LE(0),
  toBuffer: (value: bigint): Buffer => {
    const buffer = Buffer.alloc(8);
    buffer.writeBigInt64LE(value);
    return buffer;
  },
  // Avro JSON (defaults, avsc's copies): a number, or a decimal string past 2^53.
  fromJSON: (value: unknown): bigint => BigInt(value as number | string),
  toJSON: (value: bigint): number | string =>
    value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(value)
      : value.toString(),
  isValid: isInt64,
  compare: (a: bigint, b: bigint): number => (a < b ? -1 : a > b ? 1 : 0),
});

/** Parses a contract schema into an avsc type whose marked longs are bigints. */
export function contractType(schema: AvroSchema): avro.Type {
  return avro.Type.forSchema(schema as avro.Schema, {
    typeHook: (type) => (isBigintLong(type) ? BIGINT_LONG : undefined),
  });
}

/**
 * A `JSON.stringify` replacer that writes bigints as decimal strings (JSON has no integers past
 * 2^53 that every reader keeps exact); everything else as `JSON.stringify` does.
 */
export function bigintReplacer(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? value.toString() : value;
}

/**
 * A bigint from what JSON (or a SQL row read as text) holds for one: a decimal string, a safe
 * integer (what earlier versions wrote), or a bigint already.
 *
 * @throws {RangeError} for anything else, or a value outside int64.
 */
export function bigintFrom(value: unknown): bigint {
  let result: bigint | undefined;
  if (typeof value === "bigint") result = value;
  else if (typeof value === "number" && Number.isSafeInteger(value)) result = BigInt(value);
  else if (typeof value === "string" && /^-?\d{1,19}$/.test(value)) result = BigInt(value);
  if (result === undefined || !isInt64(result))
    throw new RangeError(`not a 64-bit integer: ${String(value).slice(0, 40)}`);
  return result;
}
