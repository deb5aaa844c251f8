/**
 * Bounded decoding of untrusted Avro bodies. avsc trusts what the bytes say: a map or array block
 * count of 2^60 makes it loop (or allocate) 2^60 times, a negative string length moves it
 * backwards. Before avsc decodes, a walker compiled from the *writer's* schema (the schema the
 * bytes were written with, which may be another version than the reader's) reads the body once
 * and refuses, with the field's path and the byte offset:
 *
 * - a varint longer than 10 bytes, or beyond 64 bits;
 * - a string or bytes length that is negative or longer than the bytes left;
 * - an array or map block count whose items cannot fit in the bytes left (each item takes at
 *   least its type's minimum encoded size); for item types that can take 0 bytes (null, a record
 *   of such fields) at most {@link ZERO_SIZE_ITEMS_LIMIT} such items per record;
 * - a negative block count whose block byte size is negative, cannot fit, or is not what its
 *   items take (avsc skips such a block by its size, reads it by its items: they must agree);
 * - a union or enum index out of range, an int outside 32 bits;
 * - a fixed, float, double or boolean that runs past the end.
 *
 * Every count is checked before anything loops over it, and every item consumes its bytes, so the
 * walk and the decode after it take time and memory in proportion to the body's length (plus at
 * most {@link ZERO_SIZE_ITEMS_LIMIT} empty items).
 */
import type { Type } from "avsc";

/** Longest varint Avro writes: a 64-bit long in 7-bit groups. */
export const MAX_VARINT_BYTES = 10;

/**
 * How many items of a type that can encode in 0 bytes (null, a record of only such fields, a
 * fixed of size 0) one record may hold in all its arrays: no byte count bounds them, so this does.
 */
export const ZERO_SIZE_ITEMS_LIMIT = 1_000_000;

/** Why a body was refused before decoding. */
export interface BodyDefect {
  /** `TRUNCATED`: a value runs past the end of the body; `MALFORMED_BODY`: anything else. */
  readonly code: "MALFORMED_BODY" | "TRUNCATED";
  /** `<path>: <what was wrong> (offset <n>)`, e.g. `attributes: map block count … (offset 294)`. */
  readonly message: string;
  /** The field's path in the writer's record, e.g. `latency.keys`, `attributes["k"]`. */
  readonly path: string;
  /** Where the offending varint or value starts, in the buffer given to the check. */
  readonly offset: number;
}

/**
 * Checks the Avro body that starts at `offset` of `buffer` (it ends at the buffer's end) against
 * the writer schema the check was compiled for: undefined when avsc can decode it within bounds,
 * else the first defect. Never throws. Bytes after the record are not its concern.
 */
export type BodyCheck = (buffer: Buffer, offset: number) => BodyDefect | undefined;

/**
 * Compiles the {@link BodyCheck} of a writer schema (an avsc type). Compile once per writer
 * schema and keep it with the writer: the check itself allocates nothing per field.
 *
 * @throws {Error} when the schema holds a type avsc has that Avro does not (never for a schema
 *   parsed from Avro JSON).
 */
export function compileBodyCheck(writerType: Type): BodyCheck {
  const walk = new Compiler().walker(writerType);
  return (buffer, offset) => {
    const cursor: Cursor = {
      buffer,
      pos: offset,
      end: buffer.length,
      zeroItemsLeft: ZERO_SIZE_ITEMS_LIMIT,
    };
    try {
      walk(cursor);
      return undefined;
    } catch (error) {
      if (error instanceof Refusal) return error.defect();
      // Nothing else is expected; a schema nested too deep for the stack lands here.
      const reason = error instanceof Error ? error.message : String(error);
      return {
        code: "MALFORMED_BODY",
        message: `the body cannot be checked: ${reason} (offset ${cursor.pos})`,
        path: "",
        offset: cursor.pos,
      };
    }
  };
}

/** The walk's position in the body. */
interface Cursor {
  readonly buffer: Buffer;
  pos: number;
  readonly end: number;
  /** How many more zero-size items this record may hold. */
  zeroItemsLeft: number;
}

type Walk = (cursor: Cursor) => void;

/** A refusal on its way out of the walk; each level it passes adds its part of the path. */
class Refusal extends Error {
  /** The path's parts, outermost first: field names, `[3]`, `["key"]`. */
  readonly parts: string[] = [];

  constructor(
    readonly code: BodyDefect["code"],
    readonly detail: string,
    readonly offset: number,
  ) {
    super(detail);
    this.name = "Refusal";
  }

  defect(): BodyDefect {
    let path = "";
    for (const part of this.parts)
      path = part.startsWith("[") || path === "" ? `${path}${part}` : `${path}.${part}`;
    return {
      code: this.code,
      message: `${path === "" ? "body" : path}: ${this.detail} (offset ${this.offset})`,
      path,
      offset: this.offset,
    };
  }
}

/** Rethrows `error` with `part` added in front of its path (if it is a refusal). */
function within(error: unknown, part: string): never {
  if (error instanceof Refusal && part !== "") error.parts.unshift(part);
  throw error;
}

const malformed = (detail: string, offset: number) => new Refusal("MALFORMED_BODY", detail, offset);
const truncated = (detail: string, offset: number) => new Refusal("TRUNCATED", detail, offset);

/**
 * Reads a zigzag varint (an Avro int or long) the way avsc does, so the value checked is the
 * value avsc will use. Refuses one longer than 10 bytes or beyond 64 bits, or cut by the end.
 */
function readVarint(cursor: Cursor): number {
  const pos = cursor.pos;
  if (pos < cursor.end) {
    const byte = cursor.buffer[pos] as number;
    if (byte < 0x80) {
      cursor.pos = pos + 1;
      return (byte >> 1) ^ -(byte & 1);
    }
  }
  return readLongVarint(cursor);
}

function readLongVarint(cursor: Cursor): number {
  const start = cursor.pos;
  const { buffer, end } = cursor;
  let pos = start;
  let value = 0;
  let scale = 1;
  for (let index = 0; ; index++) {
    if (pos >= end) throw truncated("varint runs past the end: the body ends early", start);
    const byte = buffer[pos++] as number;
    if (index === MAX_VARINT_BYTES - 1 && byte > 1)
      throw malformed(
        byte & 0x80 ? `varint longer than ${MAX_VARINT_BYTES} bytes` : "varint overflows 64 bits",
        start,
      );
    value += (byte & 0x7f) * scale;
    scale *= 128;
    if (byte < 0x80) break;
  }
  cursor.pos = pos;
  // Float arithmetic past 2^53 (as avsc): such values only ever fail the checks below.
  return value % 2 ? -(value + 1) / 2 : value / 2;
}

/**
 * Where the varint at `pos` ends, when it is a valid long (at most 10 bytes, within 64 bits) and
 * ends before `end`; else -1 (then `readVarint` says what is wrong). For values that are not
 * needed: no arithmetic.
 */
function skipVarint(buffer: Buffer, pos: number, end: number): number {
  const limit = Math.min(end, pos + MAX_VARINT_BYTES);
  for (let at = pos; at < limit; at++) {
    const byte = buffer[at] as number;
    if (byte < 0x80) return at - pos === MAX_VARINT_BYTES - 1 && byte > 1 ? -1 : at + 1;
  }
  return -1;
}

/** A varint's value in full: past 2^53 JavaScript prints 1152921504606847000 for 2^60. */
function show(value: number): string {
  return Number.isSafeInteger(value) ? String(value) : BigInt(value).toString();
}

/** Advances over `size` bytes of a value that must not run past the end. */
function take(cursor: Cursor, size: number, what: string, start: number): void {
  const left = cursor.end - cursor.pos;
  if (size > left)
    throw truncated(
      `${what} of ${show(size)} byte(s) but the body ends early, ${left} byte(s) left`,
      start,
    );
  cursor.pos += size;
}

/** A string's or bytes' length and content. */
function walkBytes(what: "string" | "bytes"): Walk {
  return (cursor) => {
    const start = cursor.pos;
    const length = readVarint(cursor);
    if (length < 0) throw malformed(`negative ${what} length ${show(length)}`, start);
    take(cursor, length, what, start);
  };
}

const walkString = walkBytes("string");
const walkRawBytes = walkBytes("bytes");

/** An int: a varint within 32 bits. */
function walkInt(cursor: Cursor): void {
  const start = cursor.pos;
  const value = readVarint(cursor);
  if (value > 2_147_483_647 || value < -2_147_483_648)
    throw malformed(`int ${show(value)} outside the 32-bit range`, start);
}

// The operations of a walk program (see `run`).
const OP_NULL = 0;
const OP_INT = 1;
const OP_LONG = 2;
/** A value of one size: boolean, float, double, fixed. */
const OP_SIZED = 3;
const OP_STRING = 4;
const OP_BYTES = 5;
const OP_ENUM = 6;
const OP_UNION = 7;
/** Anything else (arrays, maps, a record inside itself): a compiled walker. */
const OP_WALK = 8;
/** A run of `count` longs in a row (e.g. a record of counts); its fields in `branches[0]`. */
const OP_LONGS = 9;
/** A run of values of one size each, `count` bytes in all; its fields in `branches[0]`. */
const OP_SIZES = 10;

/**
 * One step of a walk program. Every op has every property (one object shape, so `run` reads them
 * fast); those its code does not use are left empty.
 */
interface Op {
  readonly code: number;
  /** The field's path relative to the program's, "" for none (a union's branch, an item). */
  readonly path: string;
  /**
   * OP_SIZED, OP_SIZES: the size in bytes; OP_ENUM: the symbols; OP_UNION: the branches;
   * OP_LONGS: the longs.
   */
  readonly count: number;
  /** OP_SIZED: "boolean", "double", …; OP_ENUM: the enum's name. */
  readonly what: string;
  readonly branches: readonly (readonly Op[])[];
  readonly walk: Walk;
}

function op(code: number, path: string, parts: Partial<Op> = {}): Op {
  return {
    code,
    path,
    count: parts.count ?? 0,
    what: parts.what ?? "",
    branches: parts.branches ?? [],
    walk: parts.walk ?? walkNothing,
  };
}

function walkNothing(): void {
  // An op that is not OP_WALK never calls it.
}

/**
 * Runs a walk program: a record's fields, nested records flattened into it, each op a case of one
 * switch (no call per field). A refusal leaves with the failing op's path.
 */
function run(program: readonly Op[], cursor: Cursor): void {
  // The position lives in a local; the cursor is synchronised around the slow paths (varints of
  // more than one byte, refusals) and calls.
  const { buffer, end } = cursor;
  let pos = cursor.pos;
  let index = 0;
  try {
    for (; index < program.length; index++) {
      let step = program[index] as Op;
      // Walks `step`; a union's branch of one op is walked here too (`continue`), not by a call.
      for (;;) {
        switch (step.code) {
          case OP_NULL:
            break;
          case OP_LONG: {
            const next = skipVarint(buffer, pos, end);
            if (next > 0) pos = next;
            else {
              cursor.pos = pos;
              readVarint(cursor);
              pos = cursor.pos;
            }
            break;
          }
          case OP_SIZED:
            if (end - pos >= step.count) pos += step.count;
            else {
              cursor.pos = pos;
              take(cursor, step.count, step.what, pos);
            }
            break;
          case OP_STRING:
          case OP_BYTES: {
            const byte = pos < end ? (buffer[pos] as number) : 0x80;
            // A one-byte, even varint: a length from 0 to 63.
            if ((byte & 0x81) === 0 && end - pos > byte >> 1) pos += 1 + (byte >> 1);
            else {
              cursor.pos = pos;
              (step.code === OP_STRING ? walkString : walkRawBytes)(cursor);
              pos = cursor.pos;
            }
            break;
          }
          case OP_UNION: {
            const start = pos;
            const byte = pos < end ? (buffer[pos] as number) : 0x80;
            let choice: number;
            if ((byte & 0x81) === 0) {
              choice = byte >> 1;
              pos++;
            } else {
              cursor.pos = pos;
              choice = readVarint(cursor);
              pos = cursor.pos;
            }
            const branch = step.branches[choice];
            if (branch === undefined)
              throw malformed(
                `union index ${show(choice)} out of range: the union has ${step.count} branches`,
                start,
              );
            const only = branch.length === 1 ? (branch[0] as Op) : undefined;
            if (only !== undefined && only.path === "") {
              step = only;
              continue;
            }
            if (branch.length > 0) {
              cursor.pos = pos;
              run(branch, cursor);
              pos = cursor.pos;
            }
            break;
          }
          case OP_ENUM: {
            const start = pos;
            cursor.pos = pos;
            const symbol = readVarint(cursor);
            pos = cursor.pos;
            if (symbol < 0 || symbol >= step.count)
              throw malformed(
                `enum index ${show(symbol)} out of range: ${step.what} has ${step.count} symbols`,
                start,
              );
            break;
          }
          case OP_LONGS: {
            let at = pos;
            let done = 0;
            for (; done < step.count; done++) {
              const next = skipVarint(buffer, at, end);
              if (next < 0) break;
              at = next;
            }
            if (done === step.count) pos = at;
            else {
              // One of them is wrong: walk them one by one, to name it.
              cursor.pos = pos;
              run(step.branches[0] as Op[], cursor);
              pos = cursor.pos;
            }
            break;
          }
          case OP_SIZES:
            if (end - pos >= step.count) pos += step.count;
            else {
              cursor.pos = pos;
              run(step.branches[0] as Op[], cursor);
              pos = cursor.pos;
            }
            break;
          case OP_INT:
            cursor.pos = pos;
            walkInt(cursor);
            pos = cursor.pos;
            break;
          default:
            cursor.pos = pos;
            step.walk(cursor);
            pos = cursor.pos;
        }
        break;
      }
    }
  } catch (error) {
    within(error, program[index]?.path ?? "");
  }
  cursor.pos = pos;
}

/** What the walk reads of an avsc type (avsc's typings declare these on each type's class). */
interface TypeParts {
  readonly typeName: string;
  readonly name?: string | undefined;
  readonly fields?: readonly { readonly name: string; readonly type: Type }[];
  readonly itemsType?: Type;
  readonly valuesType?: Type;
  readonly types?: readonly Type[];
  readonly symbols?: readonly string[];
  readonly size?: number;
  readonly underlyingType?: Type;
}

/**
 * An avsc type's name, a long read as a bigint (`abstract:long`, see bigint.ts) as `long`: the
 * same bytes on the wire.
 */
function typeNameOf(type: Type): string {
  return type.typeName === "abstract:long" ? "long" : type.typeName;
}

/** One part of an avsc type, which its type name says it has. */
function part<K extends Exclude<keyof TypeParts, "typeName" | "name">>(
  type: Type,
  key: K,
): NonNullable<TypeParts[K]> {
  const parts: TypeParts = type;
  const value = parts[key];
  if (value === undefined) throw new Error(`avsc type ${type.typeName} has no ${key}`);
  return value;
}

/** Compiles walkers and minimum sizes, once per type (named types may recur). */
class Compiler {
  private readonly walkers = new Map<Type, Walk>();
  private readonly minSizes = new Map<Type, number>();

  walker(type: Type): Walk {
    const known = this.walkers.get(type);
    if (known) return known;
    // A record may contain itself: its walker is found here while its fields are compiled.
    const slot: { walk?: Walk } = {};
    const indirect: Walk = (cursor) => {
      (slot.walk as Walk)(cursor);
    };
    this.walkers.set(type, indirect);
    const compiled = this.compile(type);
    slot.walk = compiled;
    this.walkers.set(type, compiled);
    return compiled;
  }

  /**
   * The fewest bytes a value of `type` encodes in. A record met again inside itself counts 0: a
   * lower bound is what the count checks need.
   */
  minSize(type: Type, visiting = new Set<Type>()): number {
    const known = this.minSizes.get(type);
    if (known !== undefined) return known;
    const name = type.typeName;
    let size: number;
    if (name === "record" || name === "error") {
      if (visiting.has(type)) return 0;
      visiting.add(type);
      size = 0;
      for (const field of part(type, "fields")) size += this.minSize(field.type, visiting);
      visiting.delete(type);
    } else if (name === "union:unwrapped" || name === "union:wrapped") {
      const branches = part(type, "types");
      size = 1 + Math.min(...branches.map((branch) => this.minSize(branch, visiting)));
    } else if (name.startsWith("logical:"))
      size = this.minSize(part(type, "underlyingType"), visiting);
    else
      switch (name) {
        case "null":
          size = 0;
          break;
        case "float":
          size = 4;
          break;
        case "double":
          size = 8;
          break;
        case "fixed":
          size = part(type, "size");
          break;
        default:
          // boolean, int, long, string, bytes, enum, and array and map (their closing count).
          size = 1;
      }
    if (visiting.size === 0) this.minSizes.set(type, size);
    return size;
  }

  private compile(type: Type): Walk {
    const program = merged(this.opsOf(type, new Set()));
    return (cursor) => {
      run(program, cursor);
    };
  }

  private opsOf(type: Type, flattening: Set<Type>): Op[] {
    const program: Op[] = [];
    this.ops(type, "", program, flattening);
    return program;
  }

  /**
   * Appends the ops of `type` at `path` to `program`. A nested record's fields are flattened in
   * (records have no framing); one met again inside itself becomes a call of its walker.
   */
  private ops(type: Type, path: string, program: Op[], flattening: Set<Type>): void {
    const name = typeNameOf(type);
    if (name.startsWith("logical:")) {
      this.ops(part(type, "underlyingType"), path, program, flattening);
      return;
    }
    switch (name) {
      case "null":
        program.push(op(OP_NULL, path));
        return;
      case "int":
        program.push(op(OP_INT, path));
        return;
      case "long":
        program.push(op(OP_LONG, path));
        return;
      case "boolean":
        program.push(op(OP_SIZED, path, { count: 1, what: "boolean" }));
        return;
      case "float":
        program.push(op(OP_SIZED, path, { count: 4, what: "float" }));
        return;
      case "double":
        program.push(op(OP_SIZED, path, { count: 8, what: "double" }));
        return;
      case "fixed":
        program.push(op(OP_SIZED, path, { count: part(type, "size"), what: "fixed" }));
        return;
      case "string":
        program.push(op(OP_STRING, path));
        return;
      case "bytes":
        program.push(op(OP_BYTES, path));
        return;
      case "enum":
        program.push(
          op(OP_ENUM, path, {
            count: part(type, "symbols").length,
            what: String(type.name).split(".").pop() ?? "the enum",
          }),
        );
        return;
      case "union:unwrapped":
      case "union:wrapped": {
        const branches = part(type, "types").map((branch) =>
          merged(this.opsOf(branch, flattening)),
        );
        program.push(op(OP_UNION, path, { count: branches.length, branches }));
        return;
      }
      case "array":
        program.push(
          op(OP_WALK, path, { walk: this.blocksWalker("array", part(type, "itemsType")) }),
        );
        return;
      case "map":
        program.push(
          op(OP_WALK, path, { walk: this.blocksWalker("map", part(type, "valuesType")) }),
        );
        return;
      case "record":
      case "error":
        if (flattening.has(type)) {
          program.push(op(OP_WALK, path, { walk: this.walker(type) }));
          return;
        }
        flattening.add(type);
        for (const field of part(type, "fields"))
          this.ops(
            field.type,
            path === "" ? field.name : `${path}.${field.name}`,
            program,
            flattening,
          );
        flattening.delete(type);
        return;
      default:
        throw new Error(`cannot bound the decoding of Avro type ${name}`);
    }
  }

  /** Arrays and maps: blocks of items until a block count of 0. */
  private blocksWalker(kind: "array" | "map", itemType: Type): Walk {
    const isMap = kind === "map";
    // A map entry is its key (a string: at least 1 byte) and its value.
    const itemMin = (isMap ? 1 : 0) + this.minSize(itemType);
    const items = isMap
      ? mapEntries(this.walker(itemType))
      : itemsOf(typeNameOf(itemType), itemMin, this.walker(itemType));
    return (cursor) => {
      let index = 0;
      for (;;) {
        const countAt = cursor.pos;
        let count = readVarint(cursor);
        if (count === 0) return;
        let blockEnd = -1;
        if (count < 0) {
          count = -count;
          const sizeAt = cursor.pos;
          const size = readVarint(cursor);
          if (size < 0) throw malformed(`negative ${kind} block byte size ${show(size)}`, sizeAt);
          const left = cursor.end - cursor.pos;
          if (size > left)
            throw malformed(
              `${kind} block byte size ${show(size)} cannot fit in the ${left} byte(s) left`,
              sizeAt,
            );
          blockEnd = cursor.pos + size;
        }
        checkCount(cursor, kind, count, itemMin, blockEnd, countAt);
        const blockStart = cursor.pos;
        items(cursor, count, index);
        index += count;
        if (blockEnd >= 0 && cursor.pos !== blockEnd)
          throw malformed(
            `${kind} block byte size ${blockEnd - blockStart} but its ${count} item(s) take ${cursor.pos - blockStart} byte(s)`,
            countAt,
          );
      }
    };
  }
}

/** `program` with each run of two or more longs, or of values of one size, made one op. */
function merged(program: readonly Op[]): Op[] {
  const out: Op[] = [];
  for (let start = 0; start < program.length;) {
    const code = (program[start] as Op).code;
    let stop = start + 1;
    if (code === OP_LONG || code === OP_SIZED)
      while (stop < program.length && (program[stop] as Op).code === code) stop++;
    const run = program.slice(start, stop);
    if (run.length === 1) out.push(run[0] as Op);
    else if (code === OP_LONG) out.push(op(OP_LONGS, "", { count: run.length, branches: [run] }));
    else {
      const bytes = run.reduce((sum, step) => sum + step.count, 0);
      out.push(op(OP_SIZES, "", { count: bytes, branches: [run] }));
    }
    start = stop;
  }
  return out;
}

/** Walks `count` items of a block whose first item is number `first` of the array or map. */
type Items = (cursor: Cursor, count: number, first: number) => void;

/**
 * The items of an array: in one step for a type of one size (its count was checked against the
 * bytes left), in a tight loop for ints and longs (varints of 1 or 2 bytes are always valid),
 * else one by one.
 */
function itemsOf(typeName: string, size: number, walk: Walk): Items {
  switch (typeName) {
    case "null":
    case "boolean":
    case "float":
    case "double":
    case "fixed":
      return (cursor, count) => {
        cursor.pos += count * size;
      };
    case "long":
      return (cursor, count, first) => {
        const { buffer, end } = cursor;
        let pos = cursor.pos;
        let item = 0;
        try {
          for (; item < count; item++) {
            if (pos < end && (buffer[pos] as number) < 0x80) {
              pos += 1;
              continue;
            }
            const next = skipVarint(buffer, pos, end);
            if (next > 0) pos = next;
            else {
              cursor.pos = pos;
              walk(cursor);
              pos = cursor.pos;
            }
          }
        } catch (error) {
          within(error, `[${first + item}]`);
        }
        cursor.pos = pos;
      };
    case "int":
      return (cursor, count, first) => {
        const { buffer, end } = cursor;
        let pos = cursor.pos;
        let item = 0;
        try {
          for (; item < count; item++) {
            // Varints of 1 or 2 bytes are always within 32 bits.
            if (pos + 1 < end) {
              if ((buffer[pos] as number) < 0x80) {
                pos += 1;
                continue;
              }
              if ((buffer[pos + 1] as number) < 0x80) {
                pos += 2;
                continue;
              }
            }
            cursor.pos = pos;
            walk(cursor);
            pos = cursor.pos;
          }
        } catch (error) {
          within(error, `[${first + item}]`);
        }
        cursor.pos = pos;
      };
    default:
      return (cursor, count, first) => {
        let item = 0;
        try {
          for (; item < count; item++) walk(cursor);
        } catch (error) {
          within(error, `[${first + item}]`);
        }
      };
  }
}

/** The entries of a map: a string key and a value each; a failure names the key. */
function mapEntries(walkValue: Walk): Items {
  return (cursor, count) => {
    let keyAt = cursor.pos;
    try {
      for (let item = 0; item < count; item++) {
        keyAt = cursor.pos;
        walkString(cursor);
        walkValue(cursor);
      }
    } catch (error) {
      within(error, keyPart(cursor.buffer, keyAt, cursor.end));
    }
  };
}

/** Refuses a block count whose items cannot fit in what is left of the body (or of its block). */
function checkCount(
  cursor: Cursor,
  kind: "array" | "map",
  count: number,
  itemMin: number,
  blockEnd: number,
  countAt: number,
): void {
  if (itemMin === 0) {
    if (count > cursor.zeroItemsLeft)
      throw malformed(
        `${kind} block count ${show(count)} of items that take 0 bytes exceeds the limit of ${ZERO_SIZE_ITEMS_LIMIT} such items per record`,
        countAt,
      );
    cursor.zeroItemsLeft -= count;
    return;
  }
  const left = (blockEnd >= 0 ? blockEnd : cursor.end) - cursor.pos;
  if (count * itemMin <= left) return;
  // Said only where the count alone would fit.
  const each = count <= left ? ` of items of at least ${itemMin} bytes` : "";
  throw malformed(
    blockEnd >= 0
      ? `${kind} block count ${show(count)}${each} cannot fit in its block of ${left} byte(s)`
      : `${kind} block count ${show(count)}${each} cannot fit in the ${left} byte(s) left`,
    countAt,
  );
}

/** A map entry's path part: its key, as far as it is readable, quoted and shortened. */
function keyPart(buffer: Buffer, keyAt: number, end: number): string {
  const probe: Cursor = { buffer, pos: keyAt, end, zeroItemsLeft: 0 };
  try {
    const length = readVarint(probe);
    if (length >= 0 && length <= end - probe.pos) {
      const key = buffer.toString("utf8", probe.pos, probe.pos + Math.min(length, 64));
      return `[${JSON.stringify(length > 64 ? `${key}…` : key)}]`;
    }
  } catch {
    // The key itself is what was wrong: no key to name.
  }
  return "[?]";
}
